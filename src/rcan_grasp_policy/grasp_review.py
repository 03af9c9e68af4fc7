"""Why grasps fail (`rcan eval-policy --review-closes`; privileged, sim only).

At every close a policy commands with the gripper open, `review_close` looks at the scene from the simulator:
the TCP's horizontal distance to the nearest object's hull centre, the yaw error to that object's grasp yaw
(the fingers across its narrow axis; 0 to pi/2, and a random yaw has a median of pi/4), the object's width
there, the TCP's height above its lowest position, and how many of a grid of nearby moves would have grasped:
each move (dx, dy on a square grid, dtheta in {-r, 0, r}) is executed from a snapshot and followed by the
blind descend completion (`labels.label_actions`, the labels' own rule).  The snapshot is restored exactly, so
the reviewed episode goes on as it would have without the review.

Corrected moves say which error costs the grasps, each one move from the same snapshot and then the same
completion: no move at all (`descended`: the completion alone, straight down from where the policy closed,
which separates the height of the close from its place), onto the nearest object's hull centre (`centred`),
turned onto its grasp yaw (`turned`), and both (`centred_turned`).

`summarise` groups the closes of grasped and failed episodes: a policy whose failed closes sit centimetres
from a grasp that the grid finds is short of precision; one whose failures have no grasp within reach
chose the wrong place, or the wrong object.  It also counts the episodes that a corrected last close would
have grasped.

`hold_checked_step` (`rcan eval-policy --hold-checks N`) measures what regrasping could win, with a perfect
detector: when the policy terminates with the gripper closed, the terminate is held back, the gripper lifted by
HOLD_CHECK_LIFT (the CEM hold check's lift), and if the simulator finds nothing held the gripper reopens and the
policy goes on.  Unlike the review, it changes the episodes.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from rcan_common.action import decode_action, make_action
from rcan_grasp_policy.cem import HOLD_CHECK_LIFT

GRID_STEP = 0.01
"""Spacing of the reviewed moves' dx, dy (m)."""
GRID_STEPS = 2
"""The grid reaches GRID_STEPS * GRID_STEP each way: 5 x 5 positions."""
GRID_YAW = 0.4
"""The reviewed moves turn by -GRID_YAW, 0 and GRID_YAW (rad)."""


CORRECTIONS = ("descended", "centred", "turned", "centred_turned")
"""The corrected last moves a review executes: none (straight down from there), onto the nearest object's centre,
onto its grasp yaw, both."""


def nearby_moves() -> np.ndarray:
    """The review's grid of moves (75, 8), the zero move in the middle."""
    offsets = GRID_STEP * np.arange(-GRID_STEPS, GRID_STEPS + 1)
    return np.stack([make_action([dx, dy, 0.0], dtheta) for dx in offsets for dy in offsets
                     for dtheta in (-GRID_YAW, 0.0, GRID_YAW)])


def review_close(env, gamma: float = 0.9) -> dict[str, Any]:
    """The review of a close about to be executed from the env's current state (the env is left as it was)."""
    from rcan_grasp_policy.labels import label_actions
    from rcan_sim.scripted import DescendGraspPolicy, grasp_yaw, object_centre_xy

    tcp, yaw = env.tcp_target, env.yaw
    nearest = (math.inf, 0.0, 0.0, (0.0, 0.0))
    for oid, (pos, orn) in zip(env.world.object_ids, env.world.object_poses()):
        offset = object_centre_xy(oid, pos, orn) - tcp[:2]
        object_yaw, width = grasp_yaw(oid, orn)
        # the two-finger gripper is the same after a half turn: the smallest turn onto the grasp yaw
        nearest = min(nearest, (float(np.linalg.norm(offset)), math.remainder(object_yaw - yaw, math.pi), width,
                                tuple(offset)), key=lambda n: n[0])
    distance, turn, width, (dx, dy) = nearest
    grid = nearby_moves()
    corrected = np.stack([make_action([dx, dy, 0.0], 0.0), make_action([0.0, 0.0, 0.0], turn),
                          make_action([dx, dy, 0.0], turn)])
    labels = label_actions(env, np.concatenate([grid, corrected]), DescendGraspPolicy(), gamma) > 0
    grasps = labels[:len(grid)]
    # `descended` is the grid's middle move (no move at all: the completion alone), not executed twice
    fixed = (grasps[len(grid) // 2], *labels[len(grid):])
    return {"step": env.steps + 1, "height": round(float(tcp[2] - env.workspace_low[2]), 4),
            "object_distance": round(distance, 4), "yaw_error": round(abs(turn), 3),
            "object_width": round(width, 4), "nearby_grasps": round(float(grasps.mean()), 3)} | \
        {name: bool(ok) for name, ok in zip(CORRECTIONS, fixed)}


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the last reviewed close of grasped and of failed episodes, and the share of failures whose
    last close had a grasp within the grid."""
    out: dict[str, Any] = {"grid": {"step_m": GRID_STEP, "steps": GRID_STEPS, "yaw_rad": GRID_YAW}}
    for name, success in (("grasped", True), ("failed", False)):
        closes = [r["closes"][-1] for r in records if r["success"] == success and r.get("closes")]
        group: dict[str, Any] = {"episodes": sum(r["success"] == success for r in records),
                                 "episodes_with_a_close": len(closes)}
        if closes:
            for key in ("object_distance", "yaw_error", "height", "nearby_grasps"):
                group[f"median_{key}"] = round(float(np.median([c[key] for c in closes])), 4)
            group["share_with_a_nearby_grasp"] = round(float(np.mean([c["nearby_grasps"] > 0 for c in closes])), 3)
        out[name] = group
    last = [r["closes"][-1] for r in records if r.get("closes")]
    out["corrected_last_close"] = {"episodes": len(records), "as_run": sum(r["success"] for r in records)} | \
        {name: sum(c[name] for c in last) for name in CORRECTIONS}
    return out


HOLD_CHECK_STEPS = 3
"""Steps a hold check takes: the policy's action without its terminate, the lift, then terminate or reopen."""


def hold_checked_step(env, action: np.ndarray, render: bool = True) -> tuple[tuple, bool | None]:
    """`env.step(action)`, except that a terminate which leaves the gripper closed, with HOLD_CHECK_STEPS steps
    left, is held back: the rest of the action runs, the gripper lifts by HOLD_CHECK_LIFT, and the terminate runs
    only if the simulator finds an object held (World.held_objects); otherwise the gripper reopens and the
    episode goes on.  Returns the last step's result and the check's finding (None: no check)."""
    cmd = decode_action(action, env.cfg.bounds)
    closed_after = cmd.gripper == "close" or (cmd.gripper is None and not env.world.gripper_is_open())
    if not (cmd.terminate and closed_after) or env.steps + HOLD_CHECK_STEPS > env.cfg.max_steps:
        return env.step(action, render), None
    env.step(make_action(cmd.translation, cmd.dtheta, cmd.gripper), render=False)
    env.step(make_action([0.0, 0.0, HOLD_CHECK_LIFT]), render=False)
    held = bool(env.world.held_objects())
    return env.step(make_action(terminate=True) if held else make_action(gripper="open"), render), held


def summarise_hold_checks(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over episodes with hold checks: checks, those that found nothing held, and the episodes with such
    a check that ended grasped all the same (the regrasps that worked)."""
    checks = [c for r in records for c in r["hold_checks"]]
    empty = [r for r in records if False in r["hold_checks"]]
    return {"lift_m": HOLD_CHECK_LIFT,
            "checks": len(checks), "found_empty": checks.count(False),
            "episodes_found_empty": len(empty), "grasped_after_found_empty": sum(r["success"] for r in empty)}
