"""`rcan` command: one entry point, one sub-command per job.

Each sub-command lives in its own module and parses its own typed config (its CLI is
generated from the config dataclass), so `rcan datagen --help` shows every field.
Modules are imported lazily so `rcan --help` stays fast.
"""
from __future__ import annotations

import importlib
import sys

# name -> (module:function, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "datagen": ("rcan_sim.datagen:main", "generate paired randomized/canonical data (sharded HDF5)"),
    "render-grid": ("rcan_sim.preview:main", "write a randomized/canonical/segmentation/depth PNG grid"),
    "train-generator": ("rcan_perception.train:main", "train the RCAN generator G"),
    "export-generator": ("rcan_perception.export:main", "export G to ONNX with a parity check and model card"),
    "train-policy": ("rcan_grasp_policy.train:main", "train the QT-Opt grasping policy in sim"),
    "label-states": ("rcan_grasp_policy.labels:main", "label visited states' candidate actions by simulator resets"),
    "label-pairs": ("rcan_grasp_policy.label_pairs:main", "render paired G training frames of labelled scene states"),
    "train-labels": ("rcan_grasp_policy.label_train:main", "train the Q-network on counterfactual action labels"),
    "pack-labels": ("rcan_grasp_policy.labels:pack_main", "write a label set without its images (a scene-state dataset to commit)"),
    "check-labels": ("rcan_grasp_policy.label_check:main", "label metrics (AUC, move AUC, pick) of a policy on label sets"),
    "check-aiming": ("rcan_grasp_policy.aim_check:main", "how fast a Q-network learns where to go (privileged target, no label noise)"),
    "eval-policy": ("rcan_grasp_policy.evaluate:main", "evaluate a policy with the paper's protocol"),
    "export-policy": ("rcan_grasp_policy.export:main", "export the Q-network to ONNX with a parity check"),
    "policy-contract": ("rcan_grasp_policy.contract:main", "write an exported policy's contract sidecar from its ONNX metadata"),
    "launch": ("rcan_bringup.launcher:main", "start the node graph as real processes (no ros2 launch needed)"),
    "demo": ("rcan_bringup.demo:main", "sim-in-the-loop grasping run with the shipped models"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: rcan <command> [--help] [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rcan: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    from rcan_common.config import ConfigError
    from rcan_common.io import OutputError

    sys.argv[0] = f"rcan {name}"  # so each sub-command's generated --help says `usage: rcan <name>`
    try:
        result = func(rest)
    except (ConfigError, OutputError) as exc:  # bad config or unwritable output: one line, not a traceback
        print(f"rcan {name}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
