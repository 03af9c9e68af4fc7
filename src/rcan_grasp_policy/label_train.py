"""`rcan train-labels`: the paper's Q-network trained on counterfactual action labels (rcan label-states).

    every update:  B labelled states, each image randomly shifted by up to `random_shift` px (QT-Opt's crop
                   augmentation); the trunk runs once per state, the head scores its K labelled candidates;
                   loss = BCE(Q(s, a_k), label_k), the cross-entropy loss of QT-Opt with Monte-Carlo labels
    every eval_every updates, on held-out labelled states (test objects):
                   label AUC, within-state AUC, pick success (label of the Q-best candidate, beside a random
                   candidate's and the best one's) and CEM regret (Q of CEM's pick / best Q over a dense set
                   and the labelled actions); plus greedy success on `eval_episodes` selection episodes
                   (seeds 1000+, test objects; never the protocol's 0..101)

This is a deviation from the paper's data collection, not from its policy: the network, its inputs and
CEM at decision time are the paper's, and `rcan train-policy` (QT-Opt on episodes) stays selectable alone.
The run directory is laid out like train-policy's (config.json, metrics.csv, tb/, evals.jsonl,
policy.safetensors + policy.json), so `rcan eval-policy` and `rcan export-policy` take it as it is.
Resume is exact: weights, BatchNorm statistics, Adam state, update counter and both RNGs.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rcan_common.action import CLOSE, DZ, STATE_DIM, TERMINATE, YAW_STATE_DIM, with_yaw
from rcan_common.config import ConfigError, load_for_resume, parse_cli, require, start_or_resume, to_dict
from rcan_common.executor import make_executor
from rcan_common.io import atomic_write_json, ensure_writable_dir
from rcan_common.runlog import RunLog
from rcan_common.stats import wilson_interval
from rcan_grasp_policy.backends import TorchQFunction, generator_digest, load_policy_net, save_policy
from rcan_grasp_policy.cem import CEMConfig, cem_regret, cem_search
from rcan_grasp_policy.collect import CollectTask, collect_episodes
from rcan_grasp_policy.inputs import VARIANTS, training_domain, variant_channels
from rcan_grasp_policy.labels import (aux_targets, best_open_moves, label_settings, load_labels, nearest_object_scores,
                                     open_gripper_moves, policy_images)
from rcan_grasp_policy.qnet import QNetConfig, QNetwork
from rcan_grasp_policy.qtopt import bellman_target, polyak_update, shift_with_offsets
from rcan_sim.env import EnvConfig

SELECTION_SEED_BASE = 1000
"""Greedy checks run on test objects with seeds from here: outside the evaluation protocol's 0..101."""
_ARCH_FIELDS = ("variant", "image_size", "width", "trunk_width", "fc_width", "merge_downsample", "stem_pool",
                "coord_channels", "yaw_state", "aux_weight", "blank_images", "camera_fov_deg", "ema_decay", "init_from",
                "feature_teacher", "feature_weight", "rank_weight", "aim_weight", "label_discount", "bf16", "bellman",
                "bellman_tau", "bellman_target2_lag")
AUX_KEYS = ("object_mask", "gripper_uv", "object_uv")


@dataclass
class LabelTrainConfig:
    """Supervised training of the grasping Q-network on counterfactual action labels."""

    labels: tuple[Path, ...] = (Path("data/labels/canonical-64-train"),)
    """Label directories to train on (rcan label-states --split train)."""
    eval_labels: Path = Path("data/labels/canonical-64-test")
    """Held-out label directory (test objects) for AUC, pick success and CEM regret."""
    variant: str = "canonical"
    """Input variant (canonical, rcan, dr-*); inputs in another domain than the stored images are rendered from
    the stored scene states once and cached beside the labels."""
    generator: str = "models/generator_64.onnx"
    """Generator ONNX of variant rcan ([x_randomized, G(x_randomized)]); 'oracle' (a diagnostic, sim only): the
    simulator's paired canonical render in place of G(x), what a perfect generator would give (not deployable)."""
    run_name: str = "labels-canonical-64"
    """Run directory name under out_dir."""
    out_dir: Path = Path("runs/policy")
    """Parent directory of the runs."""
    resume: bool = False
    """Continue the run in out_dir/run_name from its last checkpoint."""
    seed: int = 0
    """Seed of the initial weights, the batch order, the augmentation and the held-out checks' CEM draws."""
    image_size: int = 64
    """Input size in pixels (QNetConfig.image_size); label sets stored at another size are re-rendered from their
    scene states and cached."""
    width: int = 32
    """Channels of every convolution (QNetConfig.width).  The paper gives layer counts, not widths; QT-Opt, whose
    network it follows, uses 64 (docs/policy.md, check-aiming: 64 learns to aim about twice as fast per update)."""
    trunk_width: int = 0
    """NOT in the paper (0: width): see QNetConfig.trunk_width (a wider image trunk for a distilled RCAN student)."""
    fc_width: int = 64
    """Units of the hidden fully connected layers (QNetConfig.fc_width)."""
    merge_downsample: int = 16
    """How far the trunk pools before the action is merged (QNetConfig.merge_downsample: 16 or 8)."""
    stem_pool: bool = True
    """NOT in the paper when off: see QNetConfig.stem_pool (finer first-stage features for small images)."""
    coord_channels: bool = False
    """NOT in the paper (off = its network): CoordConv pixel-coordinate channels on the trunk's input."""
    yaw_state: bool = False
    """NOT in the paper (off = its network): the gripper's yaw joins the state, see QNetConfig.yaw_state (label
    shards store each state's yaw).  `init_from` a network without it starts with zero weight on the two new
    numbers, so the network computes the same until it trains."""
    batch_states: int = 64
    """Labelled states per update (each with all its K candidates)."""
    lr: float = 1e-3
    """AdamW learning rate."""
    lr_decay: bool = False
    """NOT in the paper (off: a constant rate): cosine decay of the learning rate to 0 at total_updates, so the
    last weights are settled ones (with a constant rate, greedy success swings between snapshots)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    ema_decay: float = 0.0
    """NOT in the paper (0 = off): keep a Polyak average of the weights and BatchNorm statistics, with this decay
    per update (ramped up over the first updates); the checks, snapshots and policy.safetensors are then the
    averaged network.  QT-Opt keeps such an average as its target network; here it is the deployed one, because
    with a constant learning rate single snapshots swing more than the episode noise."""
    init_from: Path | None = None
    """NOT in the paper (unset: a random initialisation): start from these policy weights (a .safetensors with its
    JSON sidecar, same network config and variant), e.g. to continue the previous DAgger round's network on the
    grown label set instead of training from scratch.  An rcan run may start from a canonical network of the same
    shape: it then begins as that network applied to G(x), with the weights on x at zero.  A wider network (`width`
    or `trunk_width` above the start's) begins as the start too, its new channels with no effect until they train
    (NOT in the paper; a way to give a trained network more capacity without losing what it knows)."""
    random_shift: int = 4
    """Shift every training image by up to this many pixels (edge-replicated); 0 disables."""
    total_updates: int = 20000
    """Updates of the whole run (a resumed run continues to this count)."""
    time_budget_min: float = 0.0
    """Also stop after this many minutes of this invocation (0: no limit)."""
    eval_every: int = 1000
    """Updates between held-out checks (label AUC, pick success, CEM regret, greedy episodes)."""
    eval_episodes: int = 30
    """Greedy episodes per check, on selection seeds (0: skip them)."""
    eval_workers: int = 1
    """Processes that run the greedy check episodes."""
    render_workers: int = 1
    """Processes that render the policy inputs of label sets that have no image cache yet (once per set)."""
    checkpoint_every: int = 500
    """Updates between resumable checkpoints (one is also written when the run stops, SIGTERM included)."""
    log_every: int = 100
    """Updates between rows of metrics.csv (training losses averaged over the rows' updates)."""
    threads: int = 2
    """torch threads of the learner."""
    device: str = "cpu"
    """Where the learner's updates and held-out checks run: 'cpu', or 'cuda' / 'cuda:N' for a GPU (the training
    set stays in host memory; each update's batch is sent as uint8).  Checkpoints, snapshots and the exported
    network are the same files on either, so a run may be resumed or continued on the other; a GPU's kernels are
    not bit-reproducible, so there exact resume means the same state, not the same bits from then on.  The greedy
    check episodes always run on the CPU (`eval_workers`)."""
    bf16: bool = False
    """NOT in the paper (off: float32 throughout): run each update's forward and backward pass in bfloat16
    autocast (weights, optimizer state, losses and BatchNorm statistics stay float32; the checks, snapshots and the
    exported network are float32).  A speed option for CPUs with native bfloat16 (avx512_bf16, AMX) and GPUs: on
    this project's 2-core CPU the 128 px, width-64 learner runs 1.75 to 2 times as many updates per second, and
    learns the same per update (docs/policy.md, Training, for the side-by-side comparison)."""
    cem: CEMConfig = field(default_factory=CEMConfig)
    """CEM of the greedy checks and the regret measurement (the deployed search)."""
    camera_fov_deg: float = 0.0
    """NOT in the paper (0 = the labelling camera): render every stored state through this narrower field of
    view of the same camera, a closer view of the tray at the same pixel cost.  The exported contract carries
    it as a centred crop (PolicyContract.center_crop), which the robot-side policy applies to its camera
    images; in sim the greedy checks and `rcan eval-policy` render at this view."""
    max_states: int = 0
    """Train on the first this many labelled states only (learning curves; 0: all)."""
    blank_images: bool = False
    """Ablation baseline: every image is blanked (grey), so Q sees only the gripper state and the action."""
    aux_weight: float = 0.0
    """NOT in the paper (0 = off): weight of training-only auxiliary heads on the image trunk, fed by the
    simulator's free labels: the object mask and the gripper's pixel (at 1/4 resolution) and the image offset from
    the gripper to the nearest object (from the pooled trunk output).  The heads are dropped at export: the
    deployed network is the paper's."""
    feature_teacher: Path | None = None
    """NOT in the paper (unset = off; variant rcan or dr-*, training only): a canonical policy (.safetensors + JSON,
    the student's network on 3 channels, e.g. the one --init-from started it from) whose trunk features on each
    state's canonical render the student's trunk features on [x, G(x)] (dr-*: x) of the same state are pulled towards
    (mean squared error, weight `feature_weight`).  The simulator renders both views of every stored state, so
    the student gets dense supervision of what the canonical network sees, instead of only the few labels per
    state.  The teacher is not part of the exported policy."""
    feature_weight: float = 1.0
    """Weight of the feature_teacher loss against the label loss."""
    rank_weight: float = 0.0
    """NOT in the paper (0 = off): weight of a within-state ranking loss added to the cross-entropy, a pairwise
    logistic loss between each state's candidates weighted by their label difference (within_state_rank_loss).
    The cross-entropy is dominated by what differs between states (most states label all candidates alike),
    while the greedy policy needs only the order of the candidates inside a state."""
    aim_weight: float = 0.0
    """NOT in the paper (0 = off; training only, privileged): weight of an aiming loss on the pure moves of each
    open-gripper state: their Q, relative to each other, are pulled onto denoised labels, the mean
    label of the training moves that end as far from the nearest object's centre and as high (aim_labels,
    within_state_aim_loss; the simulator stores every object's pose with the state).  One noisy outcome per
    candidate says little about a centimetre, and closes centred on the object grasp far more often
    (docs/policy.md, the close review).  The exported network is the paper's."""

    label_discount: float = 0.0
    """NOT in the paper (0 = off: train on the labels as labelled): re-discount every grasping label by this
    factor per step instead of the labelling discount and step reward (rediscounted_labels).  The labels reward
    a grasp that comes sooner: at the labelling gamma 0.9 and -0.05 a step, a move that grasps one step later is
    worth 0.85 or less of one that grasps now, so Q may trade aim for a faster descent; a discount nearer 1
    weighs whether a move grasps over when.  The held-out checks keep the labels as labelled."""
    bellman: bool = False
    """QT-Opt's clipped double-Q Bellman target beside the labels (off: the labels alone; the max of the two is NOT
    in the paper, whose rule is the Bellman target alone: `rcan train-policy`).  A labelled state's
    behaviour action (candidate 0, the action its episode went on with) whose next state is labelled too is a
    replay transition (s, a, r, s'); its training target becomes max(label, clip(r + gamma * min_i Q_target_i(s',
    a*), 0, 1)), a* = CEM's argmax of target network 1 at s' (the deployed search, without the close gate).  The
    label is a lower bound: after a move the blind completion cannot re-aim, the policy can, and the Bellman target
    says what that is worth by the network's own estimate.  Only behaviour transitions have a stored next state (a
    fraction `label_prob` of them), so the other candidates keep their labels.  Target network 1 follows the
    learner by Polyak averaging (`bellman_tau`), network 2 is a copy of it lagged by `bellman_target2_lag` updates,
    as in `rcan train-policy` (qtopt.py)."""
    bellman_tau: float = 0.01
    """Polyak rate of Bellman target network 1 per update (QTOptConfig.tau)."""
    bellman_target2_lag: int = 200
    """Updates between copies of target network 1 into the lagged target network 2 (QTOptConfig.target2_lag)."""

    def __post_init__(self) -> None:
        require(self.variant in VARIANTS, "variant", f"must be one of {VARIANTS}, got {self.variant!r}")
        require(self.batch_states >= 2, "batch_states", "must be >= 2 (BatchNorm)")
        require(self.random_shift >= 0, "random_shift", "must be >= 0")
        require(self.total_updates >= 0 and self.time_budget_min >= 0, "total_updates", "must be >= 0")
        require(self.eval_every >= 0 and self.eval_episodes >= 0, "eval_every", "must be >= 0")
        require(self.checkpoint_every >= 1 and self.log_every >= 1, "checkpoint_every", "must be >= 1")
        require(re.fullmatch(r"cpu|cuda(:\d+)?", self.device) is not None, "device",
                f"must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        require(self.camera_fov_deg == 0 or 5 <= self.camera_fov_deg <= 120, "camera_fov_deg", "must be 0 or in [5, 120]")
        require(0 <= self.ema_decay < 1, "ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        require(self.feature_teacher is None or self.variant != "canonical", "feature_teacher",
                "needs a student on other images than the canonical teacher's (variant rcan or dr-*), got "
                f"{self.variant!r}")
        require(self.feature_weight >= 0, "feature_weight", f"must be >= 0, got {self.feature_weight}")
        require(self.rank_weight >= 0, "rank_weight", f"must be >= 0, got {self.rank_weight}")
        require(self.aim_weight >= 0, "aim_weight", f"must be >= 0, got {self.aim_weight}")
        require(self.label_discount == 0 or 0 < self.label_discount <= 1, "label_discount",
                f"must be 0 (off) or in (0, 1], got {self.label_discount}")
        require(0 < self.bellman_tau <= 1, "bellman_tau", f"must be in (0, 1], got {self.bellman_tau}")
        require(self.bellman_target2_lag >= 1, "bellman_target2_lag", f"must be >= 1, got {self.bellman_target2_lag}")
        require(not (self.bellman and self.label_discount), "bellman",
                "the Bellman target discounts by the labels' gamma: use it or label_discount, not both")
        require(not (self.trunk_width and self.aux_weight), "trunk_width",
                "the auxiliary heads read the trunk at `width` channels: use one or the other")

    def qnet_config(self) -> QNetConfig:
        return QNetConfig(in_channels=variant_channels(self.variant), image_size=self.image_size, width=self.width,
                          trunk_width=self.trunk_width, fc_width=self.fc_width, merge_downsample=self.merge_downsample,
                          stem_pool=self.stem_pool, coord_channels=self.coord_channels, yaw_state=self.yaw_state)


# ----------------------------------------------------------------------------- held-out metrics
def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks); nan when one class is missing."""
    scores, positive = np.asarray(scores, np.float64).ravel(), np.asarray(positive, bool).ravel()
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e - 1) / 2 + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


CLOSE_AUC_HEIGHT = 0.06
"""close_auc looks at open-gripper states whose TCP is below this height above the tray bottom (m)."""


def label_metrics(q: np.ndarray, labels: np.ndarray, candidates: np.ndarray | None = None,
                  state: np.ndarray | None = None) -> dict[str, float]:
    """q, labels (N, K).  A candidate is positive when its label leads to a grasp (label > 0).

    close_auc is the one that needs the image: the AUC of Q for "closing here grasps an object" over the
    close candidates of low open-gripper states.  Most of what the other figures measure (close or terminate
    too high, terminate with an open gripper) can be read off the state and the action alone, so a network
    that sees a blank image gets them too."""
    positive = labels > 0
    within = [auc(qs, ps) for qs, ps in zip(q, positive) if 0 < ps.sum() < len(ps)]
    rows = np.arange(len(q))
    out = {"label_auc": auc(q, positive), "within_state_auc": float(np.mean(within)) if within else float("nan"),
           "pick_label": float(labels[rows, q.argmax(1)].mean()), "random_label": float(labels.mean()),
           "oracle_label": float(labels.max(1).mean())}
    if candidates is not None:
        # Among pure moves only (no close, no terminate): does Q rank where to go?  This is what the image must
        # tell; behaviour_label is the score of always picking the behaviour action (candidate 0), which a
        # scripted behaviour makes hard to beat on pick_label.
        move = (candidates[:, :, CLOSE] < 0.5) & (candidates[:, :, TERMINATE] < 0.5)
        within_moves = [auc(qs[m], ps[m]) for qs, ps, m in zip(q, positive, move) if 0 < ps[m].sum() < m.sum()]
        out["move_auc"] = float(np.mean(within_moves)) if within_moves else float("nan")
        out["behaviour_label"] = float(labels[:, 0].mean())
    if candidates is not None and state is not None:
        # The move the greedy policy would take among the labelled ones: the AUC counts every pair of moves, most
        # of them far from any object, while acting needs only the top of the order.
        states, best = best_open_moves(q, candidates, state)
        picked = labels[states][np.arange(len(best)), best]
        out["move_pick_label"] = float(picked.mean()) if len(best) else float("nan")
        # whether that move grasps at all: the label also pays for a sooner grasp (a lower move)
        out["move_pick_grasp"] = float((picked > 0).mean()) if len(best) else float("nan")
        low = (state[:, 0] > 0.5) & (state[:, 1] < CLOSE_AUC_HEIGHT)
        close = (candidates[:, :, CLOSE] > 0.5) & low[:, None]
        out["close_auc"] = auc(q[close], positive[close])
    return out


@torch.no_grad()
def heldout_check(net: QNetwork, data: dict[str, np.ndarray], cem: CEMConfig, rng: np.random.Generator,
                  chunk: int = 128) -> dict[str, float]:
    net.eval()
    qf = TorchQFunction(net, device=next(net.parameters()).device)
    q, regret = scores_and_regret(qf, data["image"], data["state"], data["candidates"], rng, cem, chunk)
    net.train()
    return label_metrics(q, data["labels"], data["candidates"], data["state"]) | {"cem_regret": regret}


def scores_and_regret(qf, images: np.ndarray, state: np.ndarray, candidates: np.ndarray, rng: np.random.Generator,
                      cem: CEMConfig, chunk: int = 128) -> tuple[np.ndarray, float]:
    """Q of every labelled candidate (N, K), and the CEM regret over the N states: 1 - the mean of Q of CEM's pick
    over the best Q among a dense set of 256 actions and the labelled ones (0: CEM always finds the best)."""
    qs, ratios = [], []
    for i in range(0, len(candidates), chunk):
        context, chunk_candidates = qf.embed(images[i:i + chunk], state[i:i + chunk]), candidates[i:i + chunk]
        qs.append(qf.score(context, chunk_candidates))
        ratios.append(cem_regret(qf, context, len(chunk_candidates), chunk_candidates, rng, cem, dense=256).ratio)
    return np.concatenate(qs), float(1.0 - np.concatenate(ratios).mean())


def within_state_rank_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits, labels (B, K).  For every ordered pair of a state's candidates with label_i > label_j, the
    logistic loss of logit_i - logit_j, weighted by label_i - label_j; the weighted mean over the batch (0 when
    every state labels its candidates alike).  Only differences inside a state count, so it leaves the state's
    value to the cross-entropy and teaches the order that the greedy policy acts on."""
    weight = (labels[:, :, None] - labels[:, None, :]).clamp(min=0)
    pair_loss = F.softplus(logits[:, None, :] - logits[:, :, None])
    return (weight * pair_loss).sum() / weight.sum().clamp(min=1e-6)


AIM_DISTANCE_BIN = 0.005
"""Width (m) of the aiming labels' bins of distance to the nearest object's centre (LabelTrainConfig.aim_weight)."""
AIM_MAX_DISTANCE = 0.1
"""Distances beyond this (m) share one bin."""
AIM_HEIGHT_BIN = 0.04
"""Width (m) of the bins of the height a move leaves the gripper at: its label is discounted by the steps left."""


def within_state_aim_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits (B, K); targets (B, K): aim_labels, NaN where a candidate is not a move.  The squared error between
    each move's Q and its target, both taken relative to their mean over the state's moves, over states with two
    or more moves (0 without any).  Only the differences between a state's moves are taught: their level, against
    the state's closes and terminations, stays with the labels' cross-entropy.  Differences of Q, not of logits:
    in logits, the gaps between moves that almost never grasp (0.01 against 0.001) would count as much as those
    between a move onto an object and one beside it."""
    moves = ~torch.isnan(targets)
    count = moves.sum(1, keepdim=True)
    used = count[:, 0] >= 2
    if not used.any():
        return logits.new_zeros(())

    def centred(x: torch.Tensor) -> torch.Tensor:
        x = torch.where(moves, x, torch.zeros_like(x))
        return torch.where(moves, x - x.sum(1, keepdim=True) / count.clamp(min=1), torch.zeros_like(x))

    error = (centred(torch.sigmoid(logits)) - centred(torch.nan_to_num(targets))) ** 2
    return error[used].sum() / count[used].sum()


def rediscounted_labels(labels: np.ndarray, gamma: float, discount: float,
                        step_reward: float = EnvConfig.step_reward) -> np.ndarray:
    """Labels of candidates that grasp k steps after the labelled one, `gamma**k + step_reward * (1 - gamma**k)
    / (1 - gamma)` (label_actions: the step rewards, then 1 at the grasp, discounted), as `discount**k`; 0 stays
    0.  k is read back from the label itself, so the relabelling needs nothing but the label set's gamma."""
    penalty = -step_reward / (1.0 - gamma)
    grasps = labels > 0
    steps = np.log((np.where(grasps, labels, 1.0) + penalty) / (1.0 + penalty)) / math.log(gamma)
    return np.where(grasps, discount ** np.maximum(steps, 0.0), 0.0).astype(labels.dtype)


def aim_labels(data: dict[str, np.ndarray]) -> np.ndarray:
    """(N, K) denoised labels of the pure moves of open-gripper states: the mean label of all such moves in `data`
    that end in the same bin of distance to the nearest object's centre (data["aim"], m) and of height; NaN for
    every other candidate."""
    candidates = data["candidates"]
    moves = open_gripper_moves(candidates, data["state"])
    distance_bin = np.floor(np.minimum(data["aim"], AIM_MAX_DISTANCE) / AIM_DISTANCE_BIN).astype(np.int64)
    # where the move leaves the gripper: the completion's steps down from there discount the label
    end_height = np.maximum(data["state"][:, 1:2] + candidates[:, :, DZ], 0.0)
    cell = distance_bin * 1000 + np.floor(end_height / AIM_HEIGHT_BIN).astype(np.int64)
    _, inverse = np.unique(cell[moves], return_inverse=True)
    means = np.bincount(inverse, weights=data["labels"][moves]) / np.bincount(inverse)
    out = np.full(candidates.shape[:2], np.nan, np.float32)
    out[moves] = means[inverse]
    return out


# ----------------------------------------------------------------------------- Bellman targets (LabelTrainConfig.bellman)
def behaviour_successors(seed: np.ndarray, step: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """For each record of one label set, the index of the record of the state its behaviour action (candidate 0)
    led to: the same episode (seed), one step later; -1 where that action ended the episode or the next state was
    not labelled (label_prob)."""
    index = {(int(s), int(t)): i for i, (s, t) in enumerate(zip(seed, step))}
    successors = np.array([index.get((int(s), int(t) + 1), -1) for s, t in zip(seed, step)], dtype=np.int64)
    successors[candidates[:, 0, TERMINATE] > 0.5] = -1
    return successors


def bellman_gamma(dirs) -> float:
    """The one labelling discount of the label sets `dirs`, which the Bellman targets bootstrap with; a set of a
    teacher's Q (no returns) or sets labelled with different discounts are a ConfigError."""
    gammas = set()
    for d in dirs:
        settings = label_settings(d)
        if settings.get("teacher"):
            raise ConfigError(f"invalid config field 'bellman': {d} holds a teacher's Q, not discounted returns")
        gammas.add(float(settings["gamma"]))
    if len(gammas) != 1:
        raise ConfigError(f"invalid config field 'bellman': the sets were labelled with different discounts "
                          f"(gamma {sorted(gammas)})")
    return gammas.pop()


def bellman_labels(labels: np.ndarray, candidates: np.ndarray, live: np.ndarray, q1_next: np.ndarray,
                   q2_next: np.ndarray, gamma: float, step_reward: float = EnvConfig.step_reward) -> np.ndarray:
    """labels (B, K) with the behaviour candidate of the rows `live` raised to the clipped double-Q target
    clip(step_reward + gamma * min(q1', q2'), 0, 1) where that is above its label (a move's reward is the step
    reward, as in the labels).  Copies of the behaviour candidate (the padding of a set labelled with fewer
    candidates) are raised with it, so one action never has two targets."""
    out = labels.copy()
    n = len(q1_next)  # every live transition is a move: the step reward, not terminal
    target = bellman_target(torch.full((n,), step_reward), torch.zeros(n, dtype=torch.bool),
                            torch.as_tensor(q1_next), torch.as_tensor(q2_next), gamma).numpy().astype(labels.dtype)
    behaviour = np.all(candidates[live] == candidates[live, :1], axis=2)  # (live, K): candidate 0 and its copies
    out[live] = np.where(behaviour, np.maximum(out[live], target[:, None]), out[live])
    return out


# ----------------------------------------------------------------------------- auxiliary heads (training only)
class AuxHeads(torch.nn.Module):
    """Dense supervision for the Q-network's image trunk; not part of the exported policy."""

    TAP = 12  # trunk module whose output (the first stage at 1/4 resolution, either stem) feeds the dense heads

    def __init__(self, width: int):
        super().__init__()
        self.mask = torch.nn.Conv2d(width, 1, 1)
        self.gripper = torch.nn.Conv2d(width, 1, 1)
        self.offset = torch.nn.Linear(width, 2)

    @staticmethod
    def trunk(net: QNetwork, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """QNetwork.embed, also returning the 1/4-resolution activation."""
        x, tap = net.centred_input(images), None
        for i, layer in enumerate(net.trunk):
            x = layer(x)
            if i == AuxHeads.TAP:
                tap = x
        return x, tap

    def loss(self, feats: torch.Tensor, tap: torch.Tensor, mask: torch.Tensor, gripper_uv: torch.Tensor,
             object_uv: torch.Tensor) -> torch.Tensor:
        """mask (B, S, S) in {0, 1}, pixel positions (B, 2) at the input size S."""
        b, _, h, w = tap.shape
        size = mask.shape[-1]
        target_mask = F.avg_pool2d(mask[:, None].float(), size // h)
        mask_loss = F.binary_cross_entropy_with_logits(self.mask(tap), target_mask)
        cell = (gripper_uv * (h / size)).long().clamp(0, h - 1)
        gripper_loss = F.cross_entropy(self.gripper(tap).reshape(b, -1), cell[:, 1] * w + cell[:, 0])
        offset = self.offset(feats.mean(dim=(2, 3)))
        offset_loss = F.smooth_l1_loss(offset, (object_uv - gripper_uv) * (8.0 / size))
        return mask_loss + gripper_loss + offset_loss


def start_weights(path: Path, variant: str, qnet: QNetConfig) -> dict[str, torch.Tensor]:
    """The weights of policy `path` (safetensors + sidecar) as a starting point for a `variant` network `qnet`.

    Same variant and network config: the weights as they are.  A canonical network for an rcan network of the
    same shape: [x, G(x)] starts as that network on G(x); its first convolution reads the G(x) channels and the
    x channels start at zero, so the network computes exactly canonical(G(x)) before its first update.  A canonical
    network for a domain-randomized one (dr-*) of the same shape: its weights as they are, on randomized images.
    Either may also start a wider network (`width`, `trunk_width`: never narrower) or one with the yaw state (`yaw_state`),
    which computes the same until it trains."""
    start, meta = load_policy_net(path)
    weights, start_cfg = start.state_dict(), start.cfg
    if meta.get("variant") == "canonical" and variant == "rcan" and start_cfg.in_channels == 3:
        first = weights["trunk.0.weight"]  # input channels: the image's 3, then any coordinate channels
        weights["trunk.0.weight"] = torch.cat([torch.zeros_like(first[:, :3]), first], dim=1)
        start_cfg = dataclasses.replace(start_cfg, in_channels=6)
    elif meta.get("variant") != variant and not (meta.get("variant") == "canonical" and variant.startswith("dr-")):
        raise ConfigError(f"invalid config field 'init_from': {path} is a {meta.get('variant')!r} network, "
                          f"this run trains a {variant!r} one")
    if qnet.yaw_state and not start_cfg.yaw_state:  # the yaw's two state numbers start with zero weight
        first = weights["action_state.0.weight"]  # (fc_width, ACTION_DIM + state_dim)
        weights["action_state.0.weight"] = torch.cat([first, torch.zeros_like(first[:, :YAW_STATE_DIM - STATE_DIM])], 1)
        start_cfg = dataclasses.replace(start_cfg, yaw_state=True)
    if start_cfg == qnet:
        return weights
    if dataclasses.replace(start_cfg, width=qnet.width, trunk_width=qnet.trunk_width) == qnet \
            and qnet.width >= start_cfg.width and qnet.trunk_channels >= start_cfg.trunk_channels:
        return _widened(weights, QNetwork(qnet).state_dict())
    raise ConfigError(f"invalid config field 'init_from': {path} is a {meta.get('variant')!r} network {start.cfg}, "
                      f"this run trains a {variant!r} {qnet}")


def _widened(narrow: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`narrow`'s weights inside a wider network's freshly initialised ones: each narrow tensor fills the leading
    block of its wider counterpart, and a layer's weights from the extra inputs into the narrow outputs are zero,
    so the wider network computes what the narrow one does until it trains (the new units learn from the
    gradient on those zero links).  The head's flattened features are channel-major, so the narrow channels'
    positions are the leading columns of its first fully connected layer too."""
    out = {}
    for key, small in narrow.items():
        big = fresh[key].clone()
        if big.shape != small.shape:
            if big.dim() >= 2:  # conv (out, in, k, k) or linear (out, in): nothing flows from new units to old
                big[:small.shape[0], small.shape[1]:] = 0
            big[tuple(slice(0, n) for n in small.shape)] = small
        else:
            big = small
        out[key] = big
    return out


def feature_teacher(path: Path, student: QNetConfig) -> QNetwork:
    """The frozen canonical network of LabelTrainConfig.feature_teacher, checked against the student's shape."""
    teacher, meta = load_policy_net(path)
    if meta.get("variant") != "canonical" or teacher.cfg != dataclasses.replace(student, in_channels=3,
                                                                                trunk_width=teacher.cfg.trunk_width):
        raise ConfigError(f"invalid config field 'feature_teacher': {path} is a {meta.get('variant')!r} network "
                          f"{teacher.cfg}; it must be a canonical network of the student's shape on 3 channels")
    return teacher.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- the run
def network_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) -> the network input, float32 (B, C, H, W) in [0, 1], channels-last, where the batch
    lies: the numbers of inputs.images_to_nchw, converted after the four times smaller uint8 batch has moved."""
    return images.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.channels_last).div_(255.0)


def learner_device(name: str) -> torch.device:
    """LabelTrainConfig.device as a torch device; a GPU that torch cannot see is a config error, not a crash."""
    device = torch.device(name)
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise ConfigError(f"invalid config field 'device': {name!r}, but torch sees "
                          f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} CUDA device(s)")
    return device


class LabelTrainer:
    def __init__(self, cfg: LabelTrainConfig):
        self.cfg = cfg
        self.device = learner_device(cfg.device)  # before the (slow) data load: a missing GPU fails at once
        self.run_dir = ensure_writable_dir(Path(cfg.out_dir) / cfg.run_name)
        self.generator_sha256 = generator_digest(self.generator)  # the G the cached inputs are rendered through
        self.gamma = bellman_gamma(cfg.labels) if cfg.bellman else 0.0  # before the (slow) data load
        self.train = self._load(cfg.labels, aux=cfg.aux_weight > 0, teacher_view=cfg.feature_teacher is not None,
                                aim=cfg.aim_weight > 0, discount=cfg.label_discount, successors=cfg.bellman)
        if cfg.max_states:
            self.train = {k: v[:cfg.max_states] for k, v in self.train.items()}
            if cfg.bellman:
                self.train["successor"][self.train["successor"] >= cfg.max_states] = -1
        if cfg.aim_weight > 0:
            self.train["aim_labels"] = aim_labels(self.train)
        self.heldout = self._load((cfg.eval_labels,))
        torch.manual_seed(cfg.seed)
        self.net = QNetwork(cfg.qnet_config()).train()
        if cfg.init_from is not None and not cfg.resume:  # a resumed run restores its own weights
            self.net.load_state_dict(start_weights(Path(cfg.init_from), cfg.variant, self.net.cfg))
        # Channels-last is the layout oneDNN's CPU convolutions run fastest in (and the image batch's own, NHWC);
        # saved weights are made contiguous, so files do not depend on it.
        self.net = self.net.to(self.device, memory_format=torch.channels_last)
        # The average shares no storage with the net; `ema_pairs` pairs every float and integer entry of both.
        self.ema = copy.deepcopy(self.net).eval() if cfg.ema_decay > 0 else None
        self.ema_pairs = list(zip(self.ema.state_dict().values(), self.net.state_dict().values())) if self.ema else []
        # QT-Opt's target networks of the Bellman targets; they start as the learner (so as init_from's network)
        self.targets = ([copy.deepcopy(self.net).eval().requires_grad_(False) for _ in range(2)] if cfg.bellman
                        else [])
        self.aux = AuxHeads(cfg.width).to(self.device) if cfg.aux_weight > 0 else None
        self.teacher = (feature_teacher(Path(cfg.feature_teacher), self.net.cfg).to(self.device)
                        if cfg.feature_teacher else None)
        params = list(self.net.parameters()) + (list(self.aux.parameters()) if self.aux else [])
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng(cfg.seed)
        self.updates = 0

    @property
    def deployed(self) -> QNetwork:
        """The network the checks score and the run exports: the weight average when ema_decay > 0."""
        return self.ema if self.ema is not None else self.net

    @torch.no_grad()
    def _average(self) -> None:
        # The usual warm-up ((1 + n) / (10 + n)) keeps the first updates from averaging in the initialisation;
        # a function of the update counter alone, so resume stays exact.
        decay = min(self.cfg.ema_decay, (1 + self.updates) / (10 + self.updates))
        for avg, cur in self.ema_pairs:
            if avg.dtype.is_floating_point:
                avg.lerp_(cur, 1.0 - decay)
            else:
                avg.copy_(cur)

    def _load(self, dirs, aux: bool = False, teacher_view: bool = False, aim: bool = False,
              discount: float = 0.0, successors: bool = False) -> dict[str, np.ndarray]:
        parts = []
        for d in dirs:
            part = load_labels(d, workers=self.cfg.render_workers, progress=True, images=False)
            if discount:
                settings = label_settings(d)
                if settings.get("teacher"):
                    raise ConfigError(f"invalid config field 'label_discount': {d} holds a teacher's Q, not "
                                      "discounted returns")
                part["labels"] = rediscounted_labels(part["labels"], settings["gamma"], discount)
            if teacher_view:  # from the stored states, before "image" becomes the variant's input
                part["canonical"] = policy_images(d, part, "canonical", progress=True, image_size=self.cfg.image_size,
                                                  workers=self.cfg.render_workers,
                                                  camera_fov_deg=self.cfg.camera_fov_deg)
            part["image"] = policy_images(d, part, self.cfg.variant, self.cfg.generator, progress=True,
                                          camera_fov_deg=self.cfg.camera_fov_deg, image_size=self.cfg.image_size,
                                          workers=self.cfg.render_workers)
            if aux:
                part.update(aux_targets(d, part, progress=True, camera_fov_deg=self.cfg.camera_fov_deg))
            if aim:
                part["aim"] = -nearest_object_scores(part).astype(np.float32)  # distance (m)
            if successors:
                offset = sum(len(p["labels"]) for p in parts)
                successor = behaviour_successors(part["seed"], part["step"], part["candidates"])
                part["successor"] = np.where(successor >= 0, successor + offset, -1)
            parts.append(part)
        keys = (("image", "state", "candidates", "labels", "seed") + (AUX_KEYS if aux else ())
                + (("canonical",) if teacher_view else ()) + (("aim",) if aim else ())
                + (("successor",) if successors else ()))
        k_max = max(p["labels"].shape[1] for p in parts)
        for p in parts:  # sets labelled with fewer candidates repeat their behaviour one (same action, same label)
            pad = k_max - p["labels"].shape[1]
            if not pad:
                continue
            for k in ("candidates", "labels") + (("aim",) if aim else ()):
                p[k] = np.concatenate([p[k], np.repeat(p[k][:, :1], pad, 1)], 1)
        data = {k: np.concatenate([p[k] for p in parts]) for k in keys}
        if self.cfg.yaw_state:
            data["state"] = with_yaw(data["state"], np.concatenate([p["yaw"] for p in parts]))
        if self.cfg.blank_images:
            data["image"] = np.full_like(data["image"], 128)
        return data

    def update(self) -> dict[str, float]:
        d, cfg = self.train, self.cfg
        if cfg.lr_decay:  # a function of the update counter alone: resume stays exact
            for group in self.opt.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(self.updates / cfg.total_updates, 1.0)))
        idx = self.rng.integers(0, len(d["labels"]), cfg.batch_states)
        # The teacher's canonical view and the aux mask ride along as extra channels, so they shift with the image.
        extra = ([d["canonical"][idx]] if self.teacher is not None else []) + \
            ([d["object_mask"][idx][..., None]] if self.aux is not None else [])
        images, shift = self._shifted(np.concatenate([d["image"][idx], *extra], axis=3))
        c = self.net.cfg.in_channels
        x = network_input(images[..., :c])
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            if self.aux is None:
                feats = self.net.embed(x)
            else:
                feats, tap = AuxHeads.trunk(self.net, x)
                uv = self._tensor(shift[:, ::-1].astype(np.float32))  # (dy, dx) -> (du, dv)
                aux_loss = self.aux.loss(feats, tap, images[..., -1],
                                         self._tensor(d["gripper_uv"][idx]) + uv,
                                         self._tensor(d["object_uv"][idx]) + uv).float()
            logits = self.net.head_logits(feats, self._tensor(d["state"][idx]),
                                          self._tensor(d["candidates"][idx])).float()
        out = {}
        if self.targets:
            labels = self._bellman(idx)
            out["bellman_raise"] = float((labels[:, 0] - d["labels"][idx, 0]).mean())
            labels = self._tensor(labels)
        else:
            labels = self._tensor(d["labels"][idx])
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        if cfg.rank_weight > 0:
            rank_loss = within_state_rank_loss(logits, labels)
            loss = loss + cfg.rank_weight * rank_loss
            out["rank_loss"] = float(rank_loss.detach())
        if cfg.aim_weight > 0:
            aim_loss = within_state_aim_loss(logits, self._tensor(d["aim_labels"][idx]))
            loss = loss + cfg.aim_weight * aim_loss
            out["aim_loss"] = float(aim_loss.detach())
        if self.aux is not None:
            loss = loss + cfg.aux_weight * aux_loss
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher.embed(network_input(images[..., c:c + 3]))
            feature_loss = F.mse_loss(feats.float(), target)  # feats are bfloat16 under --bf16
            loss = loss + cfg.feature_weight * feature_loss
            out["feature_loss"] = float(feature_loss.detach())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.updates += 1
        if self.ema is not None:
            self._average()
        if self.targets:
            polyak_update(self.targets[0], self.net, cfg.bellman_tau)
            if self.updates % cfg.bellman_target2_lag == 0:
                self.targets[1].load_state_dict(self.targets[0].state_dict())
        return {"loss": float(loss.detach()), **out}

    def _bellman(self, idx: np.ndarray) -> np.ndarray:
        """The batch's labels with its behaviour transitions' Bellman targets (LabelTrainConfig.bellman): the next
        states shifted like the batch's images, CEM over target network 1, Q of its pick under both."""
        d = self.train
        live = np.flatnonzero(d["successor"][idx] >= 0)
        if live.size == 0:
            return d["labels"][idx]
        nxt = d["successor"][idx[live]]
        images, _ = shift_with_offsets(d["image"][nxt], self.cfg.random_shift, self.rng)
        t1, t2 = (TorchQFunction(t, self.device, bf16=self.cfg.bf16) for t in self.targets)
        search = dataclasses.replace(self.cfg.cem, close_threshold=0.0)
        best, q1 = cem_search(t1, t1.embed(images, d["state"][nxt]), live.size, self.rng, search, EnvConfig().bounds)
        q2 = t2.score(t2.embed(images, d["state"][nxt]), best[:, None, :])[:, 0]
        return bellman_labels(d["labels"][idx], d["candidates"][idx], live, q1, q2, self.gamma)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def _shifted(self, batch: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """The uint8 batch randomly shifted (shift_with_offsets), as a tensor on the learner's device: a GPU gets
        the batch as it is and shifts it there in one kernel; on the CPU, numpy's slicing is the faster shift."""
        if self.device.type == "cpu":
            images, shift = shift_with_offsets(batch, self.cfg.random_shift, self.rng)
            return self._tensor(images), shift
        return shift_with_offsets(self._tensor(batch), self.cfg.random_shift, self.rng)

    def greedy_check(self, executor) -> dict:
        from safetensors.torch import save

        cfg = self.cfg
        weights = save({k: v.detach().cpu().contiguous() for k, v in self.deployed.state_dict().items()})
        tasks = [CollectTask(seeds=(SELECTION_SEED_BASE + i,), variant=cfg.variant, domain=self.domain,
                             image_size=cfg.image_size, camera_fov_deg=cfg.camera_fov_deg, split="test",
                             generator=self.generator, policy="qnet",
                             weights=weights, qnet=self.deployed.cfg.to_dict(), cem=cfg.cem, cem_seed=i, record=False,
                             fresh_world=True)
                 for i in range(cfg.eval_episodes)]
        wins = sum(ep["success"] for _, r in executor.map_unordered(collect_episodes, tasks) for ep in r.episodes)
        return {"greedy_success": wins / cfg.eval_episodes, "greedy_wilson95": list(wilson_interval(wins, cfg.eval_episodes))}

    @property
    def domain(self) -> str:
        return training_domain(self.cfg.variant)

    @property
    def generator(self) -> str | None:
        return self.cfg.generator if self.cfg.variant == "rcan" else None

    # -- persistence
    def checkpoint(self) -> None:
        from safetensors.torch import save_file

        tensors = {f"net.{k}": v.detach().cpu().clone().contiguous() for k, v in self.net.state_dict().items()}
        for prefix, module in (("aux", self.aux), ("ema", self.ema), *zip(("target1", "target2"), self.targets)):
            if module is not None:
                tensors.update({f"{prefix}.{k}": v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()})
        opt = self.opt.state_dict()
        for pid, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"optim.{pid}.{k}"] = torch.as_tensor(v).detach().cpu().clone().contiguous()
        tensors["torch_rng"] = torch.get_rng_state()
        tmp = self.run_dir / ".checkpoint.safetensors.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(self.run_dir / "checkpoint.safetensors")
        atomic_write_json(self.run_dir / "checkpoint.json", {"updates": self.updates, "rng": self.rng.bit_generator.state,
                                                             "optim_param_groups": opt["param_groups"]})
        save_policy(self.run_dir / "policy.safetensors", self.deployed, self._meta())

    def snapshot(self) -> Path:
        """The current weights as snapshots/policy-<updates>.safetensors (+ .json), kept beside every check so a
        run's best check can be exported later (`rcan export-policy --checkpoint <that file>`)."""
        path = self.run_dir / "snapshots" / f"policy-{self.updates}.safetensors"
        save_policy(path, self.deployed, self._meta())
        return path

    def _meta(self) -> dict:
        return {"variant": self.cfg.variant, "generator": self.generator, "generator_sha256": self.generator_sha256,
                "domain": self.domain, "updates": self.updates, "run": self.cfg.run_name,
                "train_config": to_dict(self.cfg), "trained_on": "action labels"}

    def restore(self) -> None:
        from safetensors.torch import load_file

        d = self.run_dir
        load_for_resume(LabelTrainConfig, d, self.cfg, _ARCH_FIELDS)
        extra = json.loads((d / "checkpoint.json").read_text())
        tensors = load_file(str(d / "checkpoint.safetensors"))
        torch.set_rng_state(tensors.pop("torch_rng"))
        self.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        for prefix, module in (("aux.", self.aux), ("ema.", self.ema), *zip(("target1.", "target2."), self.targets)):
            if module is not None:
                module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v
        self.opt.load_state_dict({"state": state, "param_groups": extra["optim_param_groups"]})
        self.rng.bit_generator.state = extra["rng"]
        self.updates = int(extra["updates"])


def train(cfg: LabelTrainConfig, progress: bool = True) -> Path:
    torch.set_num_threads(cfg.threads)
    tr = LabelTrainer(cfg)
    d = tr.run_dir
    start_or_resume(tr, cfg, d)
    log = RunLog(d, ["updates", "loss", "feature_loss", "rank_loss", "aim_loss", "bellman_raise", "label_auc",
                     "within_state_auc", "move_auc", "close_auc", "pick_label", "move_pick_label", "move_pick_grasp",
                     "behaviour_label", "random_label", "oracle_label", "cem_regret", "greedy_success", "updates_per_s",
                     "elapsed_s"],
                 purge_step=tr.updates or None)
    executor = make_executor(cfg.eval_workers)
    t0 = time.perf_counter()
    deadline = t0 + 60 * cfg.time_budget_min if cfg.time_budget_min > 0 else math.inf
    start, losses = tr.updates, {}  # every loss update() reports, averaged per logged row
    if progress:
        print(f"[train-labels] {len(tr.train['labels'])} training states ({len(np.unique(tr.train['seed']))} scenes), "
              f"{len(tr.heldout['labels'])} held-out; run {d}", flush=True)

    def row(extra: dict) -> None:
        r = {"updates": tr.updates, **{k: float(np.mean(v)) for k, v in losses.items()},  # none on a check's own row
             "updates_per_s": (tr.updates - start) / max(time.perf_counter() - t0, 1e-9),
             "elapsed_s": time.perf_counter() - t0, **extra}
        log.write(r)
        for k, v in r.items():
            if isinstance(v, float) and k != "updates":
                log.scalar(k, v, tr.updates)
        if progress:
            print("[train-labels] " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                for k, v in r.items() if not isinstance(v, list)), flush=True)

    try:
        while tr.updates < cfg.total_updates and time.perf_counter() < deadline and not STOP.is_set():
            for k, v in tr.update().items():
                losses.setdefault(k, []).append(v)
            if tr.updates % cfg.log_every == 0:
                row({})
                losses = {}
            if cfg.eval_every and tr.updates % cfg.eval_every == 0:
                check = heldout_check(tr.deployed, tr.heldout, cfg.cem, np.random.default_rng([cfg.seed, tr.updates]))
                if cfg.eval_episodes:
                    check.update(tr.greedy_check(executor))
                tr.snapshot()
                with open(d / "evals.jsonl", "a") as f:
                    f.write(json.dumps({"updates": tr.updates, **check}) + "\n")
                row(check)
            if tr.updates % cfg.checkpoint_every == 0:
                tr.checkpoint()
    finally:
        tr.checkpoint()
        executor.close()
        log.close()
    return d


STOP = threading.Event()
"""Set by SIGTERM: the run ends after the current update, with a checkpoint that --resume continues exactly."""


def _stop(signum, frame):
    STOP.set()
    print(f"signal {signum}: stopping after this update, with a checkpoint", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import signal

    signal.signal(signal.SIGTERM, _stop)
    try:
        cfg = parse_cli(LabelTrainConfig, argv)
        d = train(cfg)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"rcan train-labels: error: {exc}", file=sys.stderr)
        return 2
    print(f"[train-labels] done: {d}")
    return 0
