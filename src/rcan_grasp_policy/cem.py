"""Cross-entropy method (CEM) over grasp actions: QT-Opt's argmax_a Q(s, a).

One CEM drives every Q-function backend through the small `QFunction` protocol:

    ctx = qf.embed(images, state)   # images uint8 (B, H, W, C), state float32 (B, 2); trunk runs once
    q   = qf.score(ctx, actions)    # actions float32 (B, N, 8) -> Q float32 (B, N) in [0, 1]

The search is batched over B states and N candidates.  The action has continuous and
discrete parts, and each keeps its own distribution, refitted from the elites every iteration:

* translation (dx, dy, dz) and rotation angle dtheta: independent Gaussians, clipped to the
  action bounds; dtheta is encoded as (sin, cos) only when the action vector is built;
* gripper command in {none, close, open}: a categorical distribution (the one-hot is built
  from the sampled class, never rounded from a continuous value);
* terminate: a Bernoulli.

The result is the best candidate scored in any iteration (QT-Opt executes the best sample,
not the final mean).  Randomness comes only from the numpy Generator passed in, so the same
seed gives the same decision on the torch and the ONNX Runtime backends.

Two additions to the paper's CEM make sure the search finds a good close or terminate when
one exists (a learned Q is sharply peaked at small motions there, where a first iteration with
std equal to the bounds puts almost no mass):

* shrunk candidates: the last `shrunk_fraction` of the first iteration's samples have their
  continuous part multiplied by factors from 0 (exactly zero motion) up to `shrunk_scale`, and
  cycle through the discrete options (close, terminate, close + terminate, open, none, ...)
  instead of drawing them; they are part of the `samples` budget;
* a floor `min_discrete_prob` on every gripper class and on both terminate outcomes in the
  refit, so one refit cannot remove an option from the next iteration.

More additions are off by default, all acting only: the close gate `close_threshold` ranks a close of the
open gripper below every other candidate unless its Q reaches the threshold (`close_gate_last_steps` stands it
down at the end of an episode), and the hold check `hold_check_threshold` lifts a closed gripper a little before
terminating and reopens it if the network then judges it empty.

`CEMConfig(min_discrete_prob=0, shrunk_fraction=0)` is the paper's CEM, bit for bit.
`cem_regret` measures how far a search falls short: Q of its pick over the best Q of a dense
candidate set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from rcan_common.config import require
from rcan_common.action import ACTION_DIM, CLOSE, COS, OPEN, SIN, STATE_DIM, STATE_NAMES, TERMINATE, ActionBounds

GRIPPER_OPEN_STATE = STATE_NAMES.index("gripper_open")
"""Column of the state vector that holds the gripper's state (1 open, 0 closed): what the close gate reads."""

# Gripper classes of the categorical part, in this order.
GRIPPER_CLASSES = ("none", "close", "open")


class QFunction(Protocol):
    """What CEM needs from a Q-network backend (torch module, ONNX Runtime session, test double)."""

    def embed(self, images: np.ndarray, state: np.ndarray) -> Any:
        """Per-state context (image features) for uint8 images (B, H, W, C) and state (B, D): D is the backend's
        `state_dim` attribute where it has one (4 for a network with QNetConfig.yaw_state), else STATE_DIM (2)."""

    def score(self, context: Any, actions: np.ndarray) -> np.ndarray:
        """Q values (B, N) in [0, 1] of candidate actions (B, N, 8) for the embedded states."""


ACTING_OPTIONS = {"close_threshold": "close gate", "close_gate_last_steps": "ungated last steps",
                  "hold_check_threshold": "hold check"}
"""The CEMConfig fields that change only how a network acts (NOT in the paper; 0: off), with their short names: a
card's evaluations and the policy node's start-up line name them."""


@dataclass(frozen=True)
class CEMConfig:
    samples: int = 64
    """Candidate actions per state and iteration (QT-Opt: 64)."""
    elites: int = 6
    """Best candidates the distribution is refitted to (QT-Opt: 6)."""
    iterations: int = 2
    """Sample-score-refit rounds (QT-Opt: 2)."""
    min_std: float = 0.05
    """Floor on the refitted Gaussian std, as a fraction of the bound, so a round never collapses to a point."""
    terminate_prob: float = 0.1
    """Initial Bernoulli probability of the terminate bit (grasps usually need several steps)."""
    min_discrete_prob: float = 0.05
    """Floor on each gripper class's probability and on both terminate outcomes after a refit (the refit is
    mixed with the uniform distribution), so one refit cannot remove an option (0: the paper's refit)."""
    shrunk_fraction: float = 0.125
    """Fraction of the first iteration's samples whose continuous part is shrunk towards zero motion, with
    the discrete options cycled, so zero-motion close and terminate are always scored (0: none)."""
    shrunk_scale: float = 0.1
    """Largest shrink factor of those candidates; the factors step from 0 (exactly zero motion) up to it."""
    close_threshold: float = 0.0
    """Close gate (NOT in the paper; 0: off, the paper's argmax).  While the gripper is open, a candidate that
    closes it ranks below every other candidate unless its Q reaches this value, so the policy moves on
    instead of closing where its own network gives the grasp a low chance.  Acting only (CEMPolicy); the Q it
    reports is the network's.  A property of one network's calibration: its card names the value selected on
    selection seeds (docs/policy.md, "The close gate")."""
    close_gate_last_steps: int = 0
    """NOT in the paper (0: the gate holds to the end).  The close gate stands down in an episode's last this many
    steps (the current one included): the paper's state has no clock, so the network's Q of a close is the same
    at step 3 and step 19, but a doubtful close late beats searching on until the step limit lifts an open
    gripper.  Needs the steps left (CEMPolicy.act's `steps_left`); docs/policy.md, "Ungated last steps"."""
    hold_check_threshold: float = 0.0
    """Hold check (NOT in the paper; 0: off).  A pick that terminates with the gripper closed becomes a lift of
    HOLD_CHECK_LIFT instead (a pick that closes and terminates at once loses its terminate: close first); on the
    next state the network's Q of lifting from there (terminate, zero motion) decides: at least this value,
    terminate; below it, reopen where it is and go on, so an empty or slipping close is retried instead of ending
    the episode.  Acting only (CEMPolicy, which remembers its check lifts); docs/policy.md, "The hold check"."""

    def __post_init__(self) -> None:
        require(self.samples >= 1, "samples", f"must be >= 1, got {self.samples}")
        require(1 <= self.elites <= self.samples, "elites", f"must be in 1..samples ({self.samples}), got {self.elites}")
        require(self.iterations >= 1, "iterations", f"must be >= 1, got {self.iterations}")
        require(0 <= self.min_std <= 1, "min_std", f"must be in [0, 1], got {self.min_std}")
        require(0 <= self.terminate_prob <= 1, "terminate_prob", f"must be in [0, 1], got {self.terminate_prob}")
        require(0 <= self.min_discrete_prob <= 1 / len(GRIPPER_CLASSES), "min_discrete_prob",
                f"must be in [0, 1/3], got {self.min_discrete_prob}")
        require(0 <= self.shrunk_fraction <= 1, "shrunk_fraction", f"must be in [0, 1], got {self.shrunk_fraction}")
        require(0 <= self.shrunk_scale <= 1, "shrunk_scale", f"must be in [0, 1], got {self.shrunk_scale}")
        require(0 <= self.close_threshold <= 1, "close_threshold", f"must be in [0, 1], got {self.close_threshold}")
        require(self.close_gate_last_steps >= 0, "close_gate_last_steps",
                f"must be >= 0, got {self.close_gate_last_steps}")
        require(0 <= self.hold_check_threshold <= 1, "hold_check_threshold",
                f"must be in [0, 1], got {self.hold_check_threshold}")

    def acting_summary(self) -> str:
        """The acting-only options that are on, for a log line: ", close gate 0.55, hold check 0.1" ("" for none)."""
        on = ((name, getattr(self, field)) for field, name in ACTING_OPTIONS.items())
        return "".join(f", {name} {value:g}" for name, value in on if value > 0)

    @property
    def shrunk_samples(self) -> int:
        """How many of the first iteration's samples are shrunk candidates."""
        return min(self.samples, int(round(self.shrunk_fraction * self.samples)))


@dataclass
class SearchDistribution:
    """The CEM distribution for a batch of B states (continuous part: dx, dy, dz, dtheta)."""

    mean: np.ndarray  # (B, 4)
    std: np.ndarray  # (B, 4)
    gripper_probs: np.ndarray  # (B, 3) over GRIPPER_CLASSES
    terminate_prob: np.ndarray  # (B,)

    @classmethod
    def initial(cls, batch: int, cfg: CEMConfig, bounds: ActionBounds) -> "SearchDistribution":
        limit = _limits(bounds)
        return cls(mean=np.zeros((batch, 4)), std=np.tile(limit, (batch, 1)),
                   gripper_probs=np.full((batch, 3), 1.0 / 3.0), terminate_prob=np.full(batch, cfg.terminate_prob))


def _limits(bounds: ActionBounds) -> np.ndarray:
    t = bounds.max_translation
    return np.array([t, t, t, bounds.max_rotation])


def build_actions(continuous: np.ndarray, gripper: np.ndarray, terminate: np.ndarray) -> np.ndarray:
    """Action vectors (..., 8) from (dx, dy, dz, dtheta) (..., 4), gripper class (...) and terminate bit (...)."""
    out = np.zeros(continuous.shape[:-1] + (ACTION_DIM,), dtype=np.float32)
    out[..., :3] = continuous[..., :3]
    out[..., SIN] = np.sin(continuous[..., 3])
    out[..., COS] = np.cos(continuous[..., 3])
    out[..., CLOSE] = gripper == 1
    out[..., OPEN] = gripper == 2
    out[..., TERMINATE] = terminate
    return out


LIFT_NOW = build_actions(np.zeros(4), np.array(0), np.array(True))
"""Terminate with zero motion: the hold check's terminate; its Q is the network's estimate that the closed gripper
holds an object."""
HOLD_CHECK_LIFT = 0.05
"""How far the hold check lifts the closed gripper before it looks (m): far enough that an object the fingers
lost stays behind on the tray."""
CHECK_LIFT = build_actions(np.array([0.0, 0.0, HOLD_CHECK_LIFT, 0.0]), np.array(0), np.array(False))
REOPEN = build_actions(np.zeros(4), np.array(2), np.array(False))
CHECK_NONE, CHECK_CLOSED, CHECK_LIFTED = 0, 1, 2
"""Hold check stages of a state, from the policy's last action: none; it closed (a pick that closed and
terminated at once), so lift next; it lifted, so decide."""

# Discrete options (gripper class, terminate) the shrunk candidates cycle through, most useful first:
# close, terminate (lift), close and lift in one step, open, wait, open and lift.
SHRUNK_OPTIONS = ((1, False), (0, True), (1, True), (2, False), (0, False), (2, True))


def sample(dist: SearchDistribution, n: int, bounds: ActionBounds, rng: np.random.Generator,
           shrunk: int = 0, shrunk_scale: float = 0.1):
    """n candidates per state: continuous (B, n, 4), gripper class (B, n), terminate bit (B, n).

    The last `shrunk` candidates have their continuous part multiplied by factors from 0 to `shrunk_scale`
    and take their discrete part from SHRUNK_OPTIONS in turn; the random numbers drawn do not depend on it."""
    b = dist.mean.shape[0]
    limit = _limits(bounds)
    noise = rng.standard_normal((b, n, 4))
    continuous = np.clip(dist.mean[:, None] + dist.std[:, None] * noise, -limit, limit)
    # Inverse-CDF draws keep the number of random numbers fixed whatever the probabilities are.
    cdf = np.cumsum(dist.gripper_probs, axis=1)
    u = rng.random((b, n))
    gripper = np.minimum((u[..., None] >= cdf[:, None, :]).sum(axis=2), 2)
    terminate = rng.random((b, n)) < dist.terminate_prob[:, None]
    if shrunk > 0:
        k = np.arange(shrunk)
        continuous[:, n - shrunk:] *= np.linspace(0.0, shrunk_scale, shrunk)[None, :, None]
        options = np.asarray(SHRUNK_OPTIONS)[k % len(SHRUNK_OPTIONS)]
        gripper[:, n - shrunk:] = options[:, 0]
        terminate[:, n - shrunk:] = options[:, 1].astype(bool)
    return continuous, gripper, terminate


def refit(continuous: np.ndarray, gripper: np.ndarray, terminate: np.ndarray, elite_idx: np.ndarray,
          cfg: CEMConfig, bounds: ActionBounds) -> SearchDistribution:
    """Maximum-likelihood refit of every part of the distribution to the elites (B, K) indices."""
    take = lambda x: np.take_along_axis(x, elite_idx if x.ndim == 2 else elite_idx[..., None], axis=1)  # noqa: E731
    ec, eg, et = take(continuous), take(gripper), take(terminate)
    std = np.maximum(ec.std(axis=1), cfg.min_std * _limits(bounds))
    probs = np.stack([(eg == k).mean(axis=1) for k in range(len(GRIPPER_CLASSES))], axis=1)
    # Mixed with the uniform distribution: every probability stays >= the floor and they still sum to one.
    f = cfg.min_discrete_prob
    probs = f + (1.0 - len(GRIPPER_CLASSES) * f) * probs
    terminate_prob = f + (1.0 - 2.0 * f) * et.mean(axis=1)
    return SearchDistribution(mean=ec.mean(axis=1), std=std, gripper_probs=probs, terminate_prob=terminate_prob)


RANK_DECIMALS = 6
"""Decimals of Q that CEM ranks candidates on (well above the backends' ~1e-7 float differences)."""


def cem_search(qf: QFunction, context: Any, batch: int, rng: np.random.Generator, cfg: CEMConfig = CEMConfig(),
               bounds: ActionBounds = ActionBounds(),
               gated: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Best actions (B, 8) and their Q (B,) for `batch` states already embedded in `context`.  `gated` (B,) bool
    enables `cfg.close_threshold` for those states: the ones whose gripper is open, outside the ungated last steps
    (None: no close gate)."""
    dist = SearchDistribution.initial(batch, cfg, bounds)
    gate = None
    if cfg.close_threshold > 0 and gated is not None:
        gate = np.asarray(gated, dtype=bool).reshape(batch, 1)
    best_q = np.full(batch, -np.inf)
    best_rank = np.full(batch, -np.inf)
    best_a = np.zeros((batch, ACTION_DIM), dtype=np.float32)
    rows = np.arange(batch)
    for it in range(cfg.iterations):
        continuous, gripper, terminate = sample(dist, cfg.samples, bounds, rng,
                                                shrunk=cfg.shrunk_samples if it == 0 else 0,
                                                shrunk_scale=cfg.shrunk_scale)
        actions = build_actions(continuous, gripper, terminate)
        q = np.asarray(qf.score(context, actions), dtype=np.float64)
        if q.shape != (batch, cfg.samples):
            raise ValueError(f"QFunction.score returned shape {q.shape}, expected {(batch, cfg.samples)}")
        # Rank on Q rounded to RANK_DECIMALS: torch and ONNX Runtime differ by ~1e-7, which would otherwise
        # reorder near-tied candidates (a saturated sigmoid gives many) and send the two backends' searches
        # apart; ties then go to the earlier sample on both.
        rank = np.round(q, RANK_DECIMALS)
        if gate is not None:  # a gated close ranks below any other candidate (Q is in [0, 1])
            rank = np.where(gate & (actions[..., CLOSE] > 0.5) & (q < cfg.close_threshold), rank - 2.0, rank)
        order = np.argsort(-rank, axis=1, kind="stable")
        top = order[:, 0]
        better = rank[rows, top] > best_rank
        best_rank = np.where(better, rank[rows, top], best_rank)
        best_q = np.where(better, q[rows, top], best_q)
        best_a[better] = actions[rows[better], top[better]]
        if it + 1 < cfg.iterations:
            dist = refit(continuous, gripper, terminate, order[:, :cfg.elites], cfg, bounds)
    return best_a, best_q.astype(np.float32)


def dense_candidates(n: int, bounds: ActionBounds = ActionBounds(), rng: np.random.Generator | None = None,
                     near: float = 0.2) -> np.ndarray:
    """A dense candidate set (n, 8) for measuring a search: the zero-motion actions of every discrete option
    (SHRUNK_OPTIONS), then half uniform over the bounds and half uniform within `near` x the bounds (where
    close and terminate peak), the discrete options cycled.  Seeded by `rng` (default: seed 0)."""
    rng = np.random.default_rng(0) if rng is None else rng
    options = np.asarray(SHRUNK_OPTIONS)
    m = n - len(options)
    if m < 0:
        raise ValueError(f"n must be >= {len(options)}, got {n}")
    limit = _limits(bounds)
    wide = rng.uniform(-limit, limit, size=(m - m // 2, 4))
    close = rng.uniform(-near * limit, near * limit, size=(m // 2, 4))
    continuous = np.concatenate([np.zeros((len(options), 4)), wide, close])
    opt = options[np.arange(n) % len(options)]
    return build_actions(continuous, opt[:, 0], opt[:, 1].astype(bool))


@dataclass
class Regret:
    """Per state: Q of CEM's pick, the best Q over the dense set (and the given candidates), and their ratio."""

    ratio: np.ndarray  # (B,) q_pick / max(q_best, q_pick), in [0, 1]: 1 = CEM found the best candidate
    q_pick: np.ndarray  # (B,)
    q_best: np.ndarray  # (B,) best Q over the dense set and the given candidates
    best_actions: np.ndarray  # (B, 8) the dense set's best candidate


def cem_regret(qf: QFunction, context: Any, batch: int, candidates: np.ndarray | None, rng: np.random.Generator,
               cfg: CEMConfig = CEMConfig(), bounds: ActionBounds = ActionBounds(), dense: np.ndarray | int = 1024,
               chunk: int = 256) -> Regret:
    """CEM regret of `batch` embedded states: Q of CEM's pick over the best Q among `candidates` (B, K, 8), e.g.
    the labelled or behaviour actions (None: none), and a dense candidate set (an int: `dense_candidates` of
    that size, seed 0, the same for every call; or an (N, 8) array).  Scored `chunk` candidates at a time."""
    _, q_pick = cem_search(qf, context, batch, rng, cfg, bounds)
    dense = dense_candidates(dense, bounds) if isinstance(dense, (int, np.integer)) else np.asarray(dense, np.float32)
    pool = np.broadcast_to(dense, (batch,) + dense.shape)
    if candidates is not None:
        pool = np.concatenate([np.asarray(candidates, np.float32).reshape(batch, -1, dense.shape[-1]), pool], axis=1)
    q = np.concatenate([np.asarray(qf.score(context, np.ascontiguousarray(pool[:, i:i + chunk])), np.float64)
                        for i in range(0, pool.shape[1], chunk)], axis=1)
    best = q.argmax(axis=1)
    q_best = q[np.arange(batch), best]
    q_pick = q_pick.astype(np.float64)
    top = np.maximum(q_best, q_pick)
    ratio = np.where(top > 0, q_pick / np.where(top > 0, top, 1.0), 1.0)
    return Regret(ratio=ratio, q_pick=q_pick, q_best=q_best, best_actions=pool[np.arange(batch), best].copy())


def random_actions(batch: int, bounds: ActionBounds, rng: np.random.Generator,
                   terminate_prob: float = 0.1) -> np.ndarray:
    """Uniformly random actions (B, 8) within the bounds (epsilon-greedy exploration)."""
    limit = _limits(bounds)
    continuous = rng.uniform(-limit, limit, size=(batch, 4))
    gripper = rng.integers(0, len(GRIPPER_CLASSES), size=batch)
    terminate = rng.random(batch) < terminate_prob
    return build_actions(continuous, gripper, terminate)


class CEMPolicy:
    """Greedy (or epsilon-greedy) policy: argmax_a Q(s, a) by CEM, for any QFunction backend."""

    def __init__(self, qf: QFunction, cfg: CEMConfig = CEMConfig(), bounds: ActionBounds = ActionBounds(),
                 seed: int | np.random.Generator = 0, epsilon: float = 0.0):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.qf, self.cfg, self.bounds, self.epsilon = qf, cfg, bounds, epsilon
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self._check_stage: np.ndarray | None = None  # (B,) where each state's hold check is (CHECK_*)

    def act(self, images: np.ndarray, state: np.ndarray,
            steps_left: np.ndarray | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Actions (B, 8) and the Q estimate (B,) of the greedy choice for uint8 images (B, H, W, C), state (B, D)
        (D: the Q-function's `state_dim`, see QFunction.embed).  `steps_left` (B,) or one int: the episode's steps
        left, this one included; only CEMConfig.close_gate_last_steps reads it, and needs it."""
        images = np.asarray(images)
        state = np.asarray(state, dtype=np.float32)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (B, H, W, C), got {images.dtype} {images.shape}")
        d = getattr(self.qf, "state_dim", STATE_DIM)
        if state.shape != (images.shape[0], d):
            raise ValueError(f"state must have shape ({images.shape[0]}, {d}), got {state.shape}")
        if self.cfg.close_gate_last_steps > 0 and steps_left is None:
            raise ValueError("CEMConfig.close_gate_last_steps needs the episode's steps left (act's steps_left)")
        ctx = self.qf.embed(images, state)
        gripper_open = state[:, GRIPPER_OPEN_STATE] > 0.5
        gated = gripper_open
        if self.cfg.close_gate_last_steps > 0:
            gated = gripper_open & (np.broadcast_to(steps_left, gripper_open.shape) > self.cfg.close_gate_last_steps)
        actions, q = cem_search(self.qf, ctx, images.shape[0], self.rng, self.cfg, self.bounds, gated=gated)
        if self.cfg.hold_check_threshold > 0:
            actions, q = self._hold_check(ctx, gripper_open, actions, q)
        if self.epsilon > 0:
            explore = self.rng.random(images.shape[0]) < self.epsilon
            if explore.any():
                actions[explore] = random_actions(int(explore.sum()), self.bounds, self.rng, self.cfg.terminate_prob)
                if self._check_stage is not None:
                    self._check_stage[explore] = CHECK_NONE
        return actions, q

    def _hold_check(self, ctx: Any, gripper_open: np.ndarray, actions: np.ndarray,
                    q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CEMConfig.hold_check_threshold applied to CEM's picks (B, 8) and their Q (B,)."""
        b = actions.shape[0]
        stage = self._check_stage if self._check_stage is not None and len(self._check_stage) == b \
            else np.zeros(b, dtype=np.int8)
        stage = np.where(gripper_open, CHECK_NONE, stage)  # an open gripper: a new episode, or reopened since
        terminates = actions[:, TERMINATE] > 0.5
        closes_now = terminates & gripper_open & (actions[:, CLOSE] > 0.5) & (actions[:, OPEN] < 0.5)
        lift = (terminates & ~gripper_open & (actions[:, OPEN] < 0.5) & (stage == CHECK_NONE)) | (stage == CHECK_CLOSED)
        checking = stage == CHECK_LIFTED
        actions, q = actions.copy(), q.copy()
        actions[closes_now, TERMINATE] = 0.0  # close first, lift next, then decide
        if checking.any():
            q_hold = np.asarray(self.qf.score(ctx, np.broadcast_to(LIFT_NOW, (b, 1, ACTION_DIM)).copy()))[:, 0]
            hold = np.round(q_hold, RANK_DECIMALS) >= self.cfg.hold_check_threshold
            actions[checking] = np.where(hold[checking, None], LIFT_NOW, REOPEN)
        actions[lift] = CHECK_LIFT
        changed = closes_now | checking | lift
        if changed.any():  # the Q reported is the network's, of the action sent
            q[changed] = np.asarray(self.qf.score(ctx, actions[:, None, :].copy()))[changed, 0]
        self._check_stage = np.select([closes_now, lift], [CHECK_CLOSED, CHECK_LIFTED], CHECK_NONE).astype(np.int8)
        return actions, q
