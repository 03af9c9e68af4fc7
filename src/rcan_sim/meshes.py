"""Meshes with texture coordinates, so bank textures show as patterns, not flat colours.

The iiwa links (OBJ/STL) and the random_urdfs objects ship without UVs; pybullet then
samples one texel for the whole mesh.  We give every triangle box-projected UVs (project
on the plane facing its normal; `uv_scale` metres per texture repeat), un-indexing the mesh
so each face keeps its own coordinates.  For the arm, `uv_arm_sdf()` writes a copy of
kuka_with_gripper2.sdf whose visuals point at UV'd OBJ files and whose collision meshes are
the originals, so physics is unchanged.
"""
from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARM_SDF = Path("kuka_iiwa") / "kuka_with_gripper2.sdf"
ARM_UV_SCALE = 0.12
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class UVMesh:
    """Un-indexed triangle mesh: 3 corners per triangle, each with position, normal and UV."""

    vertices: np.ndarray  # (3T, 3)
    normals: np.ndarray  # (3T, 3)
    uvs: np.ndarray  # (3T, 2)

    @property
    def indices(self) -> np.ndarray:
        return np.arange(len(self.vertices), dtype=np.int64)


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(vertices (V,3), triangles (T,3) vertex ids, per-corner normals (T,3,3) or None)."""
    verts, normals, tris, tri_normals = [], [], [], []
    for line in Path(path).read_text().splitlines():
        if line.startswith("v "):
            verts.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("vn "):
            normals.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("f "):
            corners = [c.split("/") for c in line.split()[1:]]
            vid = [int(c[0]) - 1 for c in corners]
            nid = [int(c[2]) - 1 if len(c) > 2 and c[2] else -1 for c in corners]
            for k in range(1, len(vid) - 1):  # fan-triangulate polygons
                tris.append([vid[0], vid[k], vid[k + 1]])
                tri_normals.append([nid[0], nid[k], nid[k + 1]])
    v = np.array(verts, dtype=np.float64)
    t = np.array(tris, dtype=np.int64)
    tn = np.array(tri_normals, dtype=np.int64)
    if len(t) == 0:
        raise ValueError(f"{path}: no faces")
    n = np.array(normals, dtype=np.float64)[tn] if normals and (tn >= 0).all() else None
    return v, t, n


def read_stl(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Binary or ASCII STL -> (vertices (3T,3), triangles (T,3))."""
    data = Path(path).read_bytes()
    count = struct.unpack_from("<I", data, 80)[0] if len(data) >= 84 else -1
    if count >= 0 and len(data) == 84 + 50 * count:
        rec = np.frombuffer(data, dtype=np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]),
                            count=count, offset=84)
        verts = rec["v"].reshape(-1, 3).astype(np.float64)
    else:
        verts = np.array([[float(x) for x in m.split()] for m in
                          re.findall(rb"vertex\s+([^\n]+)", data)], dtype=np.float64).reshape(-1, 3)
    return verts, np.arange(len(verts)).reshape(-1, 3)


def box_uv_mesh(vertices: np.ndarray, triangles: np.ndarray, corner_normals: np.ndarray | None = None,
                uv_scale: float = 0.1) -> UVMesh:
    """Un-index the mesh and give each face UVs projected along its dominant normal axis."""
    corners = vertices[triangles]  # (T, 3, 3)
    face_n = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    face_n /= np.maximum(np.linalg.norm(face_n, axis=1, keepdims=True), 1e-12)
    axis = np.argmax(np.abs(face_n), axis=1)
    keep = np.array([[1, 2], [0, 2], [0, 1]])[axis]  # the two coordinates across the normal
    uv = np.take_along_axis(corners, np.repeat(keep[:, None, :], 3, axis=1), axis=2) / uv_scale
    normals = corner_normals if corner_normals is not None else np.repeat(face_n[:, None, :], 3, axis=1)
    return UVMesh(corners.reshape(-1, 3), normals.reshape(-1, 3), uv.reshape(-1, 2))


def floor_grid(x_range=(-1.5, 3.5), y_range=(-3.0, 3.0), cell: float = 0.25, uv_scale: float = 0.5) -> UVMesh:
    """A z=0 grid of small triangles (upward normals, UVs repeating every `uv_scale` m)."""
    xs = np.arange(x_range[0], x_range[1] + 1e-9, cell)
    ys = np.arange(y_range[0], y_range[1] + 1e-9, cell)
    x0, y0 = np.meshgrid(xs[:-1], ys[:-1], indexing="ij")
    x0, y0 = x0.ravel(), y0.ravel()
    quad = np.stack([np.stack([x0, y0], 1), np.stack([x0 + cell, y0], 1), np.stack([x0 + cell, y0 + cell], 1),
                     np.stack([x0, y0 + cell], 1)], 1)  # (Q, 4, 2), counter-clockwise seen from above
    tris = np.concatenate([quad[:, [0, 1, 2]], quad[:, [0, 2, 3]]], axis=0).reshape(-1, 2)
    verts = np.concatenate([tris, np.zeros((len(tris), 1))], axis=1)
    normals = np.tile([0.0, 0.0, 1.0], (len(verts), 1))
    return UVMesh(verts, normals, tris / uv_scale)


def write_obj(mesh: UVMesh, path: Path, exact: bool = False) -> None:
    """Write `mesh` as OBJ (atomically).  exact=True keeps every coordinate's full double
    precision (17 significant digits), so pybullet reads back exactly the arrays it would
    have been handed as lists; otherwise 6 decimals for positions and 5 for UVs/normals."""
    from rcan_common.io import atomic_write_bytes

    if exact:
        lines = [f"v {x:.17g} {y:.17g} {z:.17g}" for x, y, z in mesh.vertices.tolist()]
        lines += [f"vt {u:.17g} {v:.17g}" for u, v in mesh.uvs.tolist()]
        lines += [f"vn {x:.17g} {y:.17g} {z:.17g}" for x, y, z in mesh.normals.tolist()]
    else:
        lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in mesh.vertices]
        lines += [f"vt {u:.5f} {v:.5f}" for u, v in mesh.uvs]
        lines += [f"vn {x:.5f} {y:.5f} {z:.5f}" for x, y, z in mesh.normals]
    lines += [f"f {i}/{i}/{i} {i + 1}/{i + 1}/{i + 1} {i + 2}/{i + 2}/{i + 2}" for i in range(1, len(mesh.vertices), 3)]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def uv_arm_sdf(data_root: Path, cache_dir: Path) -> Path:
    """Path of the arm SDF with UV'd visual meshes (written once into `cache_dir`)."""
    src = data_root / ARM_SDF
    text = src.read_text()
    key = hashlib.sha256((FORMAT_VERSION + text).encode()).hexdigest()[:12]
    out_dir = cache_dir / f"arm_uv_{key}"
    out = out_dir / "kuka_with_gripper2_uv.sdf"
    if out.is_file():
        return out
    mesh_dir = src.parent

    def visual(match: re.Match) -> str:
        block = match.group(0)
        found = re.search(r"<uri>\s*/?([^<]+?)\s*</uri>", block)
        if found is None:  # a primitive (box/cylinder) visual: pybullet maps UVs itself
            return block
        uri = found.group(1)
        name = Path(uri).stem + "_uv.obj"
        source = mesh_dir / uri
        if source.suffix.lower() == ".stl":
            v, t = read_stl(source)
            n = None
        else:
            v, t, n = read_obj(source)
        write_obj(box_uv_mesh(v, t, n, ARM_UV_SCALE), out_dir / name)
        return re.sub(r"<uri>[^<]*</uri>", f"<uri>{out_dir / name}</uri>", block)

    text = re.sub(r"<visual\b.*?</visual>", visual, text, flags=re.S)
    # Remaining (collision) meshes: the originals, by absolute path.
    text = re.sub(r"<uri>\s*/?(meshes/[^<]+?)\s*</uri>", lambda m: f"<uri>{mesh_dir / m.group(1)}</uri>", text)
    from rcan_common.io import atomic_write_bytes

    atomic_write_bytes(out, text.encode())
    return out
