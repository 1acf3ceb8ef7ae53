"""The fast compositor on the CPU: numba kernels over tiles, forward and a hand-written backward.

The same rule as `reference.composite` (read that first), computed per pixel in float64 whatever the input
dtype:

1. binning (`_bin`, serial): the visible Gaussians, nearest first (a stable depth sort), are listed for
   every tile their 3-sigma box meets; a counting sort by tile keeps each tile's list in depth order. The
   lists are packed: one row of (u, v, a, b, c, opacity, features...) per (tile, Gaussian) pair, so a
   tile's pixels stream through contiguous memory;
2. forward (`_forward`, parallel over tiles): each pixel walks its tile's list front to back, skipping
   Gaussians beyond their 3-sigma ellipse or with alpha < 1/255, and stops at the Gaussian that would take
   the transmittance below 1e-4. It keeps the final transmittance and how far down the list it went;
3. backward (`_backward`, parallel over tiles): each pixel walks the same list back to front from where
   it stopped, recovering every T_i from the final T (T_i = T_{i+1} / (1 - a_i); a_i <= 0.99, so the
   division is safe) and the colour still to come behind it, and writes the gradient of each pair into
   the pair's own row (one tile is one thread, so no two threads share a row); `_reduce` then sums the rows
   per Gaussian in pair order: the gradients are deterministic, whatever the thread count.

The first call compiles the kernels (about 5 s on the 2-core machine); `cache=True` keeps the machine code
in numba's cache, so later processes load it in about 0.4 s.
"""

from __future__ import annotations

import numpy as np
import torch

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a dependency; the torch path still works without it
    numba = None

from neuralmorph.splat.reference import ALPHA_MAX, ALPHA_MIN, MAX_POWER_DROP, T_MIN

AVAILABLE = numba is not None
"""Whether the fast path can run here (numba imports)."""
_P = 6
"""Leading columns of a packed pair row: u, v, a, b, c, opacity; the features follow."""


if AVAILABLE:

    @njit(cache=True)
    def _bin(boxes, order, tile, ntx, nty, params, features):
        """Pairs of (tile, Gaussian), grouped by tile, depth order kept; packed rows.

        boxes (N, 4) int32, order (M,) int64 visible ids nearest first, params (N, 6) float64,
        features (N, C) float64. Returns offsets (ntx * nty + 1,) int64, ids (P,) int64 and packed
        (P, 6 + C) float64.
        """
        ntiles = ntx * nty
        counts = np.zeros(ntiles + 1, dtype=np.int64)
        for i in range(order.shape[0]):
            g = order[i]
            tx0, tx1 = boxes[g, 0] // tile, boxes[g, 1] // tile
            ty0, ty1 = boxes[g, 2] // tile, boxes[g, 3] // tile
            for ty in range(ty0, ty1 + 1):
                for tx in range(tx0, tx1 + 1):
                    counts[ty * ntx + tx + 1] += 1
        offsets = np.cumsum(counts)
        cursor = offsets[:-1].copy()
        npairs = offsets[-1]
        ids = np.empty(npairs, dtype=np.int64)
        for i in range(order.shape[0]):
            g = order[i]
            tx0, tx1 = boxes[g, 0] // tile, boxes[g, 1] // tile
            ty0, ty1 = boxes[g, 2] // tile, boxes[g, 3] // tile
            for ty in range(ty0, ty1 + 1):
                for tx in range(tx0, tx1 + 1):
                    t = ty * ntx + tx
                    ids[cursor[t]] = g
                    cursor[t] += 1
        nch = features.shape[1]
        packed = np.empty((npairs, _P + nch), dtype=np.float64)
        for k in range(npairs):
            g = ids[k]
            for j in range(_P):
                packed[k, j] = params[g, j]
            for j in range(nch):
                packed[k, _P + j] = features[g, j]
        return offsets, ids, packed

    @njit(cache=True, parallel=True)
    def _forward(offsets, packed, tile, ntx, width, height, out, trans, last):
        """Composite every tile (see the module). Writes out (H, W, C), trans (H, W) float64 and last
        (H, W) int64: the number of list entries walked up to and including the last contributor."""
        nch = packed.shape[1] - _P
        ntiles = offsets.shape[0] - 1
        for t in prange(ntiles):
            s, e = offsets[t], offsets[t + 1]
            ty, tx = t // ntx, t % ntx
            x0, y0 = tx * tile, ty * tile
            x1, y1 = min(x0 + tile, width), min(y0 + tile, height)
            if s == e:
                continue
            acc = np.zeros(nch, dtype=np.float64)
            for py in range(y0, y1):
                for px in range(x0, x1):
                    acc[:] = 0.0
                    tr = 1.0
                    n = 0
                    for k in range(s, e):
                        dx = px - packed[k, 0]
                        dy = py - packed[k, 1]
                        power = -0.5 * (packed[k, 2] * dx * dx + packed[k, 4] * dy * dy) - packed[k, 3] * dx * dy
                        if power < MAX_POWER_DROP:
                            continue
                        alpha = packed[k, 5] * np.exp(power)
                        if alpha > ALPHA_MAX:
                            alpha = ALPHA_MAX
                        if alpha < ALPHA_MIN:
                            continue
                        nxt = tr * (1.0 - alpha)
                        if nxt < T_MIN:
                            break
                        w = alpha * tr
                        for c in range(nch):
                            acc[c] += packed[k, _P + c] * w
                        tr = nxt
                        n = k - s + 1
                    for c in range(nch):
                        out[py, px, c] = acc[c]
                    trans[py, px] = tr
                    last[py, px] = n

    @njit(cache=True, parallel=True)
    def _backward(offsets, packed, tile, ntx, width, height, trans, last, g_out, g_trans, g_pairs):
        """Per-pair gradients (see the module): g_pairs (P, 6 + C) float64 zeros in, rows filled with
        dL/d(u, v, a, b, c, opacity, features) of each pair's Gaussian over the pair's tile."""
        nch = packed.shape[1] - _P
        ntiles = offsets.shape[0] - 1
        for t in prange(ntiles):
            s, e = offsets[t], offsets[t + 1]
            if s == e:
                continue
            ty, tx = t // ntx, t % ntx
            x0, y0 = tx * tile, ty * tile
            x1, y1 = min(x0 + tile, width), min(y0 + tile, height)
            behind = np.zeros(nch, dtype=np.float64)
            gf = np.zeros(nch, dtype=np.float64)
            for py in range(y0, y1):
                for px in range(x0, x1):
                    n = last[py, px]
                    if n == 0:
                        continue
                    t_final = trans[py, px]
                    tr = t_final
                    gt = g_trans[py, px]
                    for c in range(nch):
                        gf[c] = g_out[py, px, c]
                        behind[c] = 0.0
                    for k in range(s + n - 1, s - 1, -1):
                        dx = px - packed[k, 0]
                        dy = py - packed[k, 1]
                        ca, cb, cc = packed[k, 2], packed[k, 3], packed[k, 4]
                        power = -0.5 * (ca * dx * dx + cc * dy * dy) - cb * dx * dy
                        if power < MAX_POWER_DROP:
                            continue
                        gauss = np.exp(power)
                        alpha = packed[k, 5] * gauss
                        clamped = alpha > ALPHA_MAX
                        if clamped:
                            alpha = ALPHA_MAX
                        if alpha < ALPHA_MIN:
                            continue
                        inv = 1.0 / (1.0 - alpha)
                        tr = tr * inv  # T_i, the transmittance in front of this Gaussian
                        w = alpha * tr
                        g_alpha = -gt * t_final * inv
                        for c in range(nch):
                            f = packed[k, _P + c]
                            g_pairs[k, _P + c] += gf[c] * w
                            g_alpha += gf[c] * (f * tr - behind[c] * inv)
                            behind[c] += f * w
                        if clamped:
                            continue
                        g_pairs[k, 5] += g_alpha * gauss
                        g_power = g_alpha * alpha
                        g_pairs[k, 0] += g_power * (ca * dx + cb * dy)
                        g_pairs[k, 1] += g_power * (cc * dy + cb * dx)
                        g_pairs[k, 2] += g_power * (-0.5 * dx * dx)
                        g_pairs[k, 3] += g_power * (-dx * dy)
                        g_pairs[k, 4] += g_power * (-0.5 * dy * dy)

    @njit(cache=True)
    def _reduce(ids, g_pairs, n):
        """Sum the pair rows per Gaussian, in pair order: (P, 6 + C) -> (n, 6 + C)."""
        out = np.zeros((n, g_pairs.shape[1]), dtype=np.float64)
        for k in range(ids.shape[0]):
            g = ids[k]
            for j in range(g_pairs.shape[1]):
                out[g, j] += g_pairs[k, j]
        return out


def _threads() -> None:
    """Run numba on as many threads as torch (OMP_NUM_THREADS / torch.set_num_threads).

    Numba's OpenMP threading layer shares the process's libgomp with torch, and starting it sets the
    OpenMP thread count to NUMBA_NUM_THREADS (all cores): torch's own count is put back afterwards.
    """
    n = torch.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _np64(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to("cpu", torch.float64).numpy())


class _Composite(torch.autograd.Function):
    """(means2d, conics, opacities, features) -> (features image, final transmittance), hand-written backward."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, order, boxes, width, height, tile):
        _threads()
        n, nch = features.shape
        params = np.concatenate([_np64(means2d), _np64(conics), _np64(opacities)[:, None]], axis=1)
        ntx, nty = -(-width // tile), -(-height // tile)
        offsets, ids, packed = _bin(np.ascontiguousarray(boxes.detach().cpu().numpy()),
                                    np.ascontiguousarray(order.cpu().numpy()), tile, ntx, nty, params,
                                    _np64(features))
        out = np.zeros((height, width, nch), dtype=np.float64)
        trans = np.ones((height, width), dtype=np.float64)
        last = np.zeros((height, width), dtype=np.int64)
        _forward(offsets, packed, tile, ntx, width, height, out, trans, last)
        ctx.state = (offsets, ids, packed, trans, last, tile, ntx, width, height, n)
        ctx.dtype = means2d.dtype
        return torch.from_numpy(out).to(ctx.dtype), torch.from_numpy(trans).to(ctx.dtype)

    @staticmethod
    def backward(ctx, g_out, g_trans):
        offsets, ids, packed, trans, last, tile, ntx, width, height, n = ctx.state
        _threads()
        g_out = _np64(g_out) if g_out is not None else np.zeros(trans.shape + (packed.shape[1] - _P,))
        g_trans = _np64(g_trans) if g_trans is not None else np.zeros(trans.shape)
        g_pairs = np.zeros_like(packed)
        _backward(offsets, packed, tile, ntx, width, height, trans, last, g_out, g_trans, g_pairs)
        g = torch.from_numpy(_reduce(ids, g_pairs, n)).to(ctx.dtype)
        return (g[:, 0:2], g[:, 2:5], g[:, 5], g[:, _P:]) + (None,) * 5


def rasterize_fast(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor, features: torch.Tensor,
                   order: torch.Tensor, boxes: torch.Tensor, width: int, height: int,
                   tile_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite on the CPU with the numba kernels; the arguments and results of
    `reference.rasterize_reference` (order: (M,) int64 visible ids nearest first, `reference.depth_order`).
    """
    if not AVAILABLE:
        raise RuntimeError("the fast rasterizer needs numba (pip install numba)")
    out, trans = _Composite.apply(means2d, conics, opacities, features, order, boxes, int(width), int(height),
                                  int(tile_size))
    return out, trans
