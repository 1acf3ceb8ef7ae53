"""Real-data evaluation internals on fake SIMPOP-like / james-like targets made from a small PCA model.

No network and no data cache: targets are decoded from the model itself, cropped, posed and given
landmarks, so alignment, fit, crop and scoring must recover a known answer.
"""

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from neuralmorph.data.synth import SynthConfig, synthesize
from neuralmorph.errors import InputError
from neuralmorph.evaluation.protocol import Protocol
from neuralmorph.commands.evaluate import RealEvalConfig, run_real_eval
from neuralmorph.evaluation.real import (LANDMARK_KEY, WHOLE_KEY, RealSettings, RealTarget,
                                         boundary_edges, crop_to_extent, evaluate_real, fit_real_target,
                                         neck_plane, on_boundary, region_faces, shared_landmarks,
                                         target_strips)
from neuralmorph.fitting.loop import FitConfig
from neuralmorph.frame import Similarity
from neuralmorph.geometry.mesh import Mesh
from neuralmorph.models.pca import PCAConfig, PCAModel

FAST = RealSettings(n_points=2_000, fit=FitConfig(steps=60, pose_warmup=10),
                    protocol=Protocol(kind="points", n_points=20_000))
POSE = Similarity(1.0, Rotation.from_euler("xyz", [8, -20, 5], degrees=True).as_matrix(), np.array([30.0, -12.0, 250.0]))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    data = synthesize(SynthConfig(out=tmp_path_factory.mktemp("real") / "data", subjects=6, expressions=2,
                                  scans=False), progress=False)
    return PCAModel.build(data, PCAConfig(identity_dims=4, expression_dims=2))


def _head(model) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model.decode(model.sample(1, temperature=0.8, seed=3))[0].double().numpy()


def _submesh(v, f, keep):
    used, inv = np.unique(f[keep], return_inverse=True)
    return Mesh(v[used], inv.reshape(-1, 3)), used


def _face_mask_target(model) -> tuple[RealTarget, np.ndarray]:
    """A SIMPOP-like target: the model's face region of a sampled head, posed, 49-ish landmarks."""
    v, f = _head(model), model.faces.numpy()
    mesh, used = _submesh(v, f, region_faces(model, "face"))
    lm_vertex = model.landmark_ids.numpy()
    ibug = np.array([i for i in range(68) if (i == 8 or i >= 17) and np.isin(lm_vertex[i], used)])
    assert len(ibug) > 30
    rows = np.searchsorted(used, lm_vertex[ibug])
    posed = Mesh(POSE.apply(mesh.vertices), mesh.faces)
    return RealTarget("fake-mask", posed, posed.vertices[rows], ibug, "face mask", region="face"), v


def test_boundary_helpers():
    # two triangles forming a square: 4 rim edges, the diagonal is interior
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    assert len(boundary_edges(f)) == 4
    pts = np.array([[0.5, 0.5, 1.0],    # above the middle: interior
                    [2.0, 0.5, 0.0],    # beyond the right edge: on the rim
                    [-1.0, -1.0, 0.3],  # beyond a corner: rim vertex
                    [0.3, 0.6, -0.2]])
    rim, d = on_boundary(pts, v, f)
    assert rim.tolist() == [False, True, True, False]
    assert np.allclose(d[[0, 3]], [1.0, 0.2])


def test_neck_plane_points_into_the_head(model):
    v, f = model.mean.numpy().astype(float), model.faces.numpy()
    centre, normal = neck_plane(v, f)
    assert np.isclose(np.linalg.norm(normal), 1.0)
    # the head is above the neck cut: nearly every vertex on the positive side, the normal roughly +y
    assert ((v - centre) @ normal >= -1e-6).mean() > 0.97
    assert normal[1] > 0.7
    assert neck_plane(*_closed_tetra()) is None


def _closed_tetra():
    return np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float), np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


def test_crop_drops_what_the_other_surface_lacks(model):
    v, f = model.mean.numpy().astype(float), model.faces.numpy()
    face = region_faces(model, "face")
    mask, _ = _submesh(v, f, face)
    kept = crop_to_extent(Mesh(v, f), mask)
    # the back of the head projects onto the mask's rim and goes; most of the face region stays
    back = (v[f].mean(axis=1)[:, 2] < np.percentile(v[:, 2], 20))
    assert not kept[back].any()
    assert kept[face].mean() > 0.8
    head = region_faces(model, "head")  # everything but the neck region
    assert 0.5 * len(f) < head.sum() < len(f) and not (head & ~face & (v[f].mean(axis=1)[:, 1] < v[:, 1].min() + 20)).any()


def test_shared_landmarks_skip_the_jaw_contour(model):
    rows, ids, ibug = shared_landmarks(model, np.arange(68))
    assert len(rows) == 52 and 8 in ibug and 3 not in ibug
    assert np.array_equal(ids, model.landmark_ids.numpy()[ibug])
    assert len(shared_landmarks(model, np.arange(68), exclude_jaw_contour=False)[0]) == 68
    with pytest.raises(InputError):
        shared_landmarks(model, np.array([0, 1, 2]))


def test_face_mask_fit_recovers_pose_and_shape(model):
    target, truth = _face_mask_target(model)
    tf = fit_real_target(model, target, FAST)
    m = tf.record["metrics"]
    assert m[LANDMARK_KEY] < 1.5, m
    assert m["completeness_mm"] < 1.0 and m["fscore@2.5mm"] > 0.9, m
    assert m[WHOLE_KEY] < 1.0
    # pose undone: the fitted face lies on the posed original vertex for vertex, and the recovered rotation
    # is the known one (the translation trades a few mm with the PCA's own translation modes, so the
    # vertices, not the pose's translation, are the check)
    face_ids = np.unique(model.faces.numpy()[region_faces(model, "face")])
    assert np.linalg.norm(tf.result.vertices[face_ids] - POSE.apply(truth)[face_ids], axis=1).mean() < 1.5
    rel = tf.result.pose.rotation @ POSE.rotation.T
    assert np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1, 1))) < 2.0
    assert np.linalg.norm(tf.result.pose.translation - POSE.translation) < 10.0
    assert 0.7 < tf.record["target_area_kept"] <= 1.0 and tf.record["fit_area_kept"] < 0.6
    strips = target_strips(tf, size=64)
    assert len(strips) == 2 and strips[0][1].dtype == np.uint8


def test_head_scan_with_shoulders_is_cropped_at_the_neck(model):
    """A james-like target: the whole head plus a slab of 'shoulders' below its neck cut."""
    v, f = _head(model), model.faces.numpy()
    centre, normal = neck_plane(v, f)
    # a wide flat disc 40 mm below the neck cut, as shoulders
    u = np.linalg.svd(np.eye(3) - np.outer(normal, normal))[0][:, :2]
    ang = np.linspace(0, 2 * np.pi, 33)[:-1]
    ring = centre - 40 * normal + 180 * (np.cos(ang)[:, None] * u[:, 0] + np.sin(ang)[:, None] * u[:, 1])
    sv = np.vstack([v, centre - 40 * normal, ring])
    c, r0 = len(v), len(v) + 1
    sf = np.vstack([f, [[c, r0 + i, r0 + (i + 1) % 32] for i in range(32)]])
    posed = Mesh(POSE.apply(sv), sf)
    ids = model.landmark_ids.numpy()
    target = RealTarget("fake-scan", posed, posed.vertices[ids], np.arange(68), "head-and-shoulders scan")
    tf = fit_real_target(model, target, FAST)
    m = tf.record["metrics"]
    assert tf.record["fit_points_dropped_below_neck"] > 0
    shoulders = np.arange(len(f), len(sf))
    assert not tf.target_kept[shoulders].any()            # the slab is never scored
    # exact point-to-surface distances are tiny; the protocol's sampled ones sit at the 20k-point floor
    # of a whole head (~1.5 mm between neighbouring samples)
    assert m[WHOLE_KEY] < 0.5 and m[LANDMARK_KEY] < 1.0, m
    assert m["completeness_mm"] < 2.0 and m["accuracy_mm"] < 2.0, m


def test_evaluate_real_and_cli_runner(model, tmp_path):
    target, _ = _face_mask_target(model)
    out = evaluate_real(model, [target], FAST, progress=False)
    assert set(out) == {"metrics", "per_target", "protocol"}
    assert LANDMARK_KEY in out["metrics"] and "fscore@10mm" in out["metrics"]
    assert out["protocol"]["crop_rule"] and out["protocol"]["landmarks_ibug"][0] == 8
    json.dumps(out)  # plain JSON

    # the runner stops with one clear line when the data was never fetched
    model.save(tmp_path / "model")
    with pytest.raises(InputError, match="not fetched yet"):
        run_real_eval(RealEvalConfig(model=tmp_path / "model", dataset="james", out=tmp_path / "o",
                                     cache=tmp_path / "empty-cache"))
    assert not (tmp_path / "o").exists()
