"""sensor_msgs/Image <-> numpy, in one place, with cv_bridge where installed.

Two paths, one behaviour: the message header (encoding, size, step, data length) is
always checked here first, so a malformed message raises the same :class:`ImageError`
subclass whichever path converts the pixels.  cv_bridge (apt ROS installs) does the
conversion when it can be imported; otherwise the project's numpy conversion does
(PyPI wheels have no cv_bridge).  ``backend="numpy"`` forces the numpy path.

Every ImageError carries a short ``reason`` string ("encoding", "empty", "too_large",
"step", "data_length", "array") so a node can log once per cause and count rejects.
"""
from __future__ import annotations

from typing import Any

import numpy as np

try:  # apt ROS installs ship cv_bridge; the PyPI wheels do not.
    from cv_bridge import CvBridge as _CvBridge

    _BRIDGE: Any = _CvBridge()
except ImportError:
    _BRIDGE = None

HAVE_CV_BRIDGE = _BRIDGE is not None

COLOR_ENCODINGS = ("rgb8", "bgr8")
# Far above any camera we use (472x472) but small enough that a corrupt header cannot
# make us allocate gigabytes: 8192 x 8192 pixels.
DEFAULT_MAX_PIXELS = 8192 * 8192


class ImageError(ValueError):
    """A sensor_msgs/Image that cannot be converted; ``reason`` names the cause."""

    reason = "invalid"


class EncodingError(ImageError):
    reason = "encoding"


class EmptyImageError(ImageError):
    reason = "empty"


class ImageTooLargeError(ImageError):
    reason = "too_large"


class StepError(ImageError):
    reason = "step"


class DataLengthError(ImageError):
    reason = "data_length"


class ArrayError(ImageError):
    """A numpy array handed to a builder has the wrong shape or dtype."""

    reason = "array"


def _pick_backend(backend: str | None) -> str:
    if backend is None:
        return "cv_bridge" if HAVE_CV_BRIDGE else "numpy"
    if backend not in ("cv_bridge", "numpy"):
        raise ValueError(f"backend must be 'cv_bridge' or 'numpy', got {backend!r}")
    if backend == "cv_bridge" and not HAVE_CV_BRIDGE:
        raise ImportError("cv_bridge is not installed; use backend='numpy'")
    return backend


def check_image_header(msg, encodings: tuple[str, ...], channels: int, itemsize: int = 1,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Validate encoding, size, step and data length of `msg` without touching the pixels."""
    if msg.encoding not in encodings:
        raise EncodingError(f"unsupported image encoding {msg.encoding!r}; expected one of {list(encodings)}")
    h, w = int(msg.height), int(msg.width)
    if h == 0 or w == 0:
        raise EmptyImageError(f"image is empty ({w}x{h})")
    if h * w > max_pixels:
        raise ImageTooLargeError(f"image declares {w}x{h} = {h * w} pixels, above the cap of {max_pixels}")
    row = w * channels * itemsize
    step = int(msg.step)
    if step < row:
        raise StepError(f"step {step} is shorter than one row of {w} {msg.encoding} pixels ({row} bytes)")
    if step > 4 * row + 64:
        # Row padding exists (alignment) but never this much; a header this wrong is corrupt.
        raise StepError(f"step {step} is implausibly large for a row of {row} bytes")
    if len(msg.data) != step * h:
        raise DataLengthError(f"data has {len(msg.data)} bytes; {h} rows of step {step} need {step * h}")


def _rows(msg, channels: int, dtype) -> np.ndarray:
    """HxWxC view of the message data with any row padding cut off (numpy path)."""
    dt = np.dtype(dtype)
    if msg.is_bigendian and dt.itemsize > 1:
        dt = dt.newbyteorder(">")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    flat = np.frombuffer(msg.data, dtype=np.uint8).reshape(h, step)
    pixels = flat[:, : w * channels * dt.itemsize]
    return np.ascontiguousarray(pixels).view(dt).reshape(h, w, channels)


def image_msg_to_rgb(msg, max_pixels: int = DEFAULT_MAX_PIXELS, backend: str | None = None) -> np.ndarray:
    """An rgb8 or bgr8 Image as a contiguous HxWx3 uint8 RGB array (a copy, safe to keep)."""
    check_image_header(msg, COLOR_ENCODINGS, 3, max_pixels=max_pixels)
    if _pick_backend(backend) == "cv_bridge":
        return np.ascontiguousarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
    rgb = _rows(msg, 3, np.uint8)
    if msg.encoding == "bgr8":
        rgb = rgb[:, :, ::-1]
    return np.array(rgb, dtype=np.uint8, order="C", copy=True)


def image_msg_to_mono8(msg, max_pixels: int = DEFAULT_MAX_PIXELS, backend: str | None = None) -> np.ndarray:
    """A mono8 Image as HxW uint8."""
    check_image_header(msg, ("mono8",), 1, max_pixels=max_pixels)
    if _pick_backend(backend) == "cv_bridge":
        return np.ascontiguousarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="mono8"))
    return np.array(_rows(msg, 1, np.uint8)[:, :, 0], copy=True)


def image_msg_to_depth(msg, max_pixels: int = DEFAULT_MAX_PIXELS, backend: str | None = None) -> np.ndarray:
    """A 32FC1 Image as HxW float32 (native byte order)."""
    check_image_header(msg, ("32FC1",), 1, itemsize=4, max_pixels=max_pixels)
    if _pick_backend(backend) == "cv_bridge":
        return np.ascontiguousarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="32FC1"), dtype=np.float32)
    return np.array(_rows(msg, 1, np.float32)[:, :, 0], dtype=np.float32, copy=True)


def receipt_problem(msg, now_s: float, max_future_s: float, encodings: tuple[str, ...] = COLOR_ENCODINGS,
                    channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, str] | None:
    """Why an image is refused on receipt, as (cause, detail): a malformed header (cause: the
    ImageError's reason) or a stamp more than `max_future_s` ahead of `now_s` (cause FUTURE_STAMP:
    it would be copied onto every output and poison stamp pairing).  None if it is acceptable."""
    from rcan_common.stamps import FUTURE_STAMP, future_stamp_reason, stamp_to_s

    try:
        check_image_header(msg, encodings, channels, max_pixels=max_pixels)
    except ImageError as exc:
        return exc.reason, str(exc)
    future = future_stamp_reason(stamp_to_s(msg.header.stamp), now_s, max_future_s)
    return None if future is None else (FUTURE_STAMP, future)


def _check_array(arr, ndim: int, dtype, what: str, channels: int | None = None) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype != dtype:
        raise ArrayError(f"{what} must be {np.dtype(dtype).name}, got {a.dtype}")
    if a.ndim != ndim or (channels is not None and a.shape[2] != channels):
        shape = "HxWx3" if channels else "HxW"
        raise ArrayError(f"{what} must be {shape}, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ArrayError(f"{what} is empty: shape {a.shape}")
    return np.ascontiguousarray(a)


def _build(arr: np.ndarray, encoding: str, header, backend: str | None):
    from sensor_msgs.msg import Image

    if _pick_backend(backend) == "cv_bridge":
        msg = _BRIDGE.cv2_to_imgmsg(arr, encoding=encoding)
    else:
        msg = Image()
        msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
        msg.encoding = encoding
        msg.is_bigendian = int(arr.dtype.byteorder == ">")
        msg.step = int(arr.strides[0])
        msg.data = arr.tobytes()
    if header is not None:
        msg.header = header
    return msg


def rgb_to_image_msg(rgb, header=None, backend: str | None = None):
    """HxWx3 uint8 RGB -> Image rgb8 (header copied when given)."""
    return _build(_check_array(rgb, 3, np.uint8, "rgb image", channels=3), "rgb8", header, backend)


def mono8_to_image_msg(mono, header=None, backend: str | None = None):
    """HxW uint8 -> Image mono8."""
    return _build(_check_array(mono, 2, np.uint8, "mono8 image"), "mono8", header, backend)


def depth_to_image_msg(depth, header=None, backend: str | None = None):
    """HxW float32 (metres) -> Image 32FC1."""
    return _build(_check_array(depth, 2, np.float32, "depth image"), "32FC1", header, backend)


def camera_info_msg(k, height: int, width: int, header=None):
    """sensor_msgs/CameraInfo of a pinhole camera without distortion: K (3x3), R = I, P = [K | 0]."""
    from sensor_msgs.msg import CameraInfo

    k = np.asarray(k, dtype=np.float64).reshape(3, 3)
    msg = CameraInfo()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(height), int(width)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = [float(v) for v in k.reshape(-1)]
    msg.r = [float(v) for v in np.eye(3).reshape(-1)]
    msg.p = [float(v) for v in np.hstack([k, np.zeros((3, 1))]).reshape(-1)]
    return msg
