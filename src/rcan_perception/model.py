"""RCAN generator G and multi-scale patch discriminator D (paper Appendix A).

Generator: a U-Net.
* Encoder: a 3x3 stride-1 stem at full resolution, then ``len(channels) - 1`` downsampling
  stages.  The first two stages are 3x3 stride-2 convolutions; every later stage is
  2x2 average pooling followed by a 3x3 stride-1 convolution.
* Decoder: per stage, bilinear upsampling to the skip's exact size, a 3x3 convolution,
  channel concatenation with the encoder skip, then a 1x1 convolution (the fusion).
* Every layer is conv -> InstanceNorm -> ReLU, except the three 1x1 output heads:
  canonical RGB (tanh, range [-1, 1]), segmentation logits (``num_classes``) and depth
  (linear; normalised depth, see :mod:`rcan_perception.contract` for the scale to metres).

Upsampling targets the skip tensor's shape rather than a fixed factor, so any image size
works (472 -> 236 -> 118 -> 59 -> 29 rounds down and the decoder follows the skips back),
and the ONNX graph keeps height and width dynamic.

Discriminator: per scale (full, 1/2, 1/4, by average pooling) one patch network of
3x3 convolutions with 32, 32, 64, 128 filters (the first two stride 2, the rest stride 1;
LeakyReLU; InstanceNorm after the first layer) and a 1x1 convolution to one logit per patch.
The paper gives only the filter counts; strides and activations here are ours.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rcan_common.config import from_dict, require, to_dict


@dataclass
class GeneratorConfig:
    """Architecture of the generator G (a U-Net with RGB, segmentation and depth heads)."""

    channels: tuple[int, ...] = (32, 64, 96, 128, 128)
    """Feature widths: the full-resolution stem, then one entry per downsampling stage (the first two stages are stride-2 convolutions, later ones average pooling + conv)."""
    in_channels: int = 3
    """Input image channels (RGB)."""
    num_classes: int = 5
    """Segmentation classes (background, object, tray, divider, arm)."""

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        require(len(self.channels) >= 3, "channels", "need a stem and at least the two stride-2 stages (>= 3 entries)")
        require(all(c > 0 for c in self.channels), "channels", f"widths must be positive, got {self.channels}")
        require(self.in_channels > 0, "in_channels", "must be positive")
        require(self.num_classes >= 2, "num_classes", "need at least 2 classes")

    @property
    def num_down(self) -> int:
        return len(self.channels) - 1

    def min_input_size(self) -> int:
        """Smallest input side for which the deepest feature map is at least 2x2 (InstanceNorm needs > 1 value)."""
        return 2 ** (self.num_down + 1)


@dataclass
class DiscriminatorConfig:
    """Multi-scale patch discriminator D (paper: 32, 32, 64, 128 filters of 3x3 at 3 scales)."""

    channels: tuple[int, ...] = (32, 32, 64, 128)
    """Filters of the 3x3 convolutions of each per-scale patch network."""
    num_scales: int = 3
    """Image scales judged: full, 1/2, 1/4, ... (each halving by average pooling)."""
    in_channels: int = 3
    """Channels of the judged image (canonical RGB)."""

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        require(len(self.channels) >= 1 and all(c > 0 for c in self.channels), "channels",
                f"need positive widths, got {self.channels}")
        require(self.num_scales >= 1, "num_scales", "must be >= 1")
        require(self.in_channels > 0, "in_channels", "must be positive")


def conv_in_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),  # IN cancels a bias
        nn.InstanceNorm2d(cout, affine=True),
        nn.ReLU(inplace=True),
    )


class DownStage(nn.Module):
    """One encoder stage: 3x3 stride-2 conv, or 2x2 average pool then 3x3 stride-1 conv."""

    def __init__(self, cin: int, cout: int, strided: bool):
        super().__init__()
        self.strided = strided
        self.pool = nn.Identity() if strided else nn.AvgPool2d(2)
        self.conv = conv_in_relu(cin, cout, 3, stride=2 if strided else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class UpStage(nn.Module):
    """One decoder stage: bilinear upsample to the skip's size, 3x3 conv, concat skip, 1x1 fuse."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.conv = conv_in_relu(cin, cout, 3)
        self.fuse = conv_in_relu(cout + cskip, cout, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False))
        # 1x1 conv of cat([x, skip]) == 1x1 conv of x + 1x1 conv of skip with the weight split by input
        # channel: the same function, without materialising the concatenated tensor (ONNX Runtime then
        # keeps both convs in its blocked layout and adds them, where a Concat cost a copy plus reorders).
        fuse_conv, norm, relu = self.fuse
        c = x.shape[1]
        y = F.conv2d(x, fuse_conv.weight[:, :c]) + F.conv2d(skip, fuse_conv.weight[:, c:])
        return relu(norm(y))


class Generator(nn.Module):
    """G(x) -> (canonical RGB in [-1, 1], segmentation logits, normalised depth), all NCHW."""

    def __init__(self, cfg: GeneratorConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or GeneratorConfig()
        ch = cfg.channels
        self.stem = conv_in_relu(cfg.in_channels, ch[0], 3)
        self.down = nn.ModuleList(DownStage(ch[i], ch[i + 1], strided=i < 2) for i in range(cfg.num_down))
        self.up = nn.ModuleList(UpStage(ch[i + 1], ch[i], ch[i]) for i in reversed(range(cfg.num_down)))
        self.rgb_head = nn.Conv2d(ch[0], 3, 1)
        self.seg_head = nn.Conv2d(ch[0], cfg.num_classes, 1)
        self.depth_head = nn.Conv2d(ch[0], 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        skips = [self.stem(x)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        h = skips.pop()
        for stage in self.up:
            h = stage(h, skips.pop())
        return torch.tanh(self.rgb_head(h)), self.seg_head(h), self.depth_head(h)


class PatchNet(nn.Module):
    """One scale of D: 3x3 convs (first two stride 2), then a 1x1 conv to one real/fake logit per patch.

    Only two strided layers so the 1/4 scale of a 64 px image still yields a 4x4 patch map.
    """

    def __init__(self, cin: int, channels: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        for i, c in enumerate(channels):
            layers.append(nn.Conv2d(cin, c, 3, stride=2 if i < 2 else 1, padding=1))
            if i > 0:
                layers.append(nn.InstanceNorm2d(c, affine=True))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            cin = c
        layers.append(nn.Conv2d(cin, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultiScaleDiscriminator(nn.Module):
    """D(x) -> list of patch-logit maps, one per scale (full, 1/2, 1/4, ...)."""

    def __init__(self, cfg: DiscriminatorConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DiscriminatorConfig()
        self.nets = nn.ModuleList(PatchNet(cfg.in_channels, cfg.channels) for _ in range(cfg.num_scales))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, net in enumerate(self.nets):
            if i:
                x = self.downsample(x)
            out.append(net(x))
        return out


# ---------------------------------------------------------------- weights on disk
@dataclass
class _SavedGenerator:
    """JSON sidecar of a saved generator: its architecture."""

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    format: str = "rcan-generator-v1"


def save_generator(model: Generator, path: str | Path) -> None:
    """Write weights to ``<path>`` (safetensors) and the config to ``<path>.json`` (both atomic)."""
    from safetensors.torch import save as st_save

    from rcan_common.io import atomic_write_bytes, atomic_write_json

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, st_save(state))
    atomic_write_json(config_path(path), to_dict(_SavedGenerator(model.cfg)))


def config_path(weights: str | Path) -> Path:
    """``x.safetensors`` -> ``x.json``, the sidecar naming the policy weights use too."""
    return Path(weights).with_suffix(".json")


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Load a generator written by :func:`save_generator`; missing or corrupt files raise ValueError/FileNotFoundError."""
    from safetensors.torch import load as st_load

    path = Path(path)
    cpath = config_path(path)
    for p in (path, cpath):
        if not p.is_file():
            raise FileNotFoundError(f"generator file missing: {p}")
    try:
        saved = from_dict(_SavedGenerator, json.loads(cpath.read_text()))
    except (json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"corrupt generator config {cpath}: {exc}") from exc
    try:
        state = st_load(path.read_bytes())
    except Exception as exc:  # safetensors raises its own error types for truncated/garbled files
        raise ValueError(f"corrupt generator weights {path}: {exc}") from exc
    model = Generator(saved.generator)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"generator weights {path} do not match config {cpath}: {exc}") from exc
    return model.to(device).eval()
