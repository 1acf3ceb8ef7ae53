import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from neuralmorph.geometry.sampling import sample_surface
from neuralmorph.frame import Frame, Similarity, icp_similarity, umeyama


def _known_similarity(seed=0):
    rng = np.random.default_rng(seed)
    rot = Rotation.from_rotvec(rng.normal(size=3)).as_matrix()
    return Similarity(1.7, rot, np.array([12.0, -30.0, 5.5]))


def test_umeyama_recovers_known_similarity_to_1e5():
    truth = _known_similarity()
    src = np.random.default_rng(1).normal(size=(50, 3)) * 40
    found = umeyama(src, truth.apply(src))
    assert abs(found.scale - truth.scale) < 1e-5
    np.testing.assert_allclose(found.rotation, truth.rotation, atol=1e-5)
    np.testing.assert_allclose(found.translation, truth.translation, atol=1e-5)


def test_umeyama_rigid_and_reflection_safe():
    src = np.random.default_rng(2).normal(size=(20, 3))
    mirrored = src * np.array([-1.0, 1.0, 1.0])  # best fit would be a reflection; we must return a rotation
    found = umeyama(src, mirrored, with_scale=False)
    assert found.scale == 1.0
    assert np.linalg.det(found.rotation) == pytest.approx(1.0)


def test_umeyama_rejects_degenerate_input():
    with pytest.raises(ValueError, match="collinear"):
        umeyama(np.outer(np.arange(5.0), [1, 2, 3]), np.outer(np.arange(5.0), [1, 2, 3]))
    with pytest.raises(ValueError, match="at least 3"):
        umeyama(np.zeros((2, 3)), np.zeros((2, 3)))


def test_similarity_algebra():
    a, b = _known_similarity(0), _known_similarity(3)
    pts = np.random.default_rng(4).normal(size=(10, 3))
    np.testing.assert_allclose(a.inverse().apply(a.apply(pts)), pts, atol=1e-10)
    np.testing.assert_allclose(a.compose(b).apply(pts), a.apply(b.apply(pts)), atol=1e-10)
    c = Similarity.from_matrix(a.matrix)
    np.testing.assert_allclose(c.matrix, a.matrix, atol=1e-12)


def test_icp_recovers_similarity_of_a_partial_surface():
    # An ellipsoid is asymmetric enough to pin down the rotation; drop a third of it to make it partial.
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    mesh.apply_scale([90.0, 120.0, 100.0])
    pts, _, _ = sample_surface(mesh.vertices, mesh.faces, 3000, seed=0)
    pts = pts[pts[:, 2] > -40]
    truth = Similarity(1.05, Rotation.from_euler("xyz", [8, -12, 5], degrees=True).as_matrix(), np.array([5.0, -8.0, 3.0]))
    result = icp_similarity(truth.apply(pts), mesh.vertices, mesh.faces)
    recovered = result.transform.compose(truth)  # samples lie exactly on the surface: should be the identity
    assert abs(recovered.scale - 1) < 1e-5
    np.testing.assert_allclose(recovered.rotation, np.eye(3), atol=1e-5)
    np.testing.assert_allclose(recovered.translation, 0.0, atol=1e-5)
    assert result.rmse_mm < 1e-5


def test_frame_round_trip_and_validation():
    rot = Rotation.from_euler("y", 30, degrees=True).as_matrix()
    frame = Frame(np.array([1.0, 2.0, 3.0]), rot, 110.0)
    pts = np.random.default_rng(5).normal(size=(7, 3)) * 100
    np.testing.assert_allclose(frame.to_mm(frame.to_canonical(pts)), pts, atol=1e-9)
    assert Frame.from_dict(frame.as_dict()).mm_per_unit == 110.0
    with pytest.raises(ValueError):
        Frame(np.zeros(3), np.diag([1.0, 1.0, -1.0]), 1.0)
    with pytest.raises(ValueError):
        Frame(np.zeros(3), np.eye(3), 0.0)


def test_frame_fit_spans_unit_cube():
    verts = np.random.default_rng(6).uniform([-80, 1400, -90], [80, 1650, 110], size=(500, 3))
    can = Frame.fit(verts).to_canonical(verts)
    assert np.abs(can).max() == pytest.approx(1.0)
