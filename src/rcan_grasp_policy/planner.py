"""The policy's planner: load the Q-function, choose the image variant, pick an action by CEM.

ROS-free.  :func:`load_planner` gives a :class:`Planner` whose ``act(images, state)`` runs CEM
(QT-Opt 64/6/2) over the exported Q-network; :func:`apply_action` turns a decoded action into
an absolute target pose.  The episode around it lives in :mod:`rcan_grasp_policy.episode`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple

import numpy as np

from rcan_common.action import ActionBounds
from rcan_grasp_policy.inputs import ONNX_METADATA_KEY, images_to_nchw

ImageInputs = Literal["auto", "source+canonical", "canonical", "source"]
INPUT_CHANNELS = {"source+canonical": 6, "canonical": 3, "source": 3}


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


def apply_action(pos: np.ndarray, quat: np.ndarray, translation: np.ndarray, dtheta: float):
    """Absolute target: position + translation (base frame), orientation rotated about the base vertical."""
    q = quat_multiply(yaw_quat(dtheta), np.asarray(quat, dtype=np.float64))
    return np.asarray(pos, dtype=np.float64) + translation, q / np.linalg.norm(q)



def build_policy_images(source: np.ndarray, canonical: np.ndarray, inputs: str, size: int) -> np.ndarray:
    """The Q-network image (size, size, C) uint8: [source, canonical] (C=6) or one of them (C=3)."""
    import cv2

    def fit(img: np.ndarray) -> np.ndarray:
        if img.shape[:2] == (size, size):
            return img
        interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
        return cv2.resize(img, (size, size), interpolation=interp)

    if inputs == "source+canonical":
        return np.concatenate([fit(source), fit(canonical)], axis=2)
    return fit(canonical if inputs == "canonical" else source)


# ---- the Q-function through the project's ONNX Runtime wrapper (torch-free: fast node start-up)
class RuntimeQFunction:
    """A QFunction (see rcan_grasp_policy.cem) over an exported Q-network run by rcan_perception.runtime.

    Same graph contract and image conversion as rcan_grasp_policy.backends.OrtQFunction, but with
    provider choice/fallback, thread settings, warm-up and start-up shape checks.
    """

    def __init__(self, path: str | Path, runtime, log: Callable[[str], None] | None = None):
        import dataclasses

        from rcan_perception.runtime import ModelError, OrtModel

        # The expected input shapes come from the model's own metadata: check after loading, then warm up.
        self.model = OrtModel(path, dataclasses.replace(runtime, warmup_runs=0), log=log)
        if ONNX_METADATA_KEY not in self.model.metadata:
            raise ModelError(f"policy model {path} has no '{ONNX_METADATA_KEY}' metadata; "
                             "was it made by the project's policy export?")
        try:
            self.meta = json.loads(self.model.metadata[ONNX_METADATA_KEY])
            self.in_channels = int(self.meta["qnet"]["in_channels"])
            self.image_size = int(self.meta["qnet"]["image_size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"policy model {path}: unreadable '{ONNX_METADATA_KEY}' metadata: {exc!r}") from exc
        c, s = self.in_channels, self.image_size
        self.model.check_io({"images": (None, c, s, s), "state": (None, 2), "actions": (None, None, 8)}, ["q"])
        self.model.warmup(runtime.warmup_runs)

    def embed(self, images: np.ndarray, state: np.ndarray):
        return images_to_nchw(images), np.asarray(state, dtype=np.float32)

    def score(self, context, actions: np.ndarray) -> np.ndarray:
        images, state = context
        return self.model.run({"images": images, "state": state,
                               "actions": np.asarray(actions, dtype=np.float32)})["q"]


class Planner(NamedTuple):
    act: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, float]]  # (H,W,C) uint8, (2,) -> action, Q
    in_channels: int
    image_size: int
    meta: dict
    provider: str


def load_planner(model_path: str | Path, runtime, cem_cfg, bounds: ActionBounds, seed: int,
                 log: Callable[[str], None] | None = None) -> Planner:
    """CEM over the policy at `model_path` (.onnx: ONNX Runtime via the runtime wrapper; .safetensors: torch)."""
    from rcan_grasp_policy.cem import CEMPolicy

    path = Path(model_path)
    if path.suffix == ".onnx":
        qf: Any = RuntimeQFunction(path, runtime, log=log)
        channels, size, meta, provider = qf.in_channels, qf.image_size, qf.meta, qf.model.provider
    else:
        from rcan_grasp_policy.backends import load_qfunction  # torch: only for .safetensors weights

        qf, meta = load_qfunction(path, threads=runtime.intra_op_threads)
        channels, size, provider = qf.net.cfg.in_channels, qf.net.cfg.image_size, f"torch:{qf.device}"
    policy = CEMPolicy(qf, cem_cfg, bounds, seed=seed)

    def act(images: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, float]:
        actions, q = policy.act(images[None], np.asarray(state, dtype=np.float32)[None])
        return actions[0], float(q[0])

    return Planner(act, channels, size, meta, provider)


def resolve_inputs(requested: str, in_channels: int, variant: str | None = None) -> str:
    """The image variant.  'auto' follows the model card's training variant (rcan_grasp_policy.inputs):
    rcan -> [source, G(source)]; canonical (trained in the canonical sim) -> G(source);
    dr-* (trained on randomized images) -> the raw source.  Without a variant: 6 channels ->
    [source, G(source)], 3 -> G(source)."""
    if requested == "auto":
        if variant is not None and variant.startswith("dr-"):
            requested = "source"
        elif variant == "canonical":
            requested = "canonical"
        else:
            requested = "source+canonical" if in_channels == 6 else "canonical"
    if requested not in INPUT_CHANNELS:
        raise ValueError(f"image_inputs must be one of {['auto', *INPUT_CHANNELS]}, got {requested!r}")
    if INPUT_CHANNELS[requested] != in_channels:
        raise ValueError(f"image_inputs '{requested}' gives {INPUT_CHANNELS[requested]} channels but the "
                         f"policy model takes {in_channels}")
    return requested
