"""`rcan check-aiming`: how fast a Q-network architecture learns where to go, without label noise.

A diagnostic of the network, not a way to train a policy.  Every update draws B stored open-gripper states
(random shift as in train-labels) and M random pure moves for each, and fits Q(s, a) by cross-entropy to

    target(s, a) = exp(-d / sigma),  d = horizontal distance from where `a` leaves the TCP to the nearest
                                         object's hull centre (privileged: the poses stored with the state)

a dense, exact function of the image and the action.  The labels of `rcan label-states` say the same thing
through one noisy outcome per candidate, so a network that learns this target slowly will learn to aim from
labels more slowly still.  Every `eval_every` updates, on fixed random moves of held-out and training states:

    aim_cm      median distance (cm) of the move the network ranks first (lower is better)
    nearest_cm  median distance of the nearest move on offer (what a perfect ranking picks)
    rank_corr   mean within-state Spearman correlation of Q with -d (1: the exact order)
    loss        the mean training cross-entropy since the previous check (its floor is the target's entropy)

Equal figures on training and held-out states mean the network is slow to fit, not short of states.
The run is minutes to an hour on one core and is not resumable: it writes its curve, nothing else.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rcan_common.action import COS, DX, DZ, OPEN, SIN, ActionBounds
from rcan_common.config import ConfigError, parse_cli, require


@dataclass
class AimCheckConfig:
    """Fit a Q-network to the privileged aiming target; report how well it ranks moves as it trains."""

    labels: tuple[Path, ...] = (Path("datasets/labels/descend-aimed-128-dagger12"),)
    """Label sets whose open-gripper states it trains on (only the scene states are used, not the labels)."""
    eval_labels: Path = Path("datasets/labels/descend-aimed-128-test")
    """Held-out label set (test objects) for the checks."""
    image_size: int = 128
    """Canonical renders of the stored states at this size (cached beside the shards, like train-labels')."""
    width: int = 32
    """Channels of the network (QNetConfig.width).  The defaults of this and the next three are the shipped
    networks': the paper's layer counts (it gives no widths; QT-Opt, which it follows, uses 64 channels)."""
    merge_downsample: int = 16
    """How far the trunk pools before the action is merged (QNetConfig.merge_downsample: 16 or 8)."""
    stem_pool: bool = True
    """Pool after the first convolution (QNetConfig.stem_pool)."""
    coord_channels: bool = False
    """CoordConv pixel-coordinate channels on the input (QNetConfig.coord_channels)."""
    init_from: Path | None = None
    """Start from this canonical policy's weights (.safetensors with its JSON) instead of a random network; its
    own network config then applies."""
    sigma: float = 0.02
    """Length scale (m) of the target exp(-d / sigma)."""
    updates: int = 1500
    """Training updates of the run."""
    batch_states: int = 64
    """Stored states per update."""
    moves_per_state: int = 16
    """Random moves drawn afresh for every state of every update."""
    lr: float = 1e-3
    """AdamW learning rate (train-labels' default)."""
    weight_decay: float = 1e-4
    """AdamW weight decay (train-labels' default)."""
    random_shift: int = 4
    """Shift every training image by up to this many pixels, as train-labels does (0 disables)."""
    eval_every: int = 500
    """Updates between checks (also one at the start and one at the end; 0: none)."""
    eval_states: int = 600
    """Open-gripper states of each set the checks score (the first ones)."""
    eval_moves: int = 32
    """Random moves per checked state (drawn once, the same at every check)."""
    seed: int = 0
    """Seed of the network's initialisation, the drawn states and moves, and the checks' fixed moves."""
    threads: int = 1
    """torch threads."""
    out: Path | None = None
    """Write the checks as JSON lines here."""

    def __post_init__(self) -> None:
        require(self.sigma > 0, "sigma", "must be > 0")
        for name in ("updates", "eval_every"):
            require(getattr(self, name) >= 0, name, "must be >= 0")
        for name in ("batch_states", "moves_per_state", "eval_states", "eval_moves", "threads"):
            require(getattr(self, name) >= 1, name, "must be >= 1")
        require(self.eval_moves >= 2, "eval_moves", "must be >= 2 (a ranking needs two moves)")


def random_moves(rng: np.random.Generator, states: int, moves: int, bounds: ActionBounds = ActionBounds()) -> np.ndarray:
    """(states, moves, 8) pure moves, uniform over the step bounds (translation and yaw), gripper kept open."""
    a = np.zeros((states, moves, 8), np.float32)
    a[..., DX:DZ + 1] = rng.uniform(-bounds.max_translation, bounds.max_translation, (states, moves, 3))
    yaw = rng.uniform(-bounds.max_rotation, bounds.max_rotation, (states, moves))
    a[..., SIN], a[..., COS], a[..., OPEN] = np.sin(yaw), np.cos(yaw), 1.0
    return a


def aiming_metrics(scores: np.ndarray, distance: np.ndarray) -> dict[str, float]:
    """scores, distance (N, M): a network's scores of N states' M moves and each move's distance (m) to the
    nearest object's centre -> aim_cm, nearest_cm and rank_corr (see the module docstring)."""
    rows = np.arange(len(scores))
    ranks = lambda x: np.argsort(np.argsort(x, axis=1), axis=1).astype(np.float64)  # noqa: E731 (no ties: floats)
    a, b = ranks(scores), ranks(-distance)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    corr = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return {"aim_cm": float(100 * np.median(distance[rows, scores.argmax(1)])),
            "nearest_cm": float(100 * np.median(distance.min(1))), "rank_corr": float(corr.mean())}


def _states(root: Path, image_size: int) -> dict[str, np.ndarray]:
    """The open-gripper states of a label set: canonical images, state vector, TCP target, object centres."""
    from rcan_grasp_policy.labels import load_labels, object_centres, policy_images

    data = load_labels(root, progress=True, images=False)
    data["image"] = policy_images(root, data, "canonical", progress=True, image_size=image_size)
    keep = data["state"][:, 0] > 0.5
    data = {k: v[keep] for k, v in data.items()}
    if not len(data["state"]):
        raise ConfigError(f"{root} holds no open-gripper states")
    return {"image": data["image"], "state": data["state"], "target": data["target"], "centres": object_centres(data)}


def _distance(d: dict[str, np.ndarray], idx: np.ndarray, moves: np.ndarray) -> np.ndarray:
    from rcan_grasp_policy.labels import nearest_object_distance

    return nearest_object_distance(d["centres"][idx], d["target"][idx], moves)


def run(cfg: AimCheckConfig, progress: bool = True) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from rcan_grasp_policy.backends import load_policy_net
    from rcan_grasp_policy.inputs import images_to_nchw
    from rcan_grasp_policy.qnet import QNetConfig, QNetwork
    from rcan_grasp_policy.qtopt import shift_with_offsets

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.init_from is not None:
        net, meta = load_policy_net(cfg.init_from)
        if meta.get("variant") != "canonical" or net.cfg.image_size != cfg.image_size:
            raise ConfigError(f"invalid config field 'init_from': {cfg.init_from} is not a canonical "
                              f"{cfg.image_size} px network")
    else:
        net = QNetwork(QNetConfig(in_channels=3, image_size=cfg.image_size, width=cfg.width,
                                  merge_downsample=cfg.merge_downsample, stem_pool=cfg.stem_pool,
                                  coord_channels=cfg.coord_channels))
    net.train()
    train = _merged([_states(Path(d), cfg.image_size) for d in cfg.labels])
    held = _states(Path(cfg.eval_labels), cfg.image_size)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    checks = {name: (d, np.arange(min(cfg.eval_states, len(d["state"]))))
              for name, d in (("heldout", held), ("train", train))}
    check_moves = {name: random_moves(np.random.default_rng([cfg.seed, i]), len(idx), cfg.eval_moves)
                   for i, (name, (_, idx)) in enumerate(checks.items())}

    def check(update: int, elapsed: float, losses: list[float]) -> dict:
        net.eval()
        row = {"updates": update, "elapsed_s": round(elapsed, 1)}
        if losses:
            row["loss"] = round(float(np.mean(losses)), 4)  # the mean training loss since the last check
        with torch.no_grad():
            for name, (d, idx) in checks.items():
                scores = np.concatenate([
                    net(torch.from_numpy(images_to_nchw(np.ascontiguousarray(d["image"][idx[i:i + 100]]))),
                        torch.from_numpy(d["state"][idx[i:i + 100]]),
                        torch.from_numpy(check_moves[name][i:i + 100])).numpy() for i in range(0, len(idx), 100)])
                for k, v in aiming_metrics(scores, _distance(d, idx, check_moves[name])).items():
                    row[f"{name}_{k}"] = round(v, 4)
        net.train()
        if progress:
            print("[check-aiming] " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
        return row

    rows, losses, t0 = [], [], time.perf_counter()
    for update in range(cfg.updates + 1):
        if cfg.eval_every and (update % cfg.eval_every == 0 or update == cfg.updates):
            rows.append(check(update, time.perf_counter() - t0, losses))
            losses = []
            if cfg.out is not None:
                cfg.out.parent.mkdir(parents=True, exist_ok=True)
                cfg.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if update == cfg.updates:
            break
        idx = rng.integers(0, len(train["state"]), cfg.batch_states)
        images, _ = shift_with_offsets(train["image"][idx], cfg.random_shift, rng)
        moves = random_moves(rng, cfg.batch_states, cfg.moves_per_state)
        target = np.exp(-_distance(train, idx, moves) / cfg.sigma).astype(np.float32)
        logits = net(torch.from_numpy(images_to_nchw(np.ascontiguousarray(images))), torch.from_numpy(train["state"][idx]),
                     torch.from_numpy(moves))
        loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return rows


def _merged(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    objects = max(p["centres"].shape[1] for p in parts)
    for p in parts:  # sets with fewer objects per scene repeat their first object's centre (same nearest distance)
        p["centres"] = np.concatenate([p["centres"], np.repeat(p["centres"][:, :1], objects - p["centres"].shape[1], 1)], 1)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def main(argv: list[str] | None = None) -> int:
    from rcan_grasp_policy.backends import PolicyLoadError

    try:
        run(parse_cli(AimCheckConfig, argv))
    except (ConfigError, FileNotFoundError, PolicyLoadError) as exc:
        print(f"rcan check-aiming: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
