"""iiwa kinematics: model data, FK against pybullet's arm, IK round trips, IK failure."""
from __future__ import annotations

import math

import numpy as np
import pytest

from kuka_iiwa_driver.kinematics import (Kinematics, ModelError, load_model, matrix_to_quat,
                                         quat_to_matrix, rotation_log)
from kuka_iiwa_driver.safety import top_down

HOME = np.radians([0.0, 30.0, 0.0, -90.0, 0.0, 60.0, 0.0])


def test_model_limits_match_the_kuka_spec():
    spec_pos = [170, 120, 170, 120, 170, 120, 175]
    for name, vel in (("iiwa7", [98, 98, 100, 130, 140, 180, 180]), ("iiwa14", [85, 85, 100, 75, 130, 135, 135])):
        m = load_model(name)
        np.testing.assert_allclose(np.degrees(m.upper), spec_pos)
        np.testing.assert_allclose(np.degrees(m.lower), [-v for v in spec_pos])
        np.testing.assert_allclose(np.degrees(m.max_velocity), vel)
    # Reach to the flange at zero position: iiwa7 0.34+0.4+0.4+0.126, iiwa14 0.36+0.42+0.4+0.126.
    assert Kinematics(load_model("iiwa7")).fk(np.zeros(7))[0] == pytest.approx([0, 0, 1.266], abs=1e-9)
    assert Kinematics(load_model("iiwa14")).fk(np.zeros(7))[0] == pytest.approx([0, 0, 1.306], abs=1e-9)


def test_unknown_model_and_bad_inputs_are_clear_errors():
    with pytest.raises(ModelError, match="unknown robot model 'iiwa9'"):
        load_model("iiwa9")
    with pytest.raises(ModelError, match="tool_offset"):
        Kinematics(load_model("iiwa7"), (0.0, float("nan"), 0.0))
    with pytest.raises(ValueError, match="7 joint positions"):
        Kinematics(load_model("iiwa7")).fk(np.zeros(6))


def test_iiwa14_fk_matches_pybullet_kuka_model():
    """The sim's arm (pybullet_data kuka_iiwa/model.urdf): flange = link 7 frame + 4.5 cm."""
    pb = pytest.importorskip("pybullet")
    import pybullet_data

    kin = Kinematics(load_model("iiwa14"), (0.01, -0.02, 0.2))
    cid = pb.connect(pb.DIRECT)
    try:
        arm = pb.loadURDF(pybullet_data.getDataPath() + "/kuka_iiwa/model.urdf", useFixedBase=True,
                          physicsClientId=cid)
        rng = np.random.default_rng(0)
        for _ in range(20):
            q = rng.uniform(kin.lower, kin.upper)
            for j in range(7):
                pb.resetJointState(arm, j, q[j], physicsClientId=cid)
            state = pb.getLinkState(arm, 6, computeForwardKinematics=True, physicsClientId=cid)
            rot = np.array(pb.getMatrixFromQuaternion(state[5])).reshape(3, 3)
            expected = np.array(state[4]) + rot @ np.array([0.01, -0.02, 0.045 + 0.2])
            p, r = kin.fk(q)
            np.testing.assert_allclose(p, expected, atol=1e-6)
            np.testing.assert_allclose(r, rot, atol=1e-6)
    finally:
        pb.disconnect(cid)


@pytest.mark.parametrize("model", ["iiwa7", "iiwa14"])
def test_ik_round_trip_on_random_reachable_poses(model):
    kin = Kinematics(load_model(model), (0.0, 0.024, 0.217), math.radians(2))
    rng = np.random.default_rng(1)
    for _ in range(40):
        q_true = np.clip(HOME + rng.uniform(-0.6, 0.6, 7), kin.lower, kin.upper)
        p, r = kin.fk(q_true)
        seed = q_true + rng.uniform(-0.2, 0.2, 7)
        res = kin.ik(p, r, seed)
        assert res.ok, res.reason
        p2, r2 = kin.fk(res.q)
        assert np.linalg.norm(p2 - p) < 1e-3
        assert np.linalg.norm(rotation_log(r2 @ r.T)) < math.radians(1.0)
        assert np.all(res.q >= kin.lower) and np.all(res.q <= kin.upper)


def test_ik_reaches_top_down_grasp_poses_from_the_rest_posture():
    kin = Kinematics(load_model("iiwa14"), (0.0, 0.024, 0.217), math.radians(2))
    for x, y, z, yaw in ((0.55, 0.0, -0.1, 0.3), (0.4, -0.2, 0.0, -1.0), (0.7, 0.2, -0.17, 2.5)):
        res = kin.ik((x, y, z), top_down(yaw), HOME)
        assert res.ok, res.reason
        p, r = kin.fk(res.q)
        assert np.linalg.norm(p - [x, y, z]) < 1e-3
        assert np.linalg.norm(rotation_log(r @ top_down(yaw).T)) < math.radians(1.0)


def test_ik_failure_is_reported_and_stays_inside_limits():
    kin = Kinematics(load_model("iiwa7"), (0.0, 0.0, 0.2), math.radians(2))
    res = kin.ik((2.0, 0.0, 0.5), top_down(0.0), HOME, max_iterations=100)
    assert not res.ok and "did not converge" in res.reason
    assert res.position_error > 0.5
    assert np.all(res.q >= kin.lower) and np.all(res.q <= kin.upper)


def test_jacobian_matches_finite_differences():
    kin = Kinematics(load_model("iiwa7"), (0.0, 0.02, 0.15))
    q = HOME + 0.1
    jac = kin.jacobian(q)
    p0, r0 = kin.fk(q)
    eps = 1e-6
    for i in range(7):
        dq = np.zeros(7)
        dq[i] = eps
        p1, r1 = kin.fk(q + dq)
        np.testing.assert_allclose((p1 - p0) / eps, jac[:3, i], atol=1e-5)
        np.testing.assert_allclose(rotation_log(r1 @ r0.T) / eps, jac[3:, i], atol=1e-5)


def test_quaternion_and_rotation_log_round_trips():
    rng = np.random.default_rng(2)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        r = quat_to_matrix(q)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        q2 = matrix_to_quat(r)
        assert min(np.linalg.norm(q2 - q), np.linalg.norm(q2 + q)) < 1e-9
    # Near pi the log must still give the right angle and axis.
    r = quat_to_matrix(np.array([0.0, 1.0, 0.0, 1e-9]))
    w = rotation_log(r)
    assert np.linalg.norm(w) == pytest.approx(math.pi, abs=1e-6)
    assert abs(w[1]) == pytest.approx(math.pi, abs=1e-6)


def test_driver_fk_agrees_with_the_sim_world():
    """Contract with rcan_sim: same joints -> same fingertip pose in the robot base frame."""
    world_mod = pytest.importorskip("rcan_sim.world")
    from kuka_iiwa_driver.config import DriverConfig

    cfg = DriverConfig()
    kin = Kinematics(load_model(cfg.robot_model), cfg.tool_offset)
    world = world_mod.GraspWorld(world_mod.WorldConfig(image_size=64))
    try:
        rng = np.random.default_rng(3)
        for _ in range(3):
            world.set_arm_joint_targets(np.clip(HOME + rng.uniform(-0.5, 0.5, 7), kin.lower, kin.upper))
            world.step_physics(120)
            sim_p, sim_q = world.to_base_frame(*world.ee_pose())
            p, r = kin.fk(world.joint_positions())
            np.testing.assert_allclose(p, sim_p, atol=1e-3)
            assert np.linalg.norm(rotation_log(r @ quat_to_matrix(sim_q).T)) < math.radians(1.0)
    finally:
        world.close()
