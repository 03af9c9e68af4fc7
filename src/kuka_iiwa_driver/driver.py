"""The driver's logic without ROS: Cartesian target -> safety -> IK -> joint command.

DriverCore is fed plain values (times in seconds on one clock) and returns JointCommand /
GripperCommand objects that the node turns into messages.  It never raises on bad input:
each problem becomes a rejection with a reason, counted and reported in status().

Invariant: every JointCommand it returns (move or hold, whatever produced it: a target, the
e-stop, the watchdog) has passed SafetyFilter.check_joints against the last *validated* joint
state, which is finite, inside the KUKA limits and was reached without an implausible jump.
With no validated state it returns no command at all.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from kuka_iiwa_driver.config import DriverConfig
from kuka_iiwa_driver.kinematics import Kinematics, load_model
from kuka_iiwa_driver.safety import EStop, SafetyFilter, Status, Watchdog


# The log-once vocabulary: a reason's cause is picked by the pattern its fixed opening matches,
# never taken from its text, which may quote values a sender controls (a frame_id, a number).
CAUSES: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p), c) for p, c in (
    (r"e-stop latched", "estop_latched"),
    (r"gripper command ignored", "gripper_ignored"),
    (r"target frame ", "target_frame"),
    (r"no fresh joint_states", "joint_states_not_fresh"),
    (r"no validated joint_states", "joint_states_not_validated"),
    (r"malformed target", "target_malformed"),
    (r"non-finite value", "target_non_finite"),
    (r"quaternion not normalised", "target_quaternion"),
    (r"missing header stamp", "target_stamp_missing"),
    (r"stale target", "target_stale"),
    (r"target stamped ", "target_future"),
    (r"out-of-order target", "target_out_of_order"),
    (r"orientation ", "target_orientation"),
    (r"workspace clamp", "workspace_clamp"),
    (r"step clamp", "step_clamp"),
    (r"IK failed", "ik_failed"),
    (r"invalid joint command", "joint_command_invalid"),
    (r"joint A\d+ target ", "joint_limit"),
    (r"joint A\d+ would move ", "joint_step"),
    (r"malformed joint_states", "joint_states_malformed"),
    (r"joint_states lacks joints", "joint_states_missing_joints"),
    (r"non-finite joint position", "joint_states_non_finite"),
    (r"joint_states outside the joint limits", "joint_states_out_of_limits"),
    (r"joint_states jump implausibly", "joint_states_jump"),
    (r"joint_states disagree", "joint_states_disputed"),
    (r"watchdog: joint_states stale", "watchdog_joint_states"),
    (r"watchdog: no target", "watchdog_no_target"),
))
OTHER_CAUSE = "other"


def cause_of(reason: str) -> str:
    """The fixed cause key of a reason (for log-once and counters); unknown openings -> 'other'."""
    for pattern, cause in CAUSES:
        if pattern.match(reason):
            return cause
    return OTHER_CAUSE


@dataclass(frozen=True)
class JointCommand:
    """One trajectory point: go to `positions` (rad) in `duration` s and stop there."""

    positions: np.ndarray
    duration: float
    kind: str  # "move" or "hold"
    reason: str = ""


@dataclass
class Counters:
    accepted: int = 0
    clamped: int = 0
    rejected: int = 0
    holds: int = 0
    gripper_commands: int = 0
    gripper_rejected: int = 0
    joint_states_rejected: int = 0
    commands_blocked: int = 0  # holds / moves that failed the final joint check (never sent)


@dataclass
class TargetResult:
    status: Status
    reason: str = ""
    command: JointCommand | None = None


class DriverCore:
    def __init__(self, cfg: DriverConfig) -> None:
        self.cfg = cfg
        self.model = load_model(cfg.robot_model)
        self.joint_names = cfg.resolved_joint_names()
        margin = math.radians(cfg.joint_limit_margin_deg)
        self.kin = Kinematics(self.model, cfg.tool_offset, margin)
        self.safety = SafetyFilter(
            workspace_min=cfg.workspace_min, workspace_max=cfg.workspace_max,
            max_step_m=cfg.max_step_m, max_tilt_rad=math.radians(cfg.max_tilt_deg),
            max_command_age_s=cfg.max_command_age_s, max_future_s=cfg.max_future_s,
            # The KUKA limits themselves: measured states and every command are checked against
            # them; IK goals additionally stay joint_limit_margin_deg inside (Kinematics clips).
            lower=self.model.lower, upper=self.model.upper, max_velocity=self.model.max_velocity,
            max_joint_step_rad=math.radians(cfg.max_joint_step_deg),
            velocity_scale=cfg.velocity_scale, min_move_duration_s=cfg.min_move_duration_s,
            max_state_jump_rad=math.radians(cfg.joint_state_max_jump_deg),
        )
        self.estop = EStop()
        self.watchdog = Watchdog(cfg.command_timeout_s, cfg.joint_state_timeout_s)
        self.rest_posture = np.radians(cfg.rest_posture_deg)
        self.q: np.ndarray | None = None  # last VALIDATED joint positions (A1..A7 order)
        self.q_time: float | None = None  # when self.q was validated
        # Set when a state jumps implausibly from self.q, cleared by the next validated state: either the
        # jump was a spoof (a real state follows at once) or the arm really is elsewhere (a sim reset
        # teleports it). Until then self.q may be wrong, so nothing is planned or held from it.
        self.q_disputed = False
        # Set when self.q was taken without a real check (after a gap, or further than a real state moves
        # between two messages) and no second state has agreed with it yet (see on_joint_state).
        self.q_provisional = False
        self.gripper = cfg.initial_gripper_open  # last forwarded gripper command (True open)
        self.counters = Counters()
        self.last_reject_reason = ""
        self.last_clamp_reason = ""
        self.last_hold_reason = ""

    # -- inputs -----------------------------------------------------------------------------
    def on_joint_state(self, names, positions, now: float) -> str | None:
        """Validate and store the arm's joint positions; returns a reason when the message is unusable.

        A state outside the KUKA limits is rejected.  So is one that jumps further from the last
        validated state than the arm can move in the time since (spoofed or glitched); once no
        state has been validated for joint_state_timeout_s (e.g. the sim teleported the arm on a
        reset), the next in-limit state is taken as the new reference.  That state, and one further than
        joint_state_max_jump_deg from the last, is disputed until a second state agrees with it.
        """
        if len(names) != len(positions):
            reason = "malformed joint_states: names and positions differ in length"
        else:
            index = {n: i for i, n in enumerate(names)}
            missing = [n for n in self.joint_names if n not in index]
            if missing:
                reason = f"joint_states lacks joints {missing}"
            else:
                q = np.array([positions[index[n]] for n in self.joint_names], dtype=float)
                fresh = self.q is not None and self.watchdog.joint_states_fresh(now)
                reason = self.safety.check_joint_state(q, self.q if fresh else None,
                                                       now - self.q_time if fresh else None)
                if reason is None:
                    # A state taken unchecked after a gap, or one that moved further than a real state moves
                    # between two messages (it passed only because the last one is a while ago), may be a spoof
                    # that happened to come first: it is the reference but stays disputed (nothing planned or
                    # held from it, e-stop included) until a second state agrees with it.
                    moved = self.q is not None and float(np.abs(q - self.q).max()) > self.safety.max_state_jump
                    provisional = self.q is not None and (not fresh or moved)
                    self.q, self.q_time = q, now
                    self.q_disputed = self.q_provisional = provisional
                    self.watchdog.joint_state(now)
                    return None
                self.q_disputed = self.q_disputed or (fresh and cause_of(reason) == "joint_states_jump")
        self.counters.joint_states_rejected += 1
        return reason

    def on_target(self, position, quaternion, frame_id: str, stamp: float, now: float) -> TargetResult:
        """Full pipeline for one target pose; the command (if any) must be sent as is."""
        result = self._plan(position, quaternion, frame_id, stamp, now)
        if result.status is Status.REJECTED:
            self.counters.rejected += 1
            self.last_reject_reason = result.reason
        else:
            if result.status is Status.CLAMPED:
                self.counters.clamped += 1
                self.last_clamp_reason = result.reason
            else:
                self.counters.accepted += 1
            self.watchdog.command(now)
            self.watchdog.move_started(now, result.command.duration)
        return result

    def _plan(self, position, quaternion, frame_id, stamp, now) -> TargetResult:
        if self.estop.latched:
            return TargetResult(Status.REJECTED, "e-stop latched: call ~/release_estop")
        if frame_id != self.cfg.base_frame:
            # The sender's text is quoted (repr, at most 64 characters): it reaches logs and status.
            shown = repr(frame_id[:64]) + ("..." if len(frame_id) > 64 else "")
            return TargetResult(Status.REJECTED, f"target frame {shown} is not base_frame "
                                                 f"'{self.cfg.base_frame}'")
        if self.q is None or not self.watchdog.joint_states_fresh(now):
            return TargetResult(Status.REJECTED, "no fresh joint_states: robot state unknown")
        if self.q_disputed:
            return TargetResult(Status.REJECTED, "joint_states disagree with the last validated state: "
                                                 "robot state unknown")
        current_p, _ = self.kin.fk(self.q)
        decision = self.safety.check_target(position, quaternion, stamp, now, current_p)
        if not decision.ok:
            return TargetResult(Status.REJECTED, decision.reason)
        q_goal = self._solve(decision.position, decision.rotation)
        if q_goal is None:
            return TargetResult(Status.REJECTED, "IK failed: target pose unreachable")
        reason = self.check_command(q_goal)
        if reason:
            return TargetResult(Status.REJECTED, reason)
        duration = self.safety.move_duration(self.q, q_goal)
        return TargetResult(decision.status, decision.reason,
                            JointCommand(q_goal, duration, "move", decision.reason))

    def _solve(self, position, rotation) -> np.ndarray | None:
        cfg = self.cfg
        for seed in (self.q, self.rest_posture):
            res = self.kin.ik(position, rotation, seed, max_iterations=cfg.ik_max_iterations,
                              position_tolerance=cfg.ik_position_tolerance_m,
                              orientation_tolerance=math.radians(cfg.ik_orientation_tolerance_deg))
            if res.ok:
                return res.q
        return None

    def on_gripper(self, open_: bool) -> tuple[bool | None, str]:
        """Gripper command (True open, False closed); returns (value to forward, reason if not)."""
        if self.estop.latched:
            self.counters.gripper_rejected += 1
            return None, "gripper command ignored: e-stop latched"
        self.gripper = bool(open_)
        self.counters.gripper_commands += 1
        return self.gripper, ""

    def on_estop(self, asserted: bool) -> JointCommand | None:
        """E-stop input; a newly latched e-stop returns a hold at the measured position."""
        if self.estop.update(asserted):
            return self._hold("e-stop")
        return None

    def release_estop(self) -> tuple[bool, str]:
        was_latched = self.estop.latched
        ok, message = self.estop.release()
        if ok and was_latched:
            # A fresh start: targets sent before the release are not replayed.
            self.safety.reset_stamps()
        return ok, message

    def tick(self, now: float) -> JointCommand | None:
        """Periodic watchdog check; returns a hold command at most once per move."""
        reason = self.watchdog.tick(now)
        if reason:
            return self._hold(reason)
        return None

    def check_command(self, positions) -> str | None:
        """The one gate every joint command passes before it is returned or sent: finite, inside
        the KUKA limits, within max_joint_step_deg of the last validated state (which must exist)."""
        if self.q is None:
            return "no validated joint_states: nothing may be sent"
        decision = self.safety.check_joints(positions, self.q)
        return None if decision.ok else decision.reason

    def _hold(self, reason: str) -> JointCommand | None:
        self.watchdog.stop()
        self.last_hold_reason = reason
        if self.q is None:
            return None  # never validated a state: nothing was ever sent, nothing to stop
        if self.q_disputed and (self.q_provisional or not self.estop.latched):
            # A watchdog hold at self.q could move an arm that is elsewhere (a sim reset teleports it); the
            # controller keeps its last point instead. The e-stop still holds at a checked self.q: stopping a
            # move in flight comes first, and on a real arm a disputed state is a spoof, so self.q is where it
            # is. A provisional self.q was never checked against anything, so nothing is held there.
            return None
        blocked = self.check_command(self.q)
        if blocked:  # cannot happen for a validated state; the gate holds regardless
            self.counters.commands_blocked += 1
            self.last_reject_reason = blocked
            return None
        self.counters.holds += 1
        return JointCommand(self.q.copy(), self.cfg.hold_duration_s, "hold", reason)

    # -- state ------------------------------------------------------------------------------
    def ee_pose(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Tool pose from the last joint_states (None before the first)."""
        if self.q is None:
            return None
        return self.kin.fk(self.q)

    def fresh_ee_pose(self, now: float) -> tuple[np.ndarray, np.ndarray, float] | None:
        """Tool pose and the time its joint_states arrived, only while they are fresh.

        A stale robot state is not re-published as if it were current.
        """
        if self.q is None or not self.watchdog.joint_states_fresh(now):
            return None
        p, r = self.kin.fk(self.q)
        return p, r, self.watchdog.last_joint_state

    def state(self, now: float) -> str:
        if self.estop.latched:
            return "estop"
        if self.q is None or not self.watchdog.joint_states_fresh(now):
            return "waiting_for_joint_states"
        return "moving" if self.watchdog.moving(now) else "idle"

    def status(self, now: float) -> dict:
        wd = self.watchdog
        return {
            "state": self.state(now),
            "robot_model": self.model.name,
            "estop": {"latched": self.estop.latched, "input_asserted": self.estop.asserted},
            "last_reject_reason": self.last_reject_reason,
            "last_clamp_reason": self.last_clamp_reason,
            "watchdog": {
                "last_hold_reason": self.last_hold_reason,
                "command_age_s": None if wd.last_command is None else round(now - wd.last_command, 3),
                "joint_state_age_s": None if wd.last_joint_state is None else round(now - wd.last_joint_state, 3),
            },
            "gripper": self.gripper,
            "counters": vars(self.counters).copy(),
        }
