"""The driver's logic without ROS: Cartesian target -> safety -> IK -> joint command.

DriverCore is fed plain values (times in seconds on one clock) and returns JointCommand /
GripperCommand objects that the node turns into messages.  It never raises on bad input:
each problem becomes a rejection with a reason, counted and reported in status().
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kuka_iiwa_driver.config import DriverConfig
from kuka_iiwa_driver.kinematics import Kinematics, load_model
from kuka_iiwa_driver.safety import EStop, SafetyFilter, Status, Watchdog, check_joint_state


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
            lower=self.kin.lower, upper=self.kin.upper, max_velocity=self.model.max_velocity,
            max_joint_step_rad=math.radians(cfg.max_joint_step_deg),
            velocity_scale=cfg.velocity_scale, min_move_duration_s=cfg.min_move_duration_s,
        )
        self.estop = EStop()
        self.watchdog = Watchdog(cfg.command_timeout_s, cfg.joint_state_timeout_s)
        self.rest_posture = np.radians(cfg.rest_posture_deg)
        self.q: np.ndarray | None = None  # last measured joint positions (A1..A7 order)
        self.gripper = cfg.initial_gripper_open  # last forwarded gripper command (True open)
        self.counters = Counters()
        self.last_reject_reason = ""
        self.last_clamp_reason = ""
        self.last_hold_reason = ""

    # -- inputs -----------------------------------------------------------------------------
    def on_joint_state(self, names, positions, now: float) -> str | None:
        """Store the arm's joint positions; returns a reason when the message is unusable."""
        if len(names) != len(positions):
            reason = "malformed joint_states: names and positions differ in length"
        else:
            index = {n: i for i, n in enumerate(names)}
            missing = [n for n in self.joint_names if n not in index]
            if missing:
                reason = f"joint_states lacks joints {missing}"
            else:
                q = np.array([positions[index[n]] for n in self.joint_names], dtype=float)
                reason = check_joint_state(q)
                if reason is None:
                    self.q = q
                    self.watchdog.joint_state(now)
                    return None
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
            return TargetResult(Status.REJECTED, f"target frame '{frame_id}' is not base_frame "
                                                 f"'{self.cfg.base_frame}'")
        if self.q is None or not self.watchdog.joint_states_fresh(now):
            return TargetResult(Status.REJECTED, "no fresh joint_states: robot state unknown")
        current_p, _ = self.kin.fk(self.q)
        decision = self.safety.check_target(position, quaternion, stamp, now, current_p)
        if not decision.ok:
            return TargetResult(Status.REJECTED, decision.reason)
        q_goal = self._solve(decision.position, decision.rotation)
        if q_goal is None:
            return TargetResult(Status.REJECTED, "IK failed: target pose unreachable")
        joints = self.safety.check_joints(q_goal, self.q)
        if not joints.ok:
            return TargetResult(Status.REJECTED, joints.reason)
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

    def _hold(self, reason: str) -> JointCommand | None:
        self.watchdog.stop()
        self.last_hold_reason = reason
        if self.q is None:
            return None  # never measured: nothing was ever sent, nothing to stop
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
