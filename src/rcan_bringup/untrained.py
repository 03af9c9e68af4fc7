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
    """A small random-weight RCAN Q-network (6 input channels) as ONNX at `path`, in the graph
    contract the policy node checks: images (B,6,S,S) in [0,1], state (B,2), actions (B,N,8)
    -> q (B,N), with the network config in the 'rcan_policy' metadata."""
    import json
    import warnings

    import onnx
    import torch

    from rcan_common.io import atomic_write_bytes
    from rcan_grasp_policy.backends import ONNX_METADATA_KEY
    from rcan_grasp_policy.qnet import QNetConfig, QNetwork

    path = Path(path)
    torch.manual_seed(seed)
    cfg = QNetConfig(in_channels=6, image_size=image_size, width=8, fc_width=16)
    net = QNetwork(cfg).eval()

    class Q(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, images, state, actions):
            return torch.sigmoid(self.net(images, state, actions))

    example = (torch.rand(1, 6, image_size, image_size), torch.rand(1, 2), torch.rand(1, 4, 8))
    tmp = path.with_name(f".{path.name}.export")
    with warnings.catch_warnings():
        # Tracing notes about the network's own shape checks; they hold for every traced input.
        warnings.simplefilter("ignore")
        torch.onnx.export(Q(), example, str(tmp), dynamo=False, opset_version=17,
                          input_names=["images", "state", "actions"], output_names=["q"],
                          dynamic_axes={"images": {0: "batch"}, "state": {0: "batch"},
                                        "actions": {0: "batch", 1: "candidates"},
                                        "q": {0: "batch", 1: "candidates"}})
    model = onnx.load(str(tmp))
    tmp.unlink()
    meta = model.metadata_props.add()
    meta.key = ONNX_METADATA_KEY
    meta.value = json.dumps({"qnet": cfg.to_dict(), "variant": "rcan", "untrained": True, "seed": seed})
    atomic_write_bytes(path, model.SerializeToString())
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
