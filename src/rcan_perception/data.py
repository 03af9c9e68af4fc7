"""Paired frames for generator training, held in memory as compact tensors.

The generator trains on small images (64 px: ~45 KB per frame), so the whole sharded dataset
is read once by the format's one reader (:func:`rcan_sim.shards.read_frames`) into uint8/float32
tensors; batches are then plain index gathers, with no loader workers to compete for the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rcan_sim.shards import DataError, read_frames, read_manifest  # noqa: F401  (DataError, read_manifest: for callers)


@dataclass
class Frames:
    """N paired frames: randomized / canonical uint8 (N,3,H,W), segmentation uint8 (N,H,W), depth m (N,H,W)."""

    randomized: torch.Tensor
    canonical: torch.Tensor
    segmentation: torch.Tensor
    depth: torch.Tensor
    episode: torch.Tensor

    def __post_init__(self) -> None:
        n, c, h, w = self.randomized.shape
        shapes = {"randomized": (n, 3, h, w), "canonical": (n, 3, h, w), "segmentation": (n, h, w),
                  "depth": (n, h, w), "episode": (n,)}
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise DataError(f"frames field '{name}' has shape {tuple(getattr(self, name).shape)}, expected {shape}")
        if c != 3 or self.randomized.dtype != torch.uint8 or self.canonical.dtype != torch.uint8:
            raise DataError("randomized/canonical must be uint8 RGB")

    def __len__(self) -> int:
        return self.randomized.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.randomized.shape[-2:])  # type: ignore[return-value]

    def select(self, index: torch.Tensor) -> "Frames":
        return Frames(self.randomized[index], self.canonical[index], self.segmentation[index],
                      self.depth[index], self.episode[index])


def load_frames(root: str | Path, max_frames: int = 0) -> Frames:
    """Read complete shards of `root` (in shard order) into memory; ``max_frames`` > 0 caps the count."""
    cat = read_frames(root, ("randomized", "canonical", "segmentation", "depth", "episode"), max_frames)
    return Frames(
        randomized=torch.from_numpy(cat["randomized"]).permute(0, 3, 1, 2).contiguous(),
        canonical=torch.from_numpy(cat["canonical"]).permute(0, 3, 1, 2).contiguous(),
        segmentation=torch.from_numpy(cat["segmentation"].astype(np.uint8)),
        depth=torch.from_numpy(cat["depth"].astype(np.float32)),
        episode=torch.from_numpy(cat["episode"].astype(np.int64)),
    )


def concat_frames(parts: list[Frames]) -> Frames:
    """Concatenate datasets; episode ids are offset so that every part keeps distinct episodes."""
    if len(parts) == 1:
        return parts[0]
    sizes = {p.image_size for p in parts}
    if len(sizes) != 1:
        raise DataError(f"datasets have different image sizes {sorted(sizes)}")
    episodes, offset = [], 0
    for p in parts:
        episodes.append(p.episode - p.episode.min() + offset)
        offset = int(episodes[-1].max()) + 1
    return Frames(*(torch.cat([getattr(p, k) for p in parts]) for k in ("randomized", "canonical", "segmentation", "depth")),
                  torch.cat(episodes))


def split_by_episode(frames: Frames, fraction: float) -> tuple[Frames, Frames]:
    """Hold out the last ``fraction`` of episodes (whole episodes, so no near-duplicate frame leaks)."""
    episodes = torch.unique(frames.episode)
    n_val = max(1, int(round(len(episodes) * fraction)))
    if n_val >= len(episodes):
        raise DataError(f"cannot hold out {fraction:.0%} of {len(episodes)} episode(s) and still train")
    val_eps = episodes[-n_val:]
    is_val = torch.isin(frames.episode, val_eps)
    return frames.select(torch.nonzero(~is_val)[:, 0]), frames.select(torch.nonzero(is_val)[:, 0])


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Frame indices of training step `step`: a fresh seeded permutation per epoch.

    A pure function of (step, seed), so a resumed run draws exactly the batches it would have.
    """
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise DataError(f"batch_size {batch_size} exceeds the {n} training frames")
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)[pos * batch_size:(pos + 1) * batch_size]


def synthetic_frames(n: int, size: int = 32, seed: int = 0, frames_per_episode: int = 4) -> Frames:
    """Procedural paired frames (smoke tests, no simulator): coloured blocks on a textured tray.

    The canonical image is a fixed colour per class (objects keep a per-frame colour), the
    randomized image the same layout with random colour shifts and noise; depth is lower
    where there is something on the tray.
    """
    g = torch.Generator().manual_seed(seed)
    seg = torch.zeros(n, size, size, dtype=torch.uint8)
    q = max(size // 8, 1)
    seg[:, q:size - q, q:size - q] = 2                      # tray
    seg[:, q:size - q, size // 2 - 1:size // 2 + 1] = 3     # divider
    seg[:, :2 * q, :] = 4                                   # arm along the top
    canonical = torch.tensor([[40, 40, 40], [0, 0, 0], [120, 90, 60], [200, 200, 200], [60, 160, 60]],
                             dtype=torch.float32)[seg.long()]
    for i in range(n):
        y, x = (int(v) for v in torch.randint(2 * q, size - 3 * q, (2,), generator=g))
        seg[i, y:y + 2 * q, x:x + 2 * q] = 1
        canonical[i, y:y + 2 * q, x:x + 2 * q] = torch.randint(50, 255, (3,), generator=g).float()
    shift = torch.randint(-60, 60, (n, 1, 1, 3), generator=g).float()
    noise = torch.randn(n, size, size, 3, generator=g) * 12
    randomized = (canonical + shift + noise).clamp(0, 255)
    depth = torch.where(seg == 0, 1.0, 0.9) - 0.05 * (seg == 1).float()
    return Frames(randomized.to(torch.uint8).permute(0, 3, 1, 2).contiguous(),
                  canonical.to(torch.uint8).permute(0, 3, 1, 2).contiguous(), seg, depth.float(),
                  torch.arange(n) // frames_per_episode)
