"""Tiny models and datasets shared by several test files (imported, not collected: no test_ prefix)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np


def export_tiny_generator(path: Path, size: int = 64, in_channels: int = 3) -> Path:
    """An UNTRAINED generator with GEN's architecture and a contract JSON beside it."""
    import torch

    from rcan_perception.contract import GeneratorContract, contract_path
    from rcan_perception.model import Generator, GeneratorConfig

    torch.manual_seed(0)
    g = Generator(GeneratorConfig(channels=(4, 4, 4), in_channels=in_channels)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(g, (torch.zeros(1, in_channels, size, size),), str(path), input_names=["image"],
                          output_names=["canonical", "segmentation_logits", "depth"],
                          dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}}, dynamo=False)
    GeneratorContract(input_height=size, input_width=size).save(contract_path(path))
    return path


def export_tiny_qnet(path, in_channels=6, image_size=32, variant="rcan"):
    """The project's QNetwork (tiny widths), exported with the graph contract OrtQFunction expects."""
    import onnx
    import torch

    from rcan_grasp_policy.inputs import ONNX_METADATA_KEY
    from rcan_grasp_policy.qnet import QNetConfig, QNetwork

    torch.manual_seed(0)
    net = QNetwork(QNetConfig(in_channels=in_channels, image_size=image_size, width=4, fc_width=8)).eval()

    class Q(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, images, state, actions):
            return torch.sigmoid(self.net(images, state, actions))

    s = image_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Q(), (torch.zeros(1, in_channels, s, s), torch.zeros(1, 2), torch.zeros(1, 4, 8)), str(path),
                          input_names=["images", "state", "actions"], output_names=["q"], dynamo=False,
                          dynamic_axes={"images": {0: "b"}, "state": {0: "b"}, "actions": {0: "b", 1: "n"}})
    model = onnx.load(str(path))
    meta = model.metadata_props.add()
    meta.key, meta.value = ONNX_METADATA_KEY, json.dumps({"variant": variant, "qnet": net.cfg.to_dict()})
    onnx.save(model, str(path))
    return path


def write_dataset(root, frames, episodes_per_shard=2):
    """Write `frames` as a real rcan_sim sharded dataset (manifest + HDF5 shards)."""
    import torch

    from rcan_sim import shards

    root.mkdir(parents=True)
    size = frames.image_size[0]
    eps = frames.episode.unique().tolist()
    infos = []
    for si, start in enumerate(range(0, len(eps), episodes_per_shard)):
        group = eps[start:start + episodes_per_shard]
        with shards.ShardWriter(root, si, group[0], group[-1] + 1, size, "test") as w:
            for e in group:
                sel = torch.nonzero(frames.episode == e)[:, 0]
                n = len(sel)
                w.append_episode({
                    "randomized": frames.randomized[sel].permute(0, 2, 3, 1).numpy(),
                    "canonical": frames.canonical[sel].permute(0, 2, 3, 1).numpy(),
                    "segmentation": frames.segmentation[sel].numpy(), "depth": frames.depth[sel].numpy(),
                    "episode": np.full(n, e), "step": np.arange(n), "episode_seed": np.zeros(n),
                    "randomization_seed": np.zeros(n), "state": np.zeros((n, 2)), "action": np.zeros((n, 8)),
                    "reward": np.zeros(n), "terminal": np.arange(n) == n - 1})
            infos.append(w.commit().to_json())
    shards.write_manifest(root, {"format": shards.FORMAT, "format_version": shards.FORMAT_VERSION,
                                 "config": {"image_size": size}, "shards": infos})
