"""Privileged scripted grasp policy and `rcan scripted-eval`.

The policy reads the simulator's ground truth (object poses and hulls), picks the object
nearest the gripper, turns the fingers across the object's narrow horizontal axis, moves
above it, descends, closes and terminates.  It bounds what the env allows: a learned
policy should approach, not exceed, its success rate.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pybullet as pb

from rcan_common.config import parse_cli, require, to_dict
from rcan_sim import objects
from rcan_sim.action import make_action
from rcan_sim.env import Domain, EnvConfig, GraspEnv
from rcan_sim.stats import wilson_interval


class ScriptedGraspPolicy:
    """Callable `policy(obs, env) -> action` using `env.privileged_state()`."""

    def __init__(self, approach_height: float = 0.08, xy_tolerance: float = 0.006, yaw_tolerance: float = 0.08,
                 z_tolerance: float = 0.006, grasp_clearance: float = 0.015, finger_reach: float = 0.09,
                 divider_clearance: float = 0.03, max_width: float = 0.11):
        self.approach_height = approach_height  # above the grasp height while still moving sideways (m)
        self.xy_tolerance = xy_tolerance
        self.yaw_tolerance = yaw_tolerance
        self.z_tolerance = z_tolerance
        self.grasp_clearance = grasp_clearance  # TCP above the object's lowest point when closing (m)
        self.finger_reach = finger_reach  # open fingertips' distance from the TCP (m)
        self.divider_clearance = divider_clearance
        self.max_width = max_width  # widest object the open gripper takes comfortably (m)
        self._target: tuple[int | None, int, float] | None = None  # (episode seed, object index, yaw)

    def __call__(self, obs, env: GraspEnv) -> np.ndarray:
        s = env.privileged_state()
        if not s["gripper_open"]:
            return make_action(terminate=True)
        idx, yaw = self._choose(env, s)
        lo, _ = s["object_aabbs"][idx]
        centre = self._centre(env.world.object_ids[idx], s["object_positions"][idx], s["object_orientations"][idx])
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
        return make_action(gripper="close")

    def _choose(self, env: GraspEnv, s) -> tuple[int, float]:
        """Pick (once per episode) the reachable object nearest the gripper whose fingers
        clear the divider, and the grasp yaw for it."""
        key = env.world.episode_seed
        if self._target is None or self._target[0] != key:
            best = (math.inf, 0, 0.0)
            a, b = s["divider_segment"]
            for i, oid in enumerate(env.world.object_ids):
                pos, orn = s["object_positions"][i], s["object_orientations"][i]
                centre = self._centre(oid, pos, orn)
                cost = float(np.linalg.norm(centre - s["tcp"][:2]))
                if np.any(centre < s["workspace_low"][:2]) or np.any(centre > s["workspace_high"][:2]):
                    cost += 10.0
                yaw, width = self._grasp_yaw(oid, orn)
                tips = [centre + sign * self.finger_reach * np.array([math.cos(yaw), math.sin(yaw)]) for sign in (-1, 1)]
                if min(_segment_distance(t, a, b) for t in tips) < self.divider_clearance:
                    cost += 1.0
                if width > self.max_width:
                    cost += 2.0
                best = min(best, (cost, i, yaw))
            self._target = (key, best[1], best[2])
        return self._target[1], self._target[2]

    @staticmethod
    def _hull_xy(object_id: int, orn) -> np.ndarray:
        pts = objects.object_model(object_id).hull_points
        rot = np.array(pb.getMatrixFromQuaternion(list(orn))).reshape(3, 3)
        return (pts @ rot.T)[:, :2]

    def _centre(self, object_id: int, pos, orn) -> np.ndarray:
        """Horizontal centre of the object's hull (the mesh origin can be off-centre)."""
        xy = self._hull_xy(object_id, orn)
        return pos[:2] + (xy.min(0) + xy.max(0)) / 2

    def _grasp_yaw(self, object_id: int, orn) -> tuple[float, float]:
        """Yaw that closes the fingers (along the gripper's x axis) across the narrow axis,
        and the object's width along it."""
        xy = self._hull_xy(object_id, orn)
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


@dataclass
class ScriptedEvalConfig:
    """Success rate of the privileged scripted policy (paper protocol: 20 steps per attempt)."""

    episodes: int = 102
    """Grasp attempts (the paper evaluates 102)."""
    domain: Domain = "canonical"
    """Visual domain of the rendered observations (the scripted policy ignores pixels)."""
    image_size: int = 64
    """Observation render size in pixels."""
    seed: int = 0
    """Episode i uses seed + i."""
    split: Literal["train", "test"] = "test"
    """Object split to draw the 5 objects from."""
    out: Path | None = None
    """Write the result as JSON here."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Episode rules (its domain, world.image_size and world.split are overridden by the fields above)."""

    def __post_init__(self) -> None:
        require(self.episodes >= 1, "episodes", "must be >= 1")
        require(self.seed >= 0, "seed", "must be >= 0")
        require(16 <= self.image_size <= 2048, "image_size", "must be in 16..2048")


def evaluate(cfg: ScriptedEvalConfig, progress: bool = False) -> dict:
    world_cfg = dataclasses.replace(cfg.env.world, image_size=cfg.image_size, split=cfg.split)
    env_cfg = dataclasses.replace(cfg.env, world=world_cfg, domain=cfg.domain)
    env = GraspEnv(env_cfg)
    policy = ScriptedGraspPolicy()
    successes, steps, t0 = 0, [], time.perf_counter()
    for i in range(cfg.episodes):
        obs, _ = env.reset(cfg.seed + i)
        done, info = False, {}
        while not done:
            obs, _, terminated, truncated, info = env.step(policy(obs, env))
            done = terminated or truncated
        successes += bool(info["success"])
        steps.append(info["steps"])
        if progress:
            print(f"episode {i + 1}/{cfg.episodes}: {'success' if info['success'] else 'failure'} "
                  f"in {info['steps']} steps ({successes}/{i + 1})", file=sys.stderr)
    env.close()
    lo, hi = wilson_interval(successes, cfg.episodes)
    return {"episodes": cfg.episodes, "successes": successes, "success_rate": successes / cfg.episodes,
            "wilson95": [lo, hi], "mean_steps": float(np.mean(steps)), "domain": cfg.domain, "split": cfg.split,
            "image_size": cfg.image_size, "seed": cfg.seed,
            "seconds": time.perf_counter() - t0, "config": to_dict(cfg)}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(ScriptedEvalConfig, argv, description=ScriptedEvalConfig.__doc__)
    if cfg.out is not None:
        from rcan_common.io import ensure_writable_dir

        ensure_writable_dir(Path(cfg.out).parent)
    result = evaluate(cfg, progress=True)
    lo, hi = result["wilson95"]
    print(f"scripted policy, {cfg.split} objects, {cfg.domain}: {result['successes']}/{cfg.episodes} = "
          f"{result['success_rate']:.3f} (95% Wilson interval {lo:.3f}-{hi:.3f}), "
          f"{result['mean_steps']:.1f} steps/episode, {result['seconds']:.0f} s")
    if cfg.out is not None:
        from rcan_common.io import atomic_write_json

        atomic_write_json(cfg.out, result)
    return 0
