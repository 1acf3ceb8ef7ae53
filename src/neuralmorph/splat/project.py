"""EWA projection of 3D Gaussians to screen-space 2D Gaussians (plain torch; autograd gives the gradients).

Conventions (docs/splat.md):
- camera: `viewmat` (4, 4) maps world to camera coordinates with OpenCV axes (x right, y down, z forward);
- intrinsics: `K` (3, 3) = [[fx, s, cx], [0, fy, cy], [0, 0, 1]] in pixels (fx != fy, a skew s and an
  off-centre principal point are all exact); pixel (row i, column j) has its centre at image coordinates
  (u, v) = (j, i), as in `neuralmorph.geometry.camera` (gsplat and 3DGS put it at (j + 0.5, i + 0.5));
- quaternions `wxyz` (any norm; normalised here); scales linear (not log).

The 3D covariance is R S S^T R^T (R from the unit quaternion, S = diag(scales)). In camera coordinates it
is W Sigma W^T (W the rotation block of `viewmat`); the perspective map u = K p / p_z is linearised at the
Gaussian's centre (Zwicker et al., EWA splatting), J = K[:2, :2] [[1/z, 0, -x/z^2], [0, 1/z, -y/z^2]],
giving the 2D covariance J W Sigma W^T J^T, plus LOW_PASS * I (a 0.3 px^2 screen low-pass filter, as in
3DGS). Everything except the linearisation is exact. For the Jacobian only (never the mean), the centre's
screen position is clamped to CLAMP_MARGIN image sizes beyond each border, so that Gaussians far outside
the view do not get huge smeared footprints (the 3DGS guard; it changes nothing for centres on screen or
within 15% of the image size of it).

A Gaussian reaches a pixel only inside its 3-sigma ellipse (Mahalanobis distance <= 3); its screen bounding
box is the exact bounding box of that ellipse, +-3 sqrt(Sigma_uu) by +-3 sqrt(Sigma_vv). It is culled
(`radii` 0) when its centre is not beyond the near plane (z <= near) or no pixel centre lies in its box.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from neuralmorph.errors import InputError

LOW_PASS = 0.3
"""Added to the diagonal of every 2D covariance (px^2): the 3DGS screen-space low-pass filter."""
SIGMAS = 3.0
"""A Gaussian's screen footprint ends at this Mahalanobis distance (its 3-sigma ellipse)."""
CLAMP_MARGIN = 0.15
"""For the projection Jacobian, centres are clamped to [-m W, (1 + m) W] x [-m H, (1 + m) H] pixels."""
_BOX_SLACK = 1e-4
"""Pixels the bounding box is widened by, so that rounding never drops a pixel the ellipse test accepts."""


@dataclass
class Projected:
    """Screen-space Gaussians, one row per input Gaussian (culled rows hold finite placeholders).

    means2d: (N, 2) pixel coordinates (u, v) of the centres (differentiable);
    conics: (N, 3) (a, b, c), the inverse 2D covariance [[a, b], [b, c]] (differentiable);
    depths: (N,) camera-space z of the centres (differentiable);
    cov2d: (N, 2, 2) the 2D covariance, low-pass included (differentiable);
    radii: (N,) int32 ceil(3 sqrt(largest eigenvalue of cov2d)) px, 0 where culled;
    boxes: (N, 4) int32 inclusive pixel ranges (x0, x1, y0, y1) of the 3-sigma ellipse's bounding box,
        clipped to the image (rows where culled are meaningless);
    visible: (N,) bool, not culled.
    """

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    cov2d: torch.Tensor
    radii: torch.Tensor
    boxes: torch.Tensor
    visible: torch.Tensor


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """quats (N, 4) float wxyz, any non-zero norm -> rotation matrices (N, 3, 3) of the unit quaternions."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quat(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) float -> unit quaternions (..., 4) wxyz with w >= 0.

    Each of 4w^2, 4x^2, 4y^2, 4z^2 is a signed sum of 1 and R's diagonal; each gives a candidate quaternion
    by dividing the matching off-diagonal sums by its square root. The naive one (divide by 4w) blows up
    near 180 degrees, so per element the candidate with the largest square is used. The four squares sum
    to 4, so the chosen one is >= 1: flooring the others at 0.1 before the square root changes nothing
    chosen and keeps the unchosen branches (and their gradients) finite. Differentiable; a matrix that is
    only nearly a rotation gives the normalised quaternion of the chosen branch.
    """
    if R.ndim < 2 or R.shape[-2:] != (3, 3):
        raise InputError("R", f"expected (..., 3, 3) matrices, got shape {tuple(R.shape)}")
    m = R.unbind(-1)  # m[j][..., i] = R[..., i, j]
    r = lambda i, j: m[j][..., i]
    d0, d1, d2 = r(0, 0), r(1, 1), r(2, 2)
    squares = torch.stack([1 + d0 + d1 + d2, 1 + d0 - d1 - d2, 1 - d0 + d1 - d2, 1 - d0 - d1 + d2], dim=-1)
    sx, sy, sz = r(2, 1) - r(1, 2), r(0, 2) - r(2, 0), r(1, 0) - r(0, 1)  # 4wx, 4wy, 4wz
    pxy, pxz, pyz = r(1, 0) + r(0, 1), r(0, 2) + r(2, 0), r(2, 1) + r(1, 2)  # 4xy, 4xz, 4yz
    numerators = torch.stack([
        torch.stack([squares[..., 0], sx, sy, sz], dim=-1),
        torch.stack([sx, squares[..., 1], pxy, pxz], dim=-1),
        torch.stack([sy, pxy, squares[..., 2], pyz], dim=-1),
        torch.stack([sz, pxz, pyz, squares[..., 3]], dim=-1),
    ], dim=-2)  # (..., 4 candidates, 4): candidate k is 4 q q_k
    candidates = numerators / (2 * squares.clamp_min(0.1).sqrt()[..., None])  # divided by 4 |q_k|
    best = squares.argmax(-1)[..., None, None].expand(*squares.shape[:-1], 1, 4)
    q = candidates.gather(-2, best).squeeze(-2)
    q = q / (q * q).sum(-1, keepdim=True).clamp_min(1e-12).sqrt()  # floored: finite gradient too
    return q * torch.where(q[..., :1] < 0, -1.0, 1.0).to(q.dtype)  # q and -q are the same rotation


def covariance_3d(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """R S S^T R^T: quats (N, 4) wxyz, scales (N, 3) linear -> covariances (N, 3, 3), same dtype."""
    m = quat_to_rotmat(quats) * scales[..., None, :]  # R diag(s)
    return m @ m.transpose(-1, -2)


def camera_center(viewmat: torch.Tensor) -> torch.Tensor:
    """viewmat (4, 4) world->camera -> the camera centre (3,) in world coordinates, -R^T t."""
    r, t = viewmat[:3, :3], viewmat[:3, 3]
    return -(r.transpose(0, 1) @ t)


def project(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, viewmat: torch.Tensor,
            K: torch.Tensor, width: int, height: int, near: float = 0.01) -> Projected:
    """Project N 3D Gaussians into a width x height image (see the module for the conventions).

    means (N, 3), quats (N, 4) wxyz, scales (N, 3) linear, viewmat (4, 4), K (3, 3): one float dtype and
    device. Differentiable in all of them (through means2d, conics, depths, cov2d).
    """
    r, t = viewmat[:3, :3], viewmat[:3, 3]
    p = means @ r.transpose(0, 1) + t  # (N, 3) camera coordinates
    z = p[:, 2]
    in_front = z > near
    zs = torch.where(in_front, z, torch.ones_like(z))  # culled rows: finite placeholders, no gradient
    tx, ty = p[:, 0] / zs, p[:, 1] / zs
    k2 = K[:2, :2]
    uv = torch.stack([tx, ty], dim=-1) @ k2.transpose(0, 1) + K[:2, 2]  # (N, 2)

    # Jacobian of u = K p / z at the centre, with the centre's screen position clamped (the module's guard)
    with torch.no_grad():
        lo = torch.tensor([-CLAMP_MARGIN * width, -CLAMP_MARGIN * height], dtype=uv.dtype, device=uv.device)
        hi = torch.tensor([(1 + CLAMP_MARGIN) * width, (1 + CLAMP_MARGIN) * height], dtype=uv.dtype, device=uv.device)
        outside = ((uv < lo) | (uv > hi)).any(-1)
    if bool(outside.any()):
        uv_c = torch.minimum(torch.maximum(uv, lo), hi)
        t_c = torch.linalg.solve_triangular(k2, (uv_c - K[:2, 2]).transpose(0, 1), upper=True).transpose(0, 1)
        txc = torch.where(outside, t_c[:, 0], tx)
        tyc = torch.where(outside, t_c[:, 1], ty)
    else:
        txc, tyc = tx, ty
    zero = torch.zeros_like(zs)
    inv_z = 1.0 / zs
    d = torch.stack([inv_z, zero, -txc * inv_z, zero, inv_z, -tyc * inv_z], dim=-1).reshape(-1, 2, 3)
    jac = k2 @ d  # (N, 2, 3)

    cov3 = covariance_3d(quats, scales)
    cov_cam = r @ cov3 @ r.transpose(0, 1)
    cov2 = jac @ cov_cam @ jac.transpose(-1, -2)
    eye = torch.eye(2, dtype=cov2.dtype, device=cov2.device)
    cov2 = cov2 + LOW_PASS * eye
    a, b, c = cov2[:, 0, 0], cov2[:, 0, 1], cov2[:, 1, 1]
    det = a * c - b * b
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)

    with torch.no_grad():
        lam = 0.5 * (a + c) + torch.sqrt((0.5 * (a - c)) ** 2 + b * b)
        radii = torch.ceil(SIGMAS * torch.sqrt(lam))
        ex = SIGMAS * torch.sqrt(a) * (1 + 1e-6) + _BOX_SLACK
        ey = SIGMAS * torch.sqrt(c) * (1 + 1e-6) + _BOX_SLACK
        u, v = uv[:, 0], uv[:, 1]
        x0, x1 = torch.ceil(u - ex), torch.floor(u + ex)
        y0, y1 = torch.ceil(v - ey), torch.floor(v + ey)
        finite = torch.isfinite(x0) & torch.isfinite(x1) & torch.isfinite(y0) & torch.isfinite(y1)
        visible = in_front & finite & (x1 >= 0) & (x0 <= width - 1) & (y1 >= 0) & (y0 <= height - 1)
        visible &= (x1 >= x0) & (y1 >= y0)
        big = float(max(width, height) + 1)
        boxes = torch.stack([x0.clamp(0, width - 1), x1.clamp(-1, width - 1), y0.clamp(0, height - 1),
                             y1.clamp(-1, height - 1)], dim=-1).nan_to_num(0.0, big, -1.0)
        boxes = boxes.to(torch.int32)
        radii = torch.where(visible, radii, torch.zeros_like(radii)).nan_to_num(0.0).to(torch.int32)
    return Projected(means2d=uv, conics=conics, depths=z, cov2d=cov2, radii=radii, boxes=boxes, visible=visible)
