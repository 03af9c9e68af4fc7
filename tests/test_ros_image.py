"""rcan_common.ros_image: round trips and every malformed-header case (numpy path always)."""
from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from rcan_common import ros_image as ri


def _rgb(h=5, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _msg(h, w, encoding, step, nbytes):
    m = Image()
    m.height, m.width, m.encoding, m.step = h, w, encoding, step
    m.data = bytes(nbytes)
    return m


def test_rgb_round_trip_keeps_pixels_and_header():
    rgb = _rgb()
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = ri.rgb_to_image_msg(rgb, header, backend="numpy")
    assert (msg.encoding, msg.height, msg.width, msg.step) == ("rgb8", 5, 7, 21)
    assert msg.header.frame_id == "cam" and msg.header.stamp.nanosec == 345
    back = ri.image_msg_to_rgb(msg, backend="numpy")
    assert back.dtype == np.uint8 and back.flags.c_contiguous
    np.testing.assert_array_equal(back, rgb)


def test_bgr8_is_swapped_to_rgb():
    rgb = _rgb()
    msg = ri.rgb_to_image_msg(rgb, backend="numpy")
    msg.encoding = "bgr8"
    msg.data = rgb[:, :, ::-1].tobytes()
    np.testing.assert_array_equal(ri.image_msg_to_rgb(msg, backend="numpy"), rgb)


def test_row_padding_is_cut_off():
    rgb = _rgb(3, 4)
    padded = np.zeros((3, 16), np.uint8)
    padded[:, :12] = rgb.reshape(3, 12)
    padded[:, 12:] = 99
    msg = _msg(3, 4, "rgb8", 16, 0)
    msg.data = padded.tobytes()
    np.testing.assert_array_equal(ri.image_msg_to_rgb(msg, backend="numpy"), rgb)


def test_mono8_and_depth_round_trip():
    mono = np.arange(12, dtype=np.uint8).reshape(3, 4)
    depth = np.linspace(0.1, 2.0, 12, dtype=np.float32).reshape(3, 4)
    m = ri.mono8_to_image_msg(mono, backend="numpy")
    d = ri.depth_to_image_msg(depth, backend="numpy")
    assert (m.encoding, m.step, d.encoding, d.step) == ("mono8", 4, "32FC1", 16)
    np.testing.assert_array_equal(ri.image_msg_to_mono8(m, backend="numpy"), mono)
    np.testing.assert_array_equal(ri.image_msg_to_depth(d, backend="numpy"), depth)


def test_big_endian_depth_is_read_correctly():
    depth = np.array([[1.5, -2.25]], dtype=np.float32)
    msg = _msg(1, 2, "32FC1", 8, 0)
    msg.is_bigendian = 1
    msg.data = depth.astype(">f4").tobytes()
    np.testing.assert_array_equal(ri.image_msg_to_depth(msg, backend="numpy"), depth)


@pytest.mark.parametrize(
    "h, w, encoding, step, nbytes, error, reason",
    [
        (4, 4, "rgba8", 16, 64, ri.EncodingError, "encoding"),
        (4, 4, "16UC1", 8, 32, ri.EncodingError, "encoding"),
        (0, 0, "rgb8", 0, 0, ri.EmptyImageError, "empty"),
        (0, 4, "rgb8", 12, 0, ri.EmptyImageError, "empty"),
        (100000, 100000, "rgb8", 300000, 0, ri.ImageTooLargeError, "too_large"),
        (4, 4, "rgb8", 11, 44, ri.StepError, "step"),
        (4, 4, "rgb8", 4000, 16000, ri.StepError, "step"),
        (4, 4, "rgb8", 12, 47, ri.DataLengthError, "data_length"),
        (4, 4, "rgb8", 12, 49, ri.DataLengthError, "data_length"),
    ],
)
def test_malformed_messages_raise_distinct_errors(h, w, encoding, step, nbytes, error, reason):
    with pytest.raises(error) as info:
        ri.image_msg_to_rgb(_msg(h, w, encoding, step, nbytes), backend="numpy")
    assert info.value.reason == reason
    assert isinstance(info.value, ri.ImageError)


def test_size_cap_is_configurable():
    msg = ri.rgb_to_image_msg(_rgb(10, 10), backend="numpy")
    with pytest.raises(ri.ImageTooLargeError, match="cap of 99"):
        ri.image_msg_to_rgb(msg, max_pixels=99, backend="numpy")


@pytest.mark.parametrize(
    "arr, builder",
    [
        (np.zeros((4, 4), np.uint8), ri.rgb_to_image_msg),
        (np.zeros((4, 4, 3), np.float32), ri.rgb_to_image_msg),
        (np.zeros((0, 4, 3), np.uint8), ri.rgb_to_image_msg),
        (np.zeros((4, 4, 1), np.uint8), ri.mono8_to_image_msg),
        (np.zeros((4, 4), np.float64), ri.depth_to_image_msg),
    ],
)
def test_builders_reject_wrong_arrays(arr, builder):
    with pytest.raises(ri.ArrayError):
        builder(arr, backend="numpy")


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="backend"):
        ri.image_msg_to_rgb(ri.rgb_to_image_msg(_rgb(), backend="numpy"), backend="opencv")


@pytest.mark.skipif(not ri.HAVE_CV_BRIDGE, reason="cv_bridge is not installed (PyPI wheels)")
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_cv_bridge_and_numpy_paths_agree(encoding):
    rgb = _rgb(6, 9, seed=3)
    msg = ri.rgb_to_image_msg(rgb, backend="numpy")
    if encoding == "bgr8":
        msg.encoding, msg.data = "bgr8", rgb[:, :, ::-1].tobytes()
    np.testing.assert_array_equal(ri.image_msg_to_rgb(msg, backend="cv_bridge"),
                                  ri.image_msg_to_rgb(msg, backend="numpy"))
    a = ri.rgb_to_image_msg(rgb, backend="cv_bridge")
    b = ri.rgb_to_image_msg(rgb, backend="numpy")
    assert (a.encoding, a.height, a.width, a.step, bytes(a.data)) == (b.encoding, b.height, b.width, b.step, bytes(b.data))
    depth = np.linspace(0, 1, 54, dtype=np.float32).reshape(6, 9)
    np.testing.assert_array_equal(ri.image_msg_to_depth(ri.depth_to_image_msg(depth, backend="cv_bridge"), backend="numpy"), depth)
