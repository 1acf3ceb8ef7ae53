"""Observation terms of the fitting loop: each turns posed model vertices into residual distances (mm).

A term is any object with `residuals(vertices) -> (M,) distances` (differentiable in the vertices) and a
`weight`. The loop sums weight × mean robust(residuals) over its terms, so a new kind of observation
(depth maps, images) is one more small class here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from neuralmorph.geometry.distance import closest_points


@dataclass
class VertexTerm:
    """Registered vertices in correspondence with the model: target (N, 3) mm, optional mask (N,) bool."""

    target: torch.Tensor
    mask: torch.Tensor | None = None
    weight: float = 1.0

    def residuals(self, vertices: torch.Tensor) -> torch.Tensor:
        d = (vertices - self.target).norm(dim=-1)
        return d if self.mask is None else d[self.mask]


@dataclass
class LandmarkTerm:
    """3D landmarks: model vertex ids (L,) int64 and observed positions (L, 3) mm."""

    ids: torch.Tensor
    target: torch.Tensor
    weight: float = 1.0

    def residuals(self, vertices: torch.Tensor) -> torch.Tensor:
        return (vertices[self.ids] - self.target).norm(dim=-1)


@dataclass
class PointToSurfaceTerm:
    """Observed points (P, 3) mm against the model surface (faces (F, 3) int64).

    Each call finds every point's closest spot on the current surface (exact, no gradient) and keeps
    its barycentric coordinates fixed, so the distance is differentiable in the vertices; recomputed
    every step, this is the standard point-to-surface ICP energy.
    """

    points: torch.Tensor
    faces: torch.Tensor
    weight: float = 1.0

    def residuals(self, vertices: torch.Tensor) -> torch.Tensor:
        v = vertices.detach().cpu().double().numpy()
        f = self.faces.cpu().numpy()
        p = self.points.detach().cpu().double().numpy()
        closest, _, face_idx = closest_points(p, v, f)
        bary = torch.as_tensor(_barycentric(closest, v[f[face_idx]]), dtype=vertices.dtype, device=vertices.device)
        tri = vertices[self.faces[torch.as_tensor(face_idx, device=vertices.device)]]  # (P, 3, 3)
        on_surface = (bary[:, :, None] * tri).sum(dim=1)
        return (self.points - on_surface).norm(dim=-1)


def _barycentric(points: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """points (P, 3) lying on triangles tris (P, 3, 3) -> barycentric coordinates (P, 3)."""
    a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
    v0, v1, v2 = b - a, c - a, points - a
    d00, d01, d11 = (v0 * v0).sum(1), (v0 * v1).sum(1), (v1 * v1).sum(1)
    d20, d21 = (v2 * v0).sum(1), (v2 * v1).sum(1)
    denom = np.where(np.abs(d00 * d11 - d01**2) > 1e-300, d00 * d11 - d01**2, 1.0)
    w1 = (d11 * d20 - d01 * d21) / denom
    w2 = (d00 * d21 - d01 * d20) / denom
    return np.clip(np.stack([1 - w1 - w2, w1, w2], axis=1), 0.0, 1.0)


def robust(residuals: torch.Tensor, kind: str, scale_mm: float) -> torch.Tensor:
    """Per-residual energy (mm²-like): 'l2' r², 'huber' quadratic inside scale and linear outside,
    'geman' (Geman-McClure) bounded so gross outliers (hair, shoulders, mis-registrations) stop pulling."""
    if kind == "l2":
        return residuals**2
    if kind == "huber":
        a = residuals.abs()
        return torch.where(a <= scale_mm, a**2, 2 * scale_mm * a - scale_mm**2)
    if kind == "geman":
        r2 = residuals**2
        return r2 * scale_mm**2 / (r2 + scale_mm**2)
    raise ValueError(f"unknown robust loss {kind!r}")
