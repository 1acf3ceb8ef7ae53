"""Area-weighted uniform sampling of triangle surfaces, and farthest-point sampling of point sets."""

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
    face_idx, bary = sample_barycentrics(double_area, n, np.random.default_rng(seed))
    a, b, c = bary[:, 0], bary[:, 1], bary[:, 2]
    t = tri[face_idx]
    points = a[:, None] * t[:, 0] + b[:, None] * t[:, 1] + c[:, None] * t[:, 2]
    normals = cross[face_idx] / double_area[face_idx, None]
    return points, normals, face_idx


def sample_barycentrics(areas: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw `n` points uniformly over a set of triangles, as (face, barycentrics).

    areas: (F,) float64 face areas (or any multiple of them), sum > 0; rng: consumed as three
    rng.random(n) draws (faces, then the two barycentric variates). Returns face ids (n,) int64 and
    barycentric weights (n, 3) float64.
    """
    # inverse-CDF face choice: faster than rng.choice(p=...) and never picks a zero-area face
    cdf = np.cumsum(areas)
    face_idx = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    face_idx = np.minimum(face_idx, len(areas) - 1).astype(np.int64)
    # sqrt trick: uniform density over the triangle without rejection
    r1 = np.sqrt(rng.random(n))
    r2 = rng.random(n)
    return face_idx, np.stack([1.0 - r1, r1 * (1.0 - r2), r1 * r2], axis=1)


def farthest_point_sampling(points: np.ndarray, k: int, start: int | None = None,
                            chosen: np.ndarray | None = None) -> np.ndarray:
    """min(k, M) indices into points by farthest-point sampling (each next pick is the point farthest from
    all picked so far; ties go to the lowest index).

    points: (M, 3) float (distances in its dtype); k: how many; start: the first index (None: the point
    nearest the centroid, so the result is deterministic); chosen: (C, 3) points picked before, or None.
    With a non-empty `chosen` there is no start: the first pick is the point farthest from `chosen`.
    Returns (min(k, M),) int64, empty when k <= 0 or M == 0.
    """
    n = min(k, len(points))
    if n <= 0:
        return np.zeros(0, np.int64)
    if chosen is not None and len(chosen):
        d = np.min(np.linalg.norm(points[:, None] - chosen[None], axis=2), axis=1)
        out = []
    else:
        if start is None:
            start = int(np.linalg.norm(points - points.mean(0), axis=1).argmin())
        out = [start]
        d = np.linalg.norm(points - points[start], axis=1)
    while len(out) < n:
        i = int(d.argmax())
        out.append(i)
        d = np.minimum(d, np.linalg.norm(points - points[i], axis=1))
    return np.array(out, np.int64)
