"""Every safety rule on its own: workspace, step, orientation, joints, NaN/inf, stamps, e-stop, watchdog."""
from __future__ import annotations

import math

import numpy as np
import pytest

from kuka_iiwa_driver.kinematics import load_model, matrix_to_quat, quat_to_matrix
from kuka_iiwa_driver.safety import EStop, SafetyFilter, Status, Watchdog, top_down, yaw_and_tilt

NOW = 1000.0
DOWN = matrix_to_quat(top_down(0.4))


def make_filter(**over) -> SafetyFilter:
    m = load_model("iiwa7")
    kw = dict(workspace_min=[0.3, -0.25, -0.18], workspace_max=[0.8, 0.25, 0.35], max_step_m=0.05,
              max_tilt_rad=math.radians(10), max_command_age_s=0.5, max_future_s=0.1,
              lower=m.lower, upper=m.upper, max_velocity=m.max_velocity,
              max_joint_step_rad=math.radians(30), velocity_scale=0.5, min_move_duration_s=0.1)
    kw.update(over)
    return SafetyFilter(**kw)


def check(f, pos, quat=DOWN, stamp=NOW - 0.01, now=NOW, current=(0.5, 0.0, 0.1)):
    return f.check_target(pos, quat, stamp, now, current)


def test_target_inside_limits_is_accepted_unchanged():
    d = check(make_filter(), (0.52, 0.01, 0.09))
    assert d.status is Status.ACCEPTED and d.reason == ""
    np.testing.assert_allclose(d.position, (0.52, 0.01, 0.09))
    np.testing.assert_allclose(d.rotation, top_down(0.4), atol=1e-9)


def test_workspace_box_clamps_with_reason():
    d = check(make_filter(max_step_m=10.0), (0.9, 0.0, -0.5))
    assert d.status is Status.CLAMPED
    assert "workspace clamp" in d.reason and "x=0.900->0.800" in d.reason and "z=-0.500->-0.180" in d.reason
    np.testing.assert_allclose(d.position, (0.8, 0.0, -0.18))


def test_cartesian_step_is_clamped_from_the_measured_pose():
    d = check(make_filter(), (0.5, 0.2, 0.1), current=(0.5, 0.0, 0.1))
    assert d.status is Status.CLAMPED and "step clamp" in d.reason
    np.testing.assert_allclose(d.position, (0.5, 0.05, 0.1), atol=1e-12)


def test_orientation_is_projected_to_yaw_and_far_tilts_are_rejected():
    f = make_filter()
    tilted = top_down(1.0) @ quat_to_matrix([math.sin(math.radians(4)), 0, 0, math.cos(math.radians(4))])
    d = check(f, (0.5, 0.0, 0.1), matrix_to_quat(tilted))
    assert d.ok
    yaw, tilt = yaw_and_tilt(d.rotation)
    assert tilt == pytest.approx(0.0, abs=1e-9)  # projected to exactly top-down
    assert yaw == pytest.approx(1.0, abs=0.02)
    up = matrix_to_quat(np.eye(3))  # tool pointing up
    d = check(make_filter(), (0.5, 0.0, 0.1), up, stamp=NOW)
    assert d.status is Status.REJECTED and "from top-down" in d.reason
    side = quat_to_matrix([math.sin(math.radians(10)), 0, 0, math.cos(math.radians(10))])  # 20 deg tilt
    d = check(make_filter(), (0.5, 0.0, 0.1), matrix_to_quat(top_down(0.0) @ side), stamp=NOW)
    assert d.status is Status.REJECTED and "20.0 deg" in d.reason


@pytest.mark.parametrize("pos,quat", [
    ((float("nan"), 0.0, 0.1), DOWN),
    ((0.5, float("inf"), 0.1), DOWN),
    ((0.5, 0.0, 0.1), (float("nan"), 0.0, 0.0, 1.0)),
])
def test_non_finite_targets_are_rejected(pos, quat):
    d = check(make_filter(), pos, quat)
    assert d.status is Status.REJECTED and "non-finite" in d.reason


def test_bad_quaternion_and_shapes_are_rejected():
    f = make_filter()
    assert "not normalised" in check(f, (0.5, 0.0, 0.1), (0.0, 0.0, 0.0, 0.0)).reason
    assert "not normalised" in check(f, (0.5, 0.0, 0.1), (0.0, 2.0, 0.0, 0.0)).reason
    assert "malformed" in check(f, (0.5, 0.0), DOWN).reason


def test_stale_future_missing_and_out_of_order_stamps_are_rejected():
    f = make_filter()
    assert "stale target" in check(f, (0.5, 0.0, 0.1), stamp=NOW - 0.6).reason
    assert "future" in check(f, (0.5, 0.0, 0.1), stamp=NOW + 0.2).reason
    assert "missing header stamp" in check(f, (0.5, 0.0, 0.1), stamp=0.0).reason
    assert check(f, (0.5, 0.0, 0.1), stamp=NOW - 0.1).ok
    assert "out-of-order" in check(f, (0.5, 0.0, 0.1), stamp=NOW - 0.2).reason
    assert "out-of-order" in check(f, (0.5, 0.0, 0.1), stamp=NOW - 0.1).reason  # a replay
    assert check(f, (0.5, 0.0, 0.1), stamp=NOW - 0.05).ok
    f.reset_stamps()
    assert check(f, (0.5, 0.0, 0.1), stamp=NOW - 0.2).ok


def test_rejected_targets_do_not_advance_the_stamp():
    f = make_filter()
    assert not check(f, (float("nan"), 0.0, 0.1), stamp=NOW - 0.01).ok
    # The NaN target was stamped later, but it was never accepted: an older good one still passes.
    assert check(f, (0.5, 0.0, 0.1), stamp=NOW - 0.02).ok


def test_joint_limits_and_joint_step():
    f = make_filter()
    q0 = np.radians([0, 30, 0, -90, 0, 60, 0])
    assert f.check_joints(q0 + 0.1, q0).ok
    over = q0.copy()
    over[3] = math.radians(-121)
    d = f.check_joints(over, over)
    assert d.status is Status.REJECTED and "joint A4" in d.reason and "outside" in d.reason
    flip = q0.copy()
    flip[6] += math.radians(40)
    d = f.check_joints(flip, q0)
    assert d.status is Status.REJECTED and "joint A7 would move 40.0 deg" in d.reason
    bad = q0.copy()
    bad[0] = float("nan")
    assert not f.check_joints(bad, q0).ok


def test_move_duration_follows_the_limiting_joint():
    m = load_model("iiwa7")
    f = make_filter(velocity_scale=0.5)
    q0 = np.zeros(7)
    q1 = np.zeros(7)
    q1[0] = 0.5  # A1: 98 deg/s
    q1[6] = 0.6  # A7: 180 deg/s
    expected = max(0.5 / (m.max_velocity[0] * 0.5), 0.6 / (m.max_velocity[6] * 0.5))
    assert f.move_duration(q0, q1) == pytest.approx(expected)
    assert expected == pytest.approx(0.5 / (math.radians(98) * 0.5))
    assert f.move_duration(q0, q0 + 1e-6) == pytest.approx(0.1)  # min duration
    # Joint speed on the trajectory never exceeds the scaled KUKA limit.
    dq = np.abs(q1 - q0) / f.move_duration(q0, q1)
    assert np.all(dq <= m.max_velocity * 0.5 + 1e-12)


def test_estop_latches_until_released_after_the_input_clears():
    e = EStop()
    assert not e.latched
    assert e.update(True) is True
    assert e.update(True) is False  # already latched
    ok, msg = e.release()
    assert not ok and "still asserted" in msg and e.latched
    assert e.update(False) is False
    assert e.latched  # False alone does not release
    ok, msg = e.release()
    assert ok and not e.latched
    assert e.release() == (True, "e-stop was not latched")


def test_watchdog_holds_once_when_commands_stop_during_a_move():
    w = Watchdog(command_timeout_s=0.5, joint_state_timeout_s=0.3)
    w.joint_state(0.0)
    w.command(0.0)
    w.move_started(0.0, 2.0)
    w.joint_state(0.5)
    assert w.tick(0.5) is None
    w.joint_state(0.6)
    assert "no target" in w.tick(0.6)
    assert w.tick(0.7) is None  # once only
    assert not w.moving(0.7)


def test_watchdog_holds_when_joint_states_go_stale_and_lets_finished_moves_be():
    w = Watchdog(command_timeout_s=5.0, joint_state_timeout_s=0.3)
    w.joint_state(0.0)
    w.command(0.0)
    w.move_started(0.0, 1.0)
    assert "joint_states stale" in w.tick(0.4)
    w.joint_state(1.0)
    w.command(1.0)
    w.move_started(1.0, 0.2)
    w.joint_state(1.5)
    assert w.tick(1.5) is None  # finished normally: nothing to do
    assert w.tick(9.0) is None  # idle: quiet inputs are fine


def test_joint_state_checks_limits_finiteness_and_jumps():
    m = load_model("iiwa7")
    f = make_filter(max_state_jump_rad=math.radians(5))
    q0 = np.radians([0, 30, 0, -90, 0, 60, 0])
    assert f.check_joint_state(q0) is None
    for a1, why in [(1e30, "outside the joint limits"), (3.1, "outside the joint limits"),
                    (-3.1, "outside the joint limits"), (float("nan"), "non-finite"),
                    (float("-inf"), "non-finite")]:
        q = q0.copy()
        q[0] = a1
        assert why in f.check_joint_state(q), a1
        assert why in f.check_joint_state(q, q0, 0.02), a1
    assert "non-finite" in f.check_joint_state(q0[:6])  # wrong size: unusable
    # Jumps: at most 2x the KUKA speed times dt plus the 5 deg tolerance.
    allowed = m.max_velocity * 2.0 * 0.1 + math.radians(5)
    near = q0.copy()
    near[2] += allowed[2] * 0.99
    assert f.check_joint_state(near, q0, 0.1) is None
    far = q0.copy()
    far[2] += allowed[2] * 1.01
    assert "A3" in f.check_joint_state(far, q0, 0.1) and "jump implausibly" in f.check_joint_state(far, q0, 0.1)
    assert f.check_joint_state(far, q0, 1.0) is None  # slower than the arm can move: plausible
    assert "jump" in f.check_joint_state(far, q0, -5.0)  # a clock going back allows no motion


def test_joint_command_needs_a_finite_reference():
    f = make_filter()
    q0 = np.radians([0, 30, 0, -90, 0, 60, 0])
    bad = q0.copy()
    bad[2] = float("nan")
    assert "no valid joint state" in f.check_joints(q0, bad).reason
    assert "no valid joint state" in f.check_joints(q0, q0[:3]).reason
    assert "outside" in f.check_joints(np.full(7, 1e30), q0).reason
    assert "invalid joint command" in f.check_joints(np.full(7, np.inf), q0).reason


def test_a_clock_that_jumps_back_does_not_freeze_or_refresh_anything():
    f = make_filter()
    assert check(f, (0.5, 0.0, 0.1), stamp=NOW - 0.01, now=NOW).ok
    # The clock went back ten minutes: new targets are not "out of order" against the old stamp.
    later = NOW - 600.0
    assert "future" in check(f, (0.5, 0.0, 0.1), stamp=NOW, now=later).reason
    assert check(f, (0.5, 0.0, 0.1), stamp=later - 0.01, now=later).ok
    assert "out-of-order" in check(f, (0.5, 0.0, 0.1), stamp=later - 0.02, now=later).reason
    # Ages are |now - t|: an arrival "in the future" of a clock that went back is not fresh.
    w = Watchdog(command_timeout_s=0.5, joint_state_timeout_s=0.3)
    w.joint_state(100.0)
    w.command(100.0)
    w.move_started(100.0, 1000.0)
    assert w.joint_states_fresh(100.1) and not w.joint_states_fresh(50.0)
    w.joint_state(50.0)
    assert "no target" in w.tick(50.0)
