"""Storage layer: the shard writer and the one reader (rcan_sim.shards.read_frames, and generator
training's rcan_perception.data.load_frames on top of it) on synthetic shards (no simulator needed)."""
from __future__ import annotations

import errno
import json

import h5py
import numpy as np
import pytest
import torch

from rcan_common.io import OutputError
from rcan_perception.data import load_frames, split_by_episode
from rcan_sim import shards

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
def test_round_trip(tmp_path, compression):
    truth = write_dataset(tmp_path, [[3, 2], [4]], compression)
    frames = shards.read_frames(tmp_path)
    schema = shards.frame_schema(S)
    assert set(frames) == set(schema)
    for name, (shape, dtype) in schema.items():
        assert frames[name].shape == (9, *shape) and frames[name].dtype == dtype, name
    keys = list(zip(frames["episode"].tolist(), frames["step"].tolist()))
    assert keys == sorted(truth)  # shard order, then step order
    for i, key in enumerate(keys):
        for name, value in truth[key].items():
            np.testing.assert_array_equal(frames[name][i], value, err_msg=f"{key} {name}")


def test_field_subset_and_frame_cap_across_shards(tmp_path):
    write_dataset(tmp_path, [[2, 2], [3]])
    frames = shards.read_frames(tmp_path, ("episode", "step"), max_frames=5)
    assert set(frames) == {"episode", "step"}
    assert list(zip(frames["episode"].tolist(), frames["step"].tolist())) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]


def test_generator_frames_come_from_the_same_reader(tmp_path):
    truth = write_dataset(tmp_path, [[2, 3, 1], [2, 2, 4]])
    frames = load_frames(tmp_path, max_frames=7)
    raw = shards.read_frames(tmp_path, max_frames=7)
    assert len(frames) == 7 and frames.randomized.dtype == torch.uint8 and frames.depth.dtype == torch.float32
    np.testing.assert_array_equal(frames.randomized.permute(0, 2, 3, 1).numpy(), raw["randomized"])
    np.testing.assert_array_equal(frames.canonical.permute(0, 2, 3, 1).numpy(), raw["canonical"])
    np.testing.assert_array_equal(frames.segmentation.numpy(), raw["segmentation"])
    np.testing.assert_array_equal(frames.depth.numpy(), raw["depth"])
    np.testing.assert_array_equal(frames.episode.numpy(), raw["episode"])
    train, val = split_by_episode(load_frames(tmp_path), 0.34)
    assert len(train) + len(val) == len(truth)
    assert not set(train.episode.tolist()) & set(val.episode.tolist())


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


def test_manifest_and_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an rcan paired dataset"):
        shards.load_manifest(tmp_path)
    assert shards.read_manifest(tmp_path) == {}
    with pytest.raises(shards.DataError, match="no shard-\\*.h5 files"):
        shards.read_frames(tmp_path)
    with pytest.raises(shards.DataError, match="directory not found"):
        shards.read_frames(tmp_path / "nowhere")
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not an rcan-paired-hdf5 manifest"):
        shards.load_manifest(tmp_path)
    write_dataset(tmp_path, [[1], [2]])
    assert shards.read_manifest(tmp_path)["fingerprint"] == "fp"
    (tmp_path / "manifest.json").unlink()  # without a manifest, every shard-*.h5 is read
    assert len(shards.read_frames(tmp_path)["step"]) == 3
    with h5py.File(tmp_path / "shard-00001.h5", "r+") as f:  # an incomplete shard is skipped
        f.attrs["complete"] = False
    assert len(shards.read_frames(tmp_path)["step"]) == 1
    (tmp_path / "shard-00000.h5").unlink()
    with pytest.raises(shards.DataError, match="holds no complete frames"):
        shards.read_frames(tmp_path)
    write_dataset(tmp_path, [[1]])
    (tmp_path / "shard-00000.h5").unlink()  # listed in the manifest but gone
    with pytest.raises(shards.DataError, match="cannot read shard"):
        shards.read_frames(tmp_path)
