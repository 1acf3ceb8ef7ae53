"""`rasterize`: differentiable 3D Gaussian splatting into one pinhole view (the package's public function)."""

from __future__ import annotations

import math

import torch

from neuralmorph.splat import fast
from neuralmorph.splat.project import camera_center, project
from neuralmorph.splat.reference import depth_order, rasterize_reference
from neuralmorph.splat.sh import MAX_DEGREE, sh_to_color

BACKENDS = ("auto", "fast", "reference")
DEFAULT_TILE = {"fast": 8, "reference": 16}
"""Tile side in pixels per backend when `tile_size` is None (the fastest measured; the image does not
depend on it)."""


def _check(name: str, x, shape: tuple, dtype=None, device=None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"{name} must be {dtype} like means, got {x.dtype}")
    if device is not None and x.device != device:
        raise ValueError(f"{name} must be on {device} like means, got {x.device}")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The compositor that serves `backend` on `device`: "fast" (numba, CPU tensors) or "reference".

    "auto" and "fast" take the fast path on the CPU when numba imports, the torch reference otherwise
    (CUDA tensors: the reference, which runs there unchanged).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return "reference"
    return "fast" if (device.type == "cpu" and fast.AVAILABLE) else "reference"


def rasterize(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
              colors: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int,
              background: torch.Tensor | None = None, sh_degree: int | None = None, near: float = 0.01,
              tile_size: int | None = None, backend: str = "auto") -> dict[str, torch.Tensor]:
    """Render N 3D Gaussians into a width x height image, differentiably (docs/splat.md).

    Every tensor shares one floating dtype (float32 or float64) and one device:
      means: (N, 3) centres, world coordinates.
      quats: (N, 4) rotations as quaternions (w, x, y, z); any non-zero norm (normalised here).
      scales: (N, 3) standard deviations along the rotated axes, linear (not log), > 0.
      opacities: (N,) in [0, 1] (not logits).
      colors: (N, D) colours used as given (RGB when D = 3), or (N, K, 3) spherical-harmonics coefficients
        (K = (d + 1)^2 for a degree d <= 3): colour = max(SH(view direction) . coeffs + 0.5, 0), the view
        direction running from the camera centre to the Gaussian's centre.
      viewmat: (4, 4) world -> camera, OpenCV axes (x right, y down, z forward).
      K: (3, 3) intrinsics [[fx, s, cx], [0, fy, cy], [0, 0, 1]], pixels; pixel (row i, column j) has its
        centre at (u, v) = (j, i).
      background: (D,) colour behind everything (default zeros).
    width, height: image size in pixels. sh_degree: bands used from SH coefficients (default: all given;
    fewer for progressive training). near: Gaussians whose centre has camera z <= near are culled.
    tile_size: tile side in pixels (default per backend, DEFAULT_TILE; the image does not depend on it).
    backend: "auto" | "fast" | "reference" (see `resolve_backend`).

    Returns a dict of tensors in the same dtype:
      rgb: (H, W, D) sum_i c_i a_i T_i + T_final * background.
      alpha: (H, W) 1 - T_final.
      depth: (H, W) expected camera z of the Gaussian centres, sum_i z_i a_i T_i / alpha (0 where alpha = 0).
      radii: (N,) int32 3-sigma screen radius in pixels, 0 for culled Gaussians.
      means2d: (N, 2) the centres' pixel coordinates; it retains its gradient, so after a backward pass
        `out["means2d"].grad` holds dL/d(u, v) per Gaussian (for densification).
    Gradients flow to means, quats, scales, opacities, colors (and viewmat, K, background).
    """
    _check("means", means, (None, 3))
    n, dtype, device = means.shape[0], means.dtype, means.device
    if not dtype.is_floating_point:
        raise ValueError(f"means must be a floating tensor, got {dtype}")
    _check("quats", quats, (n, 4), dtype, device)
    _check("scales", scales, (n, 3), dtype, device)
    _check("opacities", opacities, (n,), dtype, device)
    _check("viewmat", viewmat, (4, 4), dtype, device)
    _check("K", K, (3, 3), dtype, device)
    if not isinstance(colors, torch.Tensor) or colors.dim() not in (2, 3) or colors.shape[0] != n:
        raise ValueError(f"colors must be (N={n}, D) or (N={n}, K, 3), got "
                         f"{tuple(colors.shape) if isinstance(colors, torch.Tensor) else type(colors).__name__}")
    _check("colors", colors, tuple(colors.shape), dtype, device)
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive, got {width} x {height}")
    if not (isinstance(near, (int, float)) and math.isfinite(near) and near > 0):
        raise ValueError(f"near must be a positive number, got {near!r}")
    which = resolve_backend(backend, device)
    tile = DEFAULT_TILE[which] if tile_size is None else int(tile_size)
    if tile < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size!r}")

    proj = project(means, quats, scales, viewmat, K, width, height, near)
    if colors.dim() == 3:
        if colors.shape[2] != 3:
            raise ValueError(f"SH colors must be (N, K, 3), got {tuple(colors.shape)}")
        given = math.isqrt(colors.shape[1]) - 1
        if (given + 1) ** 2 != colors.shape[1] or given > MAX_DEGREE:
            raise ValueError(f"SH colors need K = (d + 1)^2 coefficients for d <= {MAX_DEGREE}, "
                             f"got K = {colors.shape[1]}")
        degree = given if sh_degree is None else int(sh_degree)
        if not 0 <= degree <= given:
            raise ValueError(f"sh_degree must be in 0..{given} for K = {colors.shape[1]}, got {sh_degree!r}")
        dirs = means - camera_center(viewmat)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        rgb_in = sh_to_color(colors, dirs, degree)
    else:
        if sh_degree is not None:
            raise ValueError("sh_degree is given but colors are (N, D), not SH coefficients (N, K, 3)")
        rgb_in = colors
    d = rgb_in.shape[1]
    if background is None:
        background = torch.zeros(d, dtype=dtype, device=device)
    _check("background", background, (d,), dtype, device)

    means2d = proj.means2d
    if means2d.requires_grad:
        means2d.retain_grad()
    features = torch.cat([rgb_in, proj.depths[:, None]], dim=1)
    if which == "fast":
        order = depth_order(proj.depths, proj.visible)
        out, trans = fast.rasterize_fast(means2d, proj.conics, opacities, features, order, proj.boxes,
                                         width, height, tile)
    else:
        out, trans = rasterize_reference(means2d, proj.conics, opacities, features, proj.depths, proj.boxes,
                                         proj.visible, width, height, tile)
    alpha = 1.0 - trans
    rgb = out[..., :d] + trans[..., None] * background
    depth = torch.where(alpha > 0, out[..., d] / alpha.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(alpha))
    return {"rgb": rgb, "alpha": alpha, "depth": depth, "radii": proj.radii, "means2d": means2d}
