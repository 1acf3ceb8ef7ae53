"""Real spherical harmonics up to degree 3, and view-dependent colour from SH coefficients (plain torch).

The basis is the orthonormal real SH on the unit sphere (integral of Y_i Y_j over the sphere = delta_ij)
with the Condon-Shortley phase, ordered by degree l, then order m = -l..l: coefficient k = l^2 + l + m.
In Cartesian form, for a unit direction (x, y, z):

    l = 0:  c0
    l = 1:  -c1 y,  c1 z,  -c1 x
    l = 2:  c2a xy,  -c2a yz,  c2b (2z^2 - x^2 - y^2),  -c2a xz,  c2c (x^2 - y^2)
    l = 3:  -c3a y(3x^2 - y^2),  c3b xyz,  -c3c y(4z^2 - x^2 - y^2),  c3d z(2z^2 - 3x^2 - 3y^2),
            -c3c x(4z^2 - x^2 - y^2),  c3e z(x^2 - y^2),  -c3a x(x^2 - 3y^2)

with the normalisations below. This is the convention of 3D Gaussian Splatting (Kerbl et al. 2023), whose
colour is SH . coeffs + 0.5, clamped at 0 (`sh_to_color`).
"""

from __future__ import annotations

import math

import torch

PI = math.pi
C0 = math.sqrt(1 / (4 * PI))
C1 = math.sqrt(3 / (4 * PI))
C2A = math.sqrt(15 / (4 * PI))
C2B = math.sqrt(5 / (16 * PI))
C2C = math.sqrt(15 / (16 * PI))
C3A = math.sqrt(35 / (32 * PI))
C3B = math.sqrt(105 / (4 * PI))
C3C = math.sqrt(21 / (32 * PI))
C3D = math.sqrt(7 / (16 * PI))
C3E = math.sqrt(105 / (16 * PI))
MAX_DEGREE = 3


def num_coeffs(degree: int) -> int:
    """(degree + 1)^2: the coefficients of all bands up to `degree`."""
    return (degree + 1) ** 2


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """The basis functions of bands 0..degree at unit directions.

    degree: 0..3; dirs: (..., 3) float unit vectors. Returns (..., (degree + 1)^2), same dtype.
    """
    if not 0 <= degree <= MAX_DEGREE:
        raise ValueError(f"sh degree must be 0..{MAX_DEGREE}, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [C2A * x * y, -C2A * y * z, C2B * (2 * zz - xx - yy), -C2A * x * z, C2C * (xx - yy)]
    if degree >= 3:
        out += [-C3A * y * (3 * xx - yy), C3B * x * y * z, -C3C * y * (4 * zz - xx - yy),
                C3D * z * (2 * zz - 3 * xx - 3 * yy), -C3C * x * (4 * zz - xx - yy), C3E * z * (xx - yy),
                -C3A * x * (xx - 3 * yy)]
    return torch.stack(out, dim=-1)


def sh_to_color(sh: torch.Tensor, dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """View-dependent colour: max(SH(dirs) . sh + 0.5, 0) using bands 0..degree.

    sh: (N, K, 3) float coefficients, K >= (degree + 1)^2 (later coefficients are ignored);
    dirs: (N, 3) float unit view directions (camera centre -> Gaussian). Returns (N, 3), same dtype.
    """
    k = num_coeffs(degree)
    if sh.shape[-2] < k:
        raise ValueError(f"sh has {sh.shape[-2]} coefficients, degree {degree} needs {k}")
    basis = sh_basis(degree, dirs)  # (N, k)
    rgb = (basis[..., :, None] * sh[..., :k, :]).sum(-2)
    return torch.clamp_min(rgb + 0.5, 0.0)
