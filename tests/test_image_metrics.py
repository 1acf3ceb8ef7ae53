"""PSNR and SSIM: closed forms, a hand-written SSIM, known properties, masks, numpy/torch, gradients."""

import math

import numpy as np
import pytest
import torch

from neuralmorph.errors import InputError
from neuralmorph.evaluation.image_metrics import K1, K2, psnr, ssim, ssim_map

C1, C2 = K1 ** 2, K2 ** 2


def _pair(shape=(32, 30, 3), noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    return a, np.clip(a + noise * rng.standard_normal(shape), 0.0, 1.0)


def _naive_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM written out window by window (Wang et al. 2004, Gaussian 11x11, sigma 1.5, valid positions)."""
    t = np.arange(11) - 5.0
    g = np.exp(-t ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    values = []
    for c in range(x.shape[2]):
        for i in range(x.shape[0] - 10):
            for j in range(x.shape[1] - 10):
                px, py = x[i:i + 11, j:j + 11, c], y[i:i + 11, j:j + 11, c]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cov = (w * (px - mx) * (py - my)).sum()
                values.append((2 * mx * my + C1) * (2 * cov + C2) / ((mx ** 2 + my ** 2 + C1) * (vx + vy + C2)))
    return float(np.mean(values))


def test_ssim_of_constant_images_is_the_closed_form():
    for a, b in [(0.2, 0.7), (0.5, 0.5), (0.0, 1.0), (0.9, 0.1)]:
        x, y = np.full((16, 17, 3), a), np.full((16, 17, 3), b)
        assert ssim(x, y) == pytest.approx((2 * a * b + C1) / (a * a + b * b + C1), abs=1e-12)


def test_ssim_matches_the_window_by_window_definition():
    x, y = _pair((14, 15, 2), noise=0.3, seed=3)
    assert ssim(x, y) == pytest.approx(_naive_ssim(x, y), abs=1e-12)


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    x, y = _pair((40, 37, 3))
    ref = metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                        data_range=1.0, channel_axis=2)
    assert ssim(x, y) == pytest.approx(ref, abs=1e-12)


def test_known_properties():
    x, y = _pair()
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert ssim(x, y) < 1.0 and ssim(x, y) == pytest.approx(ssim(y, x), abs=1e-15)  # symmetric
    assert ssim(x, np.clip(x + 0.2 * (y - x), 0, 1)) > ssim(x, y)  # less noise, more similar
    assert psnr(x, x) == math.inf
    t = np.full((8, 9, 3), 0.5)
    assert psnr(t + 0.1, t) == pytest.approx(20.0, abs=1e-12)  # MSE 0.01 -> 20 dB
    assert psnr(t + 0.01, t) == pytest.approx(40.0, abs=1e-10)


def test_masks_weight_only_the_pixels_they_keep():
    x = np.full((40, 40, 3), 0.5)
    y = x.copy()
    y[:, :15] = np.random.default_rng(0).random((40, 15, 3))  # damage only columns 0..14
    keep = np.zeros((40, 40))
    keep[:, 25:] = 1.0  # windows centred at column >= 25 reach back only to column 20
    assert ssim(x, y) < 0.9
    assert ssim(x, y, mask=keep) == pytest.approx(1.0, abs=1e-12)
    assert psnr(x, y, mask=keep) == math.inf
    np.testing.assert_allclose(ssim(x, y, mask=np.ones((40, 40, 1))), ssim(x, y), atol=1e-15)
    # the masked SSIM is the mask-weighted mean of the SSIM map at each window's centre pixel
    soft = np.random.default_rng(1).random((40, 40))
    s = ssim_map(torch.as_tensor(x), torch.as_tensor(y)).numpy()
    wts = soft[5:-5, 5:-5, None]
    assert ssim(x, y, mask=soft) == pytest.approx((s * wts).sum() / (wts.sum() * 3), abs=1e-12)
    half = np.zeros((40, 40))
    half[:, :15] = 1.0
    assert psnr(x, y, mask=half) == pytest.approx(10 * np.log10(1 / np.mean((x - y)[:, :15] ** 2)), abs=1e-12)
    assert math.isnan(psnr(x, y, mask=np.zeros((40, 40))))  # nothing compared


def test_torch_batches_dtypes_and_gradients():
    x, y = _pair((2, 20, 21, 3))
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    s, p = ssim(xt, yt), psnr(xt, yt)
    assert s.shape == (2,) and s.dtype == torch.float32 and p.shape == (2,)
    np.testing.assert_allclose(s.numpy(), [ssim(x[0], y[0]), ssim(x[1], y[1])], atol=1e-5)
    assert isinstance(ssim(x[0], y[0]), float)
    a = torch.tensor(x[0, :12, :13, :1], requires_grad=True)
    b = torch.tensor(y[0, :12, :13, :1])
    m = torch.rand(12, 13, dtype=torch.float64) + 0.1
    assert torch.autograd.gradcheck(lambda a: ssim(a, b, mask=m), (a,))
    assert torch.autograd.gradcheck(lambda a: psnr(a, b, mask=m), (a,))
    loss = 1 - ssim(a, b)
    loss.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_bad_inputs():
    x, y = _pair((12, 12, 3))
    with pytest.raises(InputError, match="must match"):
        ssim(x, y[:, :11])
    with pytest.raises(InputError, match="smaller than SSIM's 11x11"):
        ssim(x[:10], y[:10])
    with pytest.raises(InputError, match="mask must be"):
        psnr(x, y, mask=np.ones((12, 11)))
    with pytest.raises(InputError, match=r"\(\.\.\., H, W, C\)"):
        psnr(x[:, :, 0], y[:, :, 0])
