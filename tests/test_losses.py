"""MPSE against its pairwise closed form, offset invariance; L2 and GAN terms."""
from __future__ import annotations

import math

import pytest
import torch

from rcan_perception.losses import (LossWeights, depth_l2, discriminator_loss, generator_gan_loss, mpse,
                                    segmentation_l2)
from rcan_common.config import ConfigError


def pairwise_mpse(pred, target):
    """DSN's definition: mean over all pairs (i, j) of ((p_i - p_j) - (t_i - t_j))^2, halved."""
    out = []
    for p, t in zip(pred.flatten(1).double(), target.flatten(1).double()):
        dp, dt = p[:, None] - p[None, :], t[:, None] - t[None, :]
        out.append(((dp - dt) ** 2).mean() / 2)
    return torch.stack(out).mean()


def test_mpse_matches_pairwise_closed_form():
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(3, 3, 5, 4, generator=g), torch.randn(3, 3, 5, 4, generator=g)
    assert math.isclose(float(mpse(p, t)), float(pairwise_mpse(p, t)), rel_tol=1e-5)
    d = (p - t).flatten(1)
    assert math.isclose(float(mpse(p, t)), float((d.pow(2).mean(1) - d.mean(1) ** 2).mean()), rel_tol=1e-6)


def test_mpse_constant_offset_is_free_but_structure_is_not():
    g = torch.Generator().manual_seed(1)
    t = torch.rand(2, 3, 8, 8, generator=g)
    assert float(mpse(t + 0.37, t)) < 1e-7
    per_image = t + torch.tensor([0.2, -0.5]).view(2, 1, 1, 1)
    assert float(mpse(per_image, t)) < 1e-7
    assert float(mpse(t * 1.5, t)) > 1e-3
    assert float(torch.nn.functional.mse_loss(t + 0.37, t)) > 0.1


def test_mpse_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        mpse(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


def test_segmentation_l2_on_softmax_vs_onehot():
    labels = torch.tensor([[[0, 1], [2, 1]]])
    perfect = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 50
    assert float(segmentation_l2(perfect, labels)) < 1e-12
    uniform = torch.zeros(1, 3, 2, 2)
    # softmax = 1/3 everywhere: per pixel (2/3)^2 + 2*(1/3)^2 = 2/3, over 3 channels -> 2/9
    assert math.isclose(float(segmentation_l2(uniform, labels)), 2 / 9, rel_tol=1e-6)


def test_segmentation_l2_on_scores_regresses_onehot_without_saturation():
    labels = torch.tensor([[[1]]])
    onehot = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
    assert float(segmentation_l2(onehot, labels, on="scores")) == 0.0
    wrong = torch.tensor([30.0, -30.0, 0.0]).view(1, 3, 1, 1).requires_grad_()
    segmentation_l2(wrong, labels, on="softmax").backward()
    assert float(wrong.grad.abs().max()) < 1e-6  # saturated softmax: the mistake is invisible to the gradient
    wrong.grad = None
    segmentation_l2(wrong, labels, on="scores").backward()
    assert float(wrong.grad[0, 1]) < -1  # raw scores: pushed up hard towards the true class
    with pytest.raises(ValueError, match="on must be"):
        segmentation_l2(wrong, labels, on="logits")


def test_depth_l2():
    assert math.isclose(float(depth_l2(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))), 1.0)


def test_gan_losses_sigmoid_cross_entropy_over_scales():
    zeros = [torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 1, 1)]
    assert math.isclose(float(generator_gan_loss(zeros)), math.log(2), rel_tol=1e-6)
    assert math.isclose(float(discriminator_loss(zeros, zeros)), 2 * math.log(2), rel_tol=1e-6)
    confident = [torch.full_like(z, 20.0) for z in zeros]
    assert float(discriminator_loss(confident, [-c for c in confident])) < 1e-6
    assert float(generator_gan_loss([-c for c in confident])) > 10


def test_loss_weights_default_one_and_validated():
    w = LossWeights()
    assert (w.image, w.segmentation, w.depth, w.gan) == (1.0, 1.0, 1.0, 1.0)
    with pytest.raises(ConfigError, match="depth"):
        LossWeights(depth=-1)
