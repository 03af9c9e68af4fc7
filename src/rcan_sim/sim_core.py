"""The sim node's logic without ROS: joint-trajectory execution and the world clock.

`TrajectoryFollower` behaves like ros2_control's joint_trajectory_controller for what rcan
uses: a trajectory starts when it is received, the arm moves linearly from where it is
to each point at its time_from_start, the last point is held, and a new trajectory
replaces the old one (from the current commanded position, so the arm never jumps).

`SimCore` owns a `GraspWorld` and advances it in fixed physics steps, feeding the
follower's setpoints to the arm's position controllers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

ARM_JOINTS = tuple(f"A{i}" for i in range(1, 8))


class TrajectoryError(ValueError):
    """A joint trajectory that cannot be executed; ``reason`` is a short cause for log-once."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def arm_joint_names(prefix: str) -> tuple[str, ...]:
    """<prefix>A1 .. <prefix>A7 (lbr_fri_ros2_stack names with the default prefix 'lbr_')."""
    return tuple(prefix + j for j in ARM_JOINTS)


@dataclass(frozen=True)
class Trajectory:
    start: float  # follower time at which time_from_start counts from
    times: np.ndarray  # (K+1,) seconds from start; times[0] = 0 is the start position
    positions: np.ndarray  # (K+1, 7) in arm joint order; row 0 = commanded position at receipt


def parse_trajectory(joint_names: Sequence[str], names: Sequence[str], points: Sequence[tuple[float, Sequence[float]]],
                     max_abs_position: float = 2 * math.pi) -> tuple[np.ndarray, np.ndarray]:
    """Validate a trajectory and reorder it to `joint_names` order.

    `points` are (time_from_start seconds, positions).  Returns (times (K,), positions (K, 7)).
    Raises TrajectoryError for wrong/missing/duplicate joint names, wrong position counts,
    NaN/inf or absurd positions, no points, or times that do not increase.
    """
    names = list(names)
    if len(set(names)) != len(names):
        raise TrajectoryError("duplicate_joints", f"joint names repeat: {names}")
    unknown = [n for n in names if n not in joint_names]
    missing = [n for n in joint_names if n not in names]
    if unknown or missing:
        raise TrajectoryError("joint_names", f"trajectory joints {names} do not match the arm's {list(joint_names)} "
                                             f"(unknown {unknown}, missing {missing})")
    if not points:
        raise TrajectoryError("empty", "trajectory has no points")
    order = [names.index(n) for n in joint_names]
    times = np.empty(len(points))
    positions = np.empty((len(points), len(joint_names)))
    for k, (t, q) in enumerate(points):
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (len(names),):
            raise TrajectoryError("point_size", f"point {k} has {q.size} positions for {len(names)} joints")
        if not np.all(np.isfinite(q)) or not math.isfinite(t):
            raise TrajectoryError("non_finite", f"point {k} has NaN/inf (t={t}, positions={q.tolist()})")
        if np.any(np.abs(q) > max_abs_position):
            raise TrajectoryError("out_of_range", f"point {k} has a position beyond +-{max_abs_position:.2f} rad: {q.tolist()}")
        times[k] = t
        positions[k] = q[order]
    if times[0] < 0 or np.any(np.diff(times) <= 0):
        raise TrajectoryError("time_order", f"time_from_start must be >= 0 and strictly increasing, got {times.tolist()}")
    return times, positions


class TrajectoryFollower:
    """Time-parameterised setpoints for the 7 arm joints (see module docstring)."""

    def __init__(self, joint_names: Sequence[str], initial: Sequence[float]):
        self.joint_names = tuple(joint_names)
        self._hold = np.asarray(initial, dtype=np.float64).copy()
        self._traj: Trajectory | None = None

    def set_trajectory(self, now: float, names: Sequence[str], points: Sequence[tuple[float, Sequence[float]]]) -> None:
        """Replace the active trajectory with one that starts at `now` (raises TrajectoryError)."""
        times, positions = parse_trajectory(self.joint_names, names, points)
        current = self.setpoint(now)
        if times[0] == 0.0:
            # A first point at t=0 is where the arm should be right now: go there directly.
            times_full, pos_full = times, positions
        else:
            times_full = np.concatenate([[0.0], times])
            pos_full = np.vstack([current, positions])
        self._traj = Trajectory(now, times_full, pos_full)

    def hold(self, positions: Sequence[float]) -> None:
        """Drop any trajectory and hold `positions` (used on reset)."""
        self._traj = None
        self._hold = np.asarray(positions, dtype=np.float64).copy()

    @property
    def active(self) -> bool:
        return self._traj is not None

    def setpoint(self, now: float) -> np.ndarray:
        """The commanded joint positions at follower time `now`."""
        traj = self._traj
        if traj is None:
            return self._hold.copy()
        t = now - traj.start
        if t >= traj.times[-1]:
            self._hold = traj.positions[-1].copy()
            self._traj = None
            return self._hold.copy()
        if t <= traj.times[0]:
            return traj.positions[0].copy()
        k = int(np.searchsorted(traj.times, t, side="right")) - 1
        t0, t1 = traj.times[k], traj.times[k + 1]
        w = (t - t0) / (t1 - t0)
        return (1.0 - w) * traj.positions[k] + w * traj.positions[k + 1]


class SimCore:
    """A GraspWorld driven by joint trajectories and gripper commands, on its own clock.

    `world` is a rcan_sim.world.GraspWorld (or anything with the same joint-level API).
    Time here is simulation time in seconds: `advance(dt)` runs round(dt * physics_hz)
    physics steps, carrying the remainder so that the long-run rate is exact.
    """

    def __init__(self, world: Any, joint_names: Sequence[str], physics_hz: float, seed: int = 0,
                 object_split: str = "test"):
        self.world = world
        self.joint_names = tuple(joint_names)
        self.physics_hz = float(physics_hz)
        self.seed = int(seed)
        self.object_split = object_split
        self.episode = -1
        self.time = 0.0
        self._carry = 0.0
        self.follower = TrajectoryFollower(self.joint_names, self.arm_positions())

    def arm_positions(self) -> np.ndarray:
        return np.asarray(self.world.joint_positions(), dtype=np.float64)[: len(self.joint_names)]

    def reset(self, seed: int | None = None) -> dict:
        """New episode (seed = base seed + episode index unless given); returns episode info."""
        self.episode += 1
        episode_seed = self.seed + self.episode if seed is None else int(seed)
        self.world.reset(episode_seed)
        self.follower.hold(self.arm_positions())
        return {"episode": self.episode, "seed": episode_seed, "object_ids": list(self.world.object_ids)}

    def on_trajectory(self, names: Sequence[str], points: Sequence[tuple[float, Sequence[float]]]) -> None:
        self.follower.set_trajectory(self.time, names, points)

    def on_gripper(self, open_: bool) -> None:
        self.world.set_gripper(bool(open_))

    def gripper_open(self) -> bool:
        return bool(self.world.gripper_is_open())

    def advance(self, dt: float) -> int:
        """Advance simulation time by `dt` seconds; returns the number of physics steps run."""
        if dt <= 0:
            return 0
        exact = dt * self.physics_hz + self._carry
        steps = int(exact)
        self._carry = exact - steps
        if steps == 0:
            return 0
        for _ in range(steps):
            self.time += 1.0 / self.physics_hz
            self.world.set_arm_joint_targets(self.follower.setpoint(self.time))
            self.world.step_physics(1)
        return steps

    def joint_state(self) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
        return self.joint_names, self.arm_positions(), np.asarray(self.world.joint_velocities(), dtype=np.float64)

    def grasp_success(self, success_height: float) -> tuple[bool, dict]:
        """An object held by the gripper (touching nothing else) with its base above
        `success_height` over the tray bottom: the env's success rule, checked on the spot."""
        held = self.world.held_objects()
        heights = self.world.object_heights()
        success = any(heights[i] > success_height for i in held)
        return bool(success), {"held": [int(i) for i in held], "heights": [round(float(h), 4) for h in heights],
                               "success_height": success_height, "episode": self.episode}
