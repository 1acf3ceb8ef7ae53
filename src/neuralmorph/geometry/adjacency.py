"""Vertex adjacency of triangle meshes: edges, sparse adjacency, neighbour lists and k-ring growth."""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix, eye


def face_edges(faces: np.ndarray) -> np.ndarray:
    """The three directed edges of every face, all first edges, then all second, then all third.

    faces: (F, 3) int. Returns (3F, 2) int64 vertex pairs (0→1, 1→2, 2→0 of each face).
    """
    f = np.asarray(faces, np.int64)
    return np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])


def vertex_adjacency(faces: np.ndarray, n: int, self_loops: bool = False) -> csr_matrix:
    """Symmetric 0/1 vertex adjacency from the triangle edges.

    faces: (F, 3) int; n: vertex count. Returns an (n, n) float64 CSR matrix, 1 where two vertices share
    an edge; with `self_loops`, plus the identity (1 on the diagonal).
    """
    e = face_edges(faces)
    a = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)).tocsr()
    a = ((a + a.T) > 0).astype(np.float64)
    return a + eye(n) if self_loops else a


def vertex_neighbours(faces: np.ndarray, n: int) -> list[np.ndarray]:
    """Each vertex's 1-ring neighbours (from the triangle edges).

    faces: (F, 3) int; n: vertex count. Returns n sorted (k_i,) int64 arrays (empty for unused vertices).
    """
    e = face_edges(faces)
    e = np.concatenate([e, e[:, ::-1]])
    e = np.unique(e, axis=0)
    split = np.searchsorted(e[:, 0], np.arange(n + 1))
    return [e[split[i]:split[i + 1], 1] for i in range(n)]


def k_ring(adjacency: csr_matrix, mask: np.ndarray, k: int) -> np.ndarray:
    """Grow a vertex set by `k` rings of neighbours.

    adjacency: (N, N) sparse (`vertex_adjacency`); mask: (N,) bool seed vertices; k >= 0.
    Returns (N,) bool: the seeds and every vertex within k edges of one.
    """
    ring = np.asarray(mask, bool)
    for _ in range(k):
        ring = ring | (adjacency @ ring.astype(np.float64) > 0)
    return ring
