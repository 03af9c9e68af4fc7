"""Q-function backends for CEM: a torch `QNetwork` or an exported ONNX Runtime session.

Both implement `rcan_grasp_policy.cem.QFunction`:

    ctx = qf.embed(images, state)   # images uint8 (B, H, W, C) as the policy sees them, state (B, 2)
    q   = qf.score(ctx, actions)    # (B, N, 8) -> (B, N) Q in [0, 1]

and both convert images with the same `images_to_nchw`, so a decision is the same on either.

Weights on disk are safetensors with a JSON sidecar (`<name>.json`: network config, variant,
provenance); the ONNX export carries the same JSON in its metadata (key ``rcan_policy``).
`load_qfunction(path)` opens either.

Running a policy (what the ROS policy node does):

    qf, meta = load_qfunction("models/policy_rcan_64.onnx")      # or a .safetensors
    policy = CEMPolicy(qf, CEMConfig(), ActionBounds(), seed=0)   # rcan_grasp_policy.cem
    x = policy_image(source_rgb, canonical_rgb, meta["qnet"]["image_size"])  # rcan_grasp_policy.inputs
    actions, q = policy.act(x[None], np.array([[gripper_open, gripper_height]], np.float32))
    action = actions[0]   # rcan_common.action layout: dx, dy, dz, sin, cos, close, open, terminate

meta["variant"] says whether G(x) is needed ("rcan": 6 channels) or not (3 channels).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rcan_common.config import from_dict
from rcan_common.io import atomic_write_json
from rcan_grasp_policy.inputs import ONNX_METADATA_KEY, images_to_nchw
from rcan_grasp_policy.qnet import QNetConfig, QNetwork


class PolicyLoadError(RuntimeError):
    """A policy file is missing, malformed or does not match its config."""


class TorchQFunction:
    """QFunction over a torch QNetwork (switched to eval mode: BatchNorm uses running statistics)."""

    def __init__(self, net: QNetwork, device: str | torch.device = "cpu"):
        self.net = net.eval().to(device)
        self.device = torch.device(device)

    @torch.inference_mode()
    def embed(self, images: np.ndarray, state: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(images_to_nchw(images)).to(self.device)
        return self.net.embed(x), torch.as_tensor(np.asarray(state, dtype=np.float32), device=self.device)

    @torch.inference_mode()
    def score(self, context: tuple[torch.Tensor, torch.Tensor], actions: np.ndarray) -> np.ndarray:
        feats, state = context
        a = torch.as_tensor(np.asarray(actions, dtype=np.float32), device=self.device)
        return torch.sigmoid(self.net.head_logits(feats, state, a)).cpu().numpy()


class OrtQFunction:
    """QFunction over the exported ONNX graph (images, state, actions (B, N, 8)) -> q (B, N).

    The graph runs the image trunk once per state inside each call and broadcasts it over the
    N candidates, so one CEM iteration costs one trunk pass per state, as in torch.
    """

    def __init__(self, path: str | Path, threads: int = 0):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise PolicyLoadError(f"policy ONNX file not found: {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise PolicyLoadError(f"cannot load policy ONNX {path}: {exc}") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if ONNX_METADATA_KEY not in meta:
            raise PolicyLoadError(f"{path} has no '{ONNX_METADATA_KEY}' metadata; was it made by `rcan export-policy`?")
        self.meta = json.loads(meta[ONNX_METADATA_KEY])
        self.qnet_cfg = from_dict(QNetConfig, self.meta["qnet"])

    def embed(self, images: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return images_to_nchw(images), np.asarray(state, dtype=np.float32)

    def score(self, context: tuple[np.ndarray, np.ndarray], actions: np.ndarray) -> np.ndarray:
        images, state = context
        (q,) = self.session.run(["q"], {"images": images, "state": state,
                                        "actions": np.asarray(actions, dtype=np.float32)})
        return q


def save_policy(path: str | Path, net: QNetwork, meta: dict[str, Any]) -> None:
    """Weights as safetensors at `path` plus `<path minus suffix>.json` with config and `meta`."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(tmp))
    tmp.replace(path)
    atomic_write_json(path.with_suffix(".json"), {**meta, "qnet": net.cfg.to_dict()})


def load_policy_net(path: str | Path) -> tuple[QNetwork, dict[str, Any]]:
    """A QNetwork (eval mode) and its metadata from safetensors + JSON sidecar."""
    from safetensors.torch import load_file

    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        raise PolicyLoadError(f"policy weights need both {path} and {sidecar}")
    meta = json.loads(sidecar.read_text())
    if "qnet" not in meta:
        raise PolicyLoadError(f"{sidecar} has no 'qnet' config")
    net = QNetwork(from_dict(QNetConfig, meta["qnet"]))
    try:
        net.load_state_dict(load_file(str(path)))
    except RuntimeError as exc:
        raise PolicyLoadError(f"weights in {path} do not match the config in {sidecar}: {exc}") from exc
    return net.eval(), meta


def load_qfunction(path: str | Path, threads: int = 0) -> tuple[TorchQFunction | OrtQFunction, dict[str, Any]]:
    """Open a policy: `.onnx` -> ONNX Runtime, `.safetensors` -> torch.  Returns (qfunction, metadata)."""
    path = Path(path)
    if path.suffix == ".onnx":
        qf = OrtQFunction(path, threads=threads)
        return qf, qf.meta
    if path.suffix == ".safetensors":
        if threads:
            torch.set_num_threads(threads)
        net, meta = load_policy_net(path)
        return TorchQFunction(net), meta
    raise PolicyLoadError(f"unknown policy file type {path.suffix!r} ({path}); expected .onnx or .safetensors")
