"""Pre-processing contract of an exported policy (Q-network), saved beside its weights.

Like the generator's (:mod:`rcan_perception.contract`), the ONNX graph holds only the network;
what a caller must do around it is a :class:`PolicyContract`, written as ``<stem>.contract.json``
beside the ONNX file by ``rcan export-policy`` and embedded in the ONNX metadata (key
``rcan_policy_contract``).  :meth:`PolicyContract.prepare` is the one way to turn a camera
image (and G(x)) into the policy image; :func:`rcan_grasp_policy.inputs.images_to_nchw` applies
the scaling and layout inside every Q-function backend.

Policies exported before the contract existed carry only the ``rcan_policy`` metadata (variant
and network config); :meth:`PolicyContract.from_metadata` derives the same contract from it, so
they load unchanged.  ``rcan policy-contract models/x.onnx`` writes that derived contract as the
sidecar without touching the ONNX file.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np

from rcan_common.action import ACTION_NAMES, STATE_NAMES, ActionBounds
from rcan_common.config import ConfigError, from_dict, require, to_dict

FORMAT = "rcan-policy-contract-v1"
ONNX_CONTRACT_KEY = "rcan_policy_contract"
"""ONNX metadata key of the embedded contract JSON (the network metadata stays under ``rcan_policy``)."""

SIM_CAMERA_FOV_DEG = 40.0
"""Field of view of the sim camera the labels are rendered with (rcan_sim.world.WorldConfig; tested equal)."""

PolicyInputs = Literal["source+canonical", "canonical", "source"]
INPUT_CHANNELS = {"source+canonical": 6, "canonical": 3, "source": 3}


def inputs_for_variant(variant: str | None, in_channels: int) -> str:
    """The images a training variant was trained on: rcan -> [source, G(source)]; canonical -> the
    canonical image (G(source) on the robot); dr-* -> the raw source.  Unknown variant: by channels."""
    if variant is not None and variant.startswith("dr-"):
        return "source"
    if variant == "canonical":
        return "canonical"
    return "source+canonical" if in_channels == 6 else "canonical"


@dataclass(frozen=True)
class PolicyContract:
    """How to feed the exported Q-network: images, state and actions."""

    inputs: PolicyInputs = "source+canonical"
    """Images the network takes: [source, G(source)] (6 channels), or one of them (3 channels)."""
    image_size: int = 64
    """Square size S the network was trained at; images are resized to S x S."""
    crop: tuple[int, int, int, int] | None = None
    """(top, left, height, width) crop applied before resizing; None: the whole image."""
    center_crop: float = 1.0
    """Side of the centred square kept from every input image before resizing, as a fraction of the image
    side (1: the whole frame).  A centred crop of a pinhole image is a narrower view of the same camera: a
    policy trained on renders at field of view f (`train-labels --camera-fov-deg f`) of the sim camera
    (field of view F, 40 deg) has center_crop = tan(f/2) / tan(F/2), and in sim it is evaluated on renders
    at f directly (`view_fov_deg`).  On the robot the crop applies to G's output as well, while G ran on the
    whole frame: for a policy whose inputs include G(x) that is close to, not the same as, G of the crop it
    was trained on (perception does not crop yet).  The shipped policies use the whole frame (1)."""
    interpolation: Literal["area"] = "area"
    """Resize: cv2 INTER_AREA when shrinking (as a render at S would be), INTER_LINEAR when enlarging."""
    channel_order: Literal["RGB"] = "RGB"
    """Channel order of each 3-channel image."""
    scaling: Literal["uint8/255"] = "uint8/255"
    """Network input = uint8 / 255 in [0, 1] (images_to_nchw)."""
    layout: Literal["NCHW"] = "NCHW"
    """Layout of the graph's image input (prepare returns HWC uint8; the backends transpose)."""
    state_names: tuple[str, ...] = STATE_NAMES
    """State vector layout: gripper_open (1/0), gripper_height (m above the tray bottom)."""
    action_names: tuple[str, ...] = ACTION_NAMES
    """Action vector layout (rcan_common.action)."""
    bounds: ActionBounds = field(default_factory=ActionBounds)
    """Per-step action limits the policy was trained with."""
    format: str = FORMAT
    """Contract format tag."""

    def __post_init__(self) -> None:
        require(self.format == FORMAT, "format", f"expected {FORMAT!r}, got {self.format!r}")
        require(self.inputs in INPUT_CHANNELS, "inputs", f"must be one of {list(INPUT_CHANNELS)}, got {self.inputs!r}")
        require(self.image_size >= 1, "image_size", f"must be >= 1, got {self.image_size}")
        require(self.crop is None, "crop", "this contract version has no crop (None)")
        require(math.isfinite(self.center_crop) and 0.05 <= self.center_crop <= 1.0, "center_crop",
                f"must be in [0.05, 1], got {self.center_crop}")
        require(self.state_names == STATE_NAMES, "state_names", f"expected {STATE_NAMES}, got {self.state_names}")
        require(self.action_names == ACTION_NAMES, "action_names", f"expected {ACTION_NAMES}, got {self.action_names}")

    @property
    def channels(self) -> int:
        return INPUT_CHANNELS[self.inputs]

    def prepare(self, source: np.ndarray | None, canonical: np.ndarray | None) -> np.ndarray:
        """The policy image, uint8 (S, S, C), from uint8 RGB (H, W, 3) camera image and/or G(x)."""
        from rcan_grasp_policy.inputs import build_policy_images

        return build_policy_images(source, canonical, self.inputs, self.image_size, self.center_crop)

    def view_fov_deg(self) -> float:
        """Field of view (deg) of the sim render this policy sees: its crop of the camera, or 0 for the whole
        frame (the camera's own view, as CollectTask and train-labels --camera-fov-deg spell it)."""
        return fov_for_crop(self.center_crop) if self.center_crop < 1.0 else 0.0

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> "PolicyContract":
        """The contract of a policy whose metadata (``rcan_policy`` / the weights' JSON) has no contract."""
        if "contract" in meta:
            return from_dict(cls, dict(meta["contract"]))
        try:
            channels, size = int(meta["qnet"]["in_channels"]), int(meta["qnet"]["image_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"policy metadata has no usable 'qnet' config: {exc!r}") from exc
        variant = meta.get("variant")
        require(variant != "rcan" or channels == 6, "inputs",
                f"variant 'rcan' takes [source, G(source)] (6 channels), the network takes {channels}")
        fov = float((meta.get("train_config") or {}).get("camera_fov_deg") or 0.0)
        return cls(inputs=inputs_for_variant(variant, channels), image_size=size,
                   center_crop=crop_for_fov(fov) if fov else 1.0)

    def to_json(self) -> str:
        return json.dumps(to_dict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PolicyContract":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"policy contract is not valid JSON: {exc}") from exc
        return from_dict(cls, data)

    def save(self, path: str | Path) -> None:
        from rcan_common.io import atomic_write_json

        atomic_write_json(path, to_dict(self))

    @classmethod
    def load(cls, path: str | Path) -> "PolicyContract":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"policy contract not found: {path}")
        return cls.from_json(path.read_text())


def crop_for_fov(fov_deg: float) -> float:
    """center_crop that narrows the sim camera to `fov_deg` (the same pinhole camera, a centred crop)."""
    return math.tan(math.radians(fov_deg) / 2) / math.tan(math.radians(SIM_CAMERA_FOV_DEG) / 2)


def fov_for_crop(center_crop: float) -> float:
    """The sim camera's field of view (deg) narrowed by `center_crop` (inverse of crop_for_fov)."""
    return math.degrees(2 * math.atan(center_crop * math.tan(math.radians(SIM_CAMERA_FOV_DEG) / 2)))


def contract_path(model_path: str | Path) -> Path:
    """Where the contract of ``models/x.onnx`` (or ``x.safetensors``) lives: ``models/x.contract.json``."""
    p = Path(model_path)
    return p.with_name(p.stem + ".contract.json")


def write_sidecar(onnx_path: str | Path) -> Path:
    """Write ``<stem>.contract.json`` for an exported policy from its ONNX metadata (the embedded contract,
    or one derived from ``rcan_policy`` for older exports).  The ONNX file is only read."""
    from rcan_grasp_policy.backends import OrtQFunction

    qf = OrtQFunction(onnx_path)
    out = contract_path(onnx_path)
    qf.contract.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """`rcan policy-contract MODEL.onnx...`: write each policy's contract sidecar from its metadata."""
    args = sys.argv[1:] if argv is None else argv
    if not args or any(a.startswith("-") for a in args):
        print("usage: rcan policy-contract MODEL.onnx [MODEL.onnx ...]\n"
              "Writes <stem>.contract.json beside each exported policy from its ONNX metadata; "
              "the ONNX file is not changed.", file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    for a in args:
        print(f"wrote {write_sidecar(a)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
