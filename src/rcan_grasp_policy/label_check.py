"""`rcan check-labels`: the held-out checks of `rcan train-labels` for any policy on any label sets.

The same figures a run logs every `--eval-every` updates (label AUC, move AUC, pick label, ...), for a
snapshot or an exported policy, on training sets as well as held-out ones: a policy that scores the
same on the states it was trained on as on new ones is underfitting, not short of data.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rcan_common.config import ConfigError, parse_cli, require
from rcan_common.io import atomic_write_json


@dataclass
class LabelCheckConfig:
    """Label metrics of a policy's Q-function on labelled states."""

    policy: str = "models/policy_canonical_64.onnx"
    """Policy: .onnx, .safetensors (with its .json) or a training run directory."""
    labels: list[Path] = field(default_factory=lambda: [Path("data/labels/descend-64-test")])
    """Label directories (rcan label-states) to score; inputs are rendered for the policy's variant and view."""
    max_states: int = 0
    """Score this many states of each directory, drawn at random with `seed` (0: all)."""
    seed: int = 0
    threads: int = 1
    out: Path | None = None
    """Write the figures as JSON here."""

    def __post_init__(self) -> None:
        require(self.max_states >= 0, "max_states", "must be >= 0")
        require(self.threads >= 1, "threads", "must be >= 1")


def check(cfg: LabelCheckConfig) -> dict[str, dict[str, float]]:
    from rcan_grasp_policy.backends import load_qfunction
    from rcan_grasp_policy.label_train import label_metrics
    from rcan_grasp_policy.labels import load_labels, policy_images

    path = Path(cfg.policy)
    path = path / "policy.safetensors" if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"invalid config field 'policy': {path} does not exist")
    qf, meta = load_qfunction(path, threads=cfg.threads)
    contract = qf.contract
    out = {}
    for d in cfg.labels:
        data = load_labels(d)
        n = len(data["labels"])
        idx = np.arange(n)
        if cfg.max_states and cfg.max_states < n:
            idx = np.sort(np.random.default_rng(cfg.seed).choice(n, cfg.max_states, replace=False))
        data = {k: v[idx] for k, v in data.items()}
        images = policy_images(d, data, meta["variant"], meta.get("generator"), camera_fov_deg=contract.view_fov_deg(),
                               image_size=contract.image_size)
        q = np.concatenate([qf.score(qf.embed(images[i:i + 128], data["state"][i:i + 128]),
                                     data["candidates"][i:i + 128]) for i in range(0, len(idx), 128)])
        m = label_metrics(q, data["labels"], data["candidates"], data["state"])
        out[str(d)] = {"states": int(len(idx)), **{k: round(float(v), 4) for k, v in m.items()}}
        print(f"[check-labels] {d}: " + "  ".join(f"{k} {v}" for k, v in out[str(d)].items()), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_cli(LabelCheckConfig, argv)
        result = check(cfg)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"rcan check-labels: error: {exc}", file=sys.stderr)
        return 2
    if cfg.out is not None:
        atomic_write_json(cfg.out, {"policy": cfg.policy, "labels": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
