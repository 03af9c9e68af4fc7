"""DriverCore without ROS: target -> command, joint_states handling, e-stop, watchdog, config."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rcan_common.config import ConfigError, from_dict
from kuka_iiwa_driver.config import DriverConfig
from kuka_iiwa_driver.driver import DriverCore
from kuka_iiwa_driver.kinematics import matrix_to_quat, rotation_log
from kuka_iiwa_driver.safety import Status, top_down

NAMES = [f"lbr_A{i}" for i in range(1, 8)]
HOME = np.radians([0.0, 30.0, 0.0, -90.0, 0.0, 60.0, 0.0])


@pytest.fixture
def core() -> DriverCore:
    c = DriverCore(DriverConfig(robot_model="iiwa7"))
    assert c.on_joint_state(NAMES + ["finger"], list(HOME) + [0.3], now=10.0) is None
    return c


def target(c: DriverCore, dp=(0.0, 0.0, -0.02), yaw=None, stamp=9.99, now=10.0, frame="lbr_link_0"):
    p, r = c.ee_pose()
    yaw = math.atan2(r[1, 0], r[0, 0]) if yaw is None else yaw
    return c.on_target(p + np.asarray(dp), matrix_to_quat(top_down(yaw)), frame, stamp, now)


def test_accepted_target_becomes_a_timed_joint_command_reaching_the_pose(core):
    p0, _ = core.ee_pose()
    res = target(core, dp=(0.01, -0.01, -0.03), yaw=math.pi + 0.2)
    assert res.status is Status.ACCEPTED, res.reason
    cmd = res.command
    assert cmd.kind == "move" and cmd.positions.shape == (7,)
    assert core.kin.within_limits(cmd.positions)
    p, r = core.kin.fk(cmd.positions)
    np.testing.assert_allclose(p, p0 + [0.01, -0.01, -0.03], atol=1e-3)
    assert np.linalg.norm(rotation_log(r @ top_down(math.pi + 0.2).T)) < math.radians(1)
    # Timed by the slowest joint at velocity_scale of the KUKA limits.
    speed = np.abs(cmd.positions - HOME) / cmd.duration
    assert np.all(speed <= core.model.max_velocity * core.cfg.velocity_scale + 1e-9)
    assert core.state(10.05) == "moving"
    assert core.counters.accepted == 1


def test_clamped_target_still_moves_but_reports_why(core):
    res = target(core, dp=(0.0, 0.0, -0.3))
    assert res.status is Status.CLAMPED and "step clamp" in res.reason
    p0, _ = core.ee_pose()
    p, _ = core.kin.fk(res.command.positions)
    assert np.linalg.norm(p - p0) == pytest.approx(core.cfg.max_step_m, abs=1e-3)
    assert core.status(10.0)["last_clamp_reason"] == res.reason


def test_rejections_name_their_cause_and_send_nothing(core):
    cases = {
        "not base_frame": dict(frame="world"),
        "stale target": dict(stamp=9.0),
        "non-finite": dict(dp=(float("nan"), 0.0, 0.0)),
    }
    for i, (why, kw) in enumerate(cases.items()):
        res = target(core, **kw)
        assert res.status is Status.REJECTED and why in res.reason and res.command is None
    assert core.counters.rejected == 3 and core.counters.accepted == 0
    assert "non-finite" in core.status(10.0)["last_reject_reason"]


def test_unreachable_pose_is_rejected_not_approximated():
    c = DriverCore(DriverConfig(robot_model="iiwa7", workspace_max=[2.5, 0.25, 0.35], max_step_m=3.0))
    c.on_joint_state(NAMES, list(HOME), now=10.0)
    res = c.on_target((2.4, 0.0, 0.0), matrix_to_quat(top_down(0.0)), "lbr_link_0", 9.99, 10.0)
    assert res.status is Status.REJECTED and "IK failed" in res.reason and res.command is None


def test_joint_step_limit_rejects_large_reorientations(core):
    res = target(core, dp=(0.0, 0.0, 0.0), yaw=0.0)  # home yaw is pi: A7 would turn 180 deg
    assert res.status is Status.REJECTED and "would move" in res.reason


def test_joint_states_must_be_complete_finite_and_fresh():
    c = DriverCore(DriverConfig())
    assert "lacks joints" in c.on_joint_state(NAMES[:6], list(HOME[:6]), now=1.0)
    assert "differ in length" in c.on_joint_state(NAMES, [0.0], now=1.0)
    bad = list(HOME)
    bad[2] = float("inf")
    assert "non-finite" in c.on_joint_state(NAMES, bad, now=1.0)
    assert c.ee_pose() is None and c.counters.joint_states_rejected == 3
    res = c.on_target((0.5, 0.0, 0.1), matrix_to_quat(top_down(0.0)), "lbr_link_0", 0.99, 1.0)
    assert "no fresh joint_states" in res.reason
    c.on_joint_state(list(reversed(NAMES)), list(reversed(HOME)), now=1.0)  # any order works
    np.testing.assert_allclose(c.q, HOME)
    assert c.state(1.1) == "idle" and c.state(5.0) == "waiting_for_joint_states"
    res = c.on_target((0.5, 0.0, 0.1), matrix_to_quat(top_down(0.0)), "lbr_link_0", 4.99, 5.0)
    assert "no fresh joint_states" in res.reason


def test_estop_holds_blocks_targets_and_gripper_until_released(core):
    assert target(core).status is Status.ACCEPTED
    hold = core.on_estop(True)
    assert hold.kind == "hold" and np.allclose(hold.positions, HOME)
    assert hold.duration == core.cfg.hold_duration_s
    assert core.state(10.0) == "estop"
    assert "e-stop latched" in target(core, stamp=9.995).reason
    assert core.on_gripper(False) == (None, "gripper command ignored: e-stop latched")
    assert core.on_estop(False) is None and core.state(10.0) == "estop"
    ok, msg = core.release_estop()
    assert ok and core.state(10.0) == "idle"
    assert core.on_gripper(False) == (False, "")
    assert target(core, stamp=9.992).status is Status.ACCEPTED  # stamps restart after a release


def test_watchdog_tick_returns_one_hold_when_targets_stop(core):
    res = target(core, dp=(0.0, 0.0, -0.05))
    assert res.command.duration > 0.0
    core.watchdog.move_end = 10.0 + 5.0  # a long move, so the command timeout fires first
    core.on_joint_state(NAMES, list(HOME), now=10.9)
    assert core.tick(10.9) is None
    core.on_joint_state(NAMES, list(HOME), now=11.1)
    hold = core.tick(11.1)
    assert hold is not None and hold.kind == "hold" and "no target" in hold.reason
    assert core.tick(11.15) is None
    assert core.counters.holds == 1 and core.status(11.2)["watchdog"]["last_hold_reason"] == hold.reason


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="max_step_m"):
        DriverConfig(max_step_m=0.0)
    with pytest.raises(ConfigError, match="workspace_max"):
        DriverConfig(workspace_min=[0.5, 0.0, 0.0], workspace_max=[0.4, 1.0, 1.0])
    with pytest.raises(ConfigError, match="joint_names"):
        DriverConfig(joint_names=["a", "b"])
    with pytest.raises(ConfigError, match="unknown config field"):
        from_dict(DriverConfig, {"max_stepp_m": 0.1})
    assert DriverConfig(joint_prefix="").resolved_joint_names()[0] == "A1"


def test_shipped_config_file_matches_the_defaults():
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[1] / "config" / "iiwa_driver.yaml"
    params = yaml.safe_load(path.read_text())["iiwa_driver_node"]["ros__parameters"]
    cfg = from_dict(DriverConfig, params)
    assert cfg == DriverConfig()


def test_log_once_causes_separate_kinds_of_problem_but_not_their_numbers():
    from kuka_iiwa_driver.driver_node import cause_of

    assert cause_of("stale target: stamp is 3.000 s old") == cause_of("stale target: stamp is 9.1 s old")
    assert cause_of("joint A4 target -121.0 deg outside") == cause_of("joint A2 would move 40.0 deg")
    assert cause_of("stale target: x") != cause_of("non-finite value (NaN/inf) in target")
    assert cause_of("workspace clamp (x=0.9->0.8)") != cause_of("step clamp (0.3 m -> 0.05 m)")


def test_ee_pose_is_only_reported_while_joint_states_are_fresh(core):
    p, r, measured = core.fresh_ee_pose(10.1)
    assert measured == 10.0
    np.testing.assert_allclose(p, core.kin.fk(HOME)[0])
    assert core.fresh_ee_pose(10.0 + core.cfg.joint_state_timeout_s + 0.01) is None
    assert core.gripper is True  # initial_gripper_open until the first command
