"""The graspable objects: pybullet_data's 1,000 procedural `random_urdfs` with a fixed split.

The split is a seeded hash of the object id (about 90% train / 10% test), fixed forever so
test objects are never seen in training, whichever machine or numpy version runs it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

NUM_OBJECTS = 1000
SPLITS = ("train", "test")


def _is_test(object_id: int) -> bool:
    digest = hashlib.sha256(f"rcan-object-split-v1:{object_id:03d}".encode()).digest()
    return digest[0] % 10 == 0


TEST_IDS: tuple[int, ...] = tuple(i for i in range(NUM_OBJECTS) if _is_test(i))
TRAIN_IDS: tuple[int, ...] = tuple(i for i in range(NUM_OBJECTS) if not _is_test(i))


class UnknownObjectError(ValueError):
    """An object id or split name that does not exist."""


def object_ids(split: str) -> tuple[int, ...]:
    """The fixed ids of `split` ("train" or "test")."""
    if split == "train":
        return TRAIN_IDS
    if split == "test":
        return TEST_IDS
    raise UnknownObjectError(f"unknown object split {split!r}; expected one of {SPLITS}")


def data_root() -> Path:
    import pybullet_data

    return Path(pybullet_data.getDataPath())


def urdf_path(object_id: int) -> Path:
    """Path of random_urdfs/NNN/NNN.urdf; an id outside 0..999 or a missing file is an error."""
    if isinstance(object_id, bool) or not isinstance(object_id, int):
        raise UnknownObjectError(f"object id must be an int in 0..{NUM_OBJECTS - 1}, got {object_id!r}")
    if not 0 <= object_id < NUM_OBJECTS:
        raise UnknownObjectError(f"unknown object id {object_id}; valid ids are 0..{NUM_OBJECTS - 1}")
    path = data_root() / "random_urdfs" / f"{object_id:03d}" / f"{object_id:03d}.urdf"
    if not path.is_file():
        raise UnknownObjectError(f"object {object_id} has no URDF at {path} (is pybullet_data complete?)")
    return path
