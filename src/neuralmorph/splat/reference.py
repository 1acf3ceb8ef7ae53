"""The reference compositor: plain PyTorch, one tile at a time, autograd gives the gradients.

It is the ground truth the fast path is tested against, and the path used on devices the fast path does
not serve (CUDA). It states the compositing rule as directly as possible; see `composite` below.
"""

from __future__ import annotations

import torch

ALPHA_MAX = 0.99
"""Every alpha is clamped to at most this (3DGS): no single Gaussian makes a pixel fully opaque."""
ALPHA_MIN = 1.0 / 255.0
"""Contributions with alpha below this are skipped."""
T_MIN = 1e-4
"""Early termination: a Gaussian that would take the transmittance below this, and every one behind it,
contributes nothing."""
MAX_POWER_DROP = -4.5
"""-0.5 * 3^2: the exponent at the 3-sigma ellipse; beyond it a Gaussian does not reach a pixel."""


def depth_order(depths: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Indices of the visible Gaussians, nearest first; ties keep the input order (stable).

    depths: (N,) float camera z; visible: (N,) bool. Returns (M,) int64.
    """
    idx = torch.nonzero(visible, as_tuple=False).reshape(-1)
    _, o = torch.sort(depths.detach()[idx], stable=True)
    return idx[o]


def composite(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor, features: torch.Tensor,
              pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Front-to-back alpha compositing of K depth-sorted Gaussians over P pixels.

    means2d (K, 2), conics (K, 3) (a, b, c), opacities (K,), features (K, C): the Gaussians, nearest
    first; pixels (P, 2) pixel-centre coordinates (u, v). Returns the composited features (P, C) =
    sum_i f_i a_i T_i and the final transmittance (P,) = prod_i (1 - a_i), over the contributing Gaussians:

    - a_i = min(ALPHA_MAX, o_i exp(-d^T Sigma^-1 d / 2)), d = pixel - mean;
    - a Gaussian does not reach a pixel beyond its 3-sigma ellipse, nor when a_i < ALPHA_MIN;
    - T_i = prod_{j < i} (1 - a_j); a Gaussian with T_i (1 - a_i) < T_MIN stops the pixel: it and every
      Gaussian behind it contribute nothing. (T is non-increasing, so "T_i (1 - a_i) >= T_MIN" over the
      running product is exactly "not yet stopped".)
    """
    dx = pixels[None, :, 0] - means2d[:, None, 0]  # (K, P)
    dy = pixels[None, :, 1] - means2d[:, None, 1]
    a, b, c = conics[:, 0:1], conics[:, 1:2], conics[:, 2:3]
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    alpha = torch.clamp(opacities[:, None] * torch.exp(power), max=ALPHA_MAX)
    reach = (power >= MAX_POWER_DROP) & (alpha >= ALPHA_MIN)
    alpha = torch.where(reach, alpha, torch.zeros_like(alpha))
    running = torch.cumprod(1.0 - alpha, dim=0)  # T after each Gaussian, (K, P)
    alpha = torch.where(running >= T_MIN, alpha, torch.zeros_like(alpha))
    one_minus = 1.0 - alpha
    trans = torch.cumprod(one_minus, dim=0)
    before = torch.cat([torch.ones_like(trans[:1]), trans[:-1]], dim=0)  # T_i
    weights = alpha * before  # (K, P)
    return weights.transpose(0, 1) @ features, trans[-1]


def rasterize_reference(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor,
                        features: torch.Tensor, depths: torch.Tensor, boxes: torch.Tensor, visible: torch.Tensor,
                        width: int, height: int, tile_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite every tile_size x tile_size tile with the Gaussians whose 3-sigma box meets it.

    means2d (N, 2), conics (N, 3), opacities (N,), features (N, C), depths (N,): one float dtype;
    boxes (N, 4) int32 inclusive pixel ranges (x0, x1, y0, y1); visible (N,) bool (see `project`).
    Returns features (H, W, C) and the final transmittance (H, W). The tiles only limit the work: the
    result does not depend on tile_size.
    """
    device, dtype = means2d.device, means2d.dtype
    n_ch = features.shape[1]
    order = depth_order(depths, visible)
    bx = boxes[order].to(torch.int64)
    out = torch.zeros(height, width, n_ch, dtype=dtype, device=device)
    trans = torch.ones(height, width, dtype=dtype, device=device)
    rows, cols = [], []
    for ty0 in range(0, height, tile_size):
        for tx0 in range(0, width, tile_size):
            ty1, tx1 = min(ty0 + tile_size, height), min(tx0 + tile_size, width)
            hit = (bx[:, 0] < tx1) & (bx[:, 1] >= tx0) & (bx[:, 2] < ty1) & (bx[:, 3] >= ty0)
            ids = order[hit]
            if ids.numel() == 0:
                continue
            v, u = torch.meshgrid(torch.arange(ty0, ty1, device=device, dtype=dtype),
                                  torch.arange(tx0, tx1, device=device, dtype=dtype), indexing="ij")
            pix = torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)
            f, t = composite(means2d[ids], conics[ids], opacities[ids], features[ids], pix)
            rows.append((ty0, ty1, tx0, tx1))
            cols.append((f, t))
    if not rows:  # nothing on screen: zeros that still belong to the graph (zero gradients, like the fast path)
        anchor = sum(x.sum() for x in (means2d, conics, opacities, features) if x.requires_grad)
        if isinstance(anchor, torch.Tensor):
            zero = (0.0 * anchor).nan_to_num(0.0, 0.0, 0.0)
            out, trans = out + zero, trans + zero
        return out, trans
    # assemble without in-place writes into a tensor autograd tracks: scatter the tiles' flat results
    flat_idx, flat_f, flat_t = [], [], []
    for (ty0, ty1, tx0, tx1), (f, t) in zip(rows, cols):
        v, u = torch.meshgrid(torch.arange(ty0, ty1, device=device), torch.arange(tx0, tx1, device=device),
                              indexing="ij")
        flat_idx.append((v * width + u).reshape(-1))
        flat_f.append(f)
        flat_t.append(t)
    idx = torch.cat(flat_idx)
    out = out.reshape(-1, n_ch).index_put((idx,), torch.cat(flat_f)).reshape(height, width, n_ch)
    trans = trans.reshape(-1).index_put((idx,), torch.cat(flat_t)).reshape(height, width)
    return out, trans
