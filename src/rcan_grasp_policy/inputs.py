"""What the Q-network sees for each training variant (paper 4.3 and 5.2).

    rcan        [x_source, G(x_source)]  6 channels; x_source rendered in the randomized domain
    canonical   x_canonical              3 channels; the canonical sim, no adaptation
    dr-mild     x_mild                   3 channels; domain-randomized baselines of Table 1
    dr-medium   x_medium
    dr-heavy    x_heavy

G is the exported RCAN generator run through ONNX Runtime with its contract
(`OnnxAdapter`).  For training only, `generator="oracle"` stands in the simulator's
paired canonical render of the same frozen state for G(x): the target G is trained to
produce.  An oracle-trained policy is not deployable on its own: it must be evaluated (and
should be fine-tuned) with the real G.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from rcan_common.action import with_yaw

# Key of the JSON (variant, network config) stored in an exported Q-network's ONNX metadata.
ONNX_METADATA_KEY = "rcan_policy"

VARIANTS = ("rcan", "canonical", "dr-mild", "dr-medium", "dr-heavy")
Variant = Literal["rcan", "canonical", "dr-mild", "dr-medium", "dr-heavy"]
ORACLE = "oracle"


def images_to_nchw(images: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, C) -> float32 (B, C, H, W) in [0, 1], the network input (every backend uses this)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (B, H, W, C), got {images.dtype} {images.shape}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def variant_channels(variant: str) -> int:
    _check(variant)
    return 6 if variant == "rcan" else 3


def training_domain(variant: str) -> str:
    """The sim domain a variant is trained in."""
    _check(variant)
    return {"rcan": "randomized", "canonical": "canonical"}.get(variant, variant.removeprefix("dr-"))


def _check(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown policy variant {variant!r}; expected one of {VARIANTS}")


def build_policy_images(source: np.ndarray, canonical: np.ndarray | None, inputs: str,
                        size: int | None = None, center_crop: float = 1.0) -> np.ndarray:
    """The Q-network image (S, S, C) uint8: [source, canonical] (inputs "source+canonical", C=6) or
    one of them ("source" or "canonical", C=3).  The one builder of the policy image, reached through
    rcan_grasp_policy.contract.PolicyContract.prepare: the sim's InputEncoder (training, evaluation,
    collection) and the robot's episode core both call that.

    With `size`, images of another size are resized to it (area interpolation when shrinking, as
    a render at that size would be; linear when enlarging); without, they are used as they are.
    `center_crop` < 1 first keeps the centred square of that fraction of each image's side (a narrower
    view of the same camera, as the policy was trained on).
    """
    def fit(img: np.ndarray) -> np.ndarray:
        if center_crop < 1.0:
            h, w = img.shape[:2]
            side = max(1, round(min(h, w) * center_crop))
            top, left = (h - side) // 2, (w - side) // 2
            img = img[top:top + side, left:left + side]
        if size is None or img.shape[:2] == (size, size):
            return img
        import cv2

        interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
        return cv2.resize(img, (size, size), interpolation=interp)

    if inputs == "source+canonical":
        return np.concatenate([fit(source), fit(canonical)], axis=2)
    return fit(canonical if inputs == "canonical" else source)


class Adapter(Protocol):
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB (B, H, W, 3) -> canonical-looking uint8 RGB (B, H, W, 3)."""


class OnnxAdapter:
    """G(x) through ONNX Runtime with the generator's saved pre/post-processing contract."""

    def __init__(self, path: str | Path, threads: int = 1):
        from rcan_perception.perception_core import CanonicalGenerator
        from rcan_perception.runtime import RuntimeConfig

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"generator ONNX not found: {self.path} (variant 'rcan' needs --generator)")
        self._g = CanonicalGenerator(self.path, RuntimeConfig(intra_op_threads=threads, warmup_runs=0))

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from rcan_perception.contract import postprocess, preprocess

        c = self._g.contract
        outputs = self._g.model.run({c.input_name: preprocess(c, rgb)})
        return postprocess(c, outputs, output_size=tuple(rgb.shape[1:3])).canonical


def through_size(image: np.ndarray, size: int) -> np.ndarray:
    """`image` (S, S, C) uint8 shrunk to `size` px and enlarged back to S by the policy image's own resize rule
    (area down, linear up, as the generator contract shrinks x and enlarges G(x)): the detail an image made at
    `size` px keeps (InputEncoder.view_through)."""
    small = build_policy_images(image, None, "source", size=size)
    return build_policy_images(small, None, "source", size=image.shape[0])


class InputEncoder:
    """Turns sim observations into the policy's uint8 (H, W, C) image for one variant.

    `view_through` (diagnostic, NOT in the paper; 0: off; variant canonical only): the canonical image passes
    through that many pixels first (`through_size`), which is what a perfect generator of that size would give
    a canonical policy (the shipped generator is 64 px; docs/policy.md, "How much the generator's size costs")."""

    def __init__(self, variant: str, generator: str | Path | None = None, threads: int = 1,
                 adapter: Adapter | None = None, view_through: int = 0):
        _check(variant)
        if view_through and variant != "canonical":
            raise ValueError(f"view_through is for a canonical policy's image, not variant {variant!r}")
        if view_through < 0:
            raise ValueError(f"view_through must be >= 0 (0: off), got {view_through}")
        self.variant, self.view_through = variant, view_through
        self.oracle = variant == "rcan" and str(generator) == ORACLE
        self.adapter = adapter
        if variant == "rcan" and not self.oracle and adapter is None:
            if generator is None:
                raise ValueError("variant 'rcan' needs a generator ONNX path (or 'oracle' for sim-only training)")
            self.adapter = OnnxAdapter(generator, threads=threads)

    @property
    def channels(self) -> int:
        return variant_channels(self.variant)

    def __call__(self, obs: dict[str, Any], env: Any = None) -> np.ndarray:
        """Policy image for `obs`; the oracle also needs the env (its paired canonical render)."""
        from rcan_grasp_policy.contract import PolicyContract

        x = obs["image"]
        # The sim renders at the policy's size, so the contract's resize is a no-op here.
        if self.variant != "rcan":
            image = PolicyContract(inputs="source", image_size=x.shape[0]).prepare(x, None)
            return through_size(image, self.view_through) if self.view_through else image
        if self.oracle:
            # obs["image"] already is the pair's source half: only the canonical half is rendered.
            canonical = x if env.cfg.domain == "canonical" else env.render_pair(source=False).canonical_rgb
        else:
            canonical = self.adapter(x[None])[0]
        return PolicyContract(inputs="source+canonical", image_size=x.shape[0]).prepare(x, canonical)


def state_vector(obs: dict[str, Any], yaw_state: bool = False) -> np.ndarray:
    """(gripper_open, gripper_height) as float32 (2,); with `yaw_state` (QNetConfig.yaw_state) the gripper yaw's
    two numbers follow (4,)."""
    state = np.array([obs["gripper_open"], obs["gripper_height"]], dtype=np.float32)
    return with_yaw(state, obs["gripper_yaw"]) if yaw_state else state
