"""Safety rules between the policy's Cartesian target and the robot, in plain Python.

Every rule returns a reason string that ends up in the driver status, so an operator can see
why a command was clamped or rejected.  Order of the target checks (cheap and absolute first):
non-finite values -> quaternion -> stamp (stale / future / out of order) -> orientation
(top-down, yaw only) -> workspace box (clamp) -> Cartesian step (clamp).  After IK the joint
checks run: finite, KUKA position limits, joint step.  Moves are timed from the KUKA velocity
limits.  The e-stop latch and the watchdog are separate small state machines.

Measured joint states are checked too (check_joint_state): finite, inside the KUKA position
limits, and no implausible jump from the last validated state.  Every joint command the driver
sends (move, hold) passes check_joints against that validated state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np

from kuka_iiwa_driver.kinematics import quat_to_matrix

# Tool z axis straight down, tool x axis along base x: yaw 0 of the top-down family.
TOP_DOWN = np.diag([1.0, -1.0, -1.0])


class Status(str, Enum):
    ACCEPTED = "accepted"
    CLAMPED = "clamped"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Decision:
    status: Status
    reason: str = ""
    position: np.ndarray | None = None
    rotation: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.status is not Status.REJECTED


def reject(reason: str) -> Decision:
    return Decision(Status.REJECTED, reason)


def top_down(yaw: float) -> np.ndarray:
    """Rotation of the top-down tool turned by `yaw` about the vertical."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ TOP_DOWN


def yaw_and_tilt(rotation: np.ndarray) -> tuple[float, float]:
    """Yaw of the tool x axis about the vertical, and the tool axis' angle from straight down."""
    tilt = math.acos(max(-1.0, min(1.0, -float(rotation[2, 2]))))
    # Tool x axis projected on the horizontal plane; for a tilted tool the y axis is a fallback.
    x_axis = rotation[:, 0]
    if math.hypot(x_axis[0], x_axis[1]) > 1e-6:
        yaw = math.atan2(x_axis[1], x_axis[0])
    else:
        yaw = math.atan2(-rotation[0, 1], rotation[1, 1])
    return yaw, tilt


class SafetyFilter:
    """Target and joint checks with fixed limits (see DriverConfig for the meaning of each)."""

    def __init__(self, *, workspace_min, workspace_max, max_step_m: float, max_tilt_rad: float,
                 max_command_age_s: float, max_future_s: float, lower, upper, max_velocity,
                 max_joint_step_rad: float, velocity_scale: float, min_move_duration_s: float,
                 max_state_jump_rad: float = math.radians(5.0), state_speed_factor: float = 2.0):
        self.ws_min = np.asarray(workspace_min, dtype=float)
        self.ws_max = np.asarray(workspace_max, dtype=float)
        self.max_step = float(max_step_m)
        self.max_tilt = float(max_tilt_rad)
        self.max_age = float(max_command_age_s)
        self.max_future = float(max_future_s)
        self.lower = np.asarray(lower, dtype=float)
        self.upper = np.asarray(upper, dtype=float)
        self.max_velocity = np.asarray(max_velocity, dtype=float)
        self.max_joint_step = float(max_joint_step_rad)
        self.velocity_scale = float(velocity_scale)
        self.min_duration = float(min_move_duration_s)
        self.max_state_jump = float(max_state_jump_rad)
        self.state_speed_factor = float(state_speed_factor)
        self.last_stamp: float | None = None

    def reset_stamps(self) -> None:
        """Forget the last accepted stamp (after an e-stop release the sender may restart)."""
        self.last_stamp = None

    def check_stamp(self, stamp: float, now: float) -> str | None:
        if stamp <= 0.0:
            return "missing header stamp (0): targets must be stamped"
        age = now - stamp
        if age > self.max_age:
            return f"stale target: stamp is {age:.3f} s old (max {self.max_age} s)"
        if age < -self.max_future:
            return f"target stamped {-age:.3f} s in the future (max {self.max_future} s)"
        if self.last_stamp is not None and self.last_stamp > now + self.max_future:
            self.last_stamp = None  # accepted "in the future": this clock went back, start over
        if self.last_stamp is not None and stamp <= self.last_stamp:
            return "out-of-order target: stamp not newer than the last accepted one"
        return None

    def check_target(self, position, quaternion, stamp: float, now: float,
                     current_position) -> Decision:
        """Validate a tool pose target; returns the (possibly clamped) position and projected rotation."""
        p = np.asarray(position, dtype=float)
        q = np.asarray(quaternion, dtype=float)
        if p.shape != (3,) or q.shape != (4,):
            return reject("malformed target: need 3 position and 4 quaternion values")
        if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q)) and math.isfinite(stamp)):
            return reject("non-finite value (NaN/inf) in target")
        norm = float(np.linalg.norm(q))
        if abs(norm - 1.0) > 0.01:
            return reject(f"quaternion not normalised (norm {norm:.4f})")
        reason = self.check_stamp(stamp, now)
        if reason:
            return reject(reason)
        yaw, tilt = yaw_and_tilt(quat_to_matrix(q / norm))
        if tilt > self.max_tilt:
            return reject(f"orientation {math.degrees(tilt):.1f} deg from top-down "
                          f"(max {math.degrees(self.max_tilt):.1f} deg)")
        rotation = top_down(yaw)
        clamps = []
        boxed = np.clip(p, self.ws_min, self.ws_max)
        if np.any(boxed != p):
            axes = ", ".join(f"{'xyz'[i]}={p[i]:.3f}->{boxed[i]:.3f}" for i in range(3) if boxed[i] != p[i])
            clamps.append(f"workspace clamp ({axes})")
        cur = np.asarray(current_position, dtype=float)
        delta = boxed - cur
        dist = float(np.linalg.norm(delta))
        if dist > self.max_step:
            boxed = cur + delta * (self.max_step / dist)
            clamps.append(f"step clamp ({dist:.3f} m -> {self.max_step} m)")
        self.last_stamp = stamp
        if clamps:
            return Decision(Status.CLAMPED, "; ".join(clamps), boxed, rotation)
        return Decision(Status.ACCEPTED, "", boxed, rotation)

    def check_joints(self, q_target, q_current) -> Decision:
        """Joint-space checks on every joint command before it may be sent (moves and holds alike).

        `q_current` is the last validated joint state: the step is measured from it.
        """
        q = np.asarray(q_target, dtype=float)
        if q.shape != self.lower.shape or not np.all(np.isfinite(q)):
            return reject("invalid joint command: need finite values for every joint")
        bad = np.nonzero((q < self.lower) | (q > self.upper))[0]
        if bad.size:
            i = int(bad[0])
            return reject(f"joint A{i + 1} target {math.degrees(q[i]):.1f} deg outside "
                          f"[{math.degrees(self.lower[i]):.1f}, {math.degrees(self.upper[i]):.1f}] deg")
        ref = np.asarray(q_current, dtype=float)
        if ref.shape != q.shape or not np.all(np.isfinite(ref)):
            return reject("invalid joint command: no valid joint state to step from")
        step = np.abs(q - ref)
        i = int(np.argmax(step))
        if step[i] > self.max_joint_step:
            return reject(f"joint A{i + 1} would move {math.degrees(step[i]):.1f} deg in one command "
                          f"(max {math.degrees(self.max_joint_step):.1f} deg)")
        return Decision(Status.ACCEPTED)

    def move_duration(self, q_from, q_to) -> float:
        """Time for the move at velocity_scale of each joint's KUKA speed; the slowest joint rules."""
        dq = np.abs(np.asarray(q_to, dtype=float) - np.asarray(q_from, dtype=float))
        return max(self.min_duration, float(np.max(dq / (self.max_velocity * self.velocity_scale))))

    def check_joint_state(self, positions, last_valid=None, dt: float | None = None) -> str | None:
        """A measured joint state the driver may use: finite, inside the KUKA position limits and,
        given the last validated state `dt` seconds earlier, no faster than state_speed_factor x
        the KUKA joint speed plus max_state_jump (a spoofed or glitched state is rejected)."""
        q = np.asarray(positions, dtype=float)
        if q.shape != self.lower.shape or not np.all(np.isfinite(q)):
            return "non-finite joint position in joint_states"
        bad = np.nonzero((q < self.lower) | (q > self.upper))[0]
        if bad.size:
            i = int(bad[0])
            return (f"joint_states outside the joint limits: A{i + 1} at {q[i]:.4g} rad, limits "
                    f"[{self.lower[i]:.4f}, {self.upper[i]:.4f}] rad")
        if last_valid is not None and dt is not None:
            allowed = self.max_velocity * self.state_speed_factor * max(0.0, float(dt)) + self.max_state_jump
            jump = np.abs(q - np.asarray(last_valid, dtype=float))
            i = int(np.argmax(jump - allowed))
            if jump[i] > allowed[i]:
                return (f"joint_states jump implausibly: A{i + 1} moved {math.degrees(jump[i]):.1f} deg in "
                        f"{float(dt):.3f} s (at most {math.degrees(allowed[i]):.1f} deg)")
        return None


class EStop:
    """Latching e-stop: True latches; release needs the source to read False AND an explicit release."""

    def __init__(self) -> None:
        self.latched = False
        self.asserted = False  # last value seen on the e-stop input
        self.reason = ""

    def update(self, asserted: bool) -> bool:
        """Feed an e-stop input value; returns True when this call newly latched the e-stop."""
        self.asserted = bool(asserted)
        if self.asserted and not self.latched:
            self.latched = True
            self.reason = "e-stop input asserted"
            return True
        return False

    def release(self) -> tuple[bool, str]:
        if not self.latched:
            return True, "e-stop was not latched"
        if self.asserted:
            return False, "e-stop input still asserted (publish False first)"
        self.latched = False
        self.reason = ""
        return True, "e-stop released"


class Watchdog:
    """Stops a move in flight when targets stop arriving or joint_states go stale.

    tick() returns a reason exactly once per move, when the driver must publish a hold.
    """

    def __init__(self, command_timeout_s: float, joint_state_timeout_s: float) -> None:
        self.command_timeout = command_timeout_s
        self.joint_state_timeout = joint_state_timeout_s
        self.last_command: float | None = None
        self.last_joint_state: float | None = None
        self.move_end: float | None = None  # None: nothing in flight

    def command(self, now: float) -> None:
        self.last_command = now

    def joint_state(self, now: float) -> None:
        self.last_joint_state = now

    def joint_states_fresh(self, now: float) -> bool:
        # |now - t|: after this clock jumps back, an old arrival time is not fresh for ever.
        return self.last_joint_state is not None and abs(now - self.last_joint_state) <= self.joint_state_timeout

    def move_started(self, now: float, duration: float) -> None:
        self.move_end = now + duration

    def stop(self) -> None:
        self.move_end = None

    def moving(self, now: float) -> bool:
        return self.move_end is not None and now < self.move_end

    def tick(self, now: float) -> str | None:
        if self.move_end is None:
            return None
        if now >= self.move_end:
            self.move_end = None  # finished normally: the controller holds the last point
            return None
        if not self.joint_states_fresh(now):
            self.move_end = None
            return "watchdog: joint_states stale during a move"
        if self.last_command is None or abs(now - self.last_command) > self.command_timeout:
            self.move_end = None
            return f"watchdog: no target for {self.command_timeout} s during a move"
        return None

