"""Area-weighted uniform sampling of triangle surfaces."""

from __future__ import annotations

import numpy as np


def sample_surface(
    vertices: np.ndarray, faces: np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw `n` points uniformly over the surface (area-weighted faces, uniform barycentrics).

    vertices: (V, 3) float64; faces: (F, 3) int64; n >= 0; seed: any int for np.random.default_rng.
    Returns points (n, 3) float64, unit face normals (n, 3) float64 (winding order), face ids (n,) int64.
    The same inputs and seed always give the same samples.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"expected (V,3) vertices and (F,3) faces, got {v.shape} and {f.shape}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    tri = v[f]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    double_area = np.linalg.norm(cross, axis=1)
    total = double_area.sum()
    if not total > 0:
        raise ValueError("the surface has zero area; nothing to sample")
    rng = np.random.default_rng(seed)
    # inverse-CDF face choice: faster than rng.choice(p=...) and never picks a zero-area face
    cdf = np.cumsum(double_area)
    face_idx = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    face_idx = np.minimum(face_idx, len(f) - 1).astype(np.int64)
    # sqrt trick: uniform density over the triangle without rejection
    r1 = np.sqrt(rng.random(n))
    r2 = rng.random(n)
    a, b, c = (1.0 - r1), r1 * (1.0 - r2), r1 * r2
    t = tri[face_idx]
    points = a[:, None] * t[:, 0] + b[:, None] * t[:, 1] + c[:, None] * t[:, 2]
    normals = cross[face_idx] / double_area[face_idx, None]
    return points, normals, face_idx
