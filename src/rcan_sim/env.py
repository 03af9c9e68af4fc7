"""Gymnasium-style grasping environment on GraspWorld (paper 4.3, after Kalashnikov et al.).

Observation: {"image": HxWx3 uint8 in cfg.domain, "gripper_open": 1.0/0.0, "gripper_height": m,
"gripper_yaw": rad (the commanded yaw about the vertical from the start pose, what label shards store)}.
Action: rcan_common.action layout (8 numbers); translation is clipped per step and the TCP
target is kept inside a box above the tray (height >= a few mm above the tray bottom),
the gripper always points down (like pybullet's KukaDiverseObjectEnv) and only rotates
about the vertical.
Reward: 1 for a successful grasp, 0 for a failed one, -0.05 for every other step.  An
episode ends when the policy terminates or after `max_steps`; both end with an automatic
lift and a success check (an object held by the gripper above `success_height`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from rcan_common.config import require
from rcan_common.action import ActionBounds, decode_action, make_action
from rcan_common.domains import DOMAINS
from rcan_sim.domains import domain_spec
from rcan_sim.world import TRAY_POS, GraspWorld, PairedFrame, WorldConfig, WorldSnapshot

Domain = Literal["canonical", "randomized", "held-out", "mild", "medium", "heavy"]


@dataclass
class EnvConfig:
    """Grasping episode rules: domain, step limit, action bounds, physics per step, success."""

    world: WorldConfig = field(default_factory=WorldConfig)
    """The simulated scene (image size, object split, textures, camera)."""
    domain: Domain = "canonical"
    """Visual domain of the observation images."""
    max_steps: int = 20
    """Steps per episode (paper: at most 20)."""
    bounds: ActionBounds = field(default_factory=ActionBounds)
    """Per-step limits on translation and rotation."""
    action_substeps: int = 20
    """Physics steps executed per action (with the default 1/120 s: 0.17 s)."""
    gripper_substeps: int = 40
    """Physics steps to let the fingers open or close."""
    lift_height: float = 0.2
    """Automatic lift after termination (m)."""
    lift_substeps: int = 60
    """Physics steps for the automatic lift."""
    success_height: float = 0.08
    """A held object whose base is this far above the tray bottom after the lift is a success (m)."""
    step_reward: float = -0.05
    """Reward of every non-final step."""
    workspace_half_width: float = 0.14
    """TCP x/y stay within this distance of the tray centre (m)."""
    min_height: float = 0.015
    """Lowest TCP height above the tray bottom (m); the TCP is 1 cm above the fingertips."""
    max_height: float = 0.35
    """Highest TCP height above the tray bottom (m)."""
    max_yaw: float = math.pi / 2
    """Gripper yaw stays in [-max_yaw, max_yaw] (the two-finger gripper is symmetric) (rad)."""

    def __post_init__(self) -> None:
        require(self.domain in DOMAINS, "domain", f"must be one of {DOMAINS}")
        require(1 <= self.max_steps <= 1000, "max_steps", "must be in 1..1000")
        require(1 <= self.action_substeps <= 1000, "action_substeps", "must be in 1..1000")
        require(1 <= self.gripper_substeps <= 1000, "gripper_substeps", "must be in 1..1000")
        require(0 < self.lift_height <= 0.5, "lift_height", "must be in (0, 0.5] m")
        require(1 <= self.lift_substeps <= 2000, "lift_substeps", "must be in 1..2000")
        require(0 < self.success_height < self.lift_height + 0.1, "success_height",
                "must be > 0 and reachable by the lift")
        require(0.02 <= self.workspace_half_width <= 0.22, "workspace_half_width", "must be in [0.02, 0.22] m")
        require(0 <= self.min_height < self.max_height <= 0.5, "min_height", "need 0 <= min_height < max_height <= 0.5")
        require(0 < self.max_yaw <= math.pi, "max_yaw", "must be in (0, pi]")


@dataclass(frozen=True)
class EnvSnapshot:
    """GraspEnv.snapshot(): the world's saved physics plus the env's own episode variables."""

    world: WorldSnapshot
    target: np.ndarray
    yaw: float
    steps: int
    done: bool


class GraspEnv:
    """reset(seed) -> (obs, info); step(action) -> (obs, reward, terminated, truncated, info)."""

    def __init__(self, cfg: EnvConfig | None = None, world: GraspWorld | None = None):
        self.cfg = cfg or EnvConfig()
        domain_spec(self.cfg.domain)
        self.world = world or GraspWorld(self.cfg.world)
        c = np.array(TRAY_POS[:2])
        h = self.cfg.workspace_half_width
        bottom = self.world.tray_bottom_z
        self.workspace_low = np.array([c[0] - h, c[1] - h, bottom + self.cfg.min_height])
        self.workspace_high = np.array([c[0] + h, c[1] + h, bottom + self.cfg.max_height])
        self._steps = 0
        self._done = True
        self._target = self.world.home_tcp.copy()
        self._yaw = 0.0

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def steps_left(self) -> int:
        """Steps the episode has left, the next one included (what CEMPolicy.act's `steps_left` takes)."""
        return self.cfg.max_steps - self._steps

    def reset(self, seed: int, object_ids: list[int] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        self.world.reset(seed, object_ids)
        self._steps = 0
        self._done = False
        self._target = self.world.home_tcp.copy()
        self._yaw = 0.0
        return self._obs(), {"object_ids": self.world.object_ids, "seed": int(seed)}

    def step(self, action, render: bool = True) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """One action.  info["executed_action"] is what ran: the action after clipping to the step bounds and
        the workspace (render=False skips the observation image: obs["image"] is None, for rollouts nobody looks at)."""
        if self._done:
            raise RuntimeError("episode is over; call reset(seed) first")
        cmd = decode_action(action, self.cfg.bounds)
        w = self.world
        self._steps += 1
        start_target, start_yaw = self._target.copy(), self._yaw
        if np.any(cmd.translation != 0) or cmd.dtheta != 0:
            self._target = np.clip(self._target + cmd.translation, self.workspace_low, self.workspace_high)
            self._yaw = float(np.clip(self._yaw + cmd.dtheta, -self.cfg.max_yaw, self.cfg.max_yaw))
            w.set_arm_joint_targets(w.solve_ik(self._target, self._yaw))
            w.step_physics(self.cfg.action_substeps)
        if cmd.gripper is not None and (cmd.gripper == "open") != w.gripper_is_open():
            w.set_gripper(cmd.gripper == "open")
            w.step_physics(self.cfg.gripper_substeps)
        info: dict[str, Any] = {"success": False, "steps": self._steps,
                                "executed_action": make_action(self._target - start_target, self._yaw - start_yaw,
                                                               cmd.gripper, cmd.terminate)}
        truncated = not cmd.terminate and self._steps >= self.cfg.max_steps
        if cmd.terminate or truncated:
            success = self._lift_and_check()
            reward = 1.0 if success else 0.0
            info["success"] = success
            self._done = True
        else:
            reward = self.cfg.step_reward
        return self._obs(render), reward, cmd.terminate, truncated, info

    def _lift_and_check(self) -> bool:
        w = self.world
        start = self._target.copy()
        waypoints = 4
        for k in range(1, waypoints + 1):
            target = start + np.array([0.0, 0.0, self.cfg.lift_height * k / waypoints])
            w.set_arm_joint_targets(w.solve_ik(target, self._yaw))
            w.step_physics(max(1, self.cfg.lift_substeps // waypoints))
        self._target = start + np.array([0.0, 0.0, self.cfg.lift_height])
        heights = w.object_heights()
        return any(heights[i] > self.cfg.success_height for i in w.held_objects())

    @property
    def done(self) -> bool:
        return self._done

    def snapshot(self) -> EnvSnapshot:
        """The complete state of the running episode: pybullet's state, the motor targets, the TCP target,
        yaw and step count.  Valid until the next reset(); free it with release()."""
        return EnvSnapshot(self.world.save_state(), self._target.copy(), self._yaw, self._steps, self._done)

    def restore(self, snap: EnvSnapshot) -> None:
        """Return to `snap`: the same action from here gives the same outcome as from the original."""
        self.world.restore_state(snap.world)
        self._target, self._yaw, self._steps, self._done = snap.target.copy(), snap.yaw, snap.steps, snap.done

    def release(self, snap: EnvSnapshot) -> None:
        self.world.release_state(snap.world)

    @property
    def tcp_target(self) -> np.ndarray:
        """Where the env is steering the TCP (world frame, m); the arm follows it within a step."""
        return self._target.copy()

    @property
    def yaw(self) -> float:
        """The commanded gripper yaw (rad)."""
        return self._yaw

    def _obs(self, render: bool = True) -> dict[str, Any]:
        image = None
        if render:
            image = self.world.render(self.cfg.domain, randomization_seed=self._steps, labels=False).rgb
        return {"image": image, "gripper_open": 1.0 if self.world.gripper_is_open() else 0.0,
                "gripper_height": self.world.gripper_height(), "gripper_yaw": self._yaw}

    def render_pair(self, randomization_seed: int | None = None, source: bool = True) -> PairedFrame:
        """Source-domain + canonical renders of the current frozen state (default seed: the step, so the
        source half is the observation's image; source=False renders only the canonical half).  The
        source domain is the env's, or 'randomized' for a canonical env."""
        domain = "randomized" if domain_spec(self.cfg.domain).canonical else self.cfg.domain
        seed = self._steps if randomization_seed is None else randomization_seed
        return self.world.render_pair(seed, domain=domain, source=source)

    def privileged_state(self) -> dict[str, Any]:
        """Simulator ground truth for scripted policies (never an input to learned policies)."""
        w = self.world
        pos, _ = w.ee_pose()
        return {
            "tcp": pos, "tcp_target": self._target.copy(), "yaw": self._yaw, "gripper_open": w.gripper_is_open(),
            "tray_bottom_z": w.tray_bottom_z, "object_positions": np.array([p for p, _ in w.object_poses()]),
            "object_orientations": np.array([q for _, q in w.object_poses()]), "object_aabbs": w.object_aabbs(),
            "held_objects": w.held_objects(), "divider_segment": w.divider_segment(), "workspace_low": self.workspace_low.copy(),
            "workspace_high": self.workspace_high.copy(), "steps": self._steps, "max_steps": self.cfg.max_steps,
            "max_translation": self.cfg.bounds.max_translation,
        }

    def close(self) -> None:
        self.world.close()
