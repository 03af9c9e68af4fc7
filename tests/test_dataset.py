"""Storage layer and PairedDataset on synthetic shards (no simulator needed)."""
from __future__ import annotations

import errno
import json

import h5py
import numpy as np
import pytest
import torch

from rcan_common.io import OutputError
from rcan_sim import shards
from rcan_sim.dataset import PairedDataset

S = 64


def fake_episode(episode: int, steps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    seg = rng.integers(0, 5, size=(steps, S, S), dtype=np.uint8)
    return {
        "randomized": rng.integers(0, 256, size=(steps, S, S, 3), dtype=np.uint8),
        "canonical": rng.integers(0, 256, size=(steps, S, S, 3), dtype=np.uint8),
        "segmentation": seg,
        "depth": rng.random((steps, S, S), dtype=np.float32),
        "episode": np.full(steps, episode),
        "step": np.arange(steps),
        "episode_seed": np.full(steps, 1000 + episode),
        "randomization_seed": 5000 + 100 * episode + np.arange(steps),
        "state": rng.random((steps, 2), dtype=np.float32),
        "action": rng.random((steps, 8), dtype=np.float32),
        "reward": np.where(np.arange(steps) == steps - 1, 1.0, -0.05).astype(np.float32),
        "terminal": (np.arange(steps) == steps - 1).astype(np.uint8),
    }


def write_dataset(root, lengths: list[list[int]], compression="gzip"):
    """One shard per inner list; returns {(episode, step): record} for checking."""
    rng = np.random.default_rng(0)
    truth, infos, episode = {}, [], 0
    for k, shard_lengths in enumerate(lengths):
        with shards.ShardWriter(root, k, episode, episode + len(shard_lengths), S, "fp", compression) as w:
            for n in shard_lengths:
                rec = fake_episode(episode, n, rng)
                w.append_episode(rec)
                for t in range(n):
                    truth[(episode, t)] = {name: v[t] for name, v in rec.items()}
                episode += 1
            infos.append(w.commit())
    manifest = {"format": shards.FORMAT, "format_version": shards.FORMAT_VERSION, "fingerprint": "fp",
                "config": {"image_size": S}, "shards": [i.to_json() for i in infos]}
    shards.write_manifest(root, manifest)
    return truth


@pytest.mark.parametrize("compression", ["gzip", "lzf", "none"])
def test_round_trip_and_index(tmp_path, compression):
    truth = write_dataset(tmp_path, [[3, 2], [4]], compression)
    ds = PairedDataset(tmp_path)
    assert len(ds) == 9 == len(truth)
    assert ds.episodes.tolist() == [0, 1, 2]
    for (ep, t), rec in truth.items():
        item = ds.get(ep, t)
        assert item["randomized"].dtype == torch.uint8 and item["randomized"].shape == (3, S, S)
        assert item["canonical"].shape == (3, S, S)
        assert item["segmentation"].dtype == torch.int64 and item["segmentation"].shape == (S, S)
        assert item["depth"].dtype == torch.float32 and item["depth"].shape == (1, S, S)
        np.testing.assert_array_equal(item["randomized"].permute(1, 2, 0).numpy(), rec["randomized"])
        np.testing.assert_array_equal(item["canonical"].permute(1, 2, 0).numpy(), rec["canonical"])
        np.testing.assert_array_equal(item["segmentation"].numpy(), rec["segmentation"])
        np.testing.assert_array_equal(item["depth"][0].numpy(), rec["depth"])
        np.testing.assert_array_equal(item["action"].numpy(), rec["action"])
        assert int(item["episode"]) == ep and int(item["step"]) == t
        assert int(item["randomization_seed"]) == rec["randomization_seed"]
        assert bool(item["terminal"]) == bool(rec["terminal"])
    with pytest.raises(KeyError, match="episode 1 step 2"):
        ds.index_of(1, 2)
    with pytest.raises(IndexError):
        ds[9]


def test_episode_filter_and_dataloader_workers(tmp_path):
    write_dataset(tmp_path, [[2, 2], [2, 2]])
    ds = PairedDataset(tmp_path, episodes=[1, 3])
    assert len(ds) == 4 and ds.episodes.tolist() == [1, 3]
    ds[0]  # open a handle in the parent before forking workers
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    seen = [(int(e), int(s)) for b in loader for e, s in zip(b["episode"], b["step"])]
    assert sorted(seen) == [(1, 0), (1, 1), (3, 0), (3, 1)]


def test_split_by_whole_episodes(tmp_path):
    write_dataset(tmp_path, [[2, 3, 1], [2, 2, 4], [1, 1, 2, 3]])
    ds = PairedDataset(tmp_path)
    train, val = ds.split(val_fraction=0.3, seed=1)
    assert len(val.episodes) == 3 and len(train) + len(val) == len(ds)
    assert not set(train.episodes.tolist()) & set(val.episodes.tolist())
    again = ds.split(val_fraction=0.3, seed=1)[1]
    assert again.episodes.tolist() == val.episodes.tolist()
    with pytest.raises(ValueError, match="val_fraction"):
        ds.split(val_fraction=1.0)


def test_uncommitted_shard_is_invisible_and_abort_cleans(tmp_path):
    w = shards.ShardWriter(tmp_path, 0, 0, 1, S, "fp")
    w.append_episode(fake_episode(0, 2, np.random.default_rng(1)))
    assert not (tmp_path / "shard-00000.h5").exists() and w.tmp_path.exists()
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_records(tmp_path):
    with shards.ShardWriter(tmp_path, 0, 0, 2, S, "fp") as w:
        rec = fake_episode(0, 2, np.random.default_rng(2))
        with pytest.raises(ValueError, match="field 'depth' has shape"):
            w.append_episode({**rec, "depth": rec["depth"][:, :8]})
        with pytest.raises(ValueError, match="missing \\['action'\\]"):
            w.append_episode({k: v for k, v in rec.items() if k != "action"})
        w.append_episode(rec)
        with pytest.raises(ValueError, match="holds 1 episodes, expected 2"):
            w.commit()
    assert not any(tmp_path.iterdir())


def test_disk_full_is_reported_and_temp_removed(tmp_path, monkeypatch):
    w = shards.ShardWriter(tmp_path, 0, 0, 1, S, "fp")

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(h5py.Dataset, "resize", full)
    with pytest.raises(OutputError, match="disk full .* --resume"):
        w.append_episode(fake_episode(0, 1, np.random.default_rng(3)))
    assert not w.tmp_path.exists()


def test_read_shard_info_matches_commit(tmp_path):
    with shards.ShardWriter(tmp_path, 4, 8, 10, S, "fp") as w:
        rng = np.random.default_rng(4)
        w.append_episode(fake_episode(8, 3, rng), object_ids=[1, 2])
        w.append_episode(fake_episode(9, 1, rng), object_ids=[3, 4])
        info = w.commit()
    assert info == shards.read_shard_info(tmp_path / "shard-00004.h5")
    assert info.episode_frames == (3, 1) and info.num_frames == 4
    assert info.episode_object_ids == ((1, 2), (3, 4))
    assert shards.ShardInfo.from_json(json.loads(json.dumps(info.to_json()))) == info


def test_manifest_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an rcan paired dataset"):
        PairedDataset(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not an rcan-paired-hdf5 manifest"):
        PairedDataset(tmp_path)
    write_dataset(tmp_path, [[1]])
    stale = PairedDataset(tmp_path)
    with shards.ShardWriter(tmp_path, 0, 0, 1, S, "fp") as w:  # the shard is regenerated meanwhile
        w.append_episode(fake_episode(0, 2, np.random.default_rng(5)))
        w.commit()
    with pytest.raises(RuntimeError, match="no longer matches the manifest"):
        stale[0]
    (tmp_path / "shard-00000.h5").unlink()
    with pytest.raises(FileNotFoundError, match="listed .* but missing"):
        PairedDataset(tmp_path)
