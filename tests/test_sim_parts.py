"""Texture bank, object split, action layout, domains and the Wilson interval."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rcan_common import action, classes
from rcan_common.domains import DOMAINS
from rcan_common.stats import wilson_interval
from rcan_sim import objects, textures
from rcan_sim.domains import DomainError, domain_spec


def test_object_split_is_fixed_and_disjoint():
    train, test = set(objects.TRAIN_IDS), set(objects.TEST_IDS)
    assert train.isdisjoint(test) and train | test | set(objects.BROKEN_IDS) == set(range(1000))
    with pytest.raises(objects.UnknownObjectError, match="broken"):
        objects.urdf_path(objects.BROKEN_IDS[0])
    assert 60 <= len(test) <= 140
    assert objects.object_ids("test") == objects.TEST_IDS
    assert objects.urdf_path(objects.TEST_IDS[0]).is_file()
    with pytest.raises(objects.UnknownObjectError, match="unknown object id 1000"):
        objects.urdf_path(1000)
    with pytest.raises(objects.UnknownObjectError, match="must be an int"):
        objects.urdf_path("7")
    with pytest.raises(objects.UnknownObjectError, match="split"):
        objects.object_ids("val")


def test_texture_bank_is_large_deterministic_and_distinct():
    bank = textures.TextureBank(size=16)
    assert len(bank.train_indices) >= 5000 and len(bank) == textures.BANK_SIZE
    assert set(bank.train_indices).isdisjoint(bank.held_out_indices)
    imgs = [textures.procedural_texture(i, 16) for i in range(0, 6000, 97)]
    assert len({im.tobytes() for im in imgs}) == len(imgs)
    assert np.array_equal(textures.procedural_texture(1234, 16), textures.procedural_texture(1234, 16))
    with pytest.raises(textures.TextureError, match="index"):
        bank.image(6000)


def test_texture_png_cache(tmp_path):
    bank = textures.TextureBank(size=16, cache_dir=tmp_path)
    p = bank.png_path(42)
    assert p.is_file() and p.parent.parent == tmp_path
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(p)), bank.image(42))


def test_texture_folder_errors(tmp_path):
    with pytest.raises(textures.TextureError, match="does not exist"):
        textures.TextureBank(folder=tmp_path / "missing")
    with pytest.raises(textures.TextureError, match="holds 0 images"):
        textures.TextureBank(folder=tmp_path)
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    bank = textures.TextureBank(size=8, folder=tmp_path, cache_dir=tmp_path / "cache")
    assert len(bank) == 3 and list(bank.held_out_indices) == [2]
    assert bank.image(1).shape == (8, 8, 3) and bank.image(1)[0, 0, 0] == 40


def _write_folder(folder, n, size=8):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((size, size, 3), (20 * i) % 256, np.uint8)).save(folder / f"t{i:02d}.png")


def test_texture_folder_cache_key_is_stable_across_processes(tmp_path):
    """The key was hash(str(folder)): randomised per process, so every process wrote a new cache
    directory.  It is now a digest of the folder's contents."""
    import subprocess
    import sys

    folder = tmp_path / "tex"
    _write_folder(folder, 4)
    code = ("import sys; from rcan_sim import textures; "
            "b = textures.TextureBank(size=8, folder=sys.argv[1], cache_dir=sys.argv[2]); "
            "print(b.png_path(0).parent.name, b.folder_sha256)")
    keys = set()
    for seed in ("1", "2", "3"):
        env = {**__import__("os").environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code, str(folder), str(tmp_path / "cache")], env=env,
                             capture_output=True, text=True, check=True).stdout.split()
        keys.add(tuple(out))
    assert len(keys) == 1
    (name, digest), = keys
    assert name.startswith("folder-") and digest == textures.folder_digest(folder)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [name]  # one cache directory, not three
    moved = tmp_path / "moved"
    folder.rename(moved)
    assert textures.folder_digest(moved) == digest  # contents, not the path


def test_texture_folder_key_changes_when_an_image_changes(tmp_path):
    from PIL import Image

    folder = tmp_path / "tex"
    _write_folder(folder, 3)
    before = textures.TextureBank(size=8, folder=folder, cache_dir=tmp_path / "cache")
    assert before.image(1)[0, 0, 0] == 20
    old_png = before.png_path(1)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(folder / "t01.png")  # same name, new pixels
    after = textures.TextureBank(size=8, folder=folder, cache_dir=tmp_path / "cache")
    assert after.folder_sha256 != before.folder_sha256
    new_png = after.png_path(1)
    assert new_png != old_png and np.asarray(Image.open(new_png))[0, 0, 0] == 200  # not served stale
    (folder / "notes.txt").write_text("not an image")  # only images count
    assert textures.folder_digest(folder) == after.folder_sha256


def test_texture_folder_held_out_fraction(tmp_path):
    folder = tmp_path / "tex"
    _write_folder(folder, 20)
    default = textures.TextureBank(size=8, folder=folder, cache_dir=tmp_path / "c")
    assert list(default.held_out_indices) == [18, 19] and list(default.train_indices) == list(range(18))
    quarter = textures.TextureBank(size=8, folder=folder, cache_dir=tmp_path / "c", held_out_fraction=0.25)
    assert list(quarter.held_out_indices) == list(range(15, 20))
    both = textures.TextureBank(size=8, folder=folder, cache_dir=tmp_path / "c", held_out_fraction=0.0)
    assert list(both.train_indices) == list(both.held_out_indices) == list(range(20)) and len(both) == 20
    with pytest.raises(textures.TextureError, match="held_out_fraction"):
        textures.TextureBank(size=8, folder=folder, held_out_fraction=0.95)


def test_action_layout_and_clipping():
    a = action.make_action([0.2, -0.01, 0.0], dtheta=1.5, gripper="close", terminate=False)
    assert a.shape == (action.ACTION_DIM,) == (8,)
    cmd = action.decode_action(a, action.ActionBounds(max_translation=0.05, max_rotation=0.5))
    assert cmd.translation.tolist() == pytest.approx([0.05, -0.01, 0.0])
    assert cmd.dtheta == pytest.approx(0.5) and cmd.gripper == "close" and not cmd.terminate
    assert action.decode_action(action.make_action(gripper="open", terminate=True)).gripper == "open"
    assert action.decode_action(np.zeros(8)).gripper is None  # both one-hot entries 0: unchanged
    assert math.isclose(action.decode_action(action.make_action(dtheta=-0.3)).dtheta, -0.3, abs_tol=1e-6)
    with pytest.raises(action.ActionError, match="NaN"):
        action.validate_action([0, 0, 0, 0, 1, 0, 0, float("inf")])
    with pytest.raises(action.ActionError, match="gripper"):
        action.make_action(gripper="half")
    assert action.STATE_DIM == 2 and action.STATE_NAMES == ("gripper_open", "gripper_height")


def test_domains_and_classes():
    assert set(DOMAINS) == {"canonical", "randomized", "held-out", "mild", "medium", "heavy"}
    assert domain_spec("held-out").held_out and not domain_spec("randomized").held_out
    heavy, rand = domain_spec("heavy"), domain_spec("randomized")
    assert (heavy.floor, heavy.arm, heavy.light, heavy.jitter) == (rand.floor, rand.arm, rand.light, rand.jitter)
    assert domain_spec("canonical").canonical and not domain_spec("mild").canonical
    with pytest.raises(DomainError, match="unknown domain"):
        domain_spec("real")
    assert classes.CLASS_COLORS.shape == (5, 3) and len(set(map(tuple, classes.CLASS_COLORS))) == 5
    assert classes.colorize(np.array([[0, 4]], np.uint8)).tolist() == [[[0, 0, 0], classes.CLASS_COLORS[4].tolist()]]
    with pytest.raises(ValueError, match="class id 5"):
        classes.colorize(np.array([[5]], np.uint8))


def test_wilson_interval():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_box_uv_mesh_gives_every_face_its_own_uvs():
    from rcan_sim.meshes import box_uv_mesh

    v = np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.1]], float)
    t = np.array([[0, 1, 2], [0, 1, 3]])
    mesh = box_uv_mesh(v, t, uv_scale=0.1)
    assert mesh.vertices.shape == (6, 3) and mesh.uvs.shape == (6, 2) and mesh.indices.tolist() == list(range(6))
    # Face 0 lies in z=0: UVs are its x, y over the scale; face 1 lies in y=0: x, z.
    assert mesh.uvs[:3].tolist() == [[0, 0], [1, 0], [0, 1]]
    assert mesh.uvs[3:].tolist() == [[0, 0], [1, 0], [0, 1]]
    assert np.allclose(np.abs(mesh.normals[:3]), [0, 0, 1]) and np.allclose(np.abs(mesh.normals[3:]), [0, 1, 0])


def test_uv_arm_keeps_the_physics_of_the_original(tmp_path):
    import pybullet as pb

    from rcan_sim.meshes import ARM_SDF, uv_arm_sdf

    cid = pb.connect(pb.DIRECT)
    try:
        orig = pb.loadSDF(str(objects.data_root() / ARM_SDF), physicsClientId=cid)[0]
        uv = pb.loadSDF(str(uv_arm_sdf(objects.data_root(), tmp_path)), physicsClientId=cid)[0]
        n = pb.getNumJoints(orig, physicsClientId=cid)
        assert n == pb.getNumJoints(uv, physicsClientId=cid) == 14
        for j in range(-1, n):
            a = pb.getDynamicsInfo(orig, j, physicsClientId=cid)
            b = pb.getDynamicsInfo(uv, j, physicsClientId=cid)
            assert a[:3] == b[:3]  # mass, friction, inertia
            ca = pb.getCollisionShapeData(orig, j, physicsClientId=cid)
            cb = pb.getCollisionShapeData(uv, j, physicsClientId=cid)
            assert [x[2:4] for x in ca] == [x[2:4] for x in cb]  # shape type and dimensions
        for j in range(n):
            assert pb.getJointInfo(orig, j, physicsClientId=cid)[1:] == pb.getJointInfo(uv, j, physicsClientId=cid)[1:]
    finally:
        pb.disconnect(physicsClientId=cid)
