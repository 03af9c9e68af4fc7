"""camera_node as a real process: a folder of PNGs -> rgb8 Image + CameraInfo at the requested size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from node_harness import NodeProcess, write_params

pytestmark = pytest.mark.ros


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

    _pngs(tmp_path / "imgs")
    images = harness.collect(Image, "/camera/image_raw")
    infos = harness.collect(CameraInfo, "/camera/camera_info")
    params = write_params(tmp_path / "cam.yaml", {"source": str(tmp_path / "imgs"), "image_size": 64,
                                                  "rate_hz": 20.0, "frame_id": "cam_test", "fov_deg": 90.0})
    node = NodeProcess("camera_node", params, ros_env)
    try:
        assert harness.spin_until(lambda: len(images) >= 4 and len(infos) >= 4, 30.0, node), node.output
    finally:
        assert node.stop() == 0, node.output
    msg = images[0]
    assert (msg.encoding, msg.width, msg.height, msg.step) == ("rgb8", 64, 64, 192)
    assert msg.header.frame_id == "cam_test"
    stamps = [m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec for m in images]
    assert stamps[0] > 0 and all(b > a for a, b in zip(stamps, stamps[1:]))
    # Pixels: the folder is replayed in order, centre-cropped (the white strip is gone).
    channels = [int(np.argmax(image_msg_to_rgb(m)[32, 32])) for m in images[:4]]
    assert channels[1] == (channels[0] + 1) % 3 and channels[2] == (channels[1] + 1) % 3
    assert all(image_msg_to_rgb(m).max() <= 200 for m in images[:4])
    # Each frame's CameraInfo carries the image's stamp. Either subscription may match the publisher a
    # frame later than the other, so compare the frames that both received, not the first one.
    image_stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in images}
    info_stamps = {(i.header.stamp.sec, i.header.stamp.nanosec) for i in infos}
    both_from, both_to = max(min(image_stamps), min(info_stamps)), min(max(image_stamps), max(info_stamps))
    images_in_both = {s for s in image_stamps if both_from <= s <= both_to}
    assert len(images_in_both) >= 2 and images_in_both == {s for s in info_stamps if both_from <= s <= both_to}
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
