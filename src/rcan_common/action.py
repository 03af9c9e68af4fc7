"""Action and state layout of the grasping task (paper 4.3, after Kalashnikov et al.).

Action (ACTION_DIM = 8), translation in metres in the robot base frame:
    [dx, dy, dz, sin(dtheta), cos(dtheta), close, open, terminate]
dtheta is a rotation of the gripper about the vertical axis.  close/open is a one-hot
gripper command (both 0 leaves the gripper as it is); terminate > 0.5 ends the episode
with the automatic lift and success check.

State (STATE_DIM = 2): [gripper_open (1.0 open / 0.0 closed), gripper_height (m above tray bottom)].
With the gripper yaw (YAW_STATE_DIM = 4; QNetConfig.yaw_state, NOT in the paper) two more numbers follow:
[sin(2 yaw), cos(2 yaw)], yaw being the gripper's rotation about the vertical from its start pose; the
doubled angle because the two-finger gripper is the same after a half turn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rcan_common.config import require

ACTION_DIM = 8
STATE_DIM = 2

DX, DY, DZ, SIN, COS, CLOSE, OPEN, TERMINATE = range(ACTION_DIM)
ACTION_NAMES = ("dx", "dy", "dz", "sin_dtheta", "cos_dtheta", "close", "open", "terminate")
STATE_NAMES = ("gripper_open", "gripper_height")
YAW_STATE_DIM = 4
YAW_STATE_NAMES = STATE_NAMES + ("sin_2yaw", "cos_2yaw")


class ActionError(ValueError):
    """An action that cannot be executed (wrong shape, NaN/inf)."""


@dataclass(frozen=True)
class ActionBounds:
    """Per-step limits applied to every action before it is executed."""

    max_translation: float = 0.05
    """Largest |dx|, |dy|, |dz| per step (m)."""
    max_rotation: float = 0.5
    """Largest |dtheta| per step (rad)."""

    def __post_init__(self) -> None:
        require(self.max_translation > 0, "max_translation", "must be > 0")
        require(0 < self.max_rotation <= math.pi, "max_rotation", "must be in (0, pi]")


@dataclass(frozen=True)
class Command:
    """A decoded, clipped action."""

    translation: np.ndarray  # (3,) metres, base frame
    dtheta: float  # rad about vertical
    gripper: str | None  # "close", "open" or None (unchanged)
    terminate: bool


def validate_action(action) -> np.ndarray:
    """Return `action` as a float64 (8,) array; wrong shape or non-finite values raise ActionError."""
    try:
        a = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ActionError(f"action must be {ACTION_DIM} numbers, got {action!r}") from exc
    if a.shape != (ACTION_DIM,):
        raise ActionError(f"action must have shape ({ACTION_DIM},) laid out as {ACTION_NAMES}, got {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        names = [ACTION_NAMES[i] for i in np.flatnonzero(bad)]
        raise ActionError(f"action has NaN/inf in {names}: {a.tolist()}")
    return a


def decode_action(action, bounds: ActionBounds = ActionBounds()) -> Command:
    """Validate and clip an action into a Command (translation clipped per axis, rotation to max)."""
    a = validate_action(action)
    translation = np.clip(a[DX:DZ + 1], -bounds.max_translation, bounds.max_translation)
    s, c = a[SIN], a[COS]
    dtheta = 0.0 if s == 0.0 and c == 0.0 else math.atan2(s, c)
    dtheta = float(np.clip(dtheta, -bounds.max_rotation, bounds.max_rotation))
    gripper = None
    if a[CLOSE] > 0.5 and a[CLOSE] >= a[OPEN]:
        gripper = "close"
    elif a[OPEN] > 0.5:
        gripper = "open"
    return Command(translation, dtheta, gripper, bool(a[TERMINATE] > 0.5))


def make_action(translation=(0.0, 0.0, 0.0), dtheta: float = 0.0, gripper: str | None = None,
                terminate: bool = False) -> np.ndarray:
    """Build an action vector from its parts (gripper: "close", "open" or None)."""
    if gripper not in (None, "close", "open"):
        raise ActionError(f"gripper must be 'close', 'open' or None, got {gripper!r}")
    a = np.zeros(ACTION_DIM, dtype=np.float32)
    a[DX:DZ + 1] = np.asarray(translation, dtype=np.float32).reshape(3)
    a[SIN], a[COS] = math.sin(dtheta), math.cos(dtheta)
    a[CLOSE] = gripper == "close"
    a[OPEN] = gripper == "open"
    a[TERMINATE] = bool(terminate)
    validate_action(a)
    return a


def with_yaw(state, yaw) -> np.ndarray:
    """States (..., 2) and gripper yaws (...,) in rad -> the yaw state (..., 4) as float32."""
    state = np.asarray(state, dtype=np.float32)
    yaw = np.asarray(yaw, dtype=np.float64)
    return np.concatenate([state, np.stack([np.sin(2 * yaw), np.cos(2 * yaw)], -1).astype(np.float32)], -1)
