"""Camera frame sources (plain Python, no ROS): a device, a video file, or a folder of images.

``open_source(spec)``:
* ``"0"``, ``"1"``, ... -> OpenCV device index (a real camera),
* a directory -> its images (png/jpg/jpeg/bmp) in name order, looped; the synthetic
  source used by tests and demos,
* any other path -> a video file read by OpenCV (looped when ``loop``).

Every source returns HxWx3 uint8 RGB; :func:`center_crop_resize` makes it square at the
policy's resolution, and :func:`crop_resize_intrinsics` moves the camera matrix along.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class SourceError(RuntimeError):
    """The camera source cannot be opened or read; the message names it."""


class FolderSource:
    """Images of a directory in name order, read on demand (so huge folders cost nothing)."""

    def __init__(self, folder: Path, loop: bool = True):
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
        self.loop = loop
        self._next = 0
        self.name = str(folder)

    def read(self) -> np.ndarray | None:
        import cv2

        if self._next >= len(self.files):
            if not self.loop:
                return None
            self._next = 0
        path = self.files[self._next]
        self._next += 1
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SourceError(f"cannot decode image {path}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        pass


class CaptureSource:
    """An OpenCV VideoCapture: a device index or a video file."""

    def __init__(self, target: int | str, loop: bool = True):
        import cv2

        self._cap = cv2.VideoCapture(target)
        self.name = f"camera device {target}" if isinstance(target, int) else f"video {target}"
        if not self._cap.isOpened():
            raise SourceError(f"cannot open {self.name}")
        self._is_file = not isinstance(target, int)
        self.loop = loop

    def read(self) -> np.ndarray | None:
        import cv2

        ok, bgr = self._cap.read()
        if not ok and self._is_file and self.loop:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._cap.read()
        if not ok:
            if self._is_file:
                return None
            raise SourceError(f"{self.name} returned no frame")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self._cap.release()


def open_source(spec: str, loop: bool = True) -> FolderSource | CaptureSource:
    spec = spec.strip()
    if not spec:
        raise SourceError("camera source is empty; give a device index, a video file or a folder of images")
    if spec.isdigit():
        return CaptureSource(int(spec), loop)
    path = Path(spec).expanduser()
    if path.is_dir():
        return FolderSource(path, loop)
    if path.is_file():
        return CaptureSource(str(path), loop)
    raise SourceError(f"camera source {spec!r} is neither a device index nor an existing file or folder")


def center_crop_box(height: int, width: int) -> tuple[int, int, int]:
    """(top, left, side) of the largest centred square."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def center_crop_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Largest centred square of `rgb`, resized to size x size (area filter when shrinking)."""
    import cv2

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise SourceError(f"frame must be HxWx3, got shape {rgb.shape}")
    top, left, side = center_crop_box(*rgb.shape[:2])
    square = rgb[top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(square)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interp)


def crop_resize_intrinsics(k: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """Camera matrix of the source frame -> camera matrix after center_crop_resize."""
    top, left, side = center_crop_box(height, width)
    s = size / side
    out = np.array(k, dtype=np.float64).reshape(3, 3).copy()
    out[0, 0] *= s
    out[1, 1] *= s
    out[0, 1] *= s
    # OpenCV resizes with pixel centres aligned: x' = (x + 0.5) * s - 0.5.
    out[0, 2] = (out[0, 2] - left + 0.5) * s - 0.5
    out[1, 2] = (out[1, 2] - top + 0.5) * s - 0.5
    out[2] = (0.0, 0.0, 1.0)
    return out


def intrinsics_from_fov(size: int, fov_deg: float) -> np.ndarray:
    """Square pinhole camera matrix of a size x size image with the given field of view."""
    f = 0.5 * size / np.tan(np.radians(fov_deg) / 2.0)
    c = (size - 1) / 2.0
    return np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])
