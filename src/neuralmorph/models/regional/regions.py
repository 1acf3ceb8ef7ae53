"""Regions of a registered topology: automatic segmentation, soft weights, boundary rings, control vertices.

Regions are data (vertex weights (N, R) float32, rows summing to one); these functions make and check
them for the regional family.
"""

from __future__ import annotations

import numpy as np

from neuralmorph.errors import InputError
from neuralmorph.geometry.adjacency import k_ring, vertex_adjacency
from neuralmorph.geometry.sampling import farthest_point_sampling


def segment_template(vertices: np.ndarray, n_regions: int, iterations: int = 20) -> np.ndarray:
    """Automatic hard segmentation of a template (N, 3) into n_regions by k-means of the vertex positions
    (farthest-point start, deterministic). Returns (N, R) float32 one-hot region weights."""
    v = np.asarray(vertices, np.float64)
    if not 1 <= n_regions <= len(v):
        raise InputError("regions", f"need 1 <= n_regions <= {len(v)}, got {n_regions}")
    start = int(np.linalg.norm(v - v.mean(0), axis=1).argmin())
    centres = v[farthest_point_sampling(v, n_regions, start)]
    for _ in range(iterations):
        label = ((v[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        for r in range(n_regions):
            if (label == r).any():
                centres[r] = v[label == r].mean(0)
    label = ((v[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
    w = np.zeros((len(v), n_regions), np.float32)
    w[np.arange(len(v)), label] = 1
    return w[:, w.sum(0) > 0]


def region_weights_from_labels(labels: np.ndarray, n_regions: int | None = None) -> np.ndarray:
    """User regions as one label per vertex (N,) -> (N, R) one-hot weights."""
    labels = np.asarray(labels, np.int64)
    r = int(labels.max()) + 1 if n_regions is None else n_regions
    if labels.min() < 0 or labels.max() >= r:
        raise InputError("regions", f"labels must lie in [0, {r})")
    w = np.zeros((len(labels), r), np.float32)
    w[np.arange(len(labels)), labels] = 1
    return w


def soften_weights(weights: np.ndarray, faces: np.ndarray, hops: int) -> np.ndarray:
    """Blend region weights over `hops` rings of neighbours (rows keep summing to 1)."""
    w = np.asarray(weights, np.float64)
    if hops <= 0:
        return w.astype(np.float32)
    a = vertex_adjacency(faces, len(w), self_loops=True)
    deg = np.asarray(a.sum(1)).ravel()
    for _ in range(hops):
        w = (a @ w) / deg[:, None]
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def check_region_weights(weights: np.ndarray, n: int, where: str = "regions") -> np.ndarray:
    w = np.asarray(weights, np.float32)
    if w.ndim != 2 or w.shape[0] != n or w.shape[1] < 1:
        raise InputError(where, f"region weights must be (N={n}, R>=1), got {w.shape}")
    if (w < 0).any() or not np.isfinite(w).all():
        raise InputError(where, "region weights must be finite and non-negative")
    if not np.allclose(w.sum(1), 1.0, atol=1e-4):
        raise InputError(where, "region weights must sum to 1 per vertex")
    if (w.sum(0) <= 0).any():
        raise InputError(where, "every region needs at least one vertex")
    return w


def boundary_ring(weights: np.ndarray, faces: np.ndarray, region: int, hops: int = 1) -> np.ndarray:
    """Vertex ids of region `region`'s boundary ring: vertices of faces that have vertices both with
    and without a share in the region, grown by hops-1 further rings (both sides of the boundary)."""
    w = np.asarray(weights)
    inside = w[:, region] > 0
    f = np.asarray(faces, np.int64)
    fin = inside[f]
    mixed = fin.any(1) & ~fin.all(1)
    ring = np.zeros(len(w), bool)
    ring[f[mixed].ravel()] = True
    # vertices whose weight is shared with other regions are boundary too
    ring |= inside & (w[:, region] < 1 - 1e-6)
    if hops > 1:
        ring = k_ring(vertex_adjacency(f, len(w)), ring, hops - 1)
    return np.flatnonzero(ring)


def pick_control_vertices(template: np.ndarray, weights: np.ndarray, faces: np.ndarray,
                          per_region: int) -> list[np.ndarray]:
    """Per region: `per_region` control vertex ids, farthest-point samples of the region's interior (its
    vertices with weight ≥ 0.5 off its boundary ring), starting at the interior vertex nearest the
    region's centroid. Regions too small to have an interior use all their weighted vertices."""
    out = []
    for r in range(weights.shape[1]):
        if per_region <= 0:
            out.append(np.zeros(0, np.int64))
            continue
        members = np.flatnonzero(weights[:, r] >= 0.5)
        interior = np.setdiff1d(members, boundary_ring(weights, faces, r))
        pool = interior if len(interior) >= per_region else (members if len(members) else np.flatnonzero(weights[:, r] > 0))
        p = template[pool]
        start = int(np.linalg.norm(p - p.mean(0), axis=1).argmin())
        out.append(np.sort(pool[farthest_point_sampling(p, per_region, start)]))
    return out
