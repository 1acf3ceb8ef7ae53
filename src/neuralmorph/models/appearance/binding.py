"""Gaussians bound to mesh triangles, and attributes read from UV-space maps: the appearance family's core.

GaussianAvatars' binding, re-derived: each Gaussian lives in the local frame of one parent triangle of the
head mesh, so whatever deforms the mesh (identity, expression, jaw, neck) carries the Gaussians along
exactly, with no learned deformation. A Gaussian's parameters are local:

- position: a barycentric point on the triangle plus an offset along the unit normal, in triangle sizes;
- rotation: a quaternion in the triangle's frame;
- scale: log standard deviations, in triangle sizes (a triangle that stretches stretches its Gaussians).

The world-space Gaussian is mean = sum_i b_i v_i + size * offset * normal, rotation = R_tri @ R_local,
scales = size * exp(log_scales). The triangle frame's columns are (e0, n, e0 x n): e0 the unit first edge
v1 - v0, n the unit normal (v1 - v0) x (v2 - v0) (outward for counter-clockwise winding), and their cross
product; that is right-handed (det = e0 . (n x (e0 x n)) = |e0|^2 = +1). The size is GaussianAvatars'
triangle scale, (|v1 - v0| + height of v2 above the line v0 v1) / 2.

Each site also has a fixed UV coordinate where it reads the generator's maps (`sample_maps`), so that
neighbouring Gaussians share features. Quaternions are wxyz throughout (as `neuralmorph.splat.project`).
Everything in torch is device-agnostic and differentiable; `sample_layout` is numpy (it runs once).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from neuralmorph.errors import InputError
from neuralmorph.geometry.sampling import sample_barycentrics
from neuralmorph.splat.project import matrix_to_quat, quat_to_rotmat

EPS = 1e-12
"""Floor on lengths before dividing by them: a degenerate (zero-area or zero-edge) triangle gets a finite,
meaningless frame instead of NaNs. Far below any real edge (the head's are ~1 mm, squared ~1)."""
UV_PAD = 0.02
"""Fraction of the UV bounding box's extent added on each side before mapping it to [-1, 1]."""


@dataclass(frozen=True, eq=False)
class Layout:
    """A fixed set of G Gaussian sites on a mesh topology (arrays read-only; compared by identity).

    face_ids: (G,) int64 parent triangle, sorted ascending (stable) for memory locality.
    barycentric: (G, 3) float32, rows sum to 1, all >= 0 (weights of the parent's corners v0, v1, v2).
    uv: (G, 2) float32 in [-1, 1], where the site reads UV maps, as torch grid_sample coordinates
        (x = u; y = 1 - 2 v_norm, so v up and image row 0 is the top).
    """

    face_ids: np.ndarray
    barycentric: np.ndarray
    uv: np.ndarray


def sample_layout(vertices: np.ndarray, faces: np.ndarray, count: int, seed: int = 0,
                  face_uvs: np.ndarray | None = None) -> Layout:
    """Draw `count` sites area-uniformly over the template surface, deterministic by `seed`.

    vertices: (V, 3) float, the template mesh (mm); faces: (F, 3) int vertex ids; count >= 1;
    face_uvs: (F, 3, 2) float per-corner texture coordinates (u right, v up), or None.
    With face_uvs, a site's uv interpolates its face's corner UVs, then the bounding box of the corner UVs
    of every face carrying a site, padded by UV_PAD per side, is stretched to [-1, 1] (the head uses a
    fraction of the atlas; cropping keeps the generator's resolution on it). Without, a cylindrical
    projection about the vertical (y) axis through the template's bounding-box centre: u = atan2(x, z) / pi
    (0 where the face looks, +z; the seam, u = +-1, runs down the back of the head), v from y over the
    bounding box (top of the head at y = -1). Raises InputError on bad input.
    """
    v, f, n = _check_mesh(vertices, faces, count)
    tri = v[f]
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if not areas.sum() > 0:
        raise InputError("vertices", "the mesh has zero surface area; nothing to sample")
    face_ids, bary = sample_barycentrics(areas, n, np.random.default_rng(seed))
    order = np.argsort(face_ids, kind="stable")
    face_ids, bary = face_ids[order], bary[order]
    if face_uvs is None:
        uv = _cylindrical_uv(v, np.einsum("gk,gkd->gd", bary, tri[face_ids]))
    else:
        uv = _atlas_uv(_check_face_uvs(face_uvs, len(f)), face_ids, bary)
    return Layout(_readonly(face_ids.astype(np.int64)), _readonly(bary.astype(np.float32)),
                  _readonly(np.clip(uv, -1.0, 1.0).astype(np.float32)))


def _check_mesh(vertices, faces, count) -> tuple[np.ndarray, np.ndarray, int]:
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise InputError("vertices", f"expected a non-empty (V, 3) array, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise InputError("vertices", "contains NaN or infinite coordinates")
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0 or not np.issubdtype(f.dtype, np.integer):
        raise InputError("faces", f"expected a non-empty (F, 3) integer array, got shape {f.shape} {f.dtype}")
    if f.min() < 0 or f.max() >= len(v):
        raise InputError("faces", f"vertex ids must be in [0, {len(v)}), got [{f.min()}, {f.max()}]")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise InputError("count", f"expected an integer >= 1, got {count!r}")
    return v, f.astype(np.int64), int(count)


def _check_face_uvs(face_uvs, n_faces: int) -> np.ndarray:
    uvs = np.asarray(face_uvs, dtype=np.float64)
    if uvs.shape != (n_faces, 3, 2):
        raise InputError("face_uvs", f"expected shape ({n_faces}, 3, 2), got {uvs.shape}")
    if not np.isfinite(uvs).all():
        raise InputError("face_uvs", "contains NaN or infinite coordinates")
    return uvs


def _atlas_uv(face_uvs: np.ndarray, face_ids: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Interpolated corner UVs, with the used faces' padded UV box mapped to [-1, 1] -> (G, 2) float64."""
    uv = np.einsum("gk,gkd->gd", bary, face_uvs[face_ids])
    corners = face_uvs[np.unique(face_ids)].reshape(-1, 2)
    lo, hi = corners.min(0), corners.max(0)
    extent = np.where(hi > lo, hi - lo, 1.0)  # all sites at one UV: any scale maps them to the centre
    lo, extent = lo - UV_PAD * extent, extent * (1 + 2 * UV_PAD)
    return _to_grid((uv - lo) / extent)


def _cylindrical_uv(vertices: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Cylindrical (u, v) of points (G, 3) about the template's vertical centre line -> (G, 2) float64."""
    lo, hi = vertices.min(0), vertices.max(0)
    d = points - (lo + hi) / 2
    u = np.arctan2(d[:, 0], d[:, 2]) / np.pi  # in [-1, 1] already; +-1 (the seam) behind the head
    height = hi[1] - lo[1] if hi[1] > lo[1] else 1.0
    return np.stack([u, 1.0 - 2.0 * (points[:, 1] - lo[1]) / height], axis=1)


def _to_grid(unit: np.ndarray) -> np.ndarray:
    """(G, 2) normalised (u, v) in [0, 1], v up -> grid_sample coordinates (x = 2u - 1, y = 1 - 2v)."""
    return np.stack([2.0 * unit[:, 0] - 1.0, 1.0 - 2.0 * unit[:, 1]], axis=1)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def triangle_frames(vertices: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local frames of the triangles of a batch of meshes.

    vertices: (B, V, 3) float; faces: (F, 3) int64 vertex ids (same device).
    Returns rotation (B, F, 3, 3), columns (e0, n, e0 x n) (right-handed, det +1; see the module);
    size (B, F), (|v1 - v0| + height of v2 over the line v0 v1) / 2; normal (B, F, 3), the unit normal.
    Lengths are floored at EPS before dividing, so degenerate triangles give finite values, not NaN.
    """
    _check_vertices_faces(vertices, faces)
    tri = vertices[:, faces]  # (B, F, 3 corners, 3)
    edge, other = tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0]
    cross = torch.linalg.cross(edge, other, dim=-1)
    edge_len, double_area = _safe_norm(edge), _safe_norm(cross)
    e0, normal = edge / edge_len[..., None], cross / double_area[..., None]
    rotation = torch.stack([e0, normal, torch.linalg.cross(e0, normal, dim=-1)], dim=-1)
    size = (edge_len + double_area / edge_len) / 2  # height = twice the area / base
    return rotation, size, normal


def _safe_norm(x: torch.Tensor) -> torch.Tensor:
    # sqrt of a floored square: finite value and gradient even at zero length
    return (x * x).sum(-1).clamp_min(EPS).sqrt()


def bind(vertices: torch.Tensor, faces: torch.Tensor, face_ids: torch.Tensor, barycentric: torch.Tensor,
         offset: torch.Tensor, local_quats: torch.Tensor,
         local_log_scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World-space Gaussians from their triangle-local parameters (see the module for the formulas).

    vertices: (B, V, 3) float, the deformed meshes; faces: (F, 3) int64; face_ids: (G,) int64 parent
    triangles (not range-checked: that would cost a device sync per call; `sample_layout` makes valid ones);
    barycentric: (G, 3) float; offset: (G,) or (B, G) float, along the unit normal in triangle sizes;
    local_quats: (G, 4) or (B, G, 4) float wxyz, any non-zero norm, rotation in the triangle's frame;
    local_log_scales: (G, 3) or (B, G, 3) float, log standard deviations in triangle sizes.
    Returns means (B, G, 3), quats (B, G, 4) unit wxyz with w >= 0 (of R_tri @ R_local), scales (B, G, 3)
    linear. Differentiable in every float argument.
    """
    _check_vertices_faces(vertices, faces)
    B, G = vertices.shape[0], _check_sites(face_ids, barycentric)
    offset = _per_item(offset, "offset", B, G, ())
    local_quats = _per_item(local_quats, "local_quats", B, G, (4,))
    local_log_scales = _per_item(local_log_scales, "local_log_scales", B, G, (3,))
    parents = faces[face_ids]  # (G, 3): frames only for the bound triangles
    rotation, size, normal = triangle_frames(vertices, parents)
    on_surface = torch.einsum("gk,bgkd->bgd", barycentric.to(vertices.dtype), vertices[:, parents])
    means = on_surface + (size * offset)[..., None] * normal
    quats = matrix_to_quat(rotation @ quat_to_rotmat(local_quats))
    scales = size[..., None] * local_log_scales.exp()
    return means, quats, scales


def _check_vertices_faces(vertices: torch.Tensor, faces: torch.Tensor) -> None:
    if vertices.ndim != 3 or vertices.shape[-1] != 3 or not vertices.is_floating_point():
        raise InputError("vertices", f"expected a (B, V, 3) float tensor, got {tuple(vertices.shape)} {vertices.dtype}")
    if faces.ndim != 2 or faces.shape[-1] != 3 or faces.is_floating_point() or faces.dtype == torch.bool:
        raise InputError("faces", f"expected an (F, 3) integer tensor, got {tuple(faces.shape)} {faces.dtype}")


def _check_sites(face_ids: torch.Tensor, barycentric: torch.Tensor) -> int:
    if face_ids.ndim != 1 or face_ids.is_floating_point() or face_ids.dtype == torch.bool:
        raise InputError("face_ids", f"expected a (G,) integer tensor, got {tuple(face_ids.shape)} {face_ids.dtype}")
    if tuple(barycentric.shape) != (len(face_ids), 3):
        raise InputError("barycentric", f"expected shape ({len(face_ids)}, 3), got {tuple(barycentric.shape)}")
    return len(face_ids)


def _per_item(x: torch.Tensor, name: str, B: int, G: int, tail: tuple[int, ...]) -> torch.Tensor:
    """Shared (G, *tail) or per-item (B, G, *tail) parameters -> (B, G, *tail) (a broadcast view, no copy)."""
    if tuple(x.shape) not in ((G, *tail), (B, G, *tail)):
        want = ", ".join(str(t) for t in tail)
        raise InputError(name, f"expected shape ({G}{', ' + want if tail else ''}) or ({B}, {G}"
                               f"{', ' + want if tail else ''}), got {tuple(x.shape)}")
    return x.expand(B, G, *tail)


def sample_maps(maps: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear reads of UV-space maps at the sites.

    maps: (B, C, H, W) float; uv: (G, 2) float in [-1, 1], grid_sample coordinates (x across columns,
    y down the rows; align_corners=False, so -1 and 1 are the outer edges of the border pixels; outside,
    the border pixels repeat). Returns (B, G, C) in maps' dtype, differentiable in maps (and uv).
    """
    if maps.ndim != 4 or not maps.is_floating_point():
        raise InputError("maps", f"expected a (B, C, H, W) float tensor, got {tuple(maps.shape)} {maps.dtype}")
    if uv.ndim != 2 or uv.shape[-1] != 2:
        raise InputError("uv", f"expected a (G, 2) tensor, got {tuple(uv.shape)}")
    grid = uv.to(maps.dtype).expand(len(maps), 1, -1, 2)  # (B, 1, G, 2): a 1 x G "image" of reads
    out = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0].transpose(1, 2)  # (B, C, 1, G) -> (B, G, C)
