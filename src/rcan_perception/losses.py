"""RCAN losses (paper eq. 2-4).

* Image: MPSE, the scale-invariant MSE of DSN/PixelDA. Per image with k values (all
  pixels and channels), with d = prediction - target:
  ``MPSE = sum(d^2)/k - (sum(d))^2/k^2`` = MSE minus the squared mean difference, so a
  constant offset of the whole image costs nothing (the GAN term pins absolute colour).
* Segmentation: L2 between the predicted mask and the one-hot target mask.  The mask is
  softmax(scores) by default; ``on="scores"`` regresses the raw scores onto the one-hot mask
  instead (same L2, same optimum, but no softmax saturation: a confidently wrong pixel of a
  rare class still gets a full gradient, where softmax-L2's gradient vanishes).
* Depth: L2 between predicted and target (normalised) depth.
* GAN: sigmoid cross-entropy; D's patch logits of every scale are averaged into one loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rcan_common.config import require


@dataclass
class LossWeights:
    """Weights of the generator objective (paper: all 1)."""

    image: float = 1.0
    """lambda_x: MPSE between generated and canonical RGB."""
    segmentation: float = 1.0
    """lambda_m: L2 between softmax(segmentation logits) and the one-hot mask."""
    depth: float = 1.0
    """lambda_d: L2 on normalised depth."""
    gan: float = 1.0
    """Weight of the generator's sigmoid cross-entropy GAN term (0 disables D entirely)."""

    def __post_init__(self) -> None:
        for name in ("image", "segmentation", "depth", "gan"):
            require(getattr(self, name) >= 0, name, "loss weights must be >= 0")


def mpse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean pairwise squared error, averaged over the batch (per-image MSE minus squared mean difference)."""
    if pred.shape != target.shape:
        raise ValueError(f"mpse: shape mismatch {tuple(pred.shape)} vs {tuple(target.shape)}")
    d = (pred - target).flatten(1)
    return (d.pow(2).mean(1) - d.mean(1).pow(2)).mean()


def segmentation_l2(logits: torch.Tensor, labels: torch.Tensor, on: str = "softmax") -> torch.Tensor:
    """Mean squared error between the mask (softmax(logits), or the raw logits for on="scores") and one-hot(labels)."""
    if logits.ndim != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"segmentation_l2: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    if on not in ("softmax", "scores"):
        raise ValueError(f"segmentation_l2: on must be 'softmax' or 'scores', got {on!r}")
    onehot = F.one_hot(labels.long(), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    return F.mse_loss(logits.softmax(1) if on == "softmax" else logits, onehot)


def depth_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if pred.shape != target.shape:
        raise ValueError(f"depth_l2: shape mismatch {tuple(pred.shape)} vs {tuple(target.shape)}")
    return F.mse_loss(pred, target)


def _bce_all_scales(logits: list[torch.Tensor], real: bool) -> torch.Tensor:
    losses = [F.binary_cross_entropy_with_logits(z, torch.full_like(z, 1.0 if real else 0.0)) for z in logits]
    return torch.stack(losses).mean()


def discriminator_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """-[log D(x_c) + log(1 - D(G(x_s)))], averaged over patches and scales."""
    return _bce_all_scales(real_logits, True) + _bce_all_scales(fake_logits, False)


def generator_gan_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Non-saturating generator term -log D(G(x_s)), averaged over patches and scales."""
    return _bce_all_scales(fake_logits, True)
