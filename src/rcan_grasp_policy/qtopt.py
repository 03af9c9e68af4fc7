"""QT-Opt (Kalashnikov et al. 2018), the learning algorithm, kept apart from the network.

    target(s, a, r, s') = r + gamma * (1 - done) * V(s'),
    V(s') = min_{i=1,2} Q_target_i(s', a*),   a* = argmax_a' Q_target_1(s', a')  (by CEM)
    loss  = BCE(Q(s, a), clip(target, 0, 1))                                     (cross-entropy Bellman loss)

Target network 1 tracks the online network by Polyak averaging; target network 2 is a lagged
copy of target 1 (QT-Opt's clipped double Q).  Rewards are 1 / 0 at the end of an episode
and -0.05 otherwise, so a target can dip below 0; it is clipped to [0, 1] because Q is a
sigmoid and BCE needs a probability target.

Two options beyond the paper, both off by default: `mc_lower_bound` raises each target to the
transition's own Monte-Carlo return (the return the data policy actually got is a lower bound
of Q*, so success propagates back through a whole episode at once instead of one step per
target-network lag), and `random_shift` translates every image of a batch by up to that many
pixels (edge-replicated), the random-crop augmentation QT-Opt itself trains with.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rcan_common.config import require
from rcan_grasp_policy.backends import TorchQFunction
from rcan_grasp_policy.cem import CEMConfig, cem_search, random_actions
from rcan_grasp_policy.inputs import images_to_nchw
from rcan_grasp_policy.qnet import QNetwork
from rcan_grasp_policy.replay import Transitions
from rcan_common.action import ActionBounds


@dataclass(frozen=True)
class QTOptConfig:
    gamma: float = 0.9
    """Discount factor (paper: 0.9)."""
    lr: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 32
    """Transitions per gradient update."""
    tau: float = 0.01
    """Polyak rate of target network 1: target1 <- tau * online + (1 - tau) * target1, every update."""
    target2_lag: int = 200
    """Updates between copies of target network 1 into the lagged target network 2."""
    grad_clip: float = 10.0
    """Global gradient-norm clip (0 disables)."""
    target_cem: CEMConfig = field(default_factory=CEMConfig)
    """CEM settings of argmax_a' Q_target_1(s', a') in the Bellman target."""
    conservative_weight: float = 0.0
    """NOT in the paper (0 = QT-Opt as published): weight of a CQL-style penalty
    logsumexp(logits of random actions + the taken action) - logit(taken action), which pushes Q
    down on actions the replay never tried.  With little on-policy data the CEM argmax otherwise
    finds such actions with inflated Q and the Bellman targets inherit the inflation."""
    conservative_samples: int = 16
    """Uniformly random actions per state in the conservative penalty."""
    mc_lower_bound: bool = False
    """NOT in the paper (off = QT-Opt as published): target = max(Bellman target, the transition's discounted
    Monte-Carlo return), a lower bound of Q* (in expectation; the sim is close to deterministic) that carries a
    grasp's reward back to the episode's first step.  The returns are recorded with the run's gamma at collection."""
    random_shift: int = 0
    """Translate each image (and, independently, each next image) of a batch by up to this many pixels, with
    edge replication (QT-Opt's random-crop augmentation; 0 disables)."""

    def __post_init__(self) -> None:
        require(0.0 <= self.gamma < 1.0, "gamma", f"must be in [0, 1), got {self.gamma}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.batch_size >= 2, "batch_size", f"must be >= 2 (BatchNorm), got {self.batch_size}")
        require(0.0 < self.tau <= 1.0, "tau", f"must be in (0, 1], got {self.tau}")
        require(self.target2_lag >= 1, "target2_lag", f"must be >= 1, got {self.target2_lag}")
        require(self.grad_clip >= 0, "grad_clip", f"must be >= 0, got {self.grad_clip}")
        require(self.conservative_weight >= 0, "conservative_weight", f"must be >= 0, got {self.conservative_weight}")
        require(self.conservative_samples >= 1, "conservative_samples", f"must be >= 1, got {self.conservative_samples}")
        require(self.random_shift >= 0, "random_shift", f"must be >= 0, got {self.random_shift}")


def bellman_target(reward: torch.Tensor, done: torch.Tensor, q1_next: torch.Tensor, q2_next: torch.Tensor,
                   gamma: float) -> torch.Tensor:
    """clip(r + gamma * (1 - done) * min(q1', q2'), 0, 1): the clipped double-Q target."""
    v = torch.minimum(q1_next, q2_next)
    return (reward + gamma * (1.0 - done.float()) * v).clamp(0.0, 1.0)


def shift_with_offsets(images: np.ndarray | torch.Tensor, pad: int,
                       rng: np.random.Generator) -> tuple[np.ndarray | torch.Tensor, np.ndarray]:
    """Each (H, W, ...) image of `images` translated by its own random offset in [-pad, pad], edges replicated;
    also each image's content shift (dy, dx) in pixels, so pixel targets can follow their image.  A torch tensor
    is shifted where it lies (a GPU batch on the GPU), with the same draws from `rng` and the same pixels."""
    n, h, w = images.shape[:3]
    if pad == 0:
        return images, np.zeros((n, 2), np.int64)
    offsets = rng.integers(0, 2 * pad + 1, size=(n, 2))
    if not isinstance(images, torch.Tensor):  # slicing a padded copy: on a CPU 7x faster than the gather below
        padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)) + ((0, 0),) * (images.ndim - 3), mode="edge")
        shifted = np.stack([padded[i, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
        return shifted, pad - offsets
    # One gather (one kernel on a GPU): output pixel (r, c) of image i is input pixel (r + dy - pad, c + dx - pad)
    # clamped to the image, which is what the edge-replicated padding gives.
    rows = np.clip(np.arange(h) + offsets[:, :1] - pad, 0, h - 1)
    cols = np.clip(np.arange(w) + offsets[:, 1:] - pad, 0, w - 1)
    index = (np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :])
    return images[tuple(torch.from_numpy(i).to(images.device) for i in index)], pad - offsets


def shift_images(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Each (H, W, C) image of `images` translated by its own random (dy, dx) in [-pad, pad], edges replicated."""
    return shift_with_offsets(images, pad, rng)[0]


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- tau * source + (1 - tau) * target, for parameters and float buffers (BatchNorm stats)."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, tau)
    for t, s in zip(target.buffers(), source.buffers()):
        if t.dtype.is_floating_point:
            t.lerp_(s, tau)
        else:
            t.copy_(s)  # e.g. BatchNorm's num_batches_tracked


class QTOpt:
    """Online Q-network, two target networks, Adam, and the Bellman update."""

    def __init__(self, net: QNetwork, cfg: QTOptConfig = QTOptConfig(), bounds: ActionBounds = ActionBounds()):
        self.cfg, self.bounds = cfg, bounds
        self.q = net.train()
        self.target1 = copy.deepcopy(net).eval().requires_grad_(False)
        self.target2 = copy.deepcopy(net).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=cfg.lr)
        self.updates = 0

    @torch.no_grad()
    def next_q(self, batch: Transitions, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Q_target_i(s', a*) for i = 1, 2 with a* = argmax_a' Q_target_1(s', a') by CEM (0 where done)."""
        q1_next, q2_next = torch.zeros(len(batch)), torch.zeros(len(batch))
        live = np.flatnonzero(~batch.done)
        if live.size == 0:
            return q1_next, q2_next
        images, state = batch.next_image[live], batch.next_state[live]
        t1, t2 = TorchQFunction(self.target1), TorchQFunction(self.target2)
        ctx1 = t1.embed(images, state)
        best_a, q1 = cem_search(t1, ctx1, live.size, rng, self.cfg.target_cem, self.bounds)
        q2 = t2.score(t2.embed(images, state), best_a[:, None, :])[:, 0]
        q1_next[torch.from_numpy(live)] = torch.from_numpy(q1)
        q2_next[torch.from_numpy(live)] = torch.from_numpy(q2)
        return q1_next, q2_next

    def update(self, batch: Transitions, rng: np.random.Generator) -> dict[str, float]:
        """One gradient step on `batch`, then the target-network updates.  Returns scalar metrics."""
        if self.cfg.random_shift:
            batch = replace(batch, image=shift_images(batch.image, self.cfg.random_shift, rng),
                            next_image=shift_images(batch.next_image, self.cfg.random_shift, rng))
        q1_next, q2_next = self.next_q(batch, rng)
        target = bellman_target(torch.from_numpy(batch.reward), torch.from_numpy(batch.done), q1_next, q2_next,
                                self.cfg.gamma)
        if self.cfg.mc_lower_bound:
            target = torch.maximum(target, torch.from_numpy(batch.mc_return).clamp(0.0, 1.0))
        images = torch.from_numpy(images_to_nchw(batch.image))
        actions = torch.from_numpy(batch.action)[:, None, :]
        cql = self.cfg.conservative_weight > 0
        if cql:  # the taken action first, then random ones; one forward so the trunk runs once
            k = self.cfg.conservative_samples
            rand = random_actions(len(batch) * k, self.bounds, rng, self.cfg.target_cem.terminate_prob)
            actions = torch.cat([actions, torch.from_numpy(rand).float().view(len(batch), k, -1)], dim=1)
        all_logits = self.q(images, torch.from_numpy(batch.state), actions)
        logits = all_logits[:, 0]
        loss = F.binary_cross_entropy_with_logits(logits, target)
        metrics = {}
        if cql:
            penalty = (torch.logsumexp(all_logits, dim=1) - logits).mean()
            loss = loss + self.cfg.conservative_weight * penalty
            metrics["conservative_penalty"] = float(penalty.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (nn.utils.clip_grad_norm_(self.q.parameters(), self.cfg.grad_clip)
                     if self.cfg.grad_clip > 0 else torch.tensor(0.0))
        self.optimizer.step()
        self.updates += 1
        polyak_update(self.target1, self.q, self.cfg.tau)
        if self.updates % self.cfg.target2_lag == 0:
            self.target2.load_state_dict(self.target1.state_dict())
        return {"loss": float(loss.detach()), "q_mean": float(torch.sigmoid(logits.detach()).mean()),
                "target_mean": float(target.mean()), "grad_norm": float(grad_norm), **metrics}

    # -- checkpointing: flat tensors (safetensors) + JSON-able extras -------------------------
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {}
        for name, module in (("q", self.q), ("target1", self.target1), ("target2", self.target2)):
            tensors.update({f"{name}.{k}": v.detach().clone().contiguous() for k, v in module.state_dict().items()})
        opt = self.optimizer.state_dict()
        for pid, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"optim.{pid}.{k}"] = torch.as_tensor(v).clone().contiguous()
        return tensors, {"updates": self.updates, "optim_param_groups": opt["param_groups"]}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        for name, module in (("q", self.q), ("target1", self.target1), ("target2", self.target2)):
            prefix = name + "."
            module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v
        self.optimizer.load_state_dict({"state": state, "param_groups": extra["optim_param_groups"]})
        self.updates = int(extra["updates"])
