"""Rotation vectors (axis-angle, radians) to rotation matrices: numpy (Rodrigues) and torch (differentiable)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported on use, so numpy-only users of geometry do not load it
    import torch


def rotvec_to_matrix(w: np.ndarray) -> np.ndarray:
    """Rodrigues: w (3,) float64 axis-angle (radians) -> (3, 3) float64 rotation (identity below 1e-15)."""
    angle = float(np.linalg.norm(w))
    if angle < 1e-15:
        return np.eye(3)
    k = w / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def rotvec_to_matrix_torch(w: torch.Tensor) -> torch.Tensor:
    """w (3,) float32/float64 axis-angle (radians) -> (3, 3) rotation of w's dtype and device.

    The matrix exponential of the skew matrix of w: differentiable everywhere, zero included (Rodrigues'
    division by the angle is not).
    """
    import torch

    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    skew = torch.stack([torch.stack([zero, -w[2], w[1]]), torch.stack([w[2], zero, -w[0]]),
                        torch.stack([-w[1], w[0], zero])])
    return torch.linalg.matrix_exp(skew)
