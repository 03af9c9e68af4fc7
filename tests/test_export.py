"""Contract round trip + pre/post-processing, ONNX export parity, parity failure, export CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rcan_common.config import ConfigError
from rcan_perception.contract import GeneratorContract, contract_path, postprocess, preprocess
from rcan_perception.data import synthetic_frames
from rcan_perception.export import ParityError, check_parity, export_onnx, main
from rcan_perception.model import Generator, GeneratorConfig, load_generator
from rcan_perception.train import TrainConfig, Trainer

TINY = GeneratorConfig(channels=(8, 12, 16, 16))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_contract_round_trip(tmp_path):
    c = GeneratorContract.for_training(64, (0.25, 1.6))
    c.save(tmp_path / "c.json")
    assert GeneratorContract.load(tmp_path / "c.json") == c
    data = json.loads((tmp_path / "c.json").read_text())
    data["surprise"] = 1
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="surprise"):
        GeneratorContract.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="depth_max_m"):
        GeneratorContract(depth_min_m=1.0, depth_max_m=0.5)
    with pytest.raises(FileNotFoundError):
        GeneratorContract.load(tmp_path / "none.json")
    assert contract_path("models/g.onnx").name == "g.contract.json"


def test_preprocess_postprocess():
    c = GeneratorContract(input_height=16, input_width=16, depth_min_m=0.5, depth_max_m=1.5)
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = 255
    x = preprocess(c, img)
    assert x.shape == (1, 3, 16, 16) and x.dtype == np.float32
    assert np.allclose(x[0, 0], 1.0) and np.allclose(x[0, 1:], -1.0)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(c, img.astype(np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        preprocess(c, img[..., :2])
    logits = np.zeros((1, 5, 16, 16), np.float32)
    logits[:, 3, :8] = 1.0
    out = postprocess(c, {"canonical": x, "segmentation_logits": logits,
                          "depth": np.full((1, 1, 16, 16), 0.5, np.float32)}, output_size=(32, 32))
    assert out.canonical.shape == (1, 32, 32, 3) and (out.canonical[..., 0] == 255).all()
    assert (out.canonical[..., 1:] == 0).all()
    assert out.labels.dtype == np.uint8 and set(np.unique(out.labels)) == {0, 3}
    assert (out.colour[out.labels == 3] == c.class_colors[3]).all()
    assert np.allclose(out.depth_m, 1.0)
    with pytest.raises(ValueError, match="shapes"):
        postprocess(c, [x, logits[:, :4], np.zeros((1, 1, 16, 16), np.float32)])


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    g = Generator(TINY).eval()
    c = GeneratorContract(input_height=32, input_width=32)
    return g, c, export_onnx(g, c, tmp / "g.onnx")


def test_onnx_parity_dynamic_batch_and_size(tiny_onnx):
    import onnx
    import onnxruntime as ort

    g, c, path = tiny_onnx
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    imgs = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    res = check_parity(g, path, c, imgs, tol=1e-4)
    assert res["max_abs_err"] <= 1e-4 and res["frames"] == 3
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 40, 56)).astype(np.float32)  # size the model never saw
    with torch.no_grad():
        ref = g(torch.from_numpy(x))
    for r, o in zip(ref, sess.run(None, {"image": x})):
        assert o.shape == tuple(r.shape) and np.abs(r.numpy() - o).max() < 1e-4


def test_parity_failure_is_an_error(tiny_onnx):
    g, c, path = tiny_onnx
    other = Generator(TINY).eval()
    with torch.no_grad():
        other.load_state_dict(g.state_dict())
        other.depth_head.bias += 1e-3  # a drift well above the tolerance
    imgs = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.raises(ParityError, match="exceeds"):
        check_parity(other, path, c, imgs, tol=1e-4)
    renamed = GeneratorContract(input_height=32, input_width=32, input_name="x")
    with pytest.raises(ParityError, match="names"):
        check_parity(g, path, renamed, imgs, tol=1e-4)


def test_export_with_data_writes_deployed_sample_grid(tmp_path):
    from PIL import Image

    from tiny_models import write_dataset

    write_dataset(tmp_path / "val", synthetic_frames(8, 32, seed=4))
    cfg = TrainConfig(data=tmp_path / "gone", eval_data=tmp_path / "val", runs_dir=tmp_path / "runs", name="r",
                      steps=1, batch_size=4, generator=TINY, threads=1, progress=False, sample_every=0, eval_every=0)
    Trainer(cfg, synthetic_frames(8, 32), synthetic_frames(4, 32, seed=1)).run()
    out = tmp_path / "m/g.onnx"
    assert main([str(tmp_path / "runs/r"), "--out", str(out), "--parity-frames", "3",
                 "--samples", str(tmp_path / "grid.png")]) == 0
    card = json.loads((tmp_path / "m/g.card.json").read_text())
    assert card["parity"]["frames"] == 3 and "held-out frames" in card["parity"]["source"]
    assert Image.open(tmp_path / "grid.png").size == (7 * 32, 3 * 32)


def test_export_cli_writes_model_contract_card(tmp_path, monkeypatch, capsys):
    cfg = TrainConfig(data=tmp_path / "gone", runs_dir=tmp_path / "runs", name="r", steps=1, batch_size=4,
                      generator=TINY, threads=1, progress=False, sample_every=0, eval_every=0)
    Trainer(cfg, synthetic_frames(8, 32), synthetic_frames(4, 32, seed=1)).run()
    out = tmp_path / "models/gen.onnx"
    assert main([str(tmp_path / "runs/r"), "--out", str(out), "--parity-frames", "2"]) == 0
    for suffix in (".onnx", ".contract.json", ".safetensors", ".json", ".card.json", ".md"):
        assert (tmp_path / f"models/gen{suffix}").is_file(), suffix
    card = json.loads((tmp_path / "models/gen.card.json").read_text())
    assert card["parity"]["max_abs_err"] <= 1e-4 and "random" in card["parity"]["source"]
    assert card["held_out_metrics"]["frames"] == 4 and card["checkpoint_step"] == 1
    assert card["commands"]["export"].startswith("rcan export-generator")
    assert GeneratorContract.load(tmp_path / "models/gen.contract.json").input_height == 32
    assert load_generator(tmp_path / "models/gen.safetensors").cfg == TINY

    # a parity failure exits non-zero and leaves nothing at the target
    import rcan_perception.export as E

    def broken(*a, **k):
        raise ParityError("injected mismatch")

    monkeypatch.setattr(E, "check_parity", broken)
    bad = tmp_path / "models/bad.onnx"
    assert main([str(tmp_path / "runs/r"), "--out", str(bad)]) == 1
    assert not bad.exists() and "parity check failed" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing"), "--out", str(bad)]) == 2


def test_the_card_of_a_fine_tune_names_the_runs_it_started_from_and_their_commands(tmp_path):
    from rcan_perception.model import Generator, save_generator

    save_generator(Generator(TINY), tmp_path / "base.safetensors")

    def run(name, init_from):
        cfg = TrainConfig(data=tmp_path / "gone", runs_dir=tmp_path / "runs", name=name, steps=2, batch_size=4,
                          generator=TINY, threads=1, progress=False, sample_every=0, eval_every=0,
                          init_from=init_from)
        Trainer(cfg, synthetic_frames(8, 32), synthetic_frames(4, 32, seed=1), command=f"train {name}").run()

    run("first", tmp_path / "base.safetensors")
    run("second", tmp_path / "runs/first")
    run("third", tmp_path / "runs/second/checkpoints/step-000002.json")
    assert main([str(tmp_path / "runs/third"), "--out", str(tmp_path / "g.onnx"), "--parity-frames", "2"]) == 0
    card = json.loads((tmp_path / "g.card.json").read_text())
    assert card["init_chain"] == [
        {"generator": str(tmp_path / "base.safetensors")},
        {"run": str(tmp_path / "runs/first"), "step": 2, "wall_s": card["init_chain"][1]["wall_s"], "commands": ["train first"]},
        {"run": str(tmp_path / "runs/second"), "step": 2, "wall_s": card["init_chain"][2]["wall_s"], "commands": ["train second"]}]
    assert card["commands"]["train"] == ["train first", "train second", "train third"]
    markdown = (tmp_path / "g.md").read_text()
    assert "Started from" in markdown and f"run `{tmp_path / 'runs/second'}` at step 2" in markdown
