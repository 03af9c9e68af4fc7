"""Storage layer for paired RCAN data: sharded, compressed, appendable, crash-safe HDF5.

Why HDF5 (h5py) rather than zarr
--------------------------------
* One file per shard is one unit of completion: a worker writes ``.shard-00007.h5.<pid>.tmp``
  and only after the last episode is flushed and fsynced is it renamed (atomic ``os.replace``)
  to ``shard-00007.h5``.  A kill -9 or a full disk therefore loses at most the shard in
  progress, and a reader never sees half a shard.  zarr's directory-of-chunks layout has no
  such single atomic commit point.
* h5py is already a dependency, is readable from C/Matlab/``h5dump``, and the gzip filter
  needs no plugin.  ``lzf`` (faster, h5py-only) and ``none`` are available too.
* Images are chunked one frame per chunk, so random access (shuffled training) decompresses
  exactly the frame it reads.

Appendable: a dataset grows by adding shards (``rcan datagen --resume --episodes <more>``);
existing shards are never rewritten, except a trailing partial shard whose episode range grows.

Layout of one shard (N frames, images H x W)::

    randomized          (N, H, W, 3) uint8    randomized-domain RGB
    canonical           (N, H, W, 3) uint8    canonical-domain RGB of the same frozen state
    segmentation        (N, H, W)    uint8    class ids (rcan_common.classes), shared by both renders
    depth               (N, H, W)    float32  metric depth of the canonical render
    episode             (N,)         int64    global episode index
    step                (N,)         int32    step within the episode (0-based)
    episode_seed        (N,)         int64    seed passed to env.reset
    randomization_seed  (N,)         int64    seed of this frame's randomization
    state               (N, 2)       float32  [gripper_open, gripper_height] before the action
    action              (N, 8)       float32  action taken at this step (rcan_common.action layout)
    reward              (N,)         float32  reward received for that action
    terminal            (N,)         uint8    1 on the last recorded step of an episode

    attrs: format, format_version, shard, episode_start, episode_stop, num_frames,
           image_size, fingerprint (of the generating config), complete,
           episode_object_ids (JSON list: the object ids of each episode)

This module is the format's only reader as well as its writer: `read_frames` loads the
complete shards of a dataset (generator training, rcan_perception.data), `read_shard_info`
and `shard_fingerprint` read a shard's attributes, `load_manifest` (strict, for datagen) and
`read_manifest` (lenient, for model cards) the manifest.
"""
from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from rcan_common.io import OutputError, atomic_write_json

FORMAT = "rcan-paired-hdf5"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

# name -> (per-frame shape given image size S, dtype)
IMAGE_FIELDS = ("randomized", "canonical", "segmentation", "depth")


def frame_schema(image_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    s = image_size
    return {
        "randomized": ((s, s, 3), np.dtype(np.uint8)),
        "canonical": ((s, s, 3), np.dtype(np.uint8)),
        "segmentation": ((s, s), np.dtype(np.uint8)),
        "depth": ((s, s), np.dtype(np.float32)),
        "episode": ((), np.dtype(np.int64)),
        "step": ((), np.dtype(np.int32)),
        "episode_seed": ((), np.dtype(np.int64)),
        "randomization_seed": ((), np.dtype(np.int64)),
        "state": ((2,), np.dtype(np.float32)),
        "action": ((8,), np.dtype(np.float32)),
        "reward": ((), np.dtype(np.float32)),
        "terminal": ((), np.dtype(np.uint8)),
    }


class DataError(ValueError):
    """The dataset is missing, empty or malformed; the message names the path."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def is_disk_full(exc: BaseException) -> bool:
    # HDF5 often reports ENOSPC as a bare OSError whose text carries the reason, without errno.
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc)


@dataclass(frozen=True)
class ShardInfo:
    """What a completed shard holds; recorded in the manifest."""

    index: int
    file: str
    episode_start: int
    episode_stop: int
    num_frames: int
    episode_frames: tuple[int, ...]
    bytes: int
    episode_object_ids: tuple[tuple[int, ...], ...] = ()  # random_urdfs ids of each episode's objects

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "file": self.file, "episode_start": self.episode_start,
                "episode_stop": self.episode_stop, "num_frames": self.num_frames,
                "episode_frames": list(self.episode_frames), "bytes": self.bytes,
                "episode_object_ids": [list(ids) for ids in self.episode_object_ids]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ShardInfo":
        return cls(int(d["index"]), str(d["file"]), int(d["episode_start"]), int(d["episode_stop"]),
                   int(d["num_frames"]), tuple(int(n) for n in d["episode_frames"]), int(d["bytes"]),
                   tuple(tuple(int(i) for i in ids) for ids in d.get("episode_object_ids", ())))


class ShardWriter:
    """Writes one shard under a temporary name; `commit()` makes it visible atomically.

    Use as a context manager: leaving the block with an exception removes the temp file.
    """

    def __init__(self, root: str | Path, index: int, episode_start: int, episode_stop: int,
                 image_size: int, fingerprint: str, compression: str = "gzip", compression_level: int = 4):
        if compression not in ("gzip", "lzf", "none"):
            raise ValueError(f"unknown compression {compression!r}; use gzip, lzf or none")
        self.root = Path(root)
        self.index = index
        self.final_path = self.root / shard_name(index)
        self.tmp_path = self.root / f".{shard_name(index)}.{os.getpid()}.tmp"
        self.episode_start, self.episode_stop = episode_start, episode_stop
        self.image_size = image_size
        self.schema = frame_schema(image_size)
        self._episode_frames: list[int] = []
        self._episode_objects: list[tuple[int, ...]] = []
        self._n = 0
        self._committed = False
        filters: dict[str, Any] = {}
        if compression == "gzip":
            filters = {"compression": "gzip", "compression_opts": compression_level, "shuffle": True}
        elif compression == "lzf":
            filters = {"compression": "lzf", "shuffle": True}
        try:
            self._f = h5py.File(self.tmp_path, "w")
            for name, (shape, dtype) in self.schema.items():
                chunks = (1, *shape) if name in IMAGE_FIELDS else (1024, *shape)
                self._f.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                       chunks=chunks, **filters)
            self._f.attrs.update({
                "format": FORMAT, "format_version": FORMAT_VERSION, "shard": index,
                "episode_start": episode_start, "episode_stop": episode_stop, "image_size": image_size,
                "fingerprint": fingerprint, "complete": False, "num_frames": 0,
            })
        except OSError as exc:
            self.abort()
            raise self._wrap(exc) from exc

    def _wrap(self, exc: OSError) -> OSError:
        if is_disk_full(exc):
            return OutputError(errno.ENOSPC, f"disk full while writing shard {self.final_path.name} in "
                                             f"{self.root}; completed shards and the manifest are intact: "
                                             f"free some space and rerun with --resume")
        return exc

    def append_episode(self, frames: Mapping[str, np.ndarray], object_ids: Sequence[int] = ()) -> None:
        """Append all frames of one episode (every schema field, leading dim = steps) and the ids
        of the objects in its scene."""
        missing = sorted(set(self.schema) - set(frames))
        extra = sorted(set(frames) - set(self.schema))
        if missing or extra:
            raise ValueError(f"episode record fields mismatch: missing {missing}, unexpected {extra}")
        n = len(frames["step"])
        if n == 0:
            raise ValueError("an episode must have at least one frame")
        arrays = {}
        for name, (shape, dtype) in self.schema.items():
            a = np.asarray(frames[name])
            if a.shape != (n, *shape):
                raise ValueError(f"field '{name}' has shape {a.shape}, expected {(n, *shape)}")
            arrays[name] = a.astype(dtype, copy=False)
        try:
            for name, a in arrays.items():
                ds = self._f[name]
                ds.resize(self._n + n, axis=0)
                ds[self._n:self._n + n] = a
        except OSError as exc:
            self.abort()
            raise self._wrap(exc) from exc
        self._n += n
        self._episode_frames.append(n)
        self._episode_objects.append(tuple(int(i) for i in object_ids))

    def commit(self) -> ShardInfo:
        """Flush, fsync and atomically rename the shard to its final name."""
        expected = self.episode_stop - self.episode_start
        if len(self._episode_frames) != expected:
            self.abort()
            raise ValueError(f"shard {self.index} holds {len(self._episode_frames)} episodes, expected {expected}")
        try:
            self._f.attrs["num_frames"] = self._n
            self._f.attrs["episode_object_ids"] = json.dumps([list(ids) for ids in self._episode_objects])
            self._f.attrs["complete"] = True
            self._f.flush()
            self._f.close()
            with open(self.tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp_path, self.final_path)
            self._committed = True
            dir_fd = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            self.abort()
            raise self._wrap(exc) from exc
        return ShardInfo(self.index, self.final_path.name, self.episode_start, self.episode_stop, self._n,
                         tuple(self._episode_frames), self.final_path.stat().st_size, tuple(self._episode_objects))

    def abort(self) -> None:
        if getattr(self, "_committed", False):
            return
        f = getattr(self, "_f", None)
        if f is not None:
            try:
                f.close()
            except Exception:  # closing a handle on a full disk may fail again; the unlink is what matters
                pass
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:  # an exception, or a block that never committed: nothing half-done stays
            self.abort()


def read_shard_info(path: str | Path) -> ShardInfo:
    """Read a committed shard's summary from its own attributes (used to adopt orphaned shards)."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        a = dict(f.attrs)
        if a.get("format") != FORMAT or not bool(a.get("complete", False)):
            raise ValueError(f"{path} is not a complete {FORMAT} shard")
        ep = f["episode"][:]
    starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]]) if len(ep) else np.zeros(0, int)
    counts = np.diff(np.r_[starts, len(ep)])
    objs = json.loads(a.get("episode_object_ids", "[]"))
    return ShardInfo(int(a["shard"]), path.name, int(a["episode_start"]), int(a["episode_stop"]),
                     int(a["num_frames"]), tuple(int(c) for c in counts), path.stat().st_size,
                     tuple(tuple(int(i) for i in ids) for ids in objs))


def shard_fingerprint(path: str | Path) -> str:
    with h5py.File(path, "r") as f:
        return str(f.attrs.get("fingerprint", ""))


def load_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no {MANIFEST} in {root}: not an rcan paired dataset") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an {FORMAT} manifest (format={data.get('format')!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {data.get('format_version')}, this code reads {FORMAT_VERSION}")
    return data


def write_manifest(root: str | Path, manifest: dict[str, Any]) -> None:
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        atomic_write_json(Path(root) / MANIFEST, manifest)
    except OSError as exc:
        if is_disk_full(exc):
            raise OutputError(errno.ENOSPC, f"disk full while updating {Path(root) / MANIFEST}; the previous "
                                            f"manifest is intact: free some space and rerun with --resume") from exc
        raise


# --------------------------------------------------------------------------------------- reading


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The dataset's manifest.json as written (for model cards), or {} when it has none or it is unreadable."""
    try:
        return json.loads((Path(root) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def shard_paths(root: str | Path) -> list[Path]:
    """Shards listed in the manifest (only fully written shards are listed), else every shard-*.h5, in order."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset directory not found: {root}")
    try:
        listed = json.loads((root / MANIFEST).read_text())["shards"]
        files = sorted(root / s["file"] for s in listed)
    except (OSError, ValueError, KeyError, TypeError):
        files = sorted(root.glob("shard-*.h5"))
    if not files:
        raise DataError(f"no shard-*.h5 files in {root}: not an rcan paired dataset (run `rcan datagen`)")
    return files


def read_frames(root: str | Path, fields: Sequence[str] | None = None, max_frames: int = 0) -> dict[str, np.ndarray]:
    """The frames of the complete shards of dataset `root`, in shard order, as one array per field
    (`fields`: names from the layout above, default all); ``max_frames`` > 0 caps the count."""
    names = list(fields) if fields is not None else list(frame_schema(1))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
    total = 0
    for path in shard_paths(root):
        try:
            with h5py.File(path, "r") as f:
                if not bool(f.attrs.get("complete", False)):
                    continue
                n = int(f[names[0]].shape[0])
                if max_frames:
                    n = min(n, max_frames - total)
                for k in names:
                    parts[k].append(f[k][:n])
        except (OSError, KeyError) as exc:
            raise DataError(f"cannot read shard {path}: {exc}") from exc
        total += n
        if max_frames and total >= max_frames:
            break
    if total == 0:
        raise DataError(f"dataset {root} holds no complete frames")
    return {k: np.concatenate(v) for k, v in parts.items()}
