"""Freshly initialised (untrained) generator and policy ONNX models, exported with the
project's own export code.  They exercise the whole graph (shapes, contracts, metadata,
timing) without training: the integration tests and the benchmark use them, and the
demo falls back to them, loudly, when the shipped models are missing.
"""
from __future__ import annotations

from pathlib import Path


def make_untrained_generator(path: str | Path, image_size: int = 64, seed: int = 0) -> Path:
    """A small random-weight generator G at `path` plus its contract JSON beside it."""
    import torch

    from rcan_perception.contract import GeneratorContract, contract_path
    from rcan_perception.export import export_onnx
    from rcan_perception.model import Generator, GeneratorConfig

    path = Path(path)
    torch.manual_seed(seed)
    contract = GeneratorContract(input_height=image_size, input_width=image_size)
    generator = Generator(GeneratorConfig(channels=(8, 16, 16, 16)))
    export_onnx(generator, contract, path)
    contract.save(contract_path(path))
    return path


def make_untrained_policy(path: str | Path, image_size: int = 64, seed: int = 0) -> Path:
    """A small random-weight RCAN Q-network (6 input channels) exported to ONNX at `path`."""
    import torch

    from rcan_grasp_policy.export import export_onnx
    from rcan_grasp_policy.qnet import QNetConfig, QNetwork

    path = Path(path)
    torch.manual_seed(seed)
    net = QNetwork(QNetConfig(in_channels=6, image_size=image_size, width=8, fc_width=16))
    export_onnx(net, {"variant": "rcan", "untrained": True, "seed": seed}, path)
    return path


def ensure_untrained_models(folder: str | Path, image_size: int = 64) -> tuple[Path, Path]:
    """(generator, policy) untrained models in `folder`, made once and reused."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generator = folder / f"untrained_generator_{image_size}.onnx"
    policy = folder / f"untrained_policy_{image_size}.onnx"
    if not generator.is_file():
        make_untrained_generator(generator, image_size)
    if not policy.is_file():
        make_untrained_policy(policy, image_size)
    return generator, policy
