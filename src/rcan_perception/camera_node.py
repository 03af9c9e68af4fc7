"""camera_node: a real or synthetic camera -> /camera/image_raw (rgb8, square) + /camera/camera_info.

Source (parameter ``source``): an OpenCV device index ("0"), a video file, or a folder
of images (the synthetic mode: tests and demos need no hardware).  Frames are centre-
cropped to a square and resized to ``image_size`` (472, the paper's resolution), stamped
with the node clock and published at ``rate_hz`` with a matching CameraInfo.
"""
from __future__ import annotations

import sys

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from rcan_common.ros_image import rgb_to_image_msg
from rcan_common.ros_node import OnceLog, StartupError, qos_profile, spin_node
from rcan_perception.camera_source import (SourceError, center_crop_resize, crop_resize_intrinsics,
                                           intrinsics_from_fov, open_source)


class CameraNode(Node):
    def __init__(self, **kwargs):
        super().__init__("camera_node", **kwargs)
        p = self.declare_parameter
        self.source_spec = p("source", "0").value
        self.image_size = int(p("image_size", 472).value)
        rate_hz = float(p("rate_hz", 10.0).value)
        self.frame_id = p("frame_id", "camera_color_optical_frame").value
        loop = bool(p("loop", True).value)
        fov_deg = float(p("fov_deg", 60.0).value)
        # Intrinsics of the SOURCE frame; fx <= 0 means "derive from fov_deg for the output".
        fx, fy, cx, cy = (float(p(n, 0.0).value) for n in ("fx", "fy", "cx", "cy"))
        image_topic = p("image_topic", "/camera/image_raw").value
        info_topic = p("camera_info_topic", "/camera/camera_info").value
        reliability = p("qos_reliability", "reliable").value
        depth = int(p("qos_depth", 5).value)

        if self.image_size < 8:
            raise StartupError(f"image_size must be >= 8, got {self.image_size}")
        if not rate_hz > 0:
            raise StartupError(f"rate_hz must be > 0, got {rate_hz}")
        if not 0 < fov_deg < 180:
            raise StartupError(f"fov_deg must be in (0, 180), got {fov_deg}")
        try:
            qos = qos_profile(reliability, depth)
            self.source = open_source(self.source_spec, loop)
        except (ValueError, SourceError) as exc:
            raise StartupError(str(exc)) from exc
        self._source_k = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]) if fx > 0 else None
        self._fov_deg = fov_deg
        self._info: CameraInfo | None = None
        self._shape: tuple[int, int] | None = None
        self.problems = OnceLog(self.get_logger().warning)
        self.image_pub = self.create_publisher(Image, image_topic, qos)
        self.info_pub = self.create_publisher(CameraInfo, info_topic, qos)
        self.frames = 0
        self.timer = self.create_timer(1.0 / rate_hz, self._tick)
        self.get_logger().info(f"camera {self.source.name} -> {image_topic} ({self.image_size}x{self.image_size} "
                               f"rgb8 at {rate_hz:g} Hz, frame '{self.frame_id}')")

    def _camera_info(self, height: int, width: int) -> CameraInfo:
        if self._source_k is not None:
            k = crop_resize_intrinsics(self._source_k, height, width, self.image_size)
        else:
            k = intrinsics_from_fov(self.image_size, self._fov_deg)
        info = CameraInfo()
        info.height = info.width = self.image_size
        info.distortion_model = "plumb_bob"
        info.d = [0.0] * 5
        info.k = k.reshape(-1).tolist()
        info.r = np.eye(3).reshape(-1).tolist()
        p = np.zeros((3, 4))
        p[:, :3] = k
        info.p = p.reshape(-1).tolist()
        return info

    def _tick(self) -> None:
        try:
            rgb = self.source.read()
        except SourceError as exc:
            self.problems("read", f"camera read failed: {exc}")
            return
        if rgb is None:
            self.get_logger().info(f"{self.source.name}: end of stream after {self.frames} frames")
            self.timer.cancel()
            return
        if self._shape != rgb.shape[:2]:  # intrinsics follow the source size (cached per size)
            self._shape = rgb.shape[:2]
            self._info = self._camera_info(*self._shape)
        msg = rgb_to_image_msg(center_crop_resize(rgb, self.image_size))
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.frame_id
        self._info.header = msg.header
        self.image_pub.publish(msg)
        self.info_pub.publish(self._info)
        self.frames += 1

    def close(self) -> None:
        self.source.close()


def main(args=None) -> None:
    sys.exit(spin_node(CameraNode, args))


if __name__ == "__main__":
    main()
