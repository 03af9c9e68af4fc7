"""Privileged scripted grasp policy (bootstrap data and the baseline: `rcan eval-policy --policy scripted`).

The policy reads the simulator's ground truth (object poses and hulls), picks the object
nearest the gripper, turns the fingers across the object's narrow horizontal axis, moves
above it, descends, closes and terminates.  It bounds what the env allows: a learned
policy should approach, not exceed, its success rate.

With `aim_offset` > 0 it aims, per episode, at a point up to that far from the object's
centre: bootstrap data then holds near misses next to the grasps that work, which is what
teaches a Q-function how well aligned a grasp has to be.

With `close_jitter` > 0 its close and terminate actions carry a small random motion (uniform,
up to that far in x and y, half of it in z, and 10 rad/m of it in yaw: 5 mm, 2.5 mm and
0.05 rad at 0.005), within the tolerance closing was measured to have, seeded by the episode
and the step.  Zero-motion close and terminate alone would teach a Q-function a peak no
search samples.
"""
from __future__ import annotations

import math

import numpy as np
import pybullet as pb

from rcan_sim import objects
from rcan_common.action import make_action
from rcan_sim.env import GraspEnv


class ScriptedGraspPolicy:
    """Callable `policy(obs, env) -> action` using `env.privileged_state()`."""

    def __init__(self, approach_height: float = 0.08, xy_tolerance: float = 0.006, yaw_tolerance: float = 0.08,
                 z_tolerance: float = 0.006, grasp_clearance: float = 0.015, finger_reach: float = 0.09,
                 divider_clearance: float = 0.03, max_width: float = 0.11, aim_offset: float = 0.0,
                 close_jitter: float = 0.0):
        self.approach_height = approach_height  # above the grasp height while still moving sideways (m)
        self.xy_tolerance = xy_tolerance
        self.yaw_tolerance = yaw_tolerance
        self.z_tolerance = z_tolerance
        self.grasp_clearance = grasp_clearance  # TCP above the object's lowest point when closing (m)
        self.finger_reach = finger_reach  # open fingertips' distance from the TCP (m)
        self.divider_clearance = divider_clearance
        self.max_width = max_width  # widest object the open gripper takes comfortably (m)
        if aim_offset < 0:
            raise ValueError(f"aim_offset must be >= 0, got {aim_offset}")
        self.aim_offset = aim_offset  # radius (m) of the disc the per-episode aim point is drawn from
        if close_jitter < 0:
            raise ValueError(f"close_jitter must be >= 0, got {close_jitter}")
        self.close_jitter = close_jitter  # largest |dx|, |dy| (m) of the motion close and terminate carry
        self._target: tuple[int | None, int, float, np.ndarray] | None = None  # (seed, object, yaw, aim offset)

    def __call__(self, obs, env: GraspEnv) -> np.ndarray:
        s = env.privileged_state()
        if not s["gripper_open"]:
            return make_action(*self._jitter(env, s), terminate=True)
        idx, yaw, offset = self._choose(env, s)
        lo, _ = s["object_aabbs"][idx]
        centre = object_centre_xy(env.world.object_ids[idx], s["object_positions"][idx], s["object_orientations"][idx])
        centre = centre + offset
        grasp_z = max(s["workspace_low"][2], lo[2] + self.grasp_clearance)
        target = s["tcp_target"]
        dxy = np.clip(centre, s["workspace_low"][:2], s["workspace_high"][:2]) - target[:2]
        dyaw = yaw - s["yaw"]
        step = s["max_translation"]
        aligned = np.linalg.norm(dxy) <= self.xy_tolerance and abs(dyaw) <= self.yaw_tolerance
        if not aligned:
            dz = np.clip(max(grasp_z + self.approach_height, target[2] - step) - target[2], -step, step)
            return make_action(np.clip(np.array([*dxy, dz]), -step, step), dyaw)
        if target[2] - grasp_z > self.z_tolerance:
            return make_action([*dxy, max(grasp_z - target[2], -step)], dyaw)
        return make_action(*self._jitter(env, s), gripper="close")

    def _jitter(self, env: GraspEnv, s) -> tuple[np.ndarray, float]:
        """The small motion (translation, dtheta) a close or terminate carries, seeded by episode and step."""
        if self.close_jitter == 0:
            return np.zeros(3), 0.0
        rng = np.random.default_rng([int(env.world.episode_seed or 0), int(s["steps"]), 0x7E1])
        j = self.close_jitter
        u = rng.uniform(-1.0, 1.0, 4)
        return np.array([u[0] * j, u[1] * j, u[2] * j / 2]), float(u[3] * j * 10.0)

    def _choose(self, env: GraspEnv, s) -> tuple[int, float, np.ndarray]:
        """Pick (once per episode) the reachable object nearest the gripper whose fingers
        clear the divider, the grasp yaw for it, and the aim point's offset from its centre."""
        key = env.world.episode_seed
        if self._target is None or self._target[0] != key:
            best = (math.inf, 0, 0.0)
            a, b = s["divider_segment"]
            for i, oid in enumerate(env.world.object_ids):
                pos, orn = s["object_positions"][i], s["object_orientations"][i]
                centre = object_centre_xy(oid, pos, orn)
                cost = float(np.linalg.norm(centre - s["tcp"][:2]))
                if np.any(centre < s["workspace_low"][:2]) or np.any(centre > s["workspace_high"][:2]):
                    cost += 10.0
                yaw, width = grasp_yaw(oid, orn)
                tips = [centre + sign * self.finger_reach * np.array([math.cos(yaw), math.sin(yaw)]) for sign in (-1, 1)]
                if min(_segment_distance(t, a, b) for t in tips) < self.divider_clearance:
                    cost += 1.0
                if width > self.max_width:
                    cost += 2.0
                best = min(best, (cost, i, yaw))
            # uniform in the disc, seeded by the episode so a scene replays the same attempt
            rng = np.random.default_rng([int(key or 0), 0x5C41])
            radius, angle = self.aim_offset * math.sqrt(rng.random()), 2 * math.pi * rng.random()
            self._target = (key, best[1], best[2], radius * np.array([math.cos(angle), math.sin(angle)]))
        return self._target[1], self._target[2], self._target[3]


def _hull_xy(object_id: int, orn) -> np.ndarray:
    pts = objects.object_model(object_id).hull_points
    rot = np.array(pb.getMatrixFromQuaternion(list(orn))).reshape(3, 3)
    return (pts @ rot.T)[:, :2]


def object_centre_xy(object_id: int, pos, orn) -> np.ndarray:
    """Horizontal centre of the object's hull (the mesh origin can be off-centre)."""
    xy = _hull_xy(object_id, orn)
    return np.asarray(pos[:2]) + (xy.min(0) + xy.max(0)) / 2


def grasp_yaw(object_id: int, orn) -> tuple[float, float]:
    """Yaw that closes the fingers (along the gripper's x axis) across the object's narrow axis, and the
    object's width along it."""
    xy = _hull_xy(object_id, orn)
    xy = xy - xy.mean(0)
    _, vecs = np.linalg.eigh(xy.T @ xy)
    minor = vecs[:, 0]  # eigenvalues ascending: narrowest direction first
    width = float(np.ptp(xy @ minor))
    # The gripper is symmetric under half turns, so [-pi/2, pi/2] (the env's yaw range) covers all.
    return math.remainder(math.atan2(minor[1], minor[0]), math.pi), width


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / max(float(np.dot(ab, ab)), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


class DescendGraspPolicy:
    """Blind completion `policy(obs, env) -> action`: straight down to the lowest TCP height, close, terminate.

    It reads nothing but the TCP target and the gripper (what the robot itself knows), so the return it gets
    after an action a says whether a put the fingers above something they can grasp: the label of a move
    then depends on where the move goes, which a privileged completion that corrects any move does not
    give (rcan label-states --completion descend)."""

    def __init__(self, z_tolerance: float = 0.002):
        self.z_tolerance = z_tolerance  # close once the TCP target is this close to the lowest height (m)

    def __call__(self, obs, env: GraspEnv) -> np.ndarray:
        if not env.world.gripper_is_open():
            return make_action(terminate=True)
        dz = env.workspace_low[2] - env.tcp_target[2]
        if dz < -self.z_tolerance:
            return make_action([0.0, 0.0, max(dz, -env.cfg.bounds.max_translation)])
        return make_action(gripper="close")

