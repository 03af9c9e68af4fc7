"""GraspWorld: determinism, paired-render invariants, canonical look, randomization variety."""
from __future__ import annotations

import numpy as np
import pytest

from rcan_common import classes
from rcan_common.domains import DOMAINS
from rcan_sim.domains import CANON_ARM, DomainError
from rcan_sim.objects import UnknownObjectError
from rcan_sim.world import GraspWorld, WorldConfig

CFG = WorldConfig(image_size=64, settle_steps=60)


@pytest.fixture(scope="module")
def world():
    w = GraspWorld(CFG)
    w.reset(11)
    yield w
    w.close()


def test_same_seed_same_pixels_regardless_of_history(world):
    other = GraspWorld(CFG)
    try:
        other.reset(3)  # a different history must not matter
        other.reset(11)
        a, b = world.physics_state(), other.physics_state()
        assert np.array_equal(a["bodies"], b["bodies"]) and np.array_equal(a["joints"], b["joints"])
        for domain in ("canonical", "randomized", "held-out", "mild"):
            fa, fb = world.render(domain, 5), other.render(domain, 5)
            assert np.array_equal(fa.rgb, fb.rgb), domain
            assert np.array_equal(fa.segmentation, fb.segmentation), domain
        pa, pb = world.render_pair(4), other.render_pair(4)
        assert np.array_equal(pa.randomized_rgb, pb.randomized_rgb)
        assert np.array_equal(pa.canonical_rgb, pb.canonical_rgb)
    finally:
        other.close()


def test_pair_has_identical_geometry_and_different_pixels(world):
    pair = world.render_pair(7)
    assert pair.randomized_rgb.shape == pair.canonical_rgb.shape == (64, 64, 3)
    assert pair.randomized_rgb.dtype == np.uint8 and pair.depth.dtype == np.float32
    assert pair.segmentation.dtype == np.uint8 and set(np.unique(pair.segmentation)) <= set(range(5))
    assert np.mean(np.abs(pair.randomized_rgb.astype(int) - pair.canonical_rgb.astype(int))) > 10
    # Every class is in view: objects, tray, divider, arm, background.
    assert set(np.unique(pair.segmentation)) == {0, 1, 2, 3, 4}
    # The randomized render sees exactly the geometry the canonical one labels: a plain
    # randomized render with the same seed (same jitter) gives the same segmentation.
    frame = world.render("randomized", 7)
    assert np.array_equal(frame.segmentation, pair.segmentation)
    assert np.array_equal(frame.depth, pair.depth)
    assert np.array_equal(frame.rgb, pair.randomized_rgb)
    # The cheaper variants (camera image only; canonical half only) give the same pixels.
    plain = world.render("randomized", 7, labels=False)
    assert np.array_equal(plain.rgb, pair.randomized_rgb) and plain.depth is None and plain.segmentation is None
    half = world.render_pair(7, source=False)
    assert half.randomized_rgb is None and np.array_equal(half.canonical_rgb, pair.canonical_rgb)
    assert np.array_equal(half.segmentation, pair.segmentation) and np.array_equal(half.depth, pair.depth)


def _back_project(frame, mask):
    cam = frame.camera
    v, u = np.nonzero(mask)
    z = frame.depth[v, u]
    pts_cam = np.stack([(u - cam.K[0, 2]) * z / cam.K[0, 0], (v - cam.K[1, 2]) * z / cam.K[1, 1], z, np.ones_like(z)])
    return (np.linalg.inv(cam.extrinsics) @ pts_cam)[:3]


def test_depth_and_camera_are_consistent(world):
    from rcan_sim.world import FLOOR_Z, TRAY_POS

    f = world.render("canonical")
    assert np.all(np.isfinite(f.depth)) and f.depth.min() > CFG.camera_near
    # Depth + K + extrinsics put floor pixels on the floor plane and tray pixels in the tray.
    background = _back_project(f, f.segmentation == classes.BACKGROUND)
    floor = background[2][background[2] < FLOOR_Z + 0.05]  # the rest is the robot's pedestal
    assert len(floor) > 0.8 * background.shape[1]
    assert np.mean(np.abs(floor - FLOOR_Z)) < 0.008  # TinyRenderer depth is good to ~0.3% of range
    tray = _back_project(f, f.segmentation == classes.TRAY)
    assert abs(np.percentile(tray[2], 5) - world.tray_bottom_z) < 0.01
    assert np.all(np.abs(tray[0] - TRAY_POS[0]) < 0.33) and np.all(np.abs(tray[1] - TRAY_POS[1]) < 0.33)


def test_rendering_never_changes_physics(world):
    before = world.physics_state()
    world.render_pair(1)
    for d in DOMAINS:
        world.render(d, 2)
    after = world.physics_state()
    assert np.array_equal(before["bodies"], after["bodies"])
    assert np.array_equal(before["joints"], after["joints"])


def test_rendering_does_not_change_the_future():
    a, b = GraspWorld(CFG), GraspWorld(CFG)
    try:
        for w in (a, b):
            w.reset(5)
            w.set_arm_joint_targets(w.solve_ik([0.6, 0.05, w.tray_bottom_z + 0.05], 0.4))
        for _ in range(3):
            a.render_pair(1)
            a.render("randomized", 2)
            a.step_physics(20)
            b.step_physics(20)
        sa, sb = a.physics_state(), b.physics_state()
        assert np.array_equal(sa["bodies"], sb["bodies"]) and np.array_equal(sa["joints"], sb["joints"])
    finally:
        a.close()
        b.close()


def test_canonical_look_is_fixed(world):
    a = world.render("canonical", 1)
    world.render_pair(3)  # randomize everything in between
    b = world.render("canonical", 99)
    assert np.array_equal(a.rgb, b.rgb)  # no randomization leaks into canonical renders
    import pybullet as pb

    colours = [tuple(np.round(v[7][:3], 3)) for v in pb.getVisualShapeData(world.arm, physicsClientId=world._cid)]
    assert len(set(colours)) == len(colours)  # every arm link its own colour
    assert colours == [tuple(np.round(CANON_ARM[k], 3)) for k in range(len(colours))]
    # Background pixels keep one colour across states (fixed light, uniform floor).
    world.step_physics(5)
    c = world.render("canonical", 0)
    bg = (a.segmentation == classes.BACKGROUND) & (c.segmentation == classes.BACKGROUND)
    bg[: 64 // 3] = False  # the far floor, away from shadows of the arm
    assert np.array_equal(a.rgb[bg], c.rgb[bg])


def test_randomization_varies_between_steps(world):
    frames = [world.render("randomized", s).rgb.astype(int) for s in range(4)]
    for i in range(3):
        assert np.mean(np.abs(frames[i] - frames[i + 1])) > 5
    # Background (floor) colour and global brightness both change: textures and light differ.
    means = [f.mean() for f in frames]
    assert np.ptp(means) > 1.0


def test_held_out_uses_disjoint_textures(world):
    world.render("held-out", 0)
    train = set(world._palette(False))
    held = set(world._palette(True))
    assert train.isdisjoint(held)
    assert all(i in world.bank.held_out_indices for i in held)


def test_bad_inputs_raise_clear_errors(world):
    with pytest.raises(DomainError, match="unknown domain"):
        world.render("sunny")
    with pytest.raises(UnknownObjectError, match="unknown object id 1000"):
        world.reset(0, object_ids=[1, 2, 3, 4, 1000])
    with pytest.raises(ValueError, match="seed"):
        world.reset(-1)
    with pytest.raises(ValueError, match="7 finite"):
        world.set_arm_joint_targets([0.0] * 6)
    with pytest.raises(ValueError, match="7 finite"):
        world.set_arm_joint_targets([float("nan")] * 7)


def test_joint_api_moves_the_arm(world):
    q0 = world.joint_positions()
    assert world.joint_names == tuple(f"lbr_A{i}" for i in range(1, 8))
    target = q0 + np.array([0.1, 0, 0, 0, 0, 0, 0])
    world.set_arm_joint_targets(target)
    world.step_physics(60)
    assert abs(world.joint_positions()[0] - target[0]) < 0.01
    pos, quat = world.ee_pose()
    assert pos.shape == (3,) and abs(np.linalg.norm(quat) - 1) < 1e-6
    world.set_arm_joint_targets(q0)
    world.step_physics(60)


def test_ik_reaches_tray_workspace(world):
    for tgt, yaw in (([0.52, -0.13, world.tray_bottom_z + 0.02], 0.5), ([0.78, 0.13, world.tray_bottom_z + 0.2], -1.2)):
        q = world.solve_ik(tgt, yaw)
        saved = world.joint_positions()
        world._reset_arm_joints(q)
        pos, _ = world.ee_pose()
        yaw_now = world.gripper_yaw()
        world._reset_arm_joints(saved)
        assert np.linalg.norm(pos - np.array(tgt)) < 5e-3
        assert abs(yaw_now - yaw) < 1e-2


def test_texture_cap_rebuilds_scene_without_changing_results():
    small = WorldConfig(image_size=32, settle_steps=30, episode_textures=4, max_loaded_textures=16)
    w, fresh = GraspWorld(small), GraspWorld(small)
    builds = []
    original = w._build
    w._build = lambda: (builds.append(1), original())[1]
    try:
        for seed in range(6):  # each randomized render loads up to 4 + 6 new bank textures
            w.reset(seed)
            w.render("randomized", 0)
            w.render("mild", 0)
        assert builds and len(w._textures) <= 16 + 4 + 6  # the scene was rebuilt to free textures
        w.reset(40)
        fresh.reset(40)
        assert np.array_equal(w.physics_state()["bodies"], fresh.physics_state()["bodies"])
        assert np.array_equal(w.render("randomized", 3).rgb, fresh.render("randomized", 3).rgb)
    finally:
        w.close()
        fresh.close()


def test_user_texture_folder(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), (60 * i, 200 - 50 * i, 90), np.uint8)).save(tmp_path / f"t{i}.png")
    w = GraspWorld(WorldConfig(image_size=32, settle_steps=10, texture_folder=tmp_path,
                               texture_cache_dir=tmp_path / "cache"))
    try:
        w.reset(0)
        for domain in ("randomized", "mild", "held-out", "canonical"):
            assert w.render(domain, 1).rgb.shape == (32, 32, 3)
        assert set(w._palette(False)) == {0, 1} and set(w._palette(True)) == {2}
    finally:
        w.close()


def test_resets_keep_the_scene_and_python_memory_bounded():
    """sim_node grew ~3-8 MB per episode: pybullet leaked every vertex list it was handed and kept
    every texture and shape until the scene was reset.  Bodies, textures, shapes and Python-side
    allocations must now stay bounded however many episodes run."""
    import gc
    import tracemalloc

    from rcan_sim import objects

    cfg = WorldConfig(image_size=16, settle_steps=2, episode_textures=4, max_loaded_textures=12, max_object_shapes=10)
    w = GraspWorld(cfg)
    try:
        bodies = None
        for seed in range(12):  # distinct objects and textures every episode: the caps force rebuilds
            w.reset(seed)
            w.render("randomized", 0, labels=False)
            stats = w.scene_stats()
            bodies = bodies or stats["bodies"]
            assert stats["bodies"] == bodies  # removed objects leave nothing behind
            assert stats["textures"] <= 12 + 4 + 6 and stats["object_shapes"] <= 10 + cfg.num_objects
        assert w.scene_stats()["builds"] >= 3

        fixed = list(objects.TEST_IDS[:5])
        for seed in range(2):  # warm every per-process cache (hull lists, meshes, OBJ files)
            w.reset(seed, fixed)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for seed in range(6):
                w.reset(seed, fixed)
                w._build()  # a rebuild re-creates the floor mesh, which leaked 1.6 MB per build
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 200_000, f"Python memory grew {grown} bytes over 6 resets (the vertex-list leak was ~3 MB each)"
    finally:
        w.close()


def test_object_mesh_from_file_renders_like_the_vertex_lists(tmp_path):
    """Object visuals go to pybullet as OBJ files (vertex lists leak); the file keeps full precision,
    so the pixels and depth match the vertex-list route exactly."""
    import pybullet as pb

    from rcan_sim import objects

    oid = objects.TEST_IDS[3]
    mesh = objects.object_visual_mesh(oid)
    images = []
    for route in ("lists", "file"):
        c = pb.connect(pb.DIRECT)
        try:
            if route == "lists":
                vis = pb.createVisualShape(pb.GEOM_MESH, vertices=mesh.vertices.tolist(), indices=mesh.indices.tolist(),
                                           uvs=mesh.uvs.tolist(), normals=mesh.normals.tolist(), physicsClientId=c)
            else:
                path = objects.object_visual_obj(oid, tmp_path)
                vis = pb.createVisualShape(pb.GEOM_MESH, fileName=str(path), physicsClientId=c)
            pb.createMultiBody(0, -1, vis, [0, 0, 0], pb.getQuaternionFromEuler([0.3, 0.2, 0.1]), physicsClientId=c)
            view = pb.computeViewMatrix([0.15, 0.1, 0.12], [0, 0, 0], [0, 0, 1], physicsClientId=c)
            proj = pb.computeProjectionMatrixFOV(45, 1.0, 0.01, 1.0, physicsClientId=c)
            _, _, rgba, depth, _ = pb.getCameraImage(96, 96, view, proj, renderer=pb.ER_TINY_RENDERER, physicsClientId=c)
            images.append((np.asarray(rgba), np.asarray(depth)))
        finally:
            pb.disconnect(physicsClientId=c)
    (rgb_a, depth_a), (rgb_b, depth_b) = images
    assert (rgb_a[..., :3] != 255).mean() > 0.05  # the object is in view
    assert np.array_equal(rgb_a, rgb_b) and np.array_equal(depth_a, depth_b)
