"""`rcan check-labels`: the held-out checks of `rcan train-labels` for any policy on any label sets.

The same figures a run logs every `--eval-every` updates (label AUC, move AUC, pick label, CEM regret, ...), for a
snapshot or an exported policy, on training sets as well as held-out ones: a policy that scores the
same on the states it was trained on as on new ones is underfitting, not short of data.

`--policy nearest-object` scores the same candidates by a privileged rule instead of a network: minus the
horizontal distance from where the candidate leaves the gripper to the nearest object's hull centre.  Where the
gripper goes is all it knows, so its move AUC says how far a policy can get by aiming alone on these labels, which
a single noisy outcome per candidate keeps below 1.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rcan_common.action import YAW_STATE_DIM, with_yaw
from rcan_common.config import ConfigError, parse_cli, require
from rcan_common.io import atomic_write_json
from rcan_grasp_policy.cem import CEMConfig

NEAREST_OBJECT = "nearest-object"
"""The privileged reference scorer's name for --policy (sim only: it reads the labelled scene's object poses)."""


@dataclass
class LabelCheckConfig:
    """Label metrics of a policy's Q-function on labelled states."""

    policy: str = "models/policy_canonical_64.onnx"
    """Policy: .onnx, .safetensors (with its .json) or a training run directory; or `nearest-object`, the
    privileged reference (minus the distance from each candidate's end position to the nearest object's centre)."""
    labels: list[Path] = field(default_factory=lambda: [Path("data/labels/descend-64-test")])
    """Label directories (rcan label-states) to score; inputs are rendered for the policy's variant and view."""
    max_states: int = 0
    """Score this many states of each directory, drawn at random with `seed` (0: all)."""
    seed: int = 0
    """Seed of the --max-states draw and of CEM's draws for the regret."""
    threads: int = 1
    cem: CEMConfig = field(default_factory=CEMConfig)
    """The search whose regret is reported (`cem_regret`: 1 - Q of CEM's pick / the best Q over a dense set of 256
    actions and the labelled ones, as train-labels logs it); the deployed search by default."""
    feature_teacher: Path | None = None
    """Also report `feature_mse`: the mean squared error between the policy's trunk features on its inputs and
    this canonical network's on each state's canonical render (the --feature-teacher loss of train-labels, without
    the random shift; the policy must be a .safetensors or a run directory).  A network that starts as the teacher
    on G(x) (`train-labels --init-from <teacher> --total-updates 0`) measures how far G(x) is from the render."""
    out: Path | None = None
    """Write the figures as JSON here."""

    def __post_init__(self) -> None:
        require(self.max_states >= 0, "max_states", "must be >= 0")
        require(self.threads >= 1, "threads", "must be >= 1")


def check(cfg: LabelCheckConfig) -> dict[str, dict[str, float]]:
    from rcan_grasp_policy.backends import load_qfunction
    from rcan_grasp_policy.label_train import label_metrics, scores_and_regret
    from rcan_grasp_policy.labels import load_labels, nearest_object_scores, policy_images

    reference = cfg.policy == NEAREST_OBJECT
    if reference and cfg.feature_teacher is not None:
        raise ConfigError(f"invalid config field 'feature_teacher': {NEAREST_OBJECT} has no trunk features")
    if not reference:
        path = Path(cfg.policy)
        path = path / "policy.safetensors" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"invalid config field 'policy': {path} does not exist")
        qf, meta = load_qfunction(path, threads=cfg.threads)
        contract = qf.contract
        features = _feature_nets(cfg, qf, meta, path) if cfg.feature_teacher is not None else None
    out = {}
    for d in cfg.labels:
        data = load_labels(d, progress=True, images=False)
        n = len(data["labels"])
        idx = np.arange(n)
        if cfg.max_states and cfg.max_states < n:
            idx = np.sort(np.random.default_rng(cfg.seed).choice(n, cfg.max_states, replace=False))
        data = {k: v[idx] for k, v in data.items()}
        distance = -nearest_object_scores(data)
        if reference:
            metrics = label_metrics(-distance, data["labels"], data["candidates"], data["state"])
            out[str(d)] = _report(d, len(idx), metrics | grasp_rate_by_distance(distance, data)
                                  | {"move_pick_distance_cm": move_pick_distance_cm(-distance, distance, data)})
            continue
        images = policy_images(d, data, meta["variant"], meta.get("generator"), camera_fov_deg=contract.view_fov_deg(),
                               image_size=contract.image_size)
        state = with_yaw(data["state"], data["yaw"]) if qf.state_dim == YAW_STATE_DIM else data["state"]
        q, regret = scores_and_regret(qf, images, state, data["candidates"], np.random.default_rng(cfg.seed), cfg.cem)
        m = label_metrics(q, data["labels"], data["candidates"], data["state"]) | {"cem_regret": regret}
        m["move_pick_distance_cm"] = move_pick_distance_cm(q, distance, data)
        if features is not None:
            canonical = policy_images(d, data, "canonical", camera_fov_deg=contract.view_fov_deg(),
                                      image_size=contract.image_size)
            m["feature_mse"] = _feature_mse(*features, images, canonical)
        out[str(d)] = _report(d, len(idx), m)
    return out


DISTANCE_BINS_CM = (0, 1, 2, 3, 4, 6, 10)
"""Edges (cm) of the --policy nearest-object report's grasp rates by distance; the last bin is open."""


def grasp_rate_by_distance(distance: np.ndarray, data: dict[str, np.ndarray]) -> dict[str, float]:
    """The share of the open-gripper states' pure moves that grasp (label > 0), by how far (distance (N, K), m)
    each leaves the gripper from the nearest object's centre: `grasp_rate_0-1cm`, ..., `grasp_rate_10+cm`."""
    from rcan_grasp_policy.labels import open_gripper_moves

    candidates = data["candidates"]
    moves = open_gripper_moves(candidates, data["state"])
    out = {}
    for lo, hi in zip(DISTANCE_BINS_CM, DISTANCE_BINS_CM[1:] + (np.inf,)):
        inside = moves & (distance >= lo / 100) & (distance < hi / 100)
        name = f"grasp_rate_{lo}-{hi}cm" if np.isfinite(hi) else f"grasp_rate_{lo}+cm"
        out[name] = float((data["labels"][inside] > 0).mean()) if inside.any() else float("nan")
    return out


def move_pick_distance_cm(scores: np.ndarray, distance: np.ndarray, data: dict[str, np.ndarray]) -> float:
    """The median distance (cm) from the nearest object's centre at which the best-scored pure move of each
    open-gripper state (with two or more moves) leaves the gripper: how closely the policy aims, next to
    label_metrics' move_pick_label, how often that aim grasps."""
    from rcan_grasp_policy.labels import best_open_moves

    states, best = best_open_moves(scores, data["candidates"], data["state"])
    return float(100 * np.median(distance[states][np.arange(len(best)), best])) if len(best) else float("nan")


def _report(labels: Path, states: int, metrics: dict[str, float]) -> dict[str, float]:
    row = {"states": states, **{k: round(float(v), 4) for k, v in metrics.items()}}
    print(f"[check-labels] {labels}: " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return row


def _feature_nets(cfg: LabelCheckConfig, qf, meta: dict, path: Path):
    """(the policy's torch network, the frozen canonical teacher), checked as train-labels checks them."""
    from rcan_grasp_policy.backends import TorchQFunction
    from rcan_grasp_policy.label_train import feature_teacher

    if not isinstance(qf, TorchQFunction):
        raise ConfigError(f"invalid config field 'policy': feature_teacher needs the policy's torch weights "
                          f"(.safetensors or a run directory), got {path}")
    net = qf.net
    if meta.get("variant") == "canonical":
        raise ConfigError(f"invalid config field 'feature_teacher': the policy is a canonical network; "
                          "the trunk-feature error is measured for students on other images (rcan, dr-*)")
    return net, feature_teacher(Path(cfg.feature_teacher), net.cfg)


def _feature_mse(net, teacher, images: np.ndarray, canonical: np.ndarray) -> float:
    import torch

    from rcan_grasp_policy.inputs import images_to_nchw

    squared, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(images), 128):
            s = net.embed(torch.from_numpy(images_to_nchw(images[i:i + 128])))
            t = teacher.embed(torch.from_numpy(images_to_nchw(canonical[i:i + 128])))
            squared, count = squared + float(((s - t) ** 2).sum()), count + s.numel()
    return squared / count


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
