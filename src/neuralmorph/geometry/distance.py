"""Distances between point sets and to triangle meshes.

KD-trees (scipy cKDTree, all cores) for point-to-point; libigl's exact AABB queries for point-to-mesh.
trimesh.proximity is avoided on purpose: it is two orders of magnitude slower for bulk queries.
"""

from __future__ import annotations

import igl
import numpy as np
from scipy.spatial import cKDTree


def _points(x: np.ndarray, name: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"{name} must be (N, 3), got {x.shape}")
    return x


def _mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = _points(vertices, "vertices")
    f = np.ascontiguousarray(faces, dtype=np.int64)
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise ValueError(f"faces must be a non-empty (F, 3) array, got {f.shape}")
    return v, f


def nearest_neighbors(query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query point, the closest reference point.

    query: (P, 3) float64; reference: (Q, 3) float64, Q >= 1.
    Returns Euclidean distances (P,) float64 and reference ids (P,) int64.
    """
    q = _points(query, "query")
    r = _points(reference, "reference")
    if len(r) == 0:
        raise ValueError("reference set is empty")
    dist, idx = cKDTree(r).query(q, k=1, workers=-1)
    return np.asarray(dist, dtype=np.float64), np.asarray(idx, dtype=np.int64)


def closest_points(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact closest point on a triangle mesh for each query point.

    points: (P, 3) float64; vertices: (V, 3) float64; faces: (F, 3) int64.
    Returns closest points (P, 3) float64, unsigned distances (P,) float64, face ids (P,) int64.
    """
    p = _points(points, "points")
    v, f = _mesh(vertices, faces)
    if len(p) == 0:
        return np.zeros((0, 3)), np.zeros(0), np.zeros(0, np.int64)
    sq, fid, closest = igl.point_mesh_squared_distance(p, v, f)
    return closest, np.sqrt(np.maximum(sq, 0.0)), fid.astype(np.int64)


def signed_distance(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Exact signed distance to a mesh, positive outside (sign from igl's angle-weighted pseudonormal).

    points: (P, 3) float64; vertices: (V, 3) float64; faces: (F, 3) int64, consistently wound and
    ideally closed; on open or inconsistently wound meshes the sign is only meaningful near the surface.
    Returns (P,) float64.
    """
    p = _points(points, "points")
    v, f = _mesh(vertices, faces)
    if len(p) == 0:
        return np.zeros(0)
    s, _, _, _ = igl.signed_distance(p, v, f, sign_type=igl.SIGNED_DISTANCE_TYPE_PSEUDONORMAL)
    return np.asarray(s, dtype=np.float64)


def distance_to_mesh(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """One-sided distance of points (P, 3) float to a mesh (vertices (V, 3), faces (F, 3) int): (P,)
    float64, the same units; infinite everywhere when the mesh has no faces (nothing was fitted)."""
    if len(faces) == 0:
        return np.full(len(points), np.inf)
    _, dist, _ = closest_points(np.asarray(points, np.float64), vertices, faces)
    return dist
