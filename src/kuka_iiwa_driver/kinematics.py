"""iiwa forward/inverse kinematics in plain numpy (no ROS, no pybullet).

The chain and limits come from ``data/iiwa_models.yaml`` (KUKA spec + lbr_description).
The end-effector ("tool") frame is the flange frame shifted by ``tool_offset`` (expressed in
the flange frame), with the flange's orientation: for a top-down grasp the tool z axis points
down, and yaw 0 is ``R = diag(1, -1, -1)``.

IK is damped least squares on the 6-D pose error, seeded from the current joint position so
the redundant arm makes the smallest move; joints are clamped inside their limits on every
iteration, so a returned solution never leaves them.  Failure is reported, never guessed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources

import numpy as np
import yaml

N_JOINTS = 7
MODELS_FILE = "iiwa_models.yaml"


class ModelError(ValueError):
    """The robot model data is missing or malformed."""


@dataclass(frozen=True)
class RobotModel:
    """One iiwa variant: joint limits (rad, rad/s) and the kinematic chain to the flange."""

    name: str
    description: str
    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    joint_xyz: np.ndarray  # (7, 3) joint origins in the parent frame
    joint_axis: np.ndarray  # (7, 3) unit rotation axes in the child frame
    flange_xyz: np.ndarray  # (3,) flange origin in the link-7 frame


def _vec(data: dict, key: str, n: int, model: str) -> np.ndarray:
    value = data.get(key)
    if not isinstance(value, list) or len(value) != n:
        raise ModelError(f"robot model '{model}': '{key}' must be a list of {n} numbers")
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise ModelError(f"robot model '{model}': '{key}' has non-finite values")
    return arr


def available_models() -> list[str]:
    return sorted(_load_models_file())


def _load_models_file() -> dict:
    path = resources.files("kuka_iiwa_driver").joinpath("data", MODELS_FILE)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ModelError(f"robot model data {path} is missing (package data not installed)") from exc
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ModelError(f"{MODELS_FILE} must map model names to model data")
    return data


def load_model(name: str) -> RobotModel:
    """Load robot model `name` ('iiwa7' or 'iiwa14') from the packaged data file."""
    models = _load_models_file()
    if name not in models:
        raise ModelError(f"unknown robot model '{name}'; known: {', '.join(sorted(models))}")
    d = models[name]
    pos = np.radians(_vec(d, "position_limits_deg", N_JOINTS, name))
    vel = np.radians(_vec(d, "velocity_limits_deg_s", N_JOINTS, name))
    if np.any(pos <= 0) or np.any(vel <= 0):
        raise ModelError(f"robot model '{name}': limits must be positive")
    chain = d.get("chain")
    if not isinstance(chain, list) or len(chain) != N_JOINTS:
        raise ModelError(f"robot model '{name}': 'chain' must list {N_JOINTS} joints")
    xyz = np.stack([_vec(j, "xyz", 3, name) for j in chain])
    axis = np.stack([_vec(j, "axis", 3, name) for j in chain])
    norms = np.linalg.norm(axis, axis=1)
    if np.any(norms < 1e-9):
        raise ModelError(f"robot model '{name}': zero joint axis")
    return RobotModel(
        name=name, description=str(d.get("description", name)), lower=-pos, upper=pos,
        max_velocity=vel, joint_xyz=xyz, joint_axis=axis / norms[:, None],
        flange_xyz=_vec(d, "flange_xyz", 3, name),
    )


def axis_angle_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix for `angle` about unit vector `axis` (Rodrigues)."""
    x, y, z = axis
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def rotation_log(r: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle) of rotation matrix `r`; robust near 0 and pi."""
    cos = max(-1.0, min(1.0, (np.trace(r) - 1.0) / 2.0))
    angle = math.acos(cos)
    if angle < 1e-9:
        return np.zeros(3)
    if math.pi - angle < 1e-6:
        # Near pi the antisymmetric part vanishes: take the axis from the symmetric part.
        m = (r + np.eye(3)) / 2.0
        col = int(np.argmax(np.diag(m)))
        axis = m[:, col] / math.sqrt(max(m[col, col], 1e-12))
        return axis * angle
    w = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    return w * (angle / (2.0 * math.sin(angle)))


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(x, y, z, w) unit quaternion -> rotation matrix."""
    x, y, z, w = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """Rotation matrix -> (x, y, z, w) unit quaternion with w >= 0."""
    t = np.trace(r)
    if t > 0:
        s = 2.0 * math.sqrt(t + 1.0)
        q = np.array([(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, 0.25 * s])
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + r[i, i] - r[j, j] - r[k, k], 1e-12))
        q = np.zeros(4)
        q[i] = 0.25 * s
        q[j] = (r[j, i] + r[i, j]) / s
        q[k] = (r[k, i] + r[i, k]) / s
        q[3] = (r[k, j] - r[j, k]) / s
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def _jacobian(axes, origins, tool_position) -> np.ndarray:
    jac = np.zeros((6, N_JOINTS))
    for i, (z, o) in enumerate(zip(axes, origins)):
        jac[:3, i] = np.cross(z, tool_position - o)
        jac[3:, i] = z
    return jac


@dataclass(frozen=True)
class IKResult:
    ok: bool
    q: np.ndarray
    position_error: float  # m
    orientation_error: float  # rad
    iterations: int
    reason: str = ""


class Kinematics:
    """FK/IK of one iiwa model with a fixed tool offset (flange frame, metres)."""

    def __init__(self, model: RobotModel, tool_offset=(0.0, 0.0, 0.0), limit_margin: float = 0.0):
        tool = np.asarray(tool_offset, dtype=float)
        if tool.shape != (3,) or not np.all(np.isfinite(tool)):
            raise ModelError("tool_offset must be 3 finite numbers")
        if limit_margin < 0 or np.any(model.upper - limit_margin <= model.lower + limit_margin):
            raise ModelError(f"joint limit margin {limit_margin} rad leaves no range")
        self.model = model
        self.tool_xyz = model.flange_xyz + tool
        # IK solutions stay this far inside the hardware limits.
        self.lower = model.lower + limit_margin
        self.upper = model.upper - limit_margin

    def _frames(self, q: np.ndarray):
        """World rotation/origin of every joint frame and the tool pose."""
        rot = np.eye(3)
        pos = np.zeros(3)
        axes, origins = [], []
        for i in range(N_JOINTS):
            pos = pos + rot @ self.model.joint_xyz[i]
            axes.append(rot @ self.model.joint_axis[i])
            origins.append(pos)
            rot = rot @ axis_angle_matrix(self.model.joint_axis[i], q[i])
        return axes, origins, pos + rot @ self.tool_xyz, rot

    def fk(self, q) -> tuple[np.ndarray, np.ndarray]:
        """Tool position (3,) and rotation matrix (3, 3) in the robot base frame."""
        q = np.asarray(q, dtype=float)
        if q.shape != (N_JOINTS,):
            raise ValueError(f"expected {N_JOINTS} joint positions, got shape {q.shape}")
        _, _, p, r = self._frames(q)
        return p, r

    def jacobian(self, q) -> np.ndarray:
        """Geometric Jacobian (6, 7): rows are linear then angular velocity of the tool."""
        axes, origins, p, _ = self._frames(np.asarray(q, dtype=float))
        return _jacobian(axes, origins, p)

    def within_limits(self, q) -> bool:
        q = np.asarray(q, dtype=float)
        return bool(np.all(q >= self.model.lower) and np.all(q <= self.model.upper))

    def ik(self, position, rotation, seed, *, max_iterations: int = 200,
           position_tolerance: float = 5e-4, orientation_tolerance: float = math.radians(0.5),
           damping: float = 0.02, max_joint_update: float = 0.2) -> IKResult:
        """Joint positions reaching the tool pose, starting from `seed`.

        Returns ok=False (with the best iterate and its errors) when the tolerances are not met;
        callers must not send a failed result to the robot.
        """
        target_p = np.asarray(position, dtype=float)
        target_r = np.asarray(rotation, dtype=float)
        q = np.clip(np.asarray(seed, dtype=float), self.lower, self.upper)
        pos_err = rot_err = float("inf")
        for it in range(1, max_iterations + 1):
            axes, origins, p, r = self._frames(q)
            e_pos = target_p - p
            e_rot = rotation_log(target_r @ r.T)
            pos_err, rot_err = float(np.linalg.norm(e_pos)), float(np.linalg.norm(e_rot))
            if pos_err <= position_tolerance and rot_err <= orientation_tolerance:
                return IKResult(True, q, pos_err, rot_err, it - 1)
            jac = _jacobian(axes, origins, p)
            err = np.concatenate([e_pos, e_rot])
            # Damped least squares: dq = J^T (J J^T + lambda^2 I)^-1 e (stable near singularities).
            dq = jac.T @ np.linalg.solve(jac @ jac.T + (damping ** 2) * np.eye(6), err)
            step = float(np.max(np.abs(dq)))
            if step > max_joint_update:
                dq *= max_joint_update / step
            q = np.clip(q + dq, self.lower, self.upper)
        return IKResult(False, q, pos_err, rot_err, max_iterations,
                        f"IK did not converge (position error {pos_err * 1000:.1f} mm, "
                        f"orientation error {math.degrees(rot_err):.2f} deg)")
