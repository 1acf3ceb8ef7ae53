"""Depth and normal images by ray casting (Embree through trimesh), and back-projection.

Embree finds which triangle each pixel ray hits first (in float32); the hit distance is then recomputed
in float64 from the triangle's plane, so depths are exact to float64 rounding and a plane at z = d
renders as d everywhere.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import trimesh

from .camera import Camera

try:  # embreex is a hard dependency on x86_64; elsewhere fall back to trimesh's (very slow) engine
    from trimesh.ray.ray_pyembree import RayMeshIntersector as _Intersector

    HAVE_EMBREE = True
except ImportError:  # pragma: no cover - exercised only without embreex
    from trimesh.ray.ray_triangle import RayMeshIntersector as _Intersector

    HAVE_EMBREE = False


class RayCaster:
    """First-hit ray casting against one mesh, the acceleration structure built once for many views.

    vertices: (V, 3) float64; faces: (F, 3) int64 (at least one face).
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        v = np.ascontiguousarray(vertices, dtype=np.float64)
        f = np.ascontiguousarray(faces, dtype=np.int64)
        if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
            raise ValueError(f"expected (V,3) vertices and (F,3) faces, got {v.shape} and {f.shape}")
        if len(f) == 0:
            raise ValueError("cannot ray cast a point cloud (no faces)")
        if not HAVE_EMBREE:
            warnings.warn("embreex is not installed: ray casting falls back to a pure-Python engine "
                          "that is ~1000x slower", RuntimeWarning, stacklevel=2)
        self._intersector = _Intersector(trimesh.Trimesh(vertices=v, faces=f, process=False, validate=False))
        self._v0 = v[f[:, 0]]
        self._plane_n = np.cross(v[f[:, 1]] - self._v0, v[f[:, 2]] - self._v0)  # (F, 3) un-normalised
        norms = np.linalg.norm(self._plane_n, axis=1, keepdims=True)
        self.face_normals = np.divide(self._plane_n, norms, out=np.zeros_like(self._plane_n), where=norms > 0)
        self._centre = 0.5 * (v.min(axis=0) + v.max(axis=0))
        self._radius = np.sqrt(((v - self._centre) ** 2).sum(axis=1).max()) * (1 + 1e-9) + 1e-9

    def cast(self, camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Hits of one view, sorted by pixel.

        Returns pixel ids (K,) int64 (row-major), face ids (K,) int64, ray lengths t (K,) float64 and
        unit world ray directions (K, 3) float64; the hit point is camera.position + t * direction.
        """
        return self.cast_rays(camera.position, camera._unit_dirs_cam @ camera.rotation)

    def cast_rays(self, origin: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """First hits of rays from one origin (3,) along unit world directions (N, 3) float64.

        Returns ray ids (K,) int64 (sorted), face ids (K,), ray lengths t (K,) and the hit rays'
        directions (K, 3); the hit point is origin + t * direction.
        """
        origin = np.asarray(origin, dtype=np.float64)
        dirs = np.asarray(directions, dtype=np.float64)
        # rays that miss the mesh's bounding sphere cannot hit it: skip them before Embree sees them
        oc = self._centre - origin
        along = dirs @ oc
        cand = np.flatnonzero((oc @ oc - along**2 <= self._radius**2) & (along > -self._radius))
        d = dirs[cand]
        o = np.broadcast_to(origin, d.shape)
        tri, ray = self._intersector.intersects_id(o, d, multiple_hits=False, return_locations=False)
        ray = np.asarray(ray, dtype=np.int64)
        order = np.argsort(ray, kind="stable")
        ray, fid = ray[order], np.asarray(tri, dtype=np.int64)[order]
        pix, d = cand[ray], d[ray]
        # float64 distance to the hit face's plane: Embree only decides which face is hit
        n = self._plane_n[fid]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.einsum("ij,ij->i", n, self._v0[fid] - origin) / np.einsum("ij,ij->i", n, d)
        # grazing or degenerate hits have no stable plane distance; treat them as misses
        good = np.isfinite(t) & (t > 0)
        return pix[good], fid[good], t[good], d[good]


def render_depths(
    vertices: np.ndarray, faces: np.ndarray, cameras: Sequence[Camera]
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`render_depth` for several cameras, building the acceleration structure once."""
    caster = RayCaster(vertices, faces)
    out = []
    for cam in cameras:
        pix, fid, t, d = caster.cast(cam)
        size = cam.height * cam.width
        depth = np.full(size, np.nan)
        # camera z of the hit = t * (unit ray direction's z in the camera frame)
        depth[pix] = t * (d @ cam.rotation[2])
        normals = np.full((size, 3), np.nan)
        normals[pix] = caster.face_normals[fid]
        face_idx = np.full(size, -1, dtype=np.int64)
        face_idx[pix] = fid
        shape = (cam.height, cam.width)
        out.append((depth.reshape(shape), normals.reshape(shape + (3,)), face_idx.reshape(shape)))
    return out


def render_depth(
    vertices: np.ndarray, faces: np.ndarray, camera: Camera
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-cast one view of a mesh: first hit per pixel centre.

    vertices: (V, 3) float64; faces: (F, 3) int64; camera: the view (H, W from camera).
    Returns depth (H, W) float64 camera z (NaN where nothing is hit), normals (H, W, 3) float64
    world-space unit face normals oriented by the winding (NaN where nothing is hit), and
    face ids (H, W) int64 (-1 where nothing is hit).
    """
    return render_depths(vertices, faces, [camera])[0]


def backproject(
    depth: np.ndarray, camera: Camera, normals: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Lift valid pixels (finite depth > 0) of a depth image back to world points.

    depth: (H, W) float64 camera z; normals: optional (H, W, 3) per-pixel vectors carried along.
    Returns points (K, 3) float64 in world coordinates, row-major pixel order, and normals (K, 3) or None.
    """
    d = np.asarray(depth, dtype=np.float64)
    if d.shape != (camera.height, camera.width):
        raise ValueError(f"depth must be {(camera.height, camera.width)}, got {d.shape}")
    flat = d.reshape(-1)
    valid = np.isfinite(flat) & (flat > 0)
    pc = camera._pixel_dirs_cam[valid] * flat[valid, None]  # z = 1 rays scaled by depth
    pts = (pc - camera.world_to_camera[:3, 3]) @ camera.rotation  # R^T (p - t)
    nrm = None
    if normals is not None:
        nrm = np.asarray(normals, dtype=np.float64).reshape(-1, 3)[valid]
    return pts, nrm
