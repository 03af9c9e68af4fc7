"""Q-function backends for CEM, and the one policy loader.

Both backends implement `rcan_grasp_policy.cem.QFunction`:

    ctx = qf.embed(images, state)   # images uint8 (B, H, W, C) as the policy sees them, state (B, 2)
    q   = qf.score(ctx, actions)    # (B, N, 8) -> (B, N) Q in [0, 1]

and both convert images with the same `images_to_nchw`, so a decision is the same on either:

* `OrtQFunction`: the exported ONNX graph, run by the project's ONNX Runtime wrapper
  (rcan_perception.runtime: provider choice and fallback, threads, warm-up, start-up shape checks).
  The robot's policy node, evaluation, collection and the export parity check all use it.
* `TorchQFunction`: a torch `QNetwork` (training, and `.safetensors` weights).

Weights on disk are safetensors with a JSON sidecar (`<name>.json`: network config, variant,
provenance); the ONNX export carries the same JSON in its metadata (key ``rcan_policy``).
`load_qfunction(path)` opens either.  This module does not import torch until torch weights are
used, so the ONNX path (the deployed node) starts without it.

Running a policy (what the ROS policy node does, through rcan_grasp_policy.planner.load_planner):

    qf, meta = load_qfunction("models/policy_rcan_64.onnx")      # or a .safetensors
    policy = CEMPolicy(qf, CEMConfig(), ActionBounds(), seed=0)   # rcan_grasp_policy.cem
    x = qf.contract.prepare(source_rgb, canonical_rgb)            # rcan_grasp_policy.contract
    actions, q = policy.act(x[None], np.array([[gripper_open, gripper_height]], np.float32))
    # (qf.state_dim == 4, QNetConfig.yaw_state: rcan_common.action.with_yaw(state, yaw) adds the gripper's yaw)
    action = actions[0]   # rcan_common.action layout: dx, dy, dz, sin, cos, close, open, terminate

qf.contract.inputs says whether G(x) is needed ("source+canonical": 6 channels) or not (3 channels).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from rcan_common.action import ACTION_DIM, STATE_DIM, YAW_STATE_DIM
from rcan_common.config import ConfigError, from_dict
from rcan_common.io import atomic_write_bytes, atomic_write_json
from rcan_grasp_policy.contract import ONNX_CONTRACT_KEY, PolicyContract, contract_path
from rcan_grasp_policy.inputs import ONNX_METADATA_KEY, images_to_nchw
from rcan_perception.runtime import ModelError, OrtModel, RuntimeConfig

if TYPE_CHECKING:
    import torch

    from rcan_grasp_policy.qnet import QNetwork


class PolicyLoadError(ModelError):
    """A policy file is missing, malformed or does not match its config."""


def resolve_contract(path: str | Path, meta: dict[str, Any], embedded: str | None = None) -> PolicyContract:
    """A policy's contract: the one embedded in its ONNX metadata, else the ``<stem>.contract.json``
    sidecar, else derived from its network metadata (policies exported before contracts existed).
    It must agree with the network's input channels and size."""
    path = Path(path)
    try:
        if embedded is not None:
            contract = PolicyContract.from_json(embedded)
        elif contract_path(path).is_file():
            contract = PolicyContract.load(contract_path(path))
        else:
            contract = PolicyContract.from_metadata(meta)
        channels, size = int(meta["qnet"]["in_channels"]), int(meta["qnet"]["image_size"])
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise PolicyLoadError(f"policy {path}: unusable contract: {exc}") from exc
    if (contract.channels, contract.image_size) != (channels, size):
        raise PolicyLoadError(f"policy {path}: contract ({contract.inputs}: {contract.channels} channels, "
                              f"{contract.image_size} px) does not match the network ({channels} channels, {size} px)")
    return contract


class TorchQFunction:
    """QFunction over a torch QNetwork (switched to eval mode: BatchNorm uses running statistics)."""

    def __init__(self, net: QNetwork, device: str | torch.device = "cpu", contract: PolicyContract | None = None,
                 bf16: bool = False):
        import torch

        self.net = net.eval().to(device)
        self.device = torch.device(device)
        self.bf16 = bf16
        """Run under bfloat16 autocast (a learner's --bf16: its Bellman targets); Q is returned as float32."""
        self.contract = contract
        """The policy's PolicyContract where known (load_qfunction sets it)."""
        self.state_dim = net.cfg.state_dim
        """Numbers per state vector (STATE_DIM, or YAW_STATE_DIM for QNetConfig.yaw_state)."""

    @property
    def provider(self) -> str:
        return f"torch:{self.device}"

    def embed(self, images: np.ndarray, state: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            x = torch.from_numpy(images_to_nchw(images)).to(self.device)
            return self.net.embed(x), torch.as_tensor(np.asarray(state, dtype=np.float32), device=self.device)

    def score(self, context: tuple[torch.Tensor, torch.Tensor], actions: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            feats, state = context
            a = torch.as_tensor(np.asarray(actions, dtype=np.float32), device=self.device)
            return torch.sigmoid(self.net.head_logits(feats, state, a).float()).cpu().numpy()


class OrtQFunction:
    """QFunction over the exported ONNX graph (images, state, actions (B, N, 8)) -> q (B, N).

    The graph runs the image trunk once per state inside each call and broadcasts it over the
    N candidates, so one CEM iteration costs one trunk pass per state, as in torch.  The graph's
    inputs are checked at load against the network config in its metadata; `runtime` picks the
    provider (falling back to the CPU), threads and warm-up runs (default: CPU, ORT's default
    threads, no warm-up).  Every load failure raises PolicyLoadError (a runtime ModelError).
    """

    def __init__(self, path: str | Path, runtime: RuntimeConfig | None = None,
                 log: Callable[[str], None] | None = None):
        runtime = RuntimeConfig(warmup_runs=0) if runtime is None else runtime
        try:
            # The expected input shapes come from the model's own metadata: check after loading, then warm up.
            self.model = OrtModel(path, dataclasses.replace(runtime, warmup_runs=0), log=log)
        except ModelError as exc:
            raise PolicyLoadError(str(exc)) from exc
        if ONNX_METADATA_KEY not in self.model.metadata:
            raise PolicyLoadError(f"policy model {path} has no '{ONNX_METADATA_KEY}' metadata; "
                                  "was it made by `rcan export-policy`?")
        try:
            self.meta = json.loads(self.model.metadata[ONNX_METADATA_KEY])
            self.in_channels = int(self.meta["qnet"]["in_channels"])
            self.image_size = int(self.meta["qnet"]["image_size"])
            self.state_dim = YAW_STATE_DIM if self.meta["qnet"].get("yaw_state", False) else STATE_DIM
        except (ValueError, KeyError, TypeError) as exc:
            raise PolicyLoadError(f"policy model {path}: unreadable '{ONNX_METADATA_KEY}' metadata: {exc!r}") from exc
        c, s = self.in_channels, self.image_size
        try:
            self.model.check_io({"images": (None, c, s, s), "state": (None, self.state_dim),
                                 "actions": (None, None, ACTION_DIM)}, ["q"])
        except ModelError as exc:
            raise PolicyLoadError(str(exc)) from exc
        self.contract = resolve_contract(path, self.meta, self.model.metadata.get(ONNX_CONTRACT_KEY))
        """The policy's PolicyContract (embedded, sidecar, or derived from the metadata of older exports)."""
        self.model.warmup(runtime.warmup_runs)

    @property
    def provider(self) -> str:
        return self.model.provider

    def embed(self, images: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return images_to_nchw(images), np.asarray(state, dtype=np.float32)

    def score(self, context: tuple[np.ndarray, np.ndarray], actions: np.ndarray) -> np.ndarray:
        images, state = context
        return self.model.run({"images": images, "state": state,
                               "actions": np.asarray(actions, dtype=np.float32)})["q"]


def save_policy(path: str | Path, net: QNetwork, meta: dict[str, Any]) -> None:
    """Weights as safetensors at `path` plus `<path minus suffix>.json` with config and `meta`, each written
    atomically with the usual permissions (safetensors' own save_file makes an owner-only file)."""
    from safetensors.torch import save

    path = Path(path)
    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}))
    atomic_write_json(path.with_suffix(".json"), {**meta, "qnet": net.cfg.to_dict()})


def generator_digest(generator: str | Path | None) -> str | None:
    """sha256 of the generator ONNX file a policy is trained on, for its metadata (`generator_sha256`); None for
    canonical inputs, the sim-only oracle and a missing file."""
    from rcan_common.provenance import file_sha256
    from rcan_grasp_policy.inputs import ORACLE

    if generator is None or str(generator) == ORACLE or not Path(generator).is_file():
        return None
    return file_sha256(generator)


def generator_mismatch(policy: str | Path, generator: str | Path, resolve: Callable[[str], Path] = Path) -> str | None:
    """Why `generator` is not the G the RCAN policy at `policy` was trained on, or None (the same file, a policy that
    reads no G, or nothing to compare with). The policy's JSON sidecar names its G by sha256
    (`generator_sha256`) or, in policies exported before that field, by path (`resolve` maps that path to a
    file). A policy run on another G than its own loses grasps (docs/policy.md), and nothing downstream can tell."""
    from rcan_common.provenance import file_sha256

    sidecar, generator = Path(policy).with_suffix(".json"), Path(generator)
    if not sidecar.is_file() or not generator.is_file():
        return None
    meta = json.loads(sidecar.read_text())
    if meta.get("variant") != "rcan" or not meta.get("generator"):
        return None
    named = resolve(str(meta["generator"]))
    if not meta.get("generator_sha256") and named.resolve() == generator.resolve():
        return None  # the very file the policy names
    expected = meta.get("generator_sha256") or generator_digest(named)
    if expected is None or file_sha256(generator) == expected:
        return None
    return (f"{generator} is not the generator {Path(policy).name} was trained on ({meta['generator']}, "
            f"sha256 {expected[:12]}); retrain or re-export the policy on this G")


def load_policy_net(path: str | Path) -> tuple[QNetwork, dict[str, Any]]:
    """A QNetwork (eval mode) and its metadata from safetensors + JSON sidecar."""
    from safetensors.torch import load_file

    from rcan_grasp_policy.qnet import QNetConfig, QNetwork

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


def load_qfunction(path: str | Path, threads: int = 0, *, runtime: RuntimeConfig | None = None,
                   log: Callable[[str], None] | None = None) -> tuple[TorchQFunction | OrtQFunction, dict[str, Any]]:
    """Open a policy: `.onnx` -> OrtQFunction, `.safetensors` -> TorchQFunction, a training run directory -> its
    policy.safetensors.  Returns (qfunction, metadata); ``qfunction.contract`` is the policy's PolicyContract
    (rcan_grasp_policy.contract).

    `runtime` configures ONNX Runtime (its intra_op_threads also sets torch's threads); without it,
    the CPU with `threads` intra-op threads (0: the library's default) and no warm-up.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "policy.safetensors"
    if runtime is None:
        runtime = RuntimeConfig(intra_op_threads=threads, warmup_runs=0)
    if path.suffix == ".onnx":
        qf = OrtQFunction(path, runtime, log=log)
        return qf, qf.meta
    if path.suffix == ".safetensors":
        import torch

        if runtime.intra_op_threads:
            torch.set_num_threads(runtime.intra_op_threads)
        net, meta = load_policy_net(path)
        return TorchQFunction(net, contract=resolve_contract(path, meta)), meta
    raise PolicyLoadError(f"unknown policy file type {path.suffix!r} ({path}); expected .onnx or .safetensors")
