"""Reference tests for the generator metrics behind the README's figures (rcan_perception.metrics):
PSNR and SSIM against scikit-image on deterministic synthetic frames, IoU against counts done by hand."""
import math

import numpy as np
import pytest
import torch

from rcan_perception.metrics import EvalAccumulator, confusion_matrix, iou_from_confusion, psnr, ssim

skm = pytest.importorskip("skimage.metrics", reason="scikit-image is in the dev extras")


def _frames(h: int = 48, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (N, H, W, 3) frames in [0, 1]: a 'scene' (gradients, a box, a disc, texture) and
    degraded versions of it (noise, blur-like shift, colour cast, a missing object, a constant image)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    scene = np.stack([xx / (w - 1), yy / (h - 1), 0.5 + 0.25 * np.sin(xx / 3.0) * np.cos(yy / 5.0)], axis=-1)
    scene[h // 5:(3 * h) // 5, w // 8:(3 * w) // 8] = (0.9, 0.2, 0.1)
    disc = (yy - 0.6 * h) ** 2 + (xx - 0.7 * w) ** 2 < (0.2 * min(h, w)) ** 2
    scene[disc] = (0.1, 0.3, 0.95)
    rng = np.random.default_rng(0)
    noisy = np.clip(scene + rng.normal(0, 0.05, scene.shape), 0, 1)
    shifted = np.roll(scene, (1, 2), axis=(0, 1))
    cast = np.clip(scene * (1.1, 0.9, 1.0) + 0.03, 0, 1)
    no_disc = scene.copy()
    no_disc[disc] = scene[0, w - 1]
    flat = np.full_like(scene, 0.5)
    target = np.stack([scene] * 5)
    pred = np.stack([noisy, shifted, cast, no_disc, flat])
    return pred, target


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def test_psnr_matches_skimage():
    pred, target = _frames()
    got = psnr(_nchw(pred), _nchw(target)).numpy()
    want = [skm.peak_signal_noise_ratio(t, p, data_range=1.0) for p, t in zip(pred, target)]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert 10 < got.min() and got.max() < 60  # the frames span a useful range, none near the cap
    # The same numbers from uint8 frames scaled by 1/255, as the evaluation feeds them.
    p8, t8 = (np.round(pred * 255).astype(np.uint8), np.round(target * 255).astype(np.uint8))
    got8 = psnr(_nchw(p8).double() / 255, _nchw(t8).double() / 255).numpy()
    want8 = [skm.peak_signal_noise_ratio(t, p, data_range=255) for p, t in zip(p8, t8)]
    np.testing.assert_allclose(got8, want8, rtol=1e-9)


def test_psnr_is_capped_at_100_db_for_identical_images():
    pred, target = _frames()
    with np.errstate(divide="ignore"):
        assert skm.peak_signal_noise_ratio(target[0], target[0], data_range=1.0) == math.inf
    got = psnr(_nchw(target), _nchw(target))
    np.testing.assert_allclose(got.numpy(), 100.0, rtol=1e-12)
    # The cap is at MSE 1e-10; anything worse is the plain formula.
    tiny = target.copy()
    tiny[:, 0, 0, 0] += 1e-3  # MSE = 1e-6 / (48 * 64 * 3)
    mse = 1e-6 / (48 * 64 * 3)
    np.testing.assert_allclose(psnr(_nchw(tiny), _nchw(target)).numpy(), 10 * math.log10(1 / mse), rtol=1e-6)


@pytest.mark.parametrize("size", [(48, 64), (11, 11), (32, 32)])
def test_ssim_matches_skimage_gaussian_11x11_sigma_1_5(size):
    pred, target = _frames(*size)
    got = ssim(_nchw(pred), _nchw(target)).numpy()
    # Wang et al. 2004 settings: Gaussian window, sigma 1.5 (truncate 3.5 -> 11x11), population covariance,
    # K1 = 0.01, K2 = 0.03; skimage averages over the valid region and the channels, as metrics.ssim does.
    want = [skm.structural_similarity(t, p, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False) for p, t in zip(pred, target)]
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)
    assert -1 <= got.min() and got.max() < 0.999  # none of the degraded frames scores as identical


def test_ssim_of_identical_images_is_one_and_float32_agrees():
    pred, target = _frames()
    np.testing.assert_allclose(ssim(_nchw(target), _nchw(target)).numpy(), 1.0, rtol=1e-12)
    got32 = ssim(_nchw(pred).float(), _nchw(target).float()).numpy()
    np.testing.assert_allclose(got32, ssim(_nchw(pred), _nchw(target)).numpy(), atol=2e-4)
    with pytest.raises(ValueError, match="NCHW"):
        ssim(_nchw(pred)[:, :2], _nchw(target))


def test_iou_hand_computed():
    # 3 classes on a 4x4 map; class 2 never appears, in prediction or target.
    target = torch.tensor([[0, 0, 1, 1],
                           [0, 0, 1, 1],
                           [0, 0, 0, 0],
                           [0, 0, 0, 0]])
    pred = torch.tensor([[0, 1, 1, 1],
                         [0, 0, 1, 0],
                         [0, 0, 0, 0],
                         [1, 0, 0, 0]])
    cm = confusion_matrix(pred, target, 3)
    # rows = target: target 0 (12 px) -> predicted 0 in 10, 1 in 2; target 1 (4 px) -> 1 in 3, 0 in 1.
    np.testing.assert_array_equal(cm.numpy(), [[10, 2, 0], [1, 3, 0], [0, 0, 0]])
    ious = iou_from_confusion(cm)
    # class 0: TP 10, union 12 + 11 - 10 = 13; class 1: TP 3, union 4 + 5 - 3 = 6; class 2: absent.
    assert ious == [pytest.approx(10 / 13), pytest.approx(3 / 6), None]


def test_eval_accumulator_pools_iou_over_the_set_and_skips_absent_classes():
    n, h, w = 2, 48, 64
    pred01, target01 = _frames(h, w)
    rgb_p, rgb_t = _nchw(pred01[:n]), _nchw(target01[:n])
    lt = torch.zeros(n, h, w, dtype=torch.long)
    lp = torch.zeros(n, h, w, dtype=torch.long)
    lt[0, :10, :10] = 1          # frame 0: object of 100 px, predicted exactly
    lp[0, :10, :10] = 1
    lt[1, :2, :2] = 1            # frame 1: object of 4 px, predicted as 8 px covering it
    lp[1, :2, :4] = 1
    depth_t = torch.full((n, 1, h, w), 0.8)
    depth_p = depth_t.clone()
    depth_p[0, 0, 0, :6] += 0.1  # 6 px off by 0.1 m
    acc = EvalAccumulator(num_classes=3, object_class=1, class_names=("background", "object", "tray"))
    acc.update(rgb_p[:1], rgb_t[:1], lp[:1], lt[:1], depth_p[:1], depth_t[:1])
    acc.update(rgb_p[1:], rgb_t[1:], lp[1:], lt[1:], depth_p[1:], depth_t[1:])
    r = acc.result()
    assert r["frames"] == 2
    # Pooled: object TP 104, union 104 + 108 - 104 = 108 (a per-image mean would be (1 + 0.5) / 2 = 0.75).
    assert r["seg_object_iou"] == pytest.approx(104 / 108)
    bg_total = n * h * w - 104
    assert r["seg_iou_per_class"]["background"] == pytest.approx((bg_total - 4) / bg_total)
    assert r["seg_iou_per_class"]["tray"] is None  # absent from both: not in the mean
    assert r["seg_miou"] == pytest.approx((104 / 108 + (bg_total - 4) / bg_total) / 2)
    want_psnr = np.mean([skm.peak_signal_noise_ratio(t, p, data_range=1.0) for p, t in zip(pred01[:n], target01[:n])])
    assert r["psnr_db"] == pytest.approx(want_psnr, rel=1e-6)
    want_ssim = np.mean([skm.structural_similarity(t, p, data_range=1.0, channel_axis=-1, gaussian_weights=True,
                                                   sigma=1.5, use_sample_covariance=False)
                         for p, t in zip(pred01[:n], target01[:n])])
    assert r["ssim"] == pytest.approx(want_ssim, rel=1e-6)
    assert r["depth_rmse_m"] == pytest.approx(math.sqrt(6 * 0.1 ** 2 / (n * h * w)), rel=1e-5)
    with pytest.raises(ValueError, match="no evaluation frames"):
        EvalAccumulator(num_classes=3).result()
