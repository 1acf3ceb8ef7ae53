"""Image metrics: PSNR and SSIM, optionally over a mask; torch in, torch out (differentiable), numpy in,
numpy out.

Images are channels-last, as `neuralmorph.data.images.load_image` returns them and renderers produce
them: (H, W, C) or batched (..., H, W, C), values in [0, 1] (data range 1). A mask is (H, W), (H, W, 1) or
batched like the images, with weights in [0, 1] (0: the pixel does not count); it broadcasts over the
channels. Both metrics return one value per image: a 0-d result for one image, shape (...) for a batch.

- psnr = 10 log10(1 / MSE), the MSE averaged over pixels and channels (mask-weighted). Identical images
  give +inf; an all-zero mask gives NaN (nothing was compared).
- ssim is Wang et al. (2004) as everyone reports it: an 11 x 11 Gaussian window of sigma 1.5 (normalised
  to sum 1), K1 = 0.01, K2 = 0.03, data range 1, population (biased) local variances, the SSIM map
  computed where the window fits inside the image ("valid", no padding: (H - 10) x (W - 10) positions)
  and averaged over them and the channels. With a mask, the map is averaged with the mask's weights at
  each window's centre pixel (the window statistics themselves still see every pixel). This matches
  scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1)` averaged over channels. Images smaller than 11 pixels on a side are refused.

LPIPS is not provided: every LPIPS network needs a pretrained backbone (AlexNet, VGG or SqueezeNet) that
no package ships inside its wheel; see docs/images.md.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from neuralmorph.errors import InputError

WINDOW = 11
"""SSIM window size (pixels)."""
SIGMA = 1.5
"""SSIM Gaussian window's standard deviation (pixels)."""
K1, K2 = 0.01, 0.03
"""SSIM's stabilising constants; C1 = (K1 L)^2, C2 = (K2 L)^2 with data range L = 1."""
DATA_RANGE = 1.0


def _as_tensors(pred, target, mask):
    """Torch views of the inputs (numpy becomes float64 torch) and whether the result goes back to numpy."""
    is_numpy = not isinstance(pred, torch.Tensor)
    p = torch.as_tensor(np.asarray(pred, dtype=np.float64)) if is_numpy else pred
    t = target if isinstance(target, torch.Tensor) else torch.as_tensor(np.asarray(target, dtype=np.float64))
    t = t.to(device=p.device, dtype=p.dtype if p.is_floating_point() else torch.float64)
    if not p.is_floating_point():
        p = p.to(torch.float64)
    if p.shape != t.shape:
        raise InputError("target", f"has shape {tuple(t.shape)}, the prediction {tuple(p.shape)}; they must match")
    if p.ndim < 3:
        raise InputError("pred", f"images are (..., H, W, C); got shape {tuple(p.shape)}")
    m = None
    if mask is not None:
        m = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
        given = tuple(m.shape)
        m = m.to(device=p.device, dtype=p.dtype)
        if m.shape == p.shape[:-1]:
            m = m[..., None]
        if m.shape != p.shape[:-1] + (1,):
            raise InputError("mask", f"has shape {given}; images are {tuple(p.shape)}, so the mask must be "
                                     f"{tuple(p.shape[:-1])} or {tuple(p.shape[:-1]) + (1,)}")
    return p, t, m, is_numpy


def _out(value: torch.Tensor, is_numpy: bool):
    if not is_numpy:
        return value
    a = value.detach().cpu().numpy()
    return float(a) if a.ndim == 0 else a


def psnr(pred, target, mask=None):
    """Peak signal-to-noise ratio (dB) of `pred` against `target`, data range 1 (see the module).

    pred, target: (..., H, W, C) torch or numpy; mask: (..., H, W[, 1]) weights or None. Returns (...)
    (a 0-d tensor, or a float for numpy input).
    """
    p, t, m, is_numpy = _as_tensors(pred, target, mask)
    sq = (p - t) ** 2
    if m is None:
        mse = sq.mean(dim=(-3, -2, -1))
    else:
        weight = m.expand_as(sq)
        mse = (sq * weight).sum(dim=(-3, -2, -1)) / weight.sum(dim=(-3, -2, -1))
    return _out(10.0 * torch.log10(DATA_RANGE ** 2 / mse), is_numpy)


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA, dtype=torch.float64) -> torch.Tensor:
    """(size,) 1-d Gaussian weights centred on the middle tap, summing to 1 (the window is their outer product)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return (g / g.sum()).to(dtype)


def ssim_map(pred, target) -> torch.Tensor:
    """The SSIM map of torch images (..., H, W, C): (..., H - 10, W - 10, C), one value per window
    position and channel (the window's centre pixel is (i + 5, j + 5))."""
    p, t, _, _ = _as_tensors(pred, target, None)
    *batch, h, w, c = p.shape
    if h < WINDOW or w < WINDOW:
        raise InputError("pred", f"images of {h}x{w} pixels are smaller than SSIM's {WINDOW}x{WINDOW} window")
    g = gaussian_window(WINDOW, SIGMA, p.dtype).to(p.device)
    gx = g.reshape(1, 1, 1, WINDOW)
    gy = g.reshape(1, 1, WINDOW, 1)

    def blur(x):  # (B, 1, H, W) -> valid separable Gaussian filtering
        return F.conv2d(F.conv2d(x, gx), gy)

    def planes(x):  # (..., H, W, C) -> (B*C, 1, H, W)
        return x.reshape(-1, h, w, c).permute(0, 3, 1, 2).reshape(-1, 1, h, w)

    x, y = planes(p), planes(t)
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    hh, ww = h - WINDOW + 1, w - WINDOW + 1
    return s.reshape(-1, c, hh, ww).permute(0, 2, 3, 1).reshape(*batch, hh, ww, c)


def ssim(pred, target, mask=None):
    """Structural similarity of `pred` against `target` (see the module for the exact definition).

    pred, target: (..., H, W, C) torch or numpy, H and W at least 11; mask: (..., H, W[, 1]) weights or
    None. Returns (...) (a 0-d tensor, or a float for numpy input); 1 for identical images.
    """
    p, t, m, is_numpy = _as_tensors(pred, target, mask)
    s = ssim_map(p, t)
    if m is None:
        value = s.mean(dim=(-3, -2, -1))
    else:
        r = WINDOW // 2
        weight = m[..., r:m.shape[-3] - r, r:m.shape[-2] - r, :].expand_as(s)
        value = (s * weight).sum(dim=(-3, -2, -1)) / weight.sum(dim=(-3, -2, -1))
    return _out(value, is_numpy)
