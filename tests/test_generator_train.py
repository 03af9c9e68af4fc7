"""train-generator: exact resume, run directory contents, checkpoint errors, CLI on real shards."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from rcan_common.config import ConfigError
from rcan_perception import checkpoint as ckpt
from rcan_perception.data import DataError, batch_indices, synthetic_frames
from rcan_perception.model import GeneratorConfig
from rcan_perception.train import TrainConfig, Trainer, main
from tiny_models import write_dataset

TINY = GeneratorConfig(channels=(8, 12, 16, 16))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def cfg(tmp_path, name, steps, **kw):
    base = dict(data=tmp_path / "unused", runs_dir=tmp_path / "runs", name=name, steps=steps, batch_size=4,
                generator=TINY, deterministic=True, threads=1, progress=False, log_every=1,
                sample_every=0, eval_every=0, checkpoint_every=0)
    base.update(kw)
    return TrainConfig(**base)


def train(c, test=None):
    t = Trainer(c, synthetic_frames(16, 32, seed=0), synthetic_frames(4, 32, seed=1), test=test)
    t.run()
    return t


def test_resume_is_exact(tmp_path):
    full = train(cfg(tmp_path, "full", 6, augment=True))
    train(cfg(tmp_path, "split", 3, augment=True))
    resumed = train(cfg(tmp_path, "split", 6, resume=True, augment=True))
    assert resumed.step == 6
    for (k, a), b in zip(full.G.state_dict().items(), resumed.G.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(full.D.state_dict().values(), resumed.D.state_dict().values()):
        assert torch.equal(a, b)
    # one continuous metrics.csv: header once, rows for steps 1..6
    rows = (tmp_path / "runs/split/metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(1, 7)]


def test_sigterm_stops_with_a_checkpoint_that_resumes_exactly(tmp_path, monkeypatch):
    from rcan_perception import train as train_module

    full = train(cfg(tmp_path, "full", 4))
    stopping = Trainer(cfg(tmp_path, "term", 4, eval_every=1), synthetic_frames(16, 32, seed=0),
                       synthetic_frames(4, 32, seed=1))
    step = stopping.train_step

    def step_then_signal(batch):  # the signal arrives during step 2
        losses = step(batch)
        if stopping.step == 1:
            train_module._stop(15, None)
        return losses

    monkeypatch.setattr(stopping, "train_step", step_then_signal)
    try:
        result = stopping.run()
    finally:
        train_module.STOP.clear()
    assert result == {"step": 2, "stopped_by_signal": True}
    run = tmp_path / "runs/term"
    assert [p.name for p in ckpt.list_checkpoints(run / "checkpoints")] == ["step-000002.json"]
    info = json.loads((run / "train_info.json").read_text())
    assert info["stopped_by_signal"] and not info["stopped_early_by_max_minutes"] and info["steps"] == 2
    assert len(json.loads((run / "eval.json").read_text())) == 1  # step 1's; no final evaluation
    resumed = train(cfg(tmp_path, "term", 4, eval_every=1, resume=True))
    for (k, a), b in zip(full.G.state_dict().items(), resumed.G.state_dict().values()):
        assert torch.equal(a, b), k


def test_run_directory_contents(tmp_path):
    t = train(cfg(tmp_path, "r", 2, sample_every=1, eval_every=1, checkpoint_every=1, keep_checkpoints=1),
              test=synthetic_frames(3, 32, seed=9))
    run = tmp_path / "runs/r"
    for name in ("config.json", "contract.json", "metrics.csv", "metrics.json", "eval.json", "train_info.json"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-000001.png", "step-000002.png"]
    assert [p.name for p in ckpt.list_checkpoints(run / "checkpoints")] == ["step-000002.json"]  # pruned
    assert list((run / "tb").iterdir())
    m = json.loads((run / "metrics.json").read_text())
    for key in ("psnr_db", "ssim", "seg_miou", "seg_object_iou", "depth_rmse_m"):
        assert np.isfinite(m[key]), key
    assert m["step"] == 2 and m["frames"] == 4 and m["test_split"]["frames"] == 3
    assert len(json.loads((run / "eval.json").read_text())) == 2
    from PIL import Image

    grid = Image.open(run / "samples/step-000002.png")
    assert grid.size == (7 * 32, 4 * 32)
    assert t.contract.input_height == 32


def test_existing_run_needs_resume_and_same_config(tmp_path):
    train(cfg(tmp_path, "r", 1))
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg(tmp_path, "r", 2))
    with pytest.raises(ConfigError, match="lr_g"):
        train(cfg(tmp_path, "r", 2, resume=True, lr_g=1e-3))
    # the end-of-run test split learns nothing: resumed at the last step, a finished run adds it
    done = Trainer(cfg(tmp_path, "r", 1, resume=True, test_data=tmp_path / "unused"), synthetic_frames(16, 32),
                   synthetic_frames(4, 32), test=synthetic_frames(3, 32, seed=9))
    assert done.step == 1 and "test_split" in done.run()


def test_resume_accepts_fields_added_later_at_their_default(tmp_path):
    train(cfg(tmp_path, "old", 1))
    path = tmp_path / "runs/old/config.json"
    saved = json.loads(path.read_text())
    del saved["augment"]  # as written by a version of TrainConfig without this field
    path.write_text(json.dumps(saved))
    assert train(cfg(tmp_path, "old", 2, resume=True)).step == 2
    with pytest.raises(ConfigError, match="augment"):
        path.write_text(json.dumps(saved))
        train(cfg(tmp_path, "old", 3, resume=True, augment=True))


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        ckpt.read_checkpoint(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.read_checkpoint(tmp_path / "step-000001.json")
    train(cfg(tmp_path, "r", 1))
    cdir = tmp_path / "runs/r/checkpoints"
    blob = cdir / "step-000001.safetensors"
    data = bytearray(blob.read_bytes())
    data[-5] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.read_checkpoint(cdir)
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        train(cfg(tmp_path, "r", 2, resume=True))
    blob.unlink()
    with pytest.raises(ckpt.CheckpointError, match="missing"):
        ckpt.read_checkpoint(cdir)
    (cdir / "step-000001.json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="bad JSON"):
        ckpt.read_checkpoint(cdir / "step-000001.json")


def test_init_from_copies_weights_not_optimizer(tmp_path):
    src = train(cfg(tmp_path, "src", 2))
    t = Trainer(cfg(tmp_path, "ft", 1, init_from=tmp_path / "runs/src"), synthetic_frames(16, 32), synthetic_frames(4, 32))
    assert all(torch.equal(a, b) for a, b in zip(src.G.state_dict().values(), t.G.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(src.D.state_dict().values(), t.D.state_dict().values()))
    assert not t.opt_g.state and t.init_info["step"] == 2
    t.run()
    assert json.loads((tmp_path / "runs/ft/train_info.json").read_text())["init_from"]["step"] == 2
    with pytest.raises(ckpt.CheckpointError):
        Trainer(cfg(tmp_path, "ft2", 1, init_from=tmp_path / "nothing"), synthetic_frames(16, 32), synthetic_frames(4, 32))


def test_init_from_an_exported_generator_starts_g_only(tmp_path):
    from rcan_perception.model import Generator, save_generator

    exported = Generator(TINY)
    save_generator(exported, tmp_path / "g.safetensors")
    t = Trainer(cfg(tmp_path, "ft", 1, init_from=tmp_path / "g.safetensors"), synthetic_frames(16, 32),
                synthetic_frames(4, 32))
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), t.G.state_dict().values()))
    assert t.init_info == {"generator": str(tmp_path / "g.safetensors"), "discriminator_restored": False}
    other = dataclasses.replace(TINY, channels=tuple(2 * c for c in TINY.channels))
    save_generator(Generator(other), tmp_path / "wide.safetensors")
    with pytest.raises(ckpt.CheckpointError, match="shape"):
        Trainer(cfg(tmp_path, "ft2", 1, init_from=tmp_path / "wide.safetensors"), synthetic_frames(16, 32),
                synthetic_frames(4, 32))


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(ckpt.CheckpointError):
        train(cfg(tmp_path, "fresh", 2, resume=True))


def test_batch_order_is_a_function_of_step():
    a = [batch_indices(10, 3, s, seed=5) for s in range(7)]
    assert all(torch.equal(x, y) for x, y in zip(a, [batch_indices(10, 3, s, seed=5) for s in range(7)]))
    assert len(set(torch.cat(a[:3]).tolist())) == 9  # no repeats inside an epoch
    with pytest.raises(DataError, match="batch_size"):
        batch_indices(2, 3, 0, 0)




def test_cli_trains_from_shards(tmp_path, capsys):
    write_dataset(tmp_path / "data", synthetic_frames(24, 32, seed=3))
    argv = ["--data", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"), "--name", "cli",
            "--steps", "2", "--batch-size", "4", "--generator.channels", "8", "12", "16", "16",
            "--threads", "1", "--no-progress", "--val-fraction", "0.2"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["step"] == 2 and out["frames"] == 4  # round(0.2 * 6 episodes) = 1 episode of 4 frames held out
    assert "rcan train-generator --data" in (tmp_path / "runs/cli/command.txt").read_text()
    used = json.loads((tmp_path / "runs/cli/train_info.json").read_text())["datasets"]
    assert [(d["role"], d["frames"], d["episodes"]) for d in used] == [("train", 24, 6)]  # as read, before the split
    assert used[0]["config"]["image_size"] == 32
    assert main(["--data", str(tmp_path / "missing"), "--runs-dir", str(tmp_path / "runs")]) == 2


def test_cpu_bf16_trains_in_bfloat16_keeps_float32_weights_and_may_switch_on_resume(tmp_path):
    def first_losses(name):
        rows = (tmp_path / "runs" / name / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        return dict(zip(header, map(float, rows[1].split(","))))

    fp32 = train(cfg(tmp_path, "fp32", 2))
    bf16 = train(cfg(tmp_path, "bf16", 2, cpu_bf16=True))
    assert bf16.amp and not fp32.amp
    assert all(p.dtype == torch.float32 for p in [*bf16.G.parameters(), *bf16.D.parameters()])
    a, b = first_losses("fp32")["loss_g"], first_losses("bf16")["loss_g"]
    assert a != b and abs(a - b) < 0.05 * abs(a)  # the same step in coarser arithmetic
    resumed = train(cfg(tmp_path, "bf16", 4, cpu_bf16=False, resume=True))
    assert resumed.step == 4 and not resumed.amp
