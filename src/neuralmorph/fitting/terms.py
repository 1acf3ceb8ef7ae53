"""Observation terms of the fitting loop: each turns posed model vertices into residual distances (mm).

A term is any object with `residuals(vertices) -> (M,) distances` (differentiable in the vertices) and a
`weight`. The loop sums weight × mean robust(residuals) over its terms, so a new kind of observation
(depth maps, images) is one more small class here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from neuralmorph.geometry.barycentric import barycentric
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
        bary = torch.as_tensor(barycentric(closest, v[f[face_idx]]), dtype=vertices.dtype, device=vertices.device)
        tri = vertices[self.faces[torch.as_tensor(face_idx, device=vertices.device)]]  # (P, 3, 3)
        on_surface = (bary[:, :, None] * tri).sum(dim=1)
        return (self.points - on_surface).norm(dim=-1)


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
