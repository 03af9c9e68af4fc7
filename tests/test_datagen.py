"""`rcan datagen` end to end at 64x64 with tiny episode counts (real pybullet sim)."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from rcan_common.config import ConfigError
from rcan_sim import datagen, objects, shards

FAST = ["--image-size", "64", "--max-steps", "3", "--episodes-per-shard", "1", "--no-progress"]


def gen(out: Path, *extra: str) -> int:
    return datagen.main(["--out", str(out), "--workers", "1", *FAST, *extra])


def shard_arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in f}


def frame(frames: dict[str, np.ndarray], episode: int, step: int) -> dict[str, np.ndarray]:
    """The stored frame of (episode, step) from shards.read_frames' arrays."""
    (i,) = np.flatnonzero((frames["episode"] == episode) & (frames["step"] == step))
    return {k: v[i] for k, v in frames.items()}


def test_round_trip_pairs_and_replay(tmp_path):
    out = tmp_path / "d"
    assert gen(out, "--episodes", "2") == 0
    m = shards.load_manifest(out)
    assert m["complete"] and m["counts"]["episodes"] == 2 and m["counts"]["shards"] == 2
    assert set(m["versions"]) >= {"numpy", "pybullet", "torch", "h5py", "rcan"}
    assert all(set(ids) <= set(objects.TRAIN_IDS) and len(ids) == 5
               for sh in m["shards"] for ids in sh["episode_object_ids"])
    ds = shards.read_frames(out)
    n = len(ds["step"])
    assert n == m["counts"]["frames"] == sum(s["num_frames"] for s in m["shards"])
    assert len(set(zip(ds["episode"].tolist(), ds["step"].tolist()))) == n

    # Replay episode 1 from its stored seed and actions: the stored frame must be reproduced
    # exactly, and a plain randomized render with the same seed must share the segmentation.
    env = datagen.DatagenEnv(datagen.env_config(m["config"]))
    item = frame(ds, 1, 0)
    env.reset(seed=int(item["episode_seed"]))
    last = frame(ds, 1, 1)
    env.step(item["action"])
    r_seed = int(last["randomization_seed"])
    pair = env.world.render_pair(r_seed)
    np.testing.assert_array_equal(pair.randomized_rgb, last["randomized"])
    np.testing.assert_array_equal(pair.canonical_rgb, last["canonical"])
    np.testing.assert_array_equal(pair.depth, last["depth"])
    randomized_only = env.world.render("randomized", r_seed)
    np.testing.assert_array_equal(randomized_only.segmentation, last["segmentation"])
    np.testing.assert_array_equal(randomized_only.rgb, pair.randomized_rgb)
    env.close()
    # Same geometry, different looks: the RGB images differ substantially, all classes are in range.
    diff = float(np.abs(last["randomized"].astype(np.float32) - last["canonical"].astype(np.float32)).mean())
    assert diff > 10, diff
    assert set(np.unique(last["segmentation"])) <= {0, 1, 2, 3, 4}
    assert {1, 2, 4} <= set(np.unique(last["segmentation"]))  # objects, tray and arm visible


def test_test_split_uses_held_out_objects_and_textures(tmp_path):
    out = tmp_path / "d"
    assert gen(out, "--episodes", "1", "--max-steps", "1", "--split", "test") == 0
    m = shards.load_manifest(out)
    (ids,) = m["shards"][0]["episode_object_ids"]
    assert set(ids) <= set(objects.TEST_IDS)
    item = frame(shards.read_frames(out), 0, 0)
    env = datagen.DatagenEnv(datagen.env_config(m["config"]))
    env.reset(seed=int(item["episode_seed"]))
    held_out = env.world.render_pair(int(item["randomization_seed"]), domain="held-out")
    np.testing.assert_array_equal(held_out.randomized_rgb, item["randomized"])
    env.close()


def test_resume_append_equals_uninterrupted(tmp_path):
    full, grown = tmp_path / "full", tmp_path / "grown"
    assert gen(full, "--episodes", "2", "--policy", "rcan_sim.datagen:RandomPolicy") == 0
    assert gen(grown, "--episodes", "1", "--policy", "rcan_sim.datagen:RandomPolicy") == 0
    assert gen(grown, "--episodes", "2", "--policy", "rcan_sim.datagen:RandomPolicy", "--resume") == 0
    for name in ("shard-00000.h5", "shard-00001.h5"):
        a, b = shard_arrays(full / name), shard_arrays(grown / name)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}:{k}")
    assert shards.load_manifest(grown)["counts"] == shards.load_manifest(full)["counts"]


def test_bad_inputs_fail_before_any_work(tmp_path, monkeypatch, capsys):
    def no_workers(*_a, **_k):
        raise AssertionError("workers must not start on bad input")

    monkeypatch.setattr(datagen, "make_executor", no_workers)
    with pytest.raises(ConfigError, match="'episodes'"):
        datagen.DatagenConfig(out=tmp_path, episodes=0)
    with pytest.raises(SystemExit):
        gen(tmp_path / "x", "--episodes", "1", "--image-size", "8")
    assert "image_size" in capsys.readouterr().err

    cases = [
        (["--object-ids", "5000"], "unknown object id 5000"),
        (["--texture-folder", str(tmp_path / "nope")], "texture_folder"),
        (["--policy", "no_such_module:thing"], "'policy'"),
    ]
    for extra, message in cases:
        out = tmp_path / f"case{len(extra[1])}"
        assert gen(out, "--episodes", "1", *extra) != 0
        assert message in capsys.readouterr().err
        assert not (out / shards.MANIFEST).exists()

    empty_textures = tmp_path / "textures"
    empty_textures.mkdir()
    assert gen(tmp_path / "t", "--episodes", "1", "--texture-folder", str(empty_textures)) != 0
    assert "holds 0 images" in capsys.readouterr().err

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert gen(blocker / "sub", "--episodes", "1") == 1
    assert "not writable" in capsys.readouterr().err

    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("keep me")
    assert gen(stray, "--episodes", "1") == 1
    assert "not empty" in capsys.readouterr().err


def test_existing_dataset_needs_resume_with_same_config(tmp_path, capsys):
    out = tmp_path / "d"
    assert gen(out, "--episodes", "1", "--policy", "rcan_sim.datagen:RandomPolicy") == 0
    before = (out / shards.MANIFEST).read_text()
    assert gen(out, "--episodes", "1", "--policy", "rcan_sim.datagen:RandomPolicy") == 1
    assert "pass --resume" in capsys.readouterr().err
    assert gen(out, "--episodes", "1", "--policy", "rcan_sim.datagen:RandomPolicy", "--resume", "--seed", "7") == 2
    assert "seed: dataset has 0, requested 7" in capsys.readouterr().err
    assert gen(out, "--episodes", "1", "--resume") == 2  # a different policy is a different dataset
    assert "policy" in capsys.readouterr().err
    assert (out / shards.MANIFEST).read_text() == before
    with datagen._exclusive(out):  # as if another datagen run held the dataset
        assert gen(out, "--episodes", "2", "--policy", "rcan_sim.datagen:RandomPolicy", "--resume") == 1
    assert "another rcan datagen is writing" in capsys.readouterr().err
    assert (out / shards.MANIFEST).read_text() == before


def test_disk_full_keeps_manifest_and_resume_finishes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "d"
    real_append = shards.ShardWriter.append_episode

    def append_then_full(self, frames, **kwargs):
        if self.index == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(self, frames, **kwargs)

    monkeypatch.setattr(shards.ShardWriter, "append_episode", append_then_full)
    args = ["--episodes", "3", "--policy", "rcan_sim.datagen:RandomPolicy"]
    assert gen(out, *args) == 1
    err = capsys.readouterr().err
    assert "disk full" in err and "is intact: 1 complete shard(s)" in err and "--resume" in err
    m = shards.load_manifest(out)
    assert m["counts"]["shards"] == 1 and not m["complete"]
    assert not list(out.glob(".shard-*"))
    monkeypatch.setattr(shards.ShardWriter, "append_episode", real_append)
    assert gen(out, *args, "--resume") == 0
    m = shards.load_manifest(out)
    assert m["complete"] and m["counts"]["episodes"] == 3


def test_killed_worker_reports_and_keeps_manifest(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # spawned workers import the policy module
    out = tmp_path / "d"
    rc = datagen.main(["--out", str(out), "--episodes", "4", "--workers", "2",
                       "--policy", "test_datagen_policies:SuicidalPolicy", *FAST])
    assert rc == 1
    err = capsys.readouterr().err
    assert "failed in a worker" in err and "is intact" in err and "--resume" in err
    m = shards.load_manifest(out)
    assert not m["complete"] and all(s["index"] != 2 for s in m["shards"])
    assert not (out / "shard-00002.h5").exists()


def test_kill9_then_resume_reaches_exact_count(tmp_path):
    out = tmp_path / "d"
    n = 16
    cmd = [sys.executable, "-m", "rcan_bringup.cli", "datagen", "--out", str(out), "--episodes", str(n),
           "--workers", "2", "--policy", "rcan_sim.datagen:RandomPolicy", *FAST]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads((out / shards.MANIFEST).read_text())["counts"]["shards"] >= 1:
                    break
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    m = shards.load_manifest(out)  # valid JSON after the kill
    assert 1 <= m["counts"]["shards"] < n and not m["complete"]

    assert gen(out, "--episodes", str(n), "--policy", "rcan_sim.datagen:RandomPolicy", "--resume") == 0
    m = shards.load_manifest(out)
    assert m["complete"] and m["counts"]["episodes"] == n
    assert not list(out.glob(".shard-*")), "temp files of killed workers must be cleaned up"
    pairs = [(e, t) for s in m["shards"] for e, n in zip(range(s["episode_start"], s["episode_stop"]), s["episode_frames"])
             for t in range(n)]  # what the manifest says the shards hold
    ds = shards.read_frames(out, ("episode", "step"))
    assert list(zip(ds["episode"].tolist(), ds["step"].tolist())) == pairs
    assert len(pairs) == len(set(pairs)) == m["counts"]["frames"]
    stored = set()
    for s in m["shards"]:
        with h5py.File(out / s["file"], "r") as f:
            stored |= set(zip(f["episode"][:].tolist(), f["step"][:].tolist()))
    assert stored == set(pairs) and {e for e, _ in stored} == set(range(n))

    # A shard written by a worker of the killed run equals the same shard generated afresh here.
    ref = tmp_path / "ref"
    ref.mkdir()
    first = m["shards"][0]
    task = datagen.ShardTask(first["index"], first["episode_start"], first["episode_stop"], str(ref),
                             json.dumps(m["config"], sort_keys=True), m["fingerprint"])
    datagen.generate_shard(task)
    a, b = shard_arrays(out / first["file"]), shard_arrays(ref / first["file"])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_ray_backend(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "d"
    rc = datagen.main(["--out", str(out), "--episodes", "2", "--workers", "2", "--ray",
                       "--policy", "rcan_sim.datagen:RandomPolicy", *FAST])
    assert rc == 0
    m = shards.load_manifest(out)
    assert m["complete"] and m["counts"]["episodes"] == 2 and len(shards.read_frames(out, ("step",))["step"]) == m["counts"]["frames"]


def test_texture_folder_is_recorded_by_contents_and_resume_refuses_a_changed_folder(tmp_path, capsys):
    from PIL import Image

    from rcan_sim.textures import folder_digest

    folder = tmp_path / "tex"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), (50 * i, 90, 200 - 40 * i), np.uint8)).save(folder / f"t{i}.png")
    out = tmp_path / "d"
    args = ["--texture-folder", str(folder), "--max-steps", "1"]
    assert gen(out, "--episodes", "1", *args) == 0
    m = shards.load_manifest(out)
    assert m["config"]["texture_folder_sha256"] == folder_digest(folder)
    assert m["config"]["texture_held_out_fraction"] == 0.1

    # A moved but unchanged folder resumes; an edited image is refused with a clear error.
    moved = tmp_path / "moved"
    folder.rename(moved)
    assert gen(out, "--episodes", "2", "--resume", "--texture-folder", str(moved), "--max-steps", "1") == 0
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(moved / "t2.png")
    capsys.readouterr()
    assert gen(out, "--episodes", "3", "--resume", "--texture-folder", str(moved), "--max-steps", "1") == 2
    err = capsys.readouterr().err
    assert "does not hold the images" in err and m["config"]["texture_folder_sha256"] in err
    assert shards.load_manifest(out)["counts"]["episodes"] == 2  # nothing was generated with the new images

