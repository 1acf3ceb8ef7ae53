"""Barycentric coordinates of points in triangles (numpy, vectorised)."""

from __future__ import annotations

import numpy as np


def barycentric(points: np.ndarray, tris: np.ndarray, simplex: bool = False) -> np.ndarray:
    """Barycentric weights of points in their triangles.

    points: (P, 3) float64; tris: (P, 3, 3) float64, the corners (a, b, c) of each point's triangle.
    Returns (P, 3) float64 weights (w_a, w_b, w_c), from the normal equations of p - a = w_b (b - a) +
    w_c (c - a) (points off the plane get the weights of their projection).

    simplex=False (closest points on a mesh, which lie on their triangle up to rounding): each weight is
    clipped to [0, 1]; a degenerate triangle (|det| <= 1e-300) is solved with det 1.
    simplex=True (ray hits, for interpolating vertex attributes: Embree's float32 hit can sit a hair
    outside its triangle): weights are clipped at 0 and renormalised to sum to 1; a degenerate triangle
    (det == 0) gives (1/3, 1/3, 1/3). This mode takes its dot products with einsum, which rounds
    differently from the sums of the default mode: each mode reproduces its callers' earlier numbers bit
    for bit.
    """
    a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
    v0, v1, v2 = b - a, c - a, points - a
    if not simplex:
        d00, d01, d11 = (v0 * v0).sum(1), (v0 * v1).sum(1), (v1 * v1).sum(1)
        d20, d21 = (v2 * v0).sum(1), (v2 * v1).sum(1)
        den = d00 * d11 - d01**2
        den = np.where(np.abs(den) > 1e-300, den, 1.0)
        w1 = (d11 * d20 - d01 * d21) / den
        w2 = (d00 * d21 - d01 * d20) / den
        return np.clip(np.stack([1.0 - w1 - w2, w1, w2], axis=1), 0.0, 1.0)
    d00 = np.einsum("ij,ij->i", v0, v0)
    d01 = np.einsum("ij,ij->i", v0, v1)
    d11 = np.einsum("ij,ij->i", v1, v1)
    d20 = np.einsum("ij,ij->i", v2, v0)
    d21 = np.einsum("ij,ij->i", v2, v1)
    den = d00 * d11 - d01 * d01
    safe = np.where(np.abs(den) > 0, den, 1.0)
    w1 = np.where(np.abs(den) > 0, (d11 * d20 - d01 * d21) / safe, 1.0 / 3.0)
    w2 = np.where(np.abs(den) > 0, (d00 * d21 - d01 * d20) / safe, 1.0 / 3.0)
    w = np.clip(np.stack([1.0 - w1 - w2, w1, w2], axis=1), 0.0, None)
    return w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
