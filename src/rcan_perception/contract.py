"""Pre/post-processing contract of an exported generator.

The ONNX graph holds only the network (:class:`rcan_perception.model.Generator`); everything
around it is described by a :class:`GeneratorContract`, saved as JSON beside the ONNX file
(``<model>.contract.json``), and replayed by :func:`preprocess` / :func:`postprocess`.  The
trainer, the exporter's parity check and the perception node all go through these two
functions, so they cannot drift apart.

Graph I/O (names are contract fields):

* input ``image``: float32 NCHW, RGB, ``x = uint8 * input_scale + input_offset`` (default
  [-1, 1]); batch, height and width are dynamic axes, but the model was trained at
  ``input_height x input_width`` and :func:`preprocess` resizes to that.
* output ``canonical``: float32 (N,3,H,W) RGB in ``canonical_range`` (tanh, [-1, 1]).
* output ``segmentation_logits``: float32 (N,C,H,W) raw class scores; the argmax is
  NOT in the graph (postprocess does it, so a consumer may also use the scores).
* output ``depth``: float32 (N,1,H,W) normalised depth; metres =
  ``depth_min_m + out * (depth_max_m - depth_min_m)``, clipped to that range (postprocess).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, NamedTuple, Sequence

import numpy as np

from rcan_common.classes import CLASS_COLORS, CLASS_NAMES
from rcan_common.config import ConfigError, from_dict, require, to_dict

FORMAT = "rcan-generator-contract-v1"

_CLASS_COLORS = tuple(tuple(int(v) for v in c) for c in CLASS_COLORS)


@dataclass
class GeneratorContract:
    """How to feed the exported generator and decode its outputs."""

    input_height: int = 64
    """Height the network was trained at; camera images are resized to it."""
    input_width: int = 64
    """Width the network was trained at."""
    channel_order: Literal["RGB"] = "RGB"
    """Channel order of the input and canonical output (camera rgb8 is RGB; BGR must be converted)."""
    layout: Literal["NCHW"] = "NCHW"
    """Tensor layout of every graph input/output."""
    input_scale: float = 2.0 / 255.0
    """x = uint8 * input_scale + input_offset."""
    input_offset: float = -1.0
    """See input_scale; the defaults map [0, 255] to [-1, 1]."""
    resize_interpolation: Literal["area", "linear"] = "area"
    """cv2 interpolation used to resize camera images to the input size (area = anti-aliased downscaling)."""
    canonical_range: tuple[float, float] = (-1.0, 1.0)
    """Value range of the canonical output; mapped linearly to uint8 [0, 255]."""
    depth_min_m: float = 0.0
    """Metres at normalised depth 0."""
    depth_max_m: float = 2.0
    """Metres at normalised depth 1."""
    class_names: tuple[str, ...] = CLASS_NAMES
    """Segmentation class names, index = class id."""
    class_colors: tuple[tuple[int, int, int], ...] = _CLASS_COLORS
    """uint8 RGB colour per class id for the colourised segmentation."""
    input_name: str = "image"
    """ONNX input tensor name."""
    output_names: tuple[str, str, str] = ("canonical", "segmentation_logits", "depth")
    """ONNX output tensor names: canonical RGB, segmentation logits, normalised depth."""
    argmax_in_graph: bool = False
    """Whether the graph already applies argmax to the segmentation (it does not; postprocess does)."""
    format: str = FORMAT
    """Contract format tag."""

    def __post_init__(self) -> None:
        require(self.format == FORMAT, "format", f"expected {FORMAT!r}, got {self.format!r}")
        require(self.input_height >= 8 and self.input_width >= 8, "input_height",
                f"input size must be >= 8, got {self.input_height}x{self.input_width}")
        require(self.input_scale > 0, "input_scale", "must be > 0")
        lo, hi = self.canonical_range
        require(hi > lo, "canonical_range", f"need min < max, got {self.canonical_range}")
        require(self.depth_max_m > self.depth_min_m, "depth_max_m",
                f"must exceed depth_min_m ({self.depth_min_m}), got {self.depth_max_m}")
        require(len(self.class_names) >= 2, "class_names", "need at least 2 classes")
        require(len(self.class_colors) == len(self.class_names), "class_colors",
                f"need one colour per class ({len(self.class_names)}), got {len(self.class_colors)}")
        require(all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in self.class_colors), "class_colors",
                "each colour must be 3 values in 0..255")
        require(len(set(self.output_names)) == 3, "output_names", "need 3 distinct names")
        require(not self.argmax_in_graph, "argmax_in_graph", "this contract version decodes argmax outside the graph")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def for_training(cls, image_size: int, depth_range_m: tuple[float, float]) -> "GeneratorContract":
        return cls(input_height=image_size, input_width=image_size, depth_min_m=float(depth_range_m[0]),
                   depth_max_m=float(depth_range_m[1]), class_names=CLASS_NAMES, class_colors=_CLASS_COLORS)

    def save(self, path: str | Path) -> None:
        from rcan_common.io import atomic_write_json

        atomic_write_json(path, to_dict(self))

    @classmethod
    def load(cls, path: str | Path) -> "GeneratorContract":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"generator contract not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"generator contract {path} is not valid JSON: {exc}") from exc
        return from_dict(cls, data)


def contract_path(onnx_path: str | Path) -> Path:
    """Where the contract of ``models/x.onnx`` lives: ``models/x.contract.json``."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".contract.json")


class Decoded(NamedTuple):
    """Decoded generator outputs, all with a leading batch dimension N."""

    canonical: np.ndarray
    """(N,H,W,3) uint8 RGB."""
    labels: np.ndarray
    """(N,H,W) uint8 class ids."""
    colour: np.ndarray
    """(N,H,W,3) uint8 colourised segmentation."""
    depth_m: np.ndarray
    """(N,H,W) float32 metres."""


def preprocess(contract: GeneratorContract, rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB image(s) HxWx3 or NxHxWx3 -> float32 NCHW network input at the contract size."""
    import cv2

    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise ValueError(f"preprocess expects uint8 RGB, got dtype {rgb.dtype}")
    if rgb.ndim == 3:
        rgb = rgb[None]
    if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.shape[1] == 0 or rgb.shape[2] == 0:
        raise ValueError(f"preprocess expects HxWx3 or NxHxWx3 RGB, got shape {rgb.shape}")
    h, w = contract.input_height, contract.input_width
    if rgb.shape[1:3] != (h, w):
        interp = cv2.INTER_AREA if contract.resize_interpolation == "area" else cv2.INTER_LINEAR
        rgb = np.stack([cv2.resize(img, (w, h), interpolation=interp) for img in rgb])
    x = rgb.astype(np.float32) * np.float32(contract.input_scale) + np.float32(contract.input_offset)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def postprocess(contract: GeneratorContract, outputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
                output_size: tuple[int, int] | None = None) -> Decoded:
    """Network outputs (by name, or in ``output_names`` order) -> uint8 canonical, labels, colour seg, metres.

    ``output_size`` = (height, width) resizes the decoded images (labels and depth by nearest
    neighbour so no class or depth value is invented).
    """
    if isinstance(outputs, Mapping):
        missing = [n for n in contract.output_names if n not in outputs]
        if missing:
            raise ValueError(f"postprocess: outputs lack {missing}; have {sorted(outputs)}")
        rgb, logits, depth = (np.asarray(outputs[n]) for n in contract.output_names)
    else:
        if len(outputs) != 3:
            raise ValueError(f"postprocess expects 3 outputs {contract.output_names}, got {len(outputs)}")
        rgb, logits, depth = (np.asarray(o) for o in outputs)
    n = rgb.shape[0] if rgb.ndim == 4 else -1
    if (rgb.ndim != 4 or rgb.shape[1] != 3 or logits.shape != (n, contract.num_classes, *rgb.shape[2:])
            or depth.shape != (n, 1, *rgb.shape[2:])):
        raise ValueError(f"postprocess: unexpected output shapes canonical {rgb.shape}, "
                         f"segmentation {logits.shape}, depth {depth.shape}")
    lo, hi = contract.canonical_range
    canonical = np.clip((rgb - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    labels = logits.argmax(1).astype(np.uint8)
    span = contract.depth_max_m - contract.depth_min_m
    depth_m = (contract.depth_min_m + np.clip(depth[:, 0], 0.0, 1.0) * span).astype(np.float32)
    if output_size is not None and tuple(output_size) != canonical.shape[1:3]:
        import cv2

        oh, ow = output_size
        canonical = np.stack([cv2.resize(c, (ow, oh), interpolation=cv2.INTER_LINEAR) for c in canonical])
        labels = np.stack([cv2.resize(m, (ow, oh), interpolation=cv2.INTER_NEAREST) for m in labels])
        depth_m = np.stack([cv2.resize(d, (ow, oh), interpolation=cv2.INTER_NEAREST) for d in depth_m])
    palette = np.asarray(contract.class_colors, dtype=np.uint8)
    return Decoded(np.ascontiguousarray(canonical), labels, palette[labels], depth_m)


# ---- the same arithmetic on torch tensors, used by training so train and deploy agree exactly
def normalize_image(contract: GeneratorContract, u8_nchw):
    """uint8 NCHW torch tensor -> network input (same formula as :func:`preprocess`)."""
    return u8_nchw.float() * contract.input_scale + contract.input_offset


def normalize_depth(contract: GeneratorContract, depth_m):
    """Metres -> normalised depth target in [0, 1]."""
    span = contract.depth_max_m - contract.depth_min_m
    return ((depth_m - contract.depth_min_m) / span).clamp(0.0, 1.0)


def canonical_to_unit(contract: GeneratorContract, canonical):
    """Canonical output (torch) -> [0, 1] floats, for metrics and image grids."""
    lo, hi = contract.canonical_range
    return ((canonical - lo) / (hi - lo)).clamp(0.0, 1.0)
