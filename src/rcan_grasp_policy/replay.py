"""Fixed-capacity ring replay buffer of grasping transitions, saved as a single .npz.

Images are stored as the policy sees them (uint8 HxWxC, C = 6 for RCAN: [x, G(x)]), so G is
run once at collection time and never again during training.  Each transition also records
where it came from (scripted bootstrap or on-policy) for the logs, and its Monte-Carlo return
(the discounted reward-to-go of the episode it belongs to; optional lower bound of the Bellman target).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rcan_common.io import atomic_write_bytes
from rcan_common.action import ACTION_DIM, STATE_DIM

SOURCES = ("scripted", "policy")


@dataclass
class Transitions:
    """A batch of transitions (arrays share the leading dimension)."""

    image: np.ndarray  # (T, H, W, C) uint8
    state: np.ndarray  # (T, 2) float32
    action: np.ndarray  # (T, 8) float32
    reward: np.ndarray  # (T,) float32
    done: np.ndarray  # (T,) bool: terminal, no bootstrap
    next_image: np.ndarray  # (T, H, W, C) uint8
    next_state: np.ndarray  # (T, 2) float32
    source: np.ndarray  # (T,) uint8 index into SOURCES
    mc_return: np.ndarray  # (T,) float32: sum_k gamma^k r_(t+k) to the end of the episode

    FIELDS = ("image", "state", "action", "reward", "done", "next_image", "next_state", "source", "mc_return")

    def __len__(self) -> int:
        return int(self.reward.shape[0])

    @classmethod
    def concat(cls, parts: list["Transitions"]) -> "Transitions":
        return cls(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in cls.FIELDS})


def returns_to_go(reward: np.ndarray, done: np.ndarray, gamma: float) -> np.ndarray:
    """Discounted reward-to-go of consecutive transitions; `done` marks the last step of each episode.

    An episode still open at the end of the arrays (no `done`) is summed as if it ended there.
    """
    out = np.zeros(len(reward), np.float32)
    acc = 0.0
    for i in range(len(reward) - 1, -1, -1):
        acc = float(reward[i]) + (0.0 if done[i] else gamma * acc)
        out[i] = acc
    return out


class ReplayBuffer:
    """Ring buffer: once full, the oldest transitions are overwritten."""

    def __init__(self, capacity: int, image_shape: tuple[int, int, int]):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        h, w, c = image_shape
        self.capacity, self.image_shape = capacity, (h, w, c)
        self.image = np.zeros((capacity, h, w, c), np.uint8)
        self.next_image = np.zeros((capacity, h, w, c), np.uint8)
        self.state = np.zeros((capacity, STATE_DIM), np.float32)
        self.next_state = np.zeros((capacity, STATE_DIM), np.float32)
        self.action = np.zeros((capacity, ACTION_DIM), np.float32)
        self.reward = np.zeros(capacity, np.float32)
        self.done = np.zeros(capacity, bool)
        self.source = np.zeros(capacity, np.uint8)
        self.mc_return = np.zeros(capacity, np.float32)
        self.pos = 0  # next slot to write
        self.size = 0
        self.total_added = 0

    def __len__(self) -> int:
        return self.size

    def add(self, t: Transitions) -> None:
        if t.image.shape[1:] != self.image_shape:
            raise ValueError(f"transition images have shape {t.image.shape[1:]}, replay holds {self.image_shape}")
        n = len(t)
        idx = (self.pos + np.arange(n)) % self.capacity
        for f in Transitions.FIELDS:
            getattr(self, f)[idx] = getattr(t, f)
        self.pos = int((self.pos + n) % self.capacity)
        self.size = int(min(self.size + n, self.capacity))
        self.total_added += n

    def sample(self, batch_size: int, rng: np.random.Generator) -> Transitions:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = rng.integers(0, self.size, size=batch_size)
        return Transitions(**{f: getattr(self, f)[idx] for f in Transitions.FIELDS})

    def source_counts(self) -> dict[str, int]:
        counts = np.bincount(self.source[:self.size], minlength=len(SOURCES))
        return {name: int(c) for name, c in zip(SOURCES, counts)}

    def save(self, path: str | Path) -> None:
        """Write the filled part and the ring position (atomically) to an .npz file."""
        import io

        buf = io.BytesIO()
        np.savez(buf, **{f: getattr(self, f)[:self.size] for f in Transitions.FIELDS},
                 meta=np.array([self.capacity, self.pos, self.size, self.total_added], np.int64))
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path, gamma: float) -> "ReplayBuffer":
        """Read a replay written by `save`.  Replays saved before transitions carried `mc_return` get it
        recomputed from the stored rewards with `gamma` (episodes are contiguous in write order)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"replay file not found: {path}")
        with np.load(path) as data:
            capacity, pos, size, total = (int(v) for v in data["meta"])
            buf = cls(capacity, tuple(data["image"].shape[1:]))
            for f in Transitions.FIELDS:
                if f in data:
                    getattr(buf, f)[:size] = data[f]
            if "mc_return" not in data:
                order = np.roll(np.arange(size), -pos) if size == capacity else np.arange(size)
                buf.mc_return[order] = returns_to_go(buf.reward[order], buf.done[order], gamma)
        buf.pos, buf.size, buf.total_added = pos, size, total
        return buf
