"""Torch dataset over the paired shards written by ``rcan datagen`` (stable API for training).

Usage::

    from rcan_sim.dataset import PairedDataset
    ds = PairedDataset("data/gen64")                     # every frame of every completed shard
    train = PairedDataset("data/gen64", episodes=range(0, 900))   # a subset by episode id
    train, val = ds.split(val_fraction=0.1, seed=0)      # by whole episodes
    sample = ds[0]
    sample = ds.get(episode=12, step=3)                  # index by (episode, step)
    i = ds.index_of(12, 3)
    loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, num_workers=4)

Each item is a dict of tensors:

    "randomized"          uint8   (3, H, W)  randomized-domain RGB (the generator input x_s)
    "canonical"           uint8   (3, H, W)  canonical-domain RGB of the same frozen state (x_c)
    "segmentation"        int64   (H, W)     class ids 0..4 (rcan_common.classes), m_c
    "depth"               float32 (1, H, W)  canonical depth in metres, d_c
    "state"               float32 (2,)       [gripper_open, gripper_height]
    "action"              float32 (8,)       action taken (rcan_common.action layout)
    "reward"              float32 ()         reward for that action
    "terminal"            bool    ()         last step of its episode
    "episode", "step", "episode_seed", "randomization_seed"   int64 ()

Images stay uint8 so batches are small; convert with ``x.float() / 255`` on the device.

Only shards listed in ``manifest.json`` are read (a shard is listed only once it is fully
written), so a dataset can be read while ``rcan datagen`` is still appending to it; call
``PairedDataset(root)`` again to see new shards.  HDF5 handles are opened lazily in the
process that reads (h5py handles must not cross a fork), so the dataset is safe with
DataLoader workers under both fork and spawn.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from rcan_sim.shards import ShardInfo, load_manifest

_INT_META = ("episode", "step", "episode_seed", "randomization_seed")


class PairedDataset(Dataset):
    """Map-style dataset of paired frames; see the module docstring for the item layout."""

    def __init__(self, root: str | Path, episodes: Iterable[int] | None = None,
                 transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None):
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        self.image_size = int(self.manifest["config"]["image_size"])
        self.transform = transform
        self.shards = [ShardInfo.from_json(s) for s in self.manifest["shards"]]
        for s in self.shards:
            if not (self.root / s.file).is_file():
                raise FileNotFoundError(f"shard {s.file} is listed in {self.root / 'manifest.json'} but missing")
        shard_col, row_col, ep_col, step_col = [], [], [], []
        for k, s in enumerate(self.shards):
            eps = np.arange(s.episode_start, s.episode_stop, dtype=np.int64)
            counts = np.asarray(s.episode_frames, dtype=np.int64)
            if len(counts) != len(eps) or counts.sum() != s.num_frames:
                raise ValueError(f"manifest entry for {s.file} is inconsistent: {len(counts)} episode counts "
                                 f"for {len(eps)} episodes, {counts.sum()} frames vs num_frames={s.num_frames}")
            shard_col.append(np.full(s.num_frames, k, dtype=np.int32))
            row_col.append(np.arange(s.num_frames, dtype=np.int64))
            ep_col.append(np.repeat(eps, counts))
            # step = position within its episode's run of rows
            starts = np.repeat(np.cumsum(counts) - counts, counts)
            step_col.append(np.arange(s.num_frames, dtype=np.int64) - starts)
        cat = lambda cols, dt: np.concatenate(cols) if cols else np.zeros(0, dt)  # noqa: E731
        shard_idx, rows = cat(shard_col, np.int32), cat(row_col, np.int64)
        ep, step = cat(ep_col, np.int64), cat(step_col, np.int64)
        if episodes is not None:
            wanted = np.fromiter((int(e) for e in episodes), dtype=np.int64)
            keep = np.isin(ep, wanted)
            shard_idx, rows, ep, step = shard_idx[keep], rows[keep], ep[keep], step[keep]
        self._shard_idx, self._rows, self._ep, self._step = shard_idx, rows, ep, step
        self._lookup = {(int(e), int(s)): i for i, (e, s) in enumerate(zip(ep, step))}
        self._handles: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def episodes(self) -> np.ndarray:
        """Sorted episode ids present in this dataset (after the `episodes` filter)."""
        return np.unique(self._ep)

    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple["PairedDataset", "PairedDataset"]:
        """(train, val) datasets split by whole episodes, so correlated frames of one episode never
        straddle the split; deterministic in `seed`.  Val gets at least one episode."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        eps = self.episodes
        if len(eps) < 2:
            raise ValueError(f"need at least 2 episodes to split, {self.root} has {len(eps)}")
        n_val = min(len(eps) - 1, max(1, round(len(eps) * val_fraction)))
        val = np.random.default_rng(seed).permutation(eps)[:n_val]
        train = np.setdiff1d(eps, val)
        return (PairedDataset(self.root, episodes=train, transform=self.transform),
                PairedDataset(self.root, episodes=val, transform=self.transform))

    def index_of(self, episode: int, step: int) -> int:
        try:
            return self._lookup[(int(episode), int(step))]
        except KeyError:
            raise KeyError(f"no frame for episode {episode} step {step} in {self.root}") from None

    def get(self, episode: int, step: int) -> dict[str, torch.Tensor]:
        return self[self.index_of(episode, step)]

    def _file(self, k: int) -> h5py.File:
        if os.getpid() != self._pid:  # forked into a DataLoader worker: never reuse the parent's handles
            self._handles, self._pid = {}, os.getpid()
        f = self._handles.get(k)
        if f is None:
            info = self.shards[k]
            f = h5py.File(self.root / info.file, "r")
            if int(f.attrs.get("num_frames", -1)) != info.num_frames or \
                    str(f.attrs.get("fingerprint", "")) != self.manifest["fingerprint"]:
                f.close()
                raise RuntimeError(f"{self.root / info.file} no longer matches the manifest this dataset was "
                                   f"opened with (regenerated or replaced?); create the PairedDataset again")
            self._handles[k] = f
        return f

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} frames")
        i = int(i) % len(self)
        f, r = self._file(int(self._shard_idx[i])), int(self._rows[i])
        item: dict[str, torch.Tensor] = {
            "randomized": torch.from_numpy(np.ascontiguousarray(f["randomized"][r].transpose(2, 0, 1))),
            "canonical": torch.from_numpy(np.ascontiguousarray(f["canonical"][r].transpose(2, 0, 1))),
            "segmentation": torch.from_numpy(f["segmentation"][r].astype(np.int64)),
            "depth": torch.from_numpy(f["depth"][r][None]),
            "state": torch.from_numpy(f["state"][r]),
            "action": torch.from_numpy(f["action"][r]),
            "reward": torch.tensor(float(f["reward"][r]), dtype=torch.float32),
            "terminal": torch.tensor(bool(f["terminal"][r])),
        }
        for name in _INT_META:
            item[name] = torch.tensor(int(f[name][r]), dtype=torch.int64)
        return self.transform(item) if self.transform is not None else item

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}  # h5py handles are not picklable (spawned DataLoader workers)
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: h5py may already be torn down
            pass
