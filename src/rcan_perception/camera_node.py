"""camera_node: a real or synthetic camera -> camera/image_raw (rgb8, square) + camera/camera_info.

Source (parameter ``source``): an OpenCV device index ("0"), a video file, or a folder
of images (the synthetic mode: tests and demos need no hardware).  Frames are centre-
cropped to a square and resized to ``image_size`` (472, the paper's resolution), stamped
with the node clock and published at ``rate_hz`` with a matching CameraInfo.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from rcan_common.config import require
from rcan_common.ros_image import camera_info_msg, rgb_to_image_msg
from rcan_common.ros_node import OnceLog, StartupError, publisher, spin_node
from rcan_common.ros_params import declare_config
from rcan_perception.camera_source import (SourceError, center_crop_resize, crop_resize_intrinsics,
                                           intrinsics_from_fov, open_source)


@dataclass(frozen=True)
class CameraNodeParams:
    """ROS parameters of camera_node (config/camera.yaml)."""

    source: str = "0"
    image_size: int = 472
    rate_hz: float = 10.0
    frame_id: str = "camera_color_optical_frame"
    loop: bool = True
    fov_deg: float = 60.0
    # Intrinsics of the SOURCE frame; fx <= 0 means "derive from fov_deg for the output".
    fx: float = 0.0
    fy: float = 0.0
    cx: float = 0.0
    cy: float = 0.0
    image_topic: str = "camera/image_raw"  # relative: a namespace moves it
    camera_info_topic: str = "camera/camera_info"

    def __post_init__(self) -> None:
        require(self.image_size >= 8, "image_size", "must be >= 8")
        require(self.rate_hz > 0, "rate_hz", "must be > 0")
        require(0 < self.fov_deg < 180, "fov_deg", "must be in (0, 180)")
        require(bool(self.frame_id), "frame_id", "must not be empty")


# Parameters the running node re-reads (frame_id stamps every frame); a change is validated like a
# start-up value.  The rest (source, size, rate, intrinsics, topics, QoS) are used at start-up: read-only.
RUNTIME_PARAMETERS = ("frame_id",)


class CameraNode(Node):
    def __init__(self, **kwargs):
        super().__init__("camera_node", **kwargs)
        try:
            cfg = declare_config(self, CameraNodeParams, RUNTIME_PARAMETERS, self._apply_params)
            self.source = open_source(cfg.source, cfg.loop)
        except (ValueError, SourceError) as exc:  # ConfigError is a ValueError
            raise StartupError(str(exc)) from exc
        self.source_spec, self.image_size, self.frame_id = cfg.source, cfg.image_size, cfg.frame_id
        rate_hz, fov_deg, image_topic, info_topic = cfg.rate_hz, cfg.fov_deg, cfg.image_topic, cfg.camera_info_topic
        fx, fy, cx, cy = cfg.fx, cfg.fy, cfg.cx, cfg.cy
        self._source_k = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]) if fx > 0 else None
        self._fov_deg = fov_deg
        self._info: CameraInfo | None = None
        self._shape: tuple[int, int] | None = None
        self.problems = OnceLog(self.get_logger().warning)
        # Reliable (rviz's default), depth 5; qos_overrides.<topic>.publisher.* change it.
        self.image_pub = publisher(self, Image, image_topic, 5)
        self.info_pub = publisher(self, CameraInfo, info_topic, 5)
        self.frames = 0
        self.timer = self.create_timer(1.0 / rate_hz, self._tick)
        self.get_logger().info(f"camera {self.source.name} -> {image_topic} ({self.image_size}x{self.image_size} "
                               f"rgb8 at {rate_hz:g} Hz, frame '{self.frame_id}')")

    def _apply_params(self, params: CameraNodeParams) -> None:
        self.frame_id = params.frame_id  # validated; only RUNTIME_PARAMETERS can differ

    def _camera_info(self, height: int, width: int) -> CameraInfo:
        if self._source_k is not None:
            k = crop_resize_intrinsics(self._source_k, height, width, self.image_size)
        else:
            k = intrinsics_from_fov(self.image_size, self._fov_deg)
        return camera_info_msg(k, self.image_size, self.image_size)

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
