"""Held-out metrics of the generator: PSNR / SSIM of canonical RGB, segmentation IoU, depth RMSE.

Images are compared in [0, 1] (uint8 / 255).  Segmentation IoU comes from a confusion matrix
accumulated over the whole evaluation set (not averaged per image); a class absent from
both prediction and target is left out of the mean.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1], shape (N,C,H,W) -> (N,)."""
    mse = (pred - target).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004; Gaussian 11x11, sigma 1.5, valid region) for [0, 1] images -> (N,)."""
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"ssim: need equal NCHW shapes, got {tuple(pred.shape)} and {tuple(target.shape)}")
    c = pred.shape[1]
    window = min(window, pred.shape[-1], pred.shape[-2])
    w = _gaussian_window(window, sigma, c, pred.device, pred.dtype)
    mu_x, mu_y = F.conv2d(pred, w, groups=c), F.conv2d(target, w, groups=c)
    sxx = F.conv2d(pred * pred, w, groups=c) - mu_x ** 2
    syy = F.conv2d(target * target, w, groups=c) - mu_y ** 2
    sxy = F.conv2d(pred * target, w, groups=c) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts, rows = target class, columns = predicted class."""
    idx = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_from_confusion(cm: torch.Tensor) -> list[float | None]:
    """IoU per class; None for a class that appears in neither prediction nor target."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return [None if u == 0 else float(t / u) for t, u in zip(tp, union)]


@dataclass
class EvalAccumulator:
    """Accumulates metrics batch by batch; :meth:`result` gives the dataset-level numbers."""

    num_classes: int
    object_class: int = 1
    class_names: tuple[str, ...] = ()
    _psnr: list[float] = field(default_factory=list)
    _ssim: list[float] = field(default_factory=list)
    _sq_depth: float = 0.0
    _n_depth: int = 0
    _cm: torch.Tensor | None = None

    def update(self, rgb_pred01: torch.Tensor, rgb_target01: torch.Tensor, labels_pred: torch.Tensor,
               labels_target: torch.Tensor, depth_pred_m: torch.Tensor, depth_target_m: torch.Tensor) -> None:
        self._psnr += psnr(rgb_pred01, rgb_target01).tolist()
        self._ssim += ssim(rgb_pred01, rgb_target01).tolist()
        cm = confusion_matrix(labels_pred.cpu(), labels_target.cpu(), self.num_classes)
        self._cm = cm if self._cm is None else self._cm + cm
        self._sq_depth += float((depth_pred_m - depth_target_m).double().pow(2).sum())
        self._n_depth += depth_target_m.numel()

    def result(self) -> dict:
        if self._cm is None:
            raise ValueError("no evaluation frames were accumulated")
        ious = iou_from_confusion(self._cm)
        present = [v for v in ious if v is not None]
        names = self.class_names or tuple(str(i) for i in range(self.num_classes))
        return {
            "frames": len(self._psnr),
            "psnr_db": sum(self._psnr) / len(self._psnr),
            "ssim": sum(self._ssim) / len(self._ssim),
            "seg_miou": sum(present) / len(present),
            "seg_object_iou": ious[self.object_class],
            "seg_iou_per_class": {n: v for n, v in zip(names, ious)},
            "depth_rmse_m": math.sqrt(self._sq_depth / max(self._n_depth, 1)),
        }
