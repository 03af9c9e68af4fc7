"""The graspable objects: pybullet_data's 1,000 procedural `random_urdfs` with a fixed split.

The split is a seeded hash of the object id (about 90% train / 10% test), fixed forever so
test objects are never seen in training, whichever machine or numpy version runs it.
"""
from __future__ import annotations

import functools
import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NUM_OBJECTS = 1000
SPLITS = ("train", "test")


def _is_test(object_id: int) -> bool:
    digest = hashlib.sha256(f"rcan-object-split-v1:{object_id:03d}".encode()).digest()
    return digest[0] % 10 == 0


# pybullet_data's random_urdfs/168/168.obj has only NaN vertices; it is in neither split.
BROKEN_IDS: tuple[int, ...] = (168,)
TEST_IDS: tuple[int, ...] = tuple(i for i in range(NUM_OBJECTS) if _is_test(i) and i not in BROKEN_IDS)
TRAIN_IDS: tuple[int, ...] = tuple(i for i in range(NUM_OBJECTS) if not _is_test(i) and i not in BROKEN_IDS)


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
    """Path of random_urdfs/NNN/NNN.urdf; an id outside 0..999, a broken or a missing file is an error."""
    if isinstance(object_id, bool) or not isinstance(object_id, int):
        raise UnknownObjectError(f"object id must be an int in 0..{NUM_OBJECTS - 1}, got {object_id!r}")
    if not 0 <= object_id < NUM_OBJECTS:
        raise UnknownObjectError(f"unknown object id {object_id}; valid ids are 0..{NUM_OBJECTS - 1}")
    if object_id in BROKEN_IDS:
        raise UnknownObjectError(f"object {object_id} is broken in pybullet_data (NaN mesh) and cannot be used")
    path = data_root() / "random_urdfs" / f"{object_id:03d}" / f"{object_id:03d}.urdf"
    if not path.is_file():
        raise UnknownObjectError(f"object {object_id} has no URDF at {path} (is pybullet_data complete?)")
    return path


OBJECT_HULL_POINTS = 40


@dataclass(frozen=True)
class ObjectModel:
    """What the world needs to build an object body from its URDF."""

    object_id: int
    mesh_path: Path
    scale: float
    mass: float
    lateral_friction: float
    hull_points: np.ndarray  # (<= OBJECT_HULL_POINTS, 3) scaled vertices spanning the mesh


@functools.lru_cache(maxsize=1024)
def object_model(object_id: int) -> ObjectModel:
    """Parse random_urdfs/NNN (mesh, scale, mass, friction) and pick a reduced collision hull."""
    path = urdf_path(object_id)
    root = ET.parse(path).getroot()
    mesh = root.find("./link/visual/geometry/mesh")
    if mesh is None:
        raise UnknownObjectError(f"object {object_id}: {path} has no visual mesh")
    scale = float(mesh.get("scale", "1 1 1").split()[0])
    mass_el = root.find("./link/inertial/mass")
    friction_el = root.find("./link/contact/lateral_friction")
    mesh_path = path.parent / mesh.get("filename")
    verts = np.array([[float(v) for v in line.split()[1:4]] for line in mesh_path.read_text().splitlines()
                      if line.startswith("v ")]) * scale
    if len(verts) < 4 or not np.isfinite(verts).all():
        raise UnknownObjectError(f"object {object_id}: {mesh_path} has non-finite or too few vertices")
    return ObjectModel(object_id, mesh_path, scale, float(mass_el.get("value")) if mass_el is not None else 0.1,
                       float(friction_el.get("value")) if friction_el is not None else 1.0,
                       _farthest_points(verts, OBJECT_HULL_POINTS))


OBJECT_UV_SCALE = 0.04  # metres per texture repeat on objects


@functools.lru_cache(maxsize=None)
def object_hull_vertices(object_id: int) -> list[list[float]]:
    """`object_model(id).hull_points` as the nested list pybullet's createCollisionShape takes,
    built once per object and kept for the life of the process.

    pybullet (3.2.x) leaks a reference to every per-vertex sequence it is handed, so a fresh
    ``.tolist()`` per call is never freed; handing it the same kept list leaks nothing (at
    most ~1,000 objects x 40 points)."""
    return object_model(object_id).hull_points.tolist()


@functools.lru_cache(maxsize=16)
def object_visual_mesh(object_id: int):
    """The object's visual mesh, scaled, with box-projected UVs (rcan_sim.meshes.UVMesh).
    Only needed to write `object_visual_obj`'s file, hence the small cache."""
    from rcan_sim.meshes import box_uv_mesh, read_obj

    model = object_model(object_id)
    v, t, n = read_obj(model.mesh_path)
    return box_uv_mesh(v * model.scale, t, n, OBJECT_UV_SCALE)


@functools.lru_cache(maxsize=None)
def _visual_digest(object_id: int) -> str:
    from rcan_sim.meshes import FORMAT_VERSION

    model = object_model(object_id)
    return hashlib.sha256(f"{FORMAT_VERSION}:obj-17g:{OBJECT_UV_SCALE!r}:{model.scale!r}:".encode()
                          + model.mesh_path.read_bytes()).hexdigest()[:12]


def object_visual_obj(object_id: int, cache_dir: Path) -> Path:
    """An OBJ file of `object_visual_mesh(id)` (written once into `cache_dir`, then reused), for
    pybullet's createVisualShape(fileName=...).

    Handing pybullet the mesh as vertex lists instead leaks every list (see
    `object_hull_vertices`): ~0.6 MB per object per episode.  The file keeps full double
    precision, so renders are pixel-identical to the vertex-list route.  Its name carries a
    digest of the source mesh, scale and UV settings, so a changed source is never served stale."""
    from rcan_sim.meshes import write_obj

    path = Path(cache_dir) / "objects_uv" / f"{object_id:03d}-{_visual_digest(object_id)}.obj"
    if not path.is_file():
        write_obj(object_visual_mesh(object_id), path, exact=True)
    return path


def _farthest_points(points: np.ndarray, k: int) -> np.ndarray:
    """Greedy farthest-point subset: keeps the extremes, so the hull stays close to the mesh's."""
    if len(points) <= k:
        return points
    chosen = [int(np.argmax(np.linalg.norm(points - points.mean(0), axis=1)))]
    dist = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(k - 1):
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.linalg.norm(points - points[chosen[-1]], axis=1))
    return points[chosen]
