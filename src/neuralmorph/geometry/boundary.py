"""Open boundaries of triangle meshes: rim edges, whether closest points lie on a rim, the neck-cut plane."""

from __future__ import annotations

import numpy as np

from .adjacency import face_edges
from .barycentric import barycentric
from .distance import closest_points


def boundary_edges(faces: np.ndarray) -> np.ndarray:
    """The edges that belong to exactly one face (the open rims).

    faces: (F, 3) int. Returns (E, 2) int64 vertex pairs, each sorted (low, high), rows in lexicographic order.
    """
    e = np.sort(face_edges(faces), axis=1)
    uniq, count = np.unique(e, axis=0, return_counts=True)
    return uniq[count == 1]


def on_boundary(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                edges: np.ndarray | None = None, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """For each point, whether its closest point on the mesh lies on an open boundary, and the distance.

    points: (P, 3) float64; vertices: (V, 3) float64; faces: (F, 3) int64; edges: (E, 2) int64 from
    `boundary_edges` (computed when None); eps: barycentric tolerance.
    Returns on_rim (P,) bool and distances (P,) float64 (the vertices' units, mm).
    The closest point is on the rim when it sits on a boundary edge (barycentric weight of the opposite
    corner ~0) or on a boundary vertex.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    edges = boundary_edges(f) if edges is None else edges
    closest, dist, fid = closest_points(points, v, f)
    if len(edges) == 0 or len(points) == 0:
        return np.zeros(len(points), bool), dist
    tri = f[fid]
    bary = barycentric(closest, v[tri])
    n = len(v)
    keys = set((edges[:, 0] * n + edges[:, 1]).tolist())
    rim_vertex = np.zeros(n, bool)
    rim_vertex[edges.ravel()] = True
    rim = np.zeros(len(points), bool)
    for k in range(3):  # the edge opposite corner k, and corner k itself
        a, b = tri[:, (k + 1) % 3], tri[:, (k + 2) % 3]
        key = np.minimum(a, b) * n + np.maximum(a, b)
        is_rim_edge = np.fromiter((int(x) in keys for x in key), bool, len(key))
        rim |= (bary[:, k] < eps) & is_rim_edge
        rim |= (bary[:, k] > 1.0 - eps) & rim_vertex[tri[:, k]]
    return rim, dist


def neck_plane(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The plane of a head's neck cut: (point (3,), unit normal (3,) pointing into the head), or None.

    vertices: (V, 3) float64; faces: (F, 3) int64. Fitted (least squares) to the vertices of the longest
    open boundary loop; None for a closed mesh.
    """
    v = np.asarray(vertices, dtype=np.float64)
    edges = boundary_edges(faces)
    if len(edges) < 3:
        return None
    # connected components of the boundary edges; the largest is the neck loop
    parent = np.arange(len(v))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in edges:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[ra] = rb
    ids = np.unique(edges)
    roots = np.array([root(int(i)) for i in ids])
    labels, counts = np.unique(roots, return_counts=True)
    loop = ids[roots == labels[np.argmax(counts)]]
    pts = v[loop]
    centre = pts.mean(axis=0)
    normal = np.linalg.svd(pts - centre)[2][-1]
    if np.dot(v.mean(axis=0) - centre, normal) < 0:
        normal = -normal
    return centre, normal
