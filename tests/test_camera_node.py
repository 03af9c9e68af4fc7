"""camera_node as a real process: a folder of PNGs -> rgb8 Image + CameraInfo at the requested size.

`NodeProcess`, `RosHarness` and `write_params` are shared with the perception/policy node tests.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

BIN = Path(sys.executable).parent

pytestmark = pytest.mark.ros


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    return path


class NodeProcess:
    """A console-script node started with a params file; its output is collected for asserts."""

    def __init__(self, exe: str, params_file: Path, env: dict, extra_args: tuple[str, ...] = ()):
        self.proc = subprocess.Popen([str(BIN / exe), "--ros-args", "--params-file", str(params_file), *extra_args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_exit(self, timeout: float = 20.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(2.0)
        return rc

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT, like Ctrl-C; a clean shutdown exits 0."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.wait_exit(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"node did not stop on SIGINT within {timeout}s:\n{self.output}")


class RosHarness:
    """An rclpy node in the test process, in its own context (the ros_env domain)."""

    def __init__(self, name: str = "test_driver"):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=int(os.environ["ROS_DOMAIN_ID"]))
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def collect(self, msg_type, topic: str, qos: int = 10) -> list:
        got: list = []
        self.node.create_subscription(msg_type, topic, got.append, qos)
        return got

    def spin_until(self, cond, timeout: float, proc: NodeProcess | None = None) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            if proc is not None and not proc.alive():
                raise AssertionError(f"node exited with {proc.proc.returncode}:\n{proc.output}")
            self.executor.spin_once(timeout_sec=0.02)
        return cond()

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


@pytest.fixture
def harness(ros_env):
    h = RosHarness()
    yield h
    h.close()


def _pngs(folder: Path) -> list[np.ndarray]:
    import cv2

    folder.mkdir()
    frames = []
    for i in range(3):
        rgb = np.zeros((80, 100, 3), np.uint8)
        rgb[:, :, i] = 200  # red, green, blue frames
        rgb[:, :10] = 255  # a left strip that the centre crop removes
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        frames.append(rgb)
    return frames


def test_folder_source_publishes_rgb8_and_camera_info(tmp_path, ros_env, harness):
    from sensor_msgs.msg import CameraInfo, Image

    from rcan_common.ros_image import image_msg_to_rgb

    frames = _pngs(tmp_path / "imgs")
    images = harness.collect(Image, "/camera/image_raw")
    infos = harness.collect(CameraInfo, "/camera/camera_info")
    params = write_params(tmp_path / "cam.yaml", {"source": str(tmp_path / "imgs"), "image_size": 64,
                                                  "rate_hz": 20.0, "frame_id": "cam_test", "fov_deg": 90.0})
    node = NodeProcess("camera_node", params, ros_env)
    try:
        assert harness.spin_until(lambda: len(images) >= 4 and len(infos) >= 4, 30.0, node), node.output
    finally:
        assert node.stop() == 0
    msg = images[0]
    assert (msg.encoding, msg.width, msg.height, msg.step) == ("rgb8", 64, 64, 192)
    assert msg.header.frame_id == "cam_test"
    stamps = [m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec for m in images]
    assert stamps[0] > 0 and all(b > a for a, b in zip(stamps, stamps[1:]))
    # Pixels: the folder is replayed in order, centre-cropped (the white strip is gone).
    channels = [int(np.argmax(image_msg_to_rgb(m)[32, 32])) for m in images[:4]]
    assert channels[1] == (channels[0] + 1) % 3 and channels[2] == (channels[1] + 1) % 3
    assert all(image_msg_to_rgb(m).max() <= 200 for m in images[:4])
    info_stamps = {(i.header.stamp.sec, i.header.stamp.nanosec) for i in infos}
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) in info_stamps
    info = infos[0]
    assert (info.width, info.height, info.header.frame_id) == (64, 64, "cam_test")
    k = np.array(info.k).reshape(3, 3)
    np.testing.assert_allclose(k[0, 0], 32.0, rtol=1e-6)  # 90 deg fov: f = size / 2
    np.testing.assert_allclose(k[:2, 2], (31.5, 31.5))


def test_bad_source_fails_at_start_with_a_clear_message(tmp_path, ros_env):
    params = write_params(tmp_path / "cam.yaml", {"source": str(tmp_path / "missing_dir")})
    node = NodeProcess("camera_node", params, ros_env)
    assert node.wait_exit(30.0) == 1
    assert "missing_dir" in node.output and "neither a device index" in node.output


def test_crop_resize_intrinsics_follow_the_crop():
    from rcan_perception.camera_source import center_crop_resize, crop_resize_intrinsics

    k = np.array([[100.0, 0, 49.5], [0, 100.0, 39.5], [0, 0, 1]])  # 100x80 frame, centred
    out = crop_resize_intrinsics(k, 80, 100, 40)  # crop 80x80 at left=10, scale 0.5
    np.testing.assert_allclose(out, [[50, 0, 19.5], [0, 50, 19.5], [0, 0, 1]])
    img = np.arange(80 * 100 * 3, dtype=np.uint8).reshape(80, 100, 3)
    assert center_crop_resize(img, 80).tolist() == img[:, 10:90].tolist()


def test_video_file_source_loops_and_folder_without_images_fails(tmp_path):
    import cv2

    from rcan_perception.camera_source import SourceError, open_source

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (40, 30))
    assert writer.isOpened()
    for value in (0, 250):
        writer.write(np.full((30, 40, 3), value, np.uint8))
    writer.release()
    src = open_source(str(path), loop=True)
    means = [float(src.read().mean()) for _ in range(4)]
    src.close()
    assert means[0] < 20 and means[1] > 230 and means[2] < 20, means  # replayed from the start
    once = open_source(str(path), loop=False)
    assert once.read() is not None and once.read() is not None and once.read() is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path / "empty"))
    with pytest.raises(SourceError, match="empty"):
        open_source("  ")
