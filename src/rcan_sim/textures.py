"""Texture bank: >= 5,000 distinct procedural textures, each a pure function of its index.

Paper 4.1 draws textures "from a set of over 5,000 images".  We generate them instead of
downloading: the index seeds the choice of pattern family (value noise, stripes, checks,
gradients, blobs, marble, dots, plaid, cells) and its parameters, so texture i is the same
on every machine.  Indices [0, TRAIN_SIZE) are for training; [TRAIN_SIZE, BANK_SIZE) are
held out (the "held-out" domain) and never used by training domains.

Nothing is generated at import: `TextureBank.image(i)` builds one texture on demand
(memoised), and `TextureBank.png_path(i)` writes it once to an on-disk cache, because
pybullet's `loadTexture` only reads files.  A folder of user images can replace the
procedural bank (`TextureBank(folder=...)`): its images in file-name order, the last
`held_out_fraction` of them (default 10 %) held out.  The PNG cache of a folder is keyed on the
folder's contents (`folder_digest`), so an edited image is never served stale and every process
shares one cache directory.
"""
from __future__ import annotations

import colorsys
import functools
import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np

BANK_SIZE = 6000
TRAIN_SIZE = 5400
HELD_OUT_SIZE = BANK_SIZE - TRAIN_SIZE
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
FAMILIES = ("noise", "stripes", "checks", "gradient", "blobs", "marble", "dots", "plaid", "cells")


class TextureError(ValueError):
    """Bad texture index, size or folder."""


DEFAULT_HELD_OUT_FRACTION = 0.1


def folder_images(folder: str | Path) -> list[Path]:
    """The texture images of `folder` (top level, IMAGE_SUFFIXES), sorted by file name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


_DIGESTS: dict[tuple, str] = {}


def folder_digest(folder: str | Path) -> str:
    """sha256 (hex) of a texture folder's contents: every image's file name, size and bytes, in
    file-name order (files that are not images do not count).  The same on every machine and in
    every process, whatever the folder's path or the files' times.

    Memoised per process on the files' (name, size, mtime_ns), so an unchanged folder is read once
    per process; any change to those re-reads it."""
    folder = Path(folder)
    files = folder_images(folder)
    stats = [(p.name, p.stat()) for p in files]
    signature = (str(folder.resolve()), tuple((n, st.st_size, st.st_mtime_ns) for n, st in stats))
    digest = _DIGESTS.get(signature)
    if digest is None:
        h = hashlib.sha256(b"rcan-texture-folder-v1\0")
        for path in files:
            data = path.read_bytes()
            h.update(f"{path.name}\0{len(data)}\0".encode())
            h.update(data)
        digest = h.hexdigest()
        if len(_DIGESTS) >= 64:
            _DIGESTS.clear()
        _DIGESTS[signature] = digest
    return digest


def default_cache_dir() -> Path:
    # an empty $RCAN_TEXTURE_CACHE counts as unset: Path("") would litter the working directory
    return Path(os.environ.get("RCAN_TEXTURE_CACHE") or Path(tempfile.gettempdir()) / "rcan_textures")


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random colours (float 0..1) with varied hue, saturation and value."""
    cols = []
    for _ in range(n):
        h, s, v = rng.random(), rng.uniform(0.1, 1.0), rng.uniform(0.15, 1.0)
        cols.append(colorsys.hsv_to_rgb(h, s, v))
    return np.array(cols)


def _value_noise(rng: np.random.Generator, size: int, octaves: int, base: int) -> np.ndarray:
    """Fractal value noise in [0, 1] (bilinear-upsampled random grids)."""
    import cv2

    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = min(size, base * 2 ** o)
        grid = rng.random((cells, cells)).astype(np.float32)
        out += amp * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    out /= total
    return np.clip((out - out.min()) / max(float(np.ptp(out)), 1e-6), 0, 1)


def _mix(t: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Map t in [0,1] (HxW) through a piecewise-linear colour ramp."""
    pos = np.linspace(0, 1, len(cols))
    return np.stack([np.interp(t, pos, cols[:, c]) for c in range(3)], axis=-1)


def procedural_texture(index: int, size: int = 128) -> np.ndarray:
    """Texture `index` of the procedural bank as size x size x 3 uint8."""
    rng = np.random.default_rng([0x5CA7, int(index)])
    family = FAMILIES[int(rng.integers(len(FAMILIES)))]
    cols = _palette(rng, int(rng.integers(2, 5)))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    if family == "noise":
        t = _value_noise(rng, size, int(rng.integers(1, 5)), int(rng.integers(2, 9)))
    elif family == "stripes":
        freq = rng.uniform(2, 24)
        t = (np.sin(2 * np.pi * freq * u + rng.uniform(0, 6.3)) > rng.uniform(-0.6, 0.6)).astype(np.float32)
    elif family == "checks":
        n = rng.uniform(2, 16)
        t = ((np.floor(u * n) + np.floor(v * n)) % 2).astype(np.float32)
    elif family == "gradient":
        if rng.random() < 0.5:
            t = u - u.min()
        else:
            cx, cy = rng.random(2)
            t = np.hypot(xx - cx, yy - cy)
        t = t / max(float(t.max()), 1e-6)
    elif family == "blobs":
        t = np.zeros((size, size), np.float32)
        for _ in range(int(rng.integers(3, 30))):
            cx, cy, r = rng.random(), rng.random(), rng.uniform(0.03, 0.25)
            t = np.maximum(t, np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)) * rng.uniform(0.3, 1))
    elif family == "marble":
        noise = _value_noise(rng, size, 4, int(rng.integers(2, 6)))
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (u * rng.uniform(1, 8) + noise * rng.uniform(1, 5)))
    elif family == "dots":
        n = rng.uniform(3, 20)
        fu, fv = (u * n) % 1 - 0.5, (v * n) % 1 - 0.5
        t = (np.hypot(fu, fv) < rng.uniform(0.1, 0.45)).astype(np.float32)
    elif family == "plaid":
        f1, f2 = rng.uniform(2, 12, size=2)
        t = 0.5 * (np.sin(2 * np.pi * f1 * u) > 0) + 0.5 * (np.sin(2 * np.pi * f2 * v) > 0)
    else:  # cells: nearest random seed point, coloured by seed
        pts = rng.random((int(rng.integers(4, 40)), 2)).astype(np.float32)
        d = (xx[..., None] - pts[:, 0]) ** 2 + (yy[..., None] - pts[:, 1]) ** 2
        t = rng.random(len(pts))[np.argmin(d, axis=-1)]
    img = _mix(np.asarray(t, np.float32), cols)
    # Fine grain so even flat families are not perfectly uniform.
    img += rng.normal(0, rng.uniform(0, 0.06), img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


class TextureBank:
    """Deterministic textures by index: procedural by default, or images from `folder`.

    `train_indices` and `held_out_indices` are disjoint ranges of valid indices, except for a
    folder with held_out_fraction=0, where both are every image.  A folder's held-out images are
    its last max(1, int(n * held_out_fraction)) by file name (n images; at least one stays for
    training); the procedural bank always holds out [TRAIN_SIZE, BANK_SIZE).
    """

    def __init__(self, size: int = 128, folder: str | Path | None = None, cache_dir: str | Path | None = None,
                 held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION):
        if not isinstance(size, int) or not 8 <= size <= 1024:
            raise TextureError(f"texture size must be an int in 8..1024, got {size!r}")
        if not 0.0 <= held_out_fraction <= 0.9:
            raise TextureError(f"held_out_fraction must be in [0, 0.9], got {held_out_fraction!r}")
        self.size = size
        self.folder = Path(folder) if folder is not None else None
        self.folder_sha256: str | None = None
        if self.folder is None:
            self._files: list[Path] = []
            self._count = BANK_SIZE
            self.train_indices = range(0, TRAIN_SIZE)
            self.held_out_indices = range(TRAIN_SIZE, BANK_SIZE)
            key = f"procedural-s{size}"
        else:
            if not self.folder.is_dir():
                raise TextureError(f"texture folder {self.folder} does not exist or is not a directory")
            self._files = folder_images(self.folder)
            n = self._count = len(self._files)
            if n < 2:
                raise TextureError(
                    f"texture folder {self.folder} holds {n} images ({'/'.join(IMAGE_SUFFIXES)}); "
                    "need at least 2 (training and held-out textures)")
            if held_out_fraction == 0:  # the user's choice: every image for both splits
                self.train_indices = self.held_out_indices = range(0, n)
            else:
                n_held = min(n - 1, max(1, int(n * held_out_fraction)))
                self.train_indices = range(0, n - n_held)
                self.held_out_indices = range(n - n_held, n)
            # Keyed on the contents, not the path: stable across processes and machines, and an
            # edited image gets a fresh directory instead of its stale PNG.
            self.folder_sha256 = folder_digest(self.folder)
            key = f"folder-{self.folder_sha256[:16]}-s{size}"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._png_dir = self.cache_dir / key
        # A small memo: pybullet reads textures from png_path's files, so image() mostly runs once per
        # index and cache directory; 512 memoised 128 px images held 25 MB for nothing.
        self.image = functools.lru_cache(maxsize=16)(self._image)

    def __len__(self) -> int:
        return self._count

    def indices(self, held_out: bool) -> range:
        return self.held_out_indices if held_out else self.train_indices

    def _check(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= int(index) < len(self):
            raise TextureError(f"texture index must be an int in 0..{len(self) - 1}, got {index!r}")
        return int(index)

    def _image(self, index: int) -> np.ndarray:
        index = self._check(index)
        if self.folder is None:
            return procedural_texture(index, self.size)
        import cv2

        img = cv2.imread(str(self._files[index]), cv2.IMREAD_COLOR)
        if img is None:
            raise TextureError(f"cannot read texture image {self._files[index]}")
        return cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)[..., ::-1].copy()

    def png_path(self, index: int) -> Path:
        """A PNG file holding texture `index` (written once, atomically, then reused)."""
        index = self._check(index)
        path = self._png_dir / f"{index:05d}.png"
        if not path.is_file():
            from PIL import Image

            from rcan_common.io import atomic_write_bytes

            buf = io.BytesIO()
            Image.fromarray(self.image(index)).save(buf, format="PNG")
            atomic_write_bytes(path, buf.getvalue())
        return path
