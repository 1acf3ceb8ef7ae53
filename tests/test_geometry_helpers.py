"""Geometry helpers shared by the models, fitting and evaluation: FPS, barycentrics, adjacency, boundaries,
rotation vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from neuralmorph.geometry import (barycentric, boundary_edges, farthest_point_sampling, k_ring, neck_plane,
                                  rotvec_to_matrix, rotvec_to_matrix_torch, sample_barycentrics, vertex_adjacency,
                                  vertex_neighbours)

TETRA = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]])


def open_square(n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """An n x n grid of unit squares in z = 0, two triangles each: (V, 3) float64, (F, 3) int64."""
    xs, ys = np.meshgrid(np.arange(n + 1.0), np.arange(n + 1.0), indexing="xy")
    v = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], axis=1)
    f = []
    for j in range(n):
        for i in range(n):
            a = j * (n + 1) + i
            f += [[a, a + 1, a + n + 2], [a, a + n + 2, a + n + 1]]
    return v, np.array(f, np.int64)


# ---------------------------------------------------------------- farthest-point sampling

def test_fps_starts_where_told_and_spreads():
    corners = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [10, 10, 0]], float)
    cluster = np.random.default_rng(0).normal(scale=0.1, size=(50, 3)) + 5.0
    pts = np.concatenate([cluster, corners])
    got = farthest_point_sampling(pts, 5, start=50)
    assert got.dtype == np.int64 and got[0] == 50
    assert set(got[:4].tolist()) == {50, 51, 52, 53}   # the corners before anything in the cluster
    assert len(set(got.tolist())) == 5
    assert len(farthest_point_sampling(pts, 100)) == len(pts)
    assert len(farthest_point_sampling(pts, 0)) == 0


def test_fps_default_start_is_nearest_centroid_and_chosen_is_avoided():
    pts = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0]], float)
    assert farthest_point_sampling(pts, 1)[0] == 2
    got = farthest_point_sampling(pts, 2, chosen=np.array([[0.0, 0, 0]]))
    assert got.tolist() == [4, 2]   # no start: farthest from the chosen point first


# ---------------------------------------------------------------- barycentric coordinates

@pytest.mark.parametrize("simplex", [False, True])
def test_barycentric_reconstructs_points_and_sums_to_one(simplex):
    rng = np.random.default_rng(1)
    tris = rng.normal(size=(200, 3, 3))
    w = rng.dirichlet(np.ones(3), 200)
    p = np.einsum("pk,pkc->pc", w, tris)
    got = barycentric(p, tris, simplex=simplex)
    assert got.shape == (200, 3) and got.dtype == np.float64
    np.testing.assert_allclose(got, w, atol=1e-9)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.einsum("pk,pkc->pc", got, tris), p, atol=1e-9)


def test_barycentric_modes_differ_outside_and_on_degenerate_triangles():
    tri = np.array([[[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 0, 0], [0, 0, 0], [0, 0, 0]]], float)
    p = np.array([[-0.5, 0.25, 0], [0, 0, 0]], float)
    clipped, simplex = barycentric(p, tri), barycentric(p, tri, simplex=True)
    np.testing.assert_allclose(clipped[0], [1.0, 0.0, 0.25])        # each weight clipped to [0, 1]
    np.testing.assert_allclose(simplex[0], [1.25 / 1.5, 0.0, 0.25 / 1.5])  # clipped at 0, renormalised
    np.testing.assert_allclose(simplex[1], [1 / 3] * 3)


def test_sample_barycentrics_lie_in_triangles_and_skip_zero_area():
    face, w = sample_barycentrics(np.array([1.0, 0.0, 3.0]), 1000, np.random.default_rng(2))
    assert face.dtype == np.int64 and w.shape == (1000, 3)
    assert set(face.tolist()) <= {0, 2}
    assert (w >= 0).all() and np.allclose(w.sum(1), 1.0)


# ---------------------------------------------------------------- adjacency and rings

def test_tetrahedron_adjacency_and_neighbours():
    a = vertex_adjacency(TETRA, 4)
    np.testing.assert_array_equal(a.toarray(), np.ones((4, 4)) - np.eye(4))
    np.testing.assert_array_equal(vertex_adjacency(TETRA, 4, self_loops=True).toarray(), np.ones((4, 4)))
    nb = vertex_neighbours(TETRA, 5)
    assert [x.tolist() for x in nb] == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2], []]


def test_k_rings_grow_by_one_edge_per_hop():
    v, f = open_square(4)   # 5 x 5 vertices; diagonals make a corner's rings run along them
    a = vertex_adjacency(f, len(v))
    seed = np.zeros(len(v), bool)
    seed[0] = True
    np.testing.assert_array_equal(k_ring(a, seed, 0), seed)
    assert np.flatnonzero(k_ring(a, seed, 1)).tolist() == [0, 1, 5, 6]
    two = k_ring(a, seed, 2)
    assert two.sum() == 9 and two[12] and not two[3]
    assert k_ring(a, seed, 10).all()


# ---------------------------------------------------------------- boundaries

def test_boundary_edges_of_an_open_square_mesh():
    v, f = open_square(3)
    edges = boundary_edges(f)
    assert edges.dtype == np.int64 and len(edges) == 12 and (edges[:, 0] < edges[:, 1]).all()
    on_rim = (v[:, 0] % 3 == 0) | (v[:, 1] % 3 == 0)
    assert set(np.unique(edges).tolist()) == set(np.flatnonzero(on_rim).tolist())
    assert len(boundary_edges(TETRA)) == 0
    centre, normal = neck_plane(v, f)
    np.testing.assert_allclose(centre, [1.5, 1.5, 0.0])
    np.testing.assert_allclose(np.abs(normal), [0, 0, 1], atol=1e-12)


# ---------------------------------------------------------------- rotation vectors

@pytest.mark.parametrize("scale", [0.0, 1e-9, 1e-3, 1.0, 3.0])
def test_rotation_vectors_match_scipy(scale):
    rng = np.random.default_rng(3)
    for _ in range(20):
        w = rng.normal(size=3) * scale
        ref = Rotation.from_rotvec(w).as_matrix()
        r = rotvec_to_matrix(w)
        rt = rotvec_to_matrix_torch(torch.tensor(w, dtype=torch.float64))
        assert rt.dtype == torch.float64 and rt.shape == (3, 3)
        for m in (r, rt.numpy()):
            np.testing.assert_allclose(m, ref, atol=1e-9)
            np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12)


def test_torch_rotation_is_differentiable_at_zero():
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    rotvec_to_matrix_torch(w)[0, 1].backward()
    np.testing.assert_allclose(w.grad.numpy(), [0, 0, -1])
