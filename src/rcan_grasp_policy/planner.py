"""The policy's planner: load the Q-function, choose the image variant, pick an action by CEM.

ROS-free.  :func:`load_planner` gives a :class:`Planner` whose ``act(images, state)`` runs CEM
(QT-Opt 64/6/2) over the exported Q-network; :func:`apply_action` turns a decoded action into
an absolute target pose.  The episode around it lives in :mod:`rcan_grasp_policy.episode`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Literal, NamedTuple

import numpy as np

from rcan_common.action import YAW_STATE_DIM, ActionBounds
from rcan_grasp_policy.backends import load_qfunction
from rcan_grasp_policy.contract import INPUT_CHANNELS, PolicyContract, inputs_for_variant

ImageInputs = Literal["auto", "source+canonical", "canonical", "source"]


# ---- small geometry helpers (quaternions are x, y, z, w like geometry_msgs)
def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw,
                     aw * bw - ax * bx - ay * by - az * bz])


def yaw_quat(dtheta: float) -> np.ndarray:
    return np.array([0.0, 0.0, math.sin(dtheta / 2), math.cos(dtheta / 2)])


def vertical_yaw(quat) -> float:
    """Rotation about the base vertical of a pose's x axis (quat xyzw), for a gripper pointing down (rad)."""
    x, y, z, w = np.asarray(quat, dtype=np.float64) / np.linalg.norm(quat)
    return math.atan2(2 * (x * y + w * z), 1 - 2 * (y * y + z * z))


def apply_action(pos: np.ndarray, quat: np.ndarray, translation: np.ndarray, dtheta: float):
    """Absolute target: position + translation (base frame), orientation rotated about the base vertical."""
    q = quat_multiply(yaw_quat(dtheta), np.asarray(quat, dtype=np.float64))
    return np.asarray(pos, dtype=np.float64) + translation, q / np.linalg.norm(q)


class Planner(NamedTuple):
    # (H,W,C) uint8 image, (2,) or (4,) state, the episode's steps left (this one included) -> action, Q
    act: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, float]]
    in_channels: int
    image_size: int
    meta: dict
    provider: str
    contract: PolicyContract
    yaw_state: bool = False  # the network reads the gripper's yaw too (QNetConfig.yaw_state): act takes (4,) states


def load_planner(model_path: str | Path, runtime, cem_cfg, bounds: ActionBounds, seed: int,
                 log: Callable[[str], None] | None = None) -> Planner:
    """CEM over the policy at `model_path`, opened by the one loader (backends.load_qfunction):
    .onnx through the ONNX Runtime wrapper with `runtime`'s provider, threads and warm-up;
    .safetensors through torch."""
    from rcan_grasp_policy.cem import CEMPolicy

    qf, meta = load_qfunction(model_path, runtime=runtime, log=log)
    channels, size = int(meta["qnet"]["in_channels"]), int(meta["qnet"]["image_size"])
    policy = CEMPolicy(qf, cem_cfg, bounds, seed=seed)

    def act(images: np.ndarray, state: np.ndarray, steps_left: int) -> tuple[np.ndarray, float]:
        actions, q = policy.act(images[None], np.asarray(state, dtype=np.float32)[None], steps_left)
        return actions[0], float(q[0])

    return Planner(act, channels, size, meta, qf.provider, qf.contract, qf.state_dim == YAW_STATE_DIM)


def resolve_inputs(requested: str, in_channels: int, variant: str | None = None) -> str:
    """The image variant.  'auto' follows the model card's training variant (rcan_grasp_policy.inputs):
    rcan -> [source, G(source)]; canonical (trained in the canonical sim) -> G(source);
    dr-* (trained on randomized images) -> the raw source.  Without a variant: 6 channels ->
    [source, G(source)], 3 -> G(source)."""
    if requested == "auto":
        requested = inputs_for_variant(variant, in_channels)  # as the policy's contract derives it
    if requested not in INPUT_CHANNELS:
        raise ValueError(f"image_inputs must be one of {['auto', *INPUT_CHANNELS]}, got {requested!r}")
    if INPUT_CHANNELS[requested] != in_channels:
        raise ValueError(f"image_inputs '{requested}' gives {INPUT_CHANNELS[requested]} channels but the "
                         f"policy model takes {in_channels}")
    return requested
