"""`rcan export-policy`: Q-network -> ONNX, with parity checks and a model card.

Graph: images float32 (B, C, S, S) in [0, 1], state (B, 2), actions (B, N, 8) -> q (B, N);
B and N are dynamic.  Inside, the image trunk runs once per state and is broadcast over
the N candidates (the same trunk-once scoring as torch).  The policy metadata (network
config, variant, generator) is stored in the ONNX metadata under ``rcan_policy``, and the
pre-processing contract (rcan_grasp_policy.contract.PolicyContract) under ``rcan_policy_contract``
and beside the ONNX file as ``<stem>.contract.json``.

Checks before anything is written: max |q_torch - q_ort| on random inputs, and the CEM
decision (64 x 6 x 2, same seed) from the torch and the ONNX Runtime backends must pick
the same actions.  The card (<stem>.card.json + <stem>.md) records config, data, training,
the checks and any evaluation reports passed with --evals.
"""
from __future__ import annotations

import json
import platform
import shlex
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rcan_common.action import with_yaw
from rcan_common.config import ConfigError, parse_cli, require, to_dict
from rcan_common.io import atomic_write_bytes, atomic_write_json, ensure_writable_dir
from rcan_grasp_policy.backends import TorchQFunction, load_policy_net, load_qfunction, save_policy
from rcan_grasp_policy.cem import ACTING_OPTIONS, CEMConfig, CEMPolicy
from rcan_grasp_policy.contract import ONNX_CONTRACT_KEY, PolicyContract, contract_path
from rcan_grasp_policy.inputs import ONNX_METADATA_KEY
from rcan_grasp_policy.qnet import QNetwork


@dataclass
class ExportConfig:
    """Export a trained Q-network to ONNX with parity checks and a model card."""

    checkpoint: Path = Path("runs/policy/rcan-64px-seed0")
    """policy.safetensors (with its .json) or a training run directory."""
    out: Path = Path("models/policy_rcan_64.onnx")
    """ONNX file to write; the card goes to <stem>.card.json / <stem>.md, weights to <stem>.safetensors."""
    opset: int = 18
    """ONNX opset."""
    tolerance: float = 1e-4
    """Largest allowed |q_torch - q_ort|."""
    parity_states: int = 8
    """Random states in the CEM decision parity check."""
    seed: int = 0
    """Seed of the parity inputs and of CEM."""
    evals: tuple[Path, ...] = ()
    """`rcan eval-policy` JSON reports to put in the card."""
    notes: str = ""
    """Free text for the card: how the model was made, known limitations."""
    cem: CEMConfig = field(default_factory=CEMConfig)
    """CEM settings of the decision parity check."""

    def __post_init__(self) -> None:
        require(Path(self.out).suffix == ".onnx", "out", f"must end in .onnx, got {self.out}")
        require(self.tolerance > 0, "tolerance", "must be > 0")
        require(self.parity_states >= 1, "parity_states", "must be >= 1")


class _QGraph(nn.Module):
    """The exported function: Q = sigmoid(logits)."""

    def __init__(self, net: QNetwork):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(images, state, actions))


def export_onnx(net: QNetwork, meta: dict, path: Path, opset: int = 18,
                contract: PolicyContract | None = None) -> None:
    """Write the ONNX graph with `meta` (+ the network config) and, if given, `contract` in its metadata."""
    import onnx

    net = net.eval()
    c = net.cfg
    example = (torch.rand(2, c.in_channels, c.image_size, c.image_size), torch.rand(2, c.state_dim), torch.rand(2, 3, 8))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # The tracer warns about the shape checks in QNetwork; the exported shapes stay dynamic
        # (the parity check runs other batch and candidate counts than the example).
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "q.onnx"
        torch.onnx.export(_QGraph(net), example, str(raw), input_names=["images", "state", "actions"],
                          output_names=["q"], opset_version=opset, dynamo=False,
                          dynamic_axes={"images": {0: "batch"}, "state": {0: "batch"},
                                        "actions": {0: "batch", 1: "candidates"}, "q": {0: "batch", 1: "candidates"}})
        model = onnx.load(str(raw))
    onnx.checker.check_model(model)
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, json.dumps({**meta, "qnet": c.to_dict()}, sort_keys=True)
    if contract is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = ONNX_CONTRACT_KEY, contract.to_json()
    atomic_write_bytes(path, model.SerializeToString())


def parity(net: QNetwork, onnx_path: Path, cem: CEMConfig, states: int, seed: int) -> dict:
    """Q parity on random inputs and CEM decision parity (same seed) between torch and ORT."""
    c = net.cfg
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (states, c.image_size, c.image_size, c.in_channels), dtype=np.uint8)
    state = np.stack([rng.integers(0, 2, states), rng.uniform(0, 0.35, states)], axis=1).astype(np.float32)
    if c.yaw_state:
        state = with_yaw(state, rng.uniform(-np.pi / 2, np.pi / 2, states))
    actions = rng.uniform(-1, 1, (states, cem.samples, 8)).astype(np.float32)
    tq, (oq, _) = TorchQFunction(net), load_qfunction(onnx_path)
    q_torch = tq.score(tq.embed(images, state), actions)
    q_ort = oq.score(oq.embed(images, state), actions)
    a_torch, _ = CEMPolicy(tq, cem, seed=seed).act(images, state)
    a_ort, _ = CEMPolicy(oq, cem, seed=seed).act(images, state)
    return {"q_max_abs_diff": float(np.abs(q_torch - q_ort).max()),
            "cem_same_actions": bool(np.allclose(a_torch, a_ort, atol=1e-5)),
            "cem_action_max_abs_diff": float(np.abs(a_torch - a_ort).max()),
            "states": states, "cem": to_dict(cem), "seed": seed}


def acting_options(report: dict) -> dict[str, float]:
    """The ACTING_OPTIONS an eval-policy report ran with; 0 (off) for those it predates."""
    cem = (report.get("config") or {}).get("cem") or {}
    return {name: float(cem.get(name, 0.0)) for name in ACTING_OPTIONS}


def _card_md(card: dict) -> str:
    m, p = card["model"], card["parity"]
    lines = [f"# {card['name']}", "", card["summary"], "",
             f"- variant: `{m['variant']}` ({m['qnet']['in_channels']} input channels, {m['qnet']['image_size']} px, "
             f"width {m['qnet']['width']}"
             + (f", image trunk {m['qnet']['trunk_width']} wide" if m['qnet'].get('trunk_width') else "") + ")",
             f"- generator: `{m.get('generator')}`" if m.get("generator") else "- generator: none (3-channel input)",
             (f"- training: {m.get('updates')} updates on counterfactual action labels (run `{m.get('run')}`)"
              if m.get("trained_on") == "action labels" else
              f"- training: {m.get('updates')} updates, {m.get('episodes')} collected episodes (run `{m.get('run')}`)"),
             f"- parity: max |q_torch - q_ort| = {p['q_max_abs_diff']:.2e}; CEM picks the same actions: "
             f"{p['cem_same_actions']}", "", "## Evaluation (unseen test objects)", ""]
    if card["evaluations"]:
        lines += ["| domain | policy | " + " | ".join(f"CEM {name}" for name in ACTING_OPTIONS.values())
                  + " | episodes | success | 95% Wilson |", "|---" * (5 + len(ACTING_OPTIONS)) + "|"]
        for e in card["evaluations"]:
            # cards written before an option have none: it was off
            acting = (e.get(name, 0.0) for name in ACTING_OPTIONS)
            lines.append(f"| {e['domain']} | {e['policy']} | "
                         + "".join(f"{f'{value:g}' if value else 'off'} | " for value in acting)
                         + f"{e['episodes']} | {e['success_rate']:.3f} | "
                           f"{e['wilson95'][0]:.3f}-{e['wilson95'][1]:.3f} |")
    else:
        lines.append("No evaluation reports were attached.")
    if card["notes"]:
        lines += ["", "## Notes", "", card["notes"]]
    lines += ["", "## Reproduce", "", "```", card["command"], "```", ""]
    return "\n".join(lines)


def export(cfg: ExportConfig, command: str = "") -> dict:
    ckpt = Path(cfg.checkpoint)
    if ckpt.is_dir():
        ckpt = ckpt / "policy.safetensors"
    if not ckpt.is_file():
        raise ConfigError(f"invalid config field 'checkpoint': {ckpt} does not exist")
    net, meta = load_policy_net(ckpt)
    out = Path(cfg.out)
    ensure_writable_dir(out.parent)
    meta = {k: v for k, v in meta.items() if k != "qnet"}
    contract = PolicyContract.from_metadata(meta | {"qnet": net.cfg.to_dict()})
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / out.name
        export_onnx(net, meta, staged, cfg.opset, contract)
        checks = parity(net, staged, cfg.cem, cfg.parity_states, cfg.seed)
        if checks["q_max_abs_diff"] > cfg.tolerance or not checks["cem_same_actions"]:
            raise RuntimeError(f"ONNX parity check failed: {checks}")
        atomic_write_bytes(out, staged.read_bytes())
    save_policy(out.with_suffix(".safetensors"), net, meta)
    contract.save(contract_path(out))
    evaluations = []
    for path in cfg.evals:
        e = json.loads(Path(path).read_text())
        evaluations.append({k: e[k] for k in ("domain", "split", "episodes", "successes", "success_rate", "wilson95",
                                              "mean_steps", "variant", "generator", "policy")}
                           | acting_options(e) | {"report": str(path)})
    import onnxruntime
    card = {"name": out.stem, "summary": "QT-Opt grasping Q-function (RCAN paper Appendix B) for CEM action selection.",
            "files": {"onnx": str(out), "weights": str(out.with_suffix(".safetensors")),
                      "contract": str(contract_path(out))},
            "contract": to_dict(contract),
            "io": {"inputs": {"images": "float32 (B, C, S, S), RGB in [0, 1]; rcan: channels 0-2 source, 3-5 G(source)",
                              "state": "float32 (B, 2): gripper_open (1/0), gripper_height (m above tray bottom)"
                                       + (", then (B, 4) with sin, cos of twice the gripper yaw (yaw_state, NOT in the "
                                          "paper)" if net.cfg.yaw_state else ""),
                              "actions": "float32 (B, N, 8): dx, dy, dz, sin, cos, close, open, terminate"},
                   "outputs": {"q": "float32 (B, N) in [0, 1]"}},
            "model": meta | {"qnet": net.cfg.to_dict()}, "parity": checks, "evaluations": evaluations,
            "notes": cfg.notes, "export_config": to_dict(cfg),
            "hardware": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
            "command": command or "rcan export-policy " + " ".join(sys.argv[1:])}
    atomic_write_json(out.with_name(out.stem + ".card.json"), card)
    atomic_write_bytes(out.with_suffix(".md"), _card_md(card).encode())
    return card


def command_line(argv: list[str]) -> str:
    """The export call for the card, shell-quoted; the notes (already the card's Notes section) are elided."""
    shown = []
    for i, arg in enumerate(argv):
        if i > 0 and argv[i - 1] == "--notes":
            arg = "<the Notes section above>"
        elif arg.startswith("--notes="):
            arg = "--notes=<the Notes section above>"
        shown.append(arg)
    return "rcan export-policy " + shlex.join(shown)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(ExportConfig, argv, description=__doc__.splitlines()[0])
    card = export(cfg, command_line(argv if argv is not None else sys.argv[1:]))
    p = card["parity"]
    print(f"wrote {cfg.out}: max |q_torch - q_ort| = {p['q_max_abs_diff']:.2e}, "
          f"CEM same actions: {p['cem_same_actions']}")
    return 0
