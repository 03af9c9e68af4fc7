"""DriverCore without ROS: target -> command, joint_states handling, e-stop, watchdog, config."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rcan_common.config import ConfigError, from_dict
from kuka_iiwa_driver.config import DriverConfig
from kuka_iiwa_driver.driver import DriverCore, cause_of
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
    assert cause_of("joint A4 target -121.0 deg outside") == cause_of("joint A2 target 171.0 deg outside")
    assert cause_of("joint A4 target -121.0 deg outside") != cause_of("joint A2 would move 40.0 deg")
    assert cause_of("stale target: x") != cause_of("non-finite value (NaN/inf) in target")
    assert cause_of("workspace clamp (x=0.9->0.8)") != cause_of("step clamp (0.3 m -> 0.05 m)")


def test_causes_come_from_a_fixed_vocabulary_whatever_the_sender_writes(core):
    """Sender-controlled text (a frame_id) is in the reason, never in the cause."""
    from kuka_iiwa_driver.driver import CAUSES, OTHER_CAUSE, cause_of

    vocabulary = {c for _, c in CAUSES}
    causes = set()
    for i in range(1000):
        res = target(core, frame=f"evil_{i}_0123456789:[(")
        assert f"evil_{i}_" in res.reason
        causes.add(cause_of(res.reason))
    assert causes == {"target_frame"}
    long = target(core, frame="x" * 100_000 + "\n[ERROR] forged log line").reason
    assert len(long) < 200 and "\n" not in long and cause_of(long) == "target_frame"
    # Every rejection this core can produce maps into the vocabulary, none to 'other'.
    bad = list(HOME)
    bad[0] = 1e30
    reasons = [target(core, frame="world").reason, target(core, stamp=9.0).reason,
               target(core, stamp=10.5).reason, target(core, stamp=0.0).reason,
               target(core, dp=(float("nan"), 0.0, 0.0)).reason, target(core, yaw=0.0, dp=(0, 0, 0)).reason,
               core.on_joint_state(NAMES, bad, now=10.01), core.on_joint_state(NAMES[:3], [0.0] * 3, now=10.01),
               core.on_joint_state(NAMES, [0.0], now=10.01),
               core.on_joint_state(NAMES, [float("nan")] * 7, now=10.01),
               core.on_joint_state(NAMES, list(HOME + 0.5), now=10.01)]
    core.on_estop(True)
    reasons += [target(core).reason, core.on_gripper(True)[1]]
    for r in reasons:
        assert cause_of(r) in vocabulary and cause_of(r) != OTHER_CAUSE, r
    assert cause_of("anything else 123") == OTHER_CAUSE


def test_ee_pose_is_only_reported_while_joint_states_are_fresh(core):
    p, r, measured = core.fresh_ee_pose(10.1)
    assert measured == 10.0
    np.testing.assert_allclose(p, core.kin.fk(HOME)[0])
    assert core.fresh_ee_pose(10.0 + core.cfg.joint_state_timeout_s + 0.01) is None
    assert core.gripper is True  # initial_gripper_open until the first command


# ---- spoofed joint states (issue 12, item 1)
def _spoof(a1: float) -> list[float]:
    q = list(HOME)
    q[0] = a1
    return q


def _assert_safe(c: DriverCore, cmd, reference) -> None:
    """A command is finite, inside the KUKA limits and within the joint step of `reference`."""
    q = np.asarray(cmd.positions)
    assert q.shape == (7,) and np.all(np.isfinite(q))
    assert np.all(q >= c.model.lower) and np.all(q <= c.model.upper)
    assert np.max(np.abs(q - reference)) <= math.radians(c.cfg.max_joint_step_deg) + 1e-12


@pytest.mark.parametrize("a1,why", [(1e30, "outside the joint limits"), (3.1, "outside the joint limits"),
                                    (-3.1, "outside the joint limits"), (HOME[0] + 1.0, "jump implausibly"),
                                    (float("inf"), "non-finite")])
def test_spoofed_joint_state_is_rejected_and_the_estop_hold_uses_the_validated_one(core, a1, why):
    reason = core.on_joint_state(NAMES, _spoof(a1), now=10.01)
    assert reason is not None and why in reason
    assert core.counters.joint_states_rejected == 1
    np.testing.assert_array_equal(core.q, HOME)  # the spoofed values were never stored
    hold = core.on_estop(True)
    assert hold is not None and hold.kind == "hold"
    np.testing.assert_array_equal(hold.positions, HOME)
    _assert_safe(core, hold, HOME)


def test_watchdog_hold_uses_the_validated_state_too(core):
    assert target(core, dp=(0.0, 0.0, -0.05)).status is Status.ACCEPTED
    core.watchdog.move_end = 20.0
    assert "outside" in core.on_joint_state(NAMES, _spoof(3.1), now=10.2)
    hold = core.tick(10.6)  # the only validated state (10.0) is stale now
    assert hold is not None and "joint_states stale" in hold.reason
    np.testing.assert_array_equal(hold.positions, HOME)


def test_with_no_validated_state_the_driver_sends_nothing():
    c = DriverCore(DriverConfig())
    for a1 in (1e30, 3.1, float("nan")):
        assert c.on_joint_state(NAMES, _spoof(a1), now=1.0) is not None
    assert c.q is None
    assert c.on_estop(True) is None  # no hold: there is no state that may be held
    assert c.tick(1.1) is None
    c.on_estop(False)
    assert c.release_estop()[0]
    res = c.on_target((0.5, 0.0, 0.1), matrix_to_quat(top_down(0.0)), "lbr_link_0", 1.09, 1.1)
    assert res.command is None and "no fresh joint_states" in res.reason
    assert c.check_command(HOME) is not None


def test_plausible_motion_is_accepted_and_the_reference_is_retaken_after_a_gap(core):
    speed = core.model.max_velocity * 0.5
    q = HOME.copy()
    for k in range(1, 20):  # half the KUKA speed, at 50 Hz: all accepted
        q = HOME + speed * 0.02 * k * np.array([1, 0, 1, 0, 1, 0, 1])
        assert core.on_joint_state(NAMES, list(q), now=10.0 + 0.02 * k) is None
    np.testing.assert_allclose(core.q, q)
    # A sim reset teleports the arm: the jump is rejected while the validated state is fresh ...
    t = 10.0 + 0.02 * 19
    assert "jump implausibly" in core.on_joint_state(NAMES, list(HOME), now=t + 0.01)
    assert core.fresh_ee_pose(t + 0.01) is not None
    # ... and after joint_state_timeout_s without a validated state the next in-limit state is the reference.
    t_late = t + core.cfg.joint_state_timeout_s + 0.01
    assert core.on_joint_state(NAMES, list(HOME), now=t_late) is None
    np.testing.assert_array_equal(core.q, HOME)
    assert "outside" in core.on_joint_state(NAMES, _spoof(3.1), now=t_late + 10.0)  # limits always apply


def test_nothing_is_planned_or_held_from_a_disputed_state(core):
    """Seen in the fuzzed graph: a sim reset teleported the arm (A7 by 1.15 rad), its states were rejected as
    jumps while the old reference was still fresh, and a command planned from that old reference would have
    moved the arm back. While a jump disputes the reference, targets are refused and watchdog holds are not
    sent; the next validated state settles it."""
    assert target(core, dp=(0.0, 0.0, -0.05)).status is Status.ACCEPTED  # a move in flight
    teleported = HOME.copy()
    teleported[6] += 1.15
    assert "jump implausibly" in core.on_joint_state(NAMES, list(teleported), now=10.05)
    res = target(core, stamp=10.05, now=10.06)
    assert res.command is None and "joint_states disagree" in res.reason
    assert cause_of(res.reason) == "joint_states_disputed"
    core.watchdog.move_end = 10.0
    assert core.tick(10.0 + core.cfg.command_timeout_s + 0.01) is None  # no hold at the disputed HOME
    assert core.counters.holds == 0
    # A spoof, not a teleport: the next real state agrees with the reference and settles the dispute.
    assert core.on_joint_state(NAMES, list(HOME), now=10.1) is None
    assert target(core, stamp=10.1, now=10.11).status is Status.ACCEPTED
    # The e-stop still holds at the validated state while disputed: stopping a move in flight comes first.
    assert "jump implausibly" in core.on_joint_state(NAMES, list(teleported), now=10.12)
    hold = core.on_estop(True)
    assert hold is not None and hold.kind == "hold"
    np.testing.assert_array_equal(hold.positions, HOME)


def test_a_spoof_that_comes_first_after_a_gap_is_never_held_at_or_planned_from(core):
    """Seen in the fuzzed graph: a sim reset left the driver without a validated state for
    joint_state_timeout_s, the next state it took unchecked was a spoof (A5 1.27 rad off), and a hold at it
    went out. A state retaken after a gap stays disputed until a second one agrees with it."""
    assert core.on_joint_state(NAMES, list(HOME), now=10.0) is None
    t_late = 10.0 + core.cfg.joint_state_timeout_s + 0.01
    spoof = HOME.copy()
    spoof[4] += 1.27
    assert core.on_joint_state(NAMES, list(spoof), now=t_late) is None  # taken, but not trusted
    res = target(core, stamp=t_late, now=t_late + 0.001)
    assert res.command is None and cause_of(res.reason) == "joint_states_disputed"
    core.watchdog.move_end = 10.0
    assert core.tick(t_late + core.cfg.command_timeout_s) is None
    assert core.on_estop(True) is None  # no e-stop hold at an unchecked state either
    assert core.counters.holds == 0
    core.on_estop(False)
    assert core.release_estop()[0]
    # the real stream disagrees with the spoof ...
    assert "jump implausibly" in core.on_joint_state(NAMES, list(HOME), now=t_late + 0.02)
    # ... until it is retaken after another gap and a second real state agrees with it
    t2 = t_late + core.cfg.joint_state_timeout_s + 0.01
    assert core.on_joint_state(NAMES, list(HOME), now=t2) is None
    assert target(core, stamp=t2, now=t2 + 0.001).command is None
    assert core.on_joint_state(NAMES, list(HOME), now=t2 + 0.02) is None
    assert target(core, stamp=t2 + 0.02, now=t2 + 0.021).status is Status.ACCEPTED
    # A spoof after a shorter pause of the real stream (a sim reset takes a while) passes the speed check, since
    # the arm could have moved that far since; being further than a real state moves between two messages, it
    # is not trusted either.
    t3 = t2 + 0.3
    spoof = HOME.copy()
    spoof[5] -= 0.76
    assert core.on_joint_state(NAMES, list(spoof), now=t3) is None
    assert target(core, stamp=t3, now=t3 + 0.001).command is None
    assert core.on_estop(True) is None
    assert core.counters.holds == 0


def test_every_command_passes_the_same_checks_under_hostile_input():
    """Seeded random mix of good and hostile inputs: every command returned is safe w.r.t. the
    validated state at the time, whatever produced it (target, e-stop hold, watchdog hold)."""
    rng = np.random.default_rng(12)
    c = DriverCore(DriverConfig(robot_model="iiwa14"))
    hostile = [1e30, -1e30, 3.1, -3.1, float("nan"), float("inf"), 2.9, -2.9]
    now, sent = 1.0, 0
    for _ in range(1500):
        now += float(rng.uniform(0.0, 0.05))
        kind = rng.integers(0, 6)
        before = None if c.q is None else c.q.copy()
        cmd = None
        if kind == 0:
            q = HOME + rng.normal(0.0, 0.01, 7)
            if rng.random() < 0.5:
                q[rng.integers(0, 7)] = hostile[rng.integers(0, len(hostile))]
            c.on_joint_state(NAMES, list(q), now)
            continue
        if kind == 1 and c.q is not None:
            p, _ = c.ee_pose()
            res = c.on_target(p + rng.normal(0.0, 0.05, 3), matrix_to_quat(top_down(float(rng.uniform(-3, 3)))),
                              "lbr_link_0", now - 0.01, now)
            cmd = res.command
        elif kind == 2:
            cmd = c.on_estop(bool(rng.random() < 0.5))
        elif kind == 3:
            c.release_estop()
        else:
            cmd = c.tick(now)
        if cmd is not None:
            assert before is not None
            _assert_safe(c, cmd, before)
            sent += 1
    assert sent > 20  # the mix did produce commands of both kinds
    assert c.counters.joint_states_rejected > 100
