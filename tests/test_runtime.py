"""rcan_perception.runtime: provider fallback, warm-up, and start-up errors for bad model files."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from rcan_perception.runtime import ModelError, OrtModel, RuntimeConfig, provider_chain
from tiny_models import export_tiny_generator




def export_fixed_generator(path: Path, height: int, width: int) -> Path:
    """A generator exported with a FIXED input size (no dynamic axes)."""
    import torch

    from rcan_perception.model import Generator, GeneratorConfig

    g = Generator(GeneratorConfig(channels=(4, 4, 4))).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(g, (torch.zeros(1, 3, height, width),), str(path), input_names=["image"],
                          output_names=["canonical", "segmentation_logits", "depth"], dynamo=False)
    return path


GEN_INPUTS = {"image": (None, 3, 64, 64)}
GEN_OUTPUTS = ("canonical", "segmentation_logits", "depth")


@pytest.fixture(scope="module")
def tiny_gen(tmp_path_factory) -> Path:
    return export_tiny_generator(tmp_path_factory.mktemp("rt") / "g.onnx")


def test_cpu_runs_and_warms_up(tiny_gen):
    lines = []
    m = OrtModel(tiny_gen, RuntimeConfig(provider="cpu", intra_op_threads=1, inter_op_threads=1, warmup_runs=1),
                 expected_inputs=GEN_INPUTS, expected_outputs=GEN_OUTPUTS, log=lines.append)
    assert m.provider == "CPUExecutionProvider" and not m.on_gpu
    assert len(lines) == 1 and "runs on CPUExecutionProvider" in lines[0] and "requested" not in lines[0]
    out = m.run({"image": np.zeros((2, 3, 64, 64), np.float32)})
    assert out["canonical"].shape == (2, 3, 64, 64)
    assert out["segmentation_logits"].shape == (2, 5, 64, 64)
    assert out["depth"].shape == (2, 1, 64, 64)
    assert m.dummy_inputs()["image"].shape == (1, 3, 64, 64)


def test_io_binding_path_gives_the_same_outputs(tiny_gen):
    # The GPU path binds inputs/outputs; exercise the same calls with CPU buffers.
    m = OrtModel(tiny_gen, RuntimeConfig(warmup_runs=0))
    x = {"image": np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    plain = m.run(x)
    m._use_binding = True
    bound = m.run(x)
    for name in GEN_OUTPUTS:
        np.testing.assert_array_equal(bound[name], plain[name])


@pytest.mark.parametrize("requested", ["tensorrt", "cuda"])
def test_gpu_request_falls_back_to_cpu_with_one_line(tiny_gen, requested):
    lines = []
    m = OrtModel(tiny_gen, RuntimeConfig(provider=requested, warmup_runs=0), log=lines.append,
                 available_providers=["CPUExecutionProvider"])
    assert m.provider == "CPUExecutionProvider"
    assert len(lines) == 1
    assert f"requested {requested}" in lines[0] and "CUDAExecutionProvider not installed" in lines[0]


def test_listed_but_broken_gpu_provider_is_reported(tiny_gen):
    # Claim CUDA is installed: on this CPU-only build ONNX Runtime cannot start it and drops it.
    lines = []
    m = OrtModel(tiny_gen, RuntimeConfig(provider="cuda", warmup_runs=0), log=lines.append,
                 available_providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if m.on_gpu:
        pytest.skip("a working CUDA provider is installed here")
    assert "CUDAExecutionProvider failed to initialise" in lines[0]


def test_fp16_off_gpu_says_so_and_uses_fp32(tiny_gen):
    lines = []
    m = OrtModel(tiny_gen, RuntimeConfig(provider="cpu", fp16=True, warmup_runs=0), log=lines.append)
    assert len(lines) == 2 and "fp16 requested" in lines[1] and "fp32" in lines[1]
    assert m.run(m.dummy_inputs())["canonical"].dtype == np.float32


def test_provider_chain():
    assert provider_chain("tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert provider_chain("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == ["CPUExecutionProvider"]
    with pytest.raises(ModelError, match="unknown execution provider"):
        provider_chain("tpu", [])


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match=r"model file not found: .*nope\.onnx"):
        OrtModel(tmp_path / "nope.onnx")


def test_corrupt_file_names_the_file(tmp_path, tiny_gen):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(tiny_gen.read_bytes()[:200])
    with pytest.raises(ModelError, match=r"cannot load ONNX model .*corrupt\.onnx"):
        OrtModel(bad)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all \x00\xff" * 10)
    with pytest.raises(ModelError, match="garbage.onnx"):
        OrtModel(garbage)


def test_wrong_channels_names_file_and_mismatch(tmp_path):
    four = export_tiny_generator(tmp_path / "rgba.onnx", in_channels=4)
    with pytest.raises(ModelError, match=r"rgba\.onnx: input 'image' has channels = 4, expected 3"):
        OrtModel(four, expected_inputs=GEN_INPUTS)


def test_wrong_fixed_size_and_rank_and_names(tmp_path, tiny_gen):
    fixed = export_fixed_generator(tmp_path / "g96.onnx", 96, 96)
    with pytest.raises(ModelError, match=r"g96\.onnx: input 'image' has axis 2 = 96, expected 64"):
        OrtModel(fixed, expected_inputs=GEN_INPUTS)
    with pytest.raises(ModelError, match="has rank 4"):
        OrtModel(tiny_gen, expected_inputs={"image": (None, 3, 64)})
    with pytest.raises(ModelError, match=r"inputs \['image'\] do not match the expected \['images'\]"):
        OrtModel(tiny_gen, expected_inputs={"images": (None, 3, 64, 64)})
    with pytest.raises(ModelError, match=r"missing outputs \['q'\]"):
        OrtModel(tiny_gen, expected_outputs=["q"])


def test_bad_config_is_rejected():
    from rcan_common.config import ConfigError

    with pytest.raises(ConfigError, match="provider"):
        RuntimeConfig(provider="gpu")
    with pytest.raises(ConfigError, match="intra_op_threads"):
        RuntimeConfig(intra_op_threads=-1)


def test_session_options_follow_the_config():
    from rcan_perception.runtime import session_options

    opts = session_options(RuntimeConfig(intra_op_threads=2, inter_op_threads=3))
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 3)
    assert opts.execution_mode.name == "ORT_PARALLEL"  # more than one inter-op thread runs branches in parallel
    assert session_options(RuntimeConfig(inter_op_threads=1)).execution_mode.name == "ORT_SEQUENTIAL"
