"""Training checkpoints: safetensors for every tensor + a JSON sidecar, both written atomically.

A checkpoint ``step-000200`` is two files in ``runs/<name>/checkpoints/``:

* ``step-000200.safetensors``: generator (``G.*``), discriminator (``D.*``), optimizer state
  tensors (``optG.<param index>.<key>``, ``optD.*``) and RNG states (``rng.torch``, ``rng.cuda.<i>``).
* ``step-000200.json``: step, optimizer hyper-parameters (param_groups), scalar optimizer
  state, run counters, and the SHA-256 of the tensor file.  It is written last, so a
  checkpoint without its JSON is incomplete and ignored; a hash mismatch is an error.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rcan_common.io import atomic_write_bytes, atomic_write_json

FORMAT = "rcan-generator-checkpoint-v1"
_NAME = re.compile(r"^step-(\d{6,})\.json$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt; the message names the file."""


def _split_optimizer(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _join_optimizer(prefix: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            idx, key = name[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(idx), {})[key] = value
    for idx, scal in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(scal)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: str | Path, step: int, generator: nn.Module, discriminator: nn.Module | None,
                    opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer | None,
                    extra: dict[str, Any]) -> Path:
    """Write checkpoint ``step-<step>`` into `directory`; returns the JSON path."""
    from safetensors.torch import save as st_save

    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {f"G.{k}": v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    meta: dict[str, Any] = {"format": FORMAT, "step": int(step), "extra": extra}
    t, meta["optG"] = _split_optimizer("optG", opt_g)
    tensors.update(t)
    if discriminator is not None and opt_d is not None:
        tensors.update({f"D.{k}": v.detach().cpu().contiguous() for k, v in discriminator.state_dict().items()})
        t, meta["optD"] = _split_optimizer("optD", opt_d)
        tensors.update(t)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    blob = st_save(tensors)
    stem = f"step-{step:06d}"
    atomic_write_bytes(directory / f"{stem}.safetensors", blob)
    meta["sha256"] = hashlib.sha256(blob).hexdigest()
    meta["tensor_file"] = f"{stem}.safetensors"
    atomic_write_json(directory / f"{stem}.json", meta)
    return directory / f"{stem}.json"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints (their JSON files), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    for p in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        p.unlink(missing_ok=True)  # JSON first: a half-pruned checkpoint is then simply incomplete
        p.with_suffix(".safetensors").unlink(missing_ok=True)


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load and verify a checkpoint (JSON path, or a checkpoints/run directory = its latest); returns (meta, tensors)."""
    from safetensors.torch import load as st_load

    path = Path(path)
    if path.is_dir() and (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"no complete checkpoint (step-*.json) in {path}")
        path = found[-1]
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt (bad JSON: {exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an {FORMAT} checkpoint")
    tfile = path.with_name(str(meta.get("tensor_file", "")))
    if not tfile.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: tensor file {tfile} is missing")
    blob = tfile.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"checkpoint tensor file {tfile} is corrupt (SHA-256 does not match {path.name})")
    try:
        tensors = st_load(blob)
    except Exception as exc:  # safetensors' own error types
        raise CheckpointError(f"checkpoint tensor file {tfile} cannot be read: {exc}") from exc
    return meta, tensors


def sub_state(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def restore(meta: dict[str, Any], tensors: dict[str, torch.Tensor], generator: nn.Module,
            discriminator: nn.Module | None, opt_g: torch.optim.Optimizer | None,
            opt_d: torch.optim.Optimizer | None, restore_rng: bool = True) -> None:
    """Load every saved state into the given objects (strict: a shape/key mismatch is a CheckpointError)."""
    try:
        generator.load_state_dict(sub_state(tensors, "G"), strict=True)
        if opt_g is not None:
            opt_g.load_state_dict(_join_optimizer("optG", tensors, meta["optG"]))
        if discriminator is not None:
            if "optD" not in meta:
                raise CheckpointError("checkpoint has no discriminator but this run uses one (gan weight > 0)")
            discriminator.load_state_dict(sub_state(tensors, "D"), strict=True)
            if opt_d is not None:
                opt_d.load_state_dict(_join_optimizer("optD", tensors, meta["optD"]))
    except (RuntimeError, KeyError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint does not match the model/optimizer: {exc}") from exc
    if restore_rng:
        torch.set_rng_state(tensors["rng.torch"])
        cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
