"""Metrics against hand-computed values, and the evaluation protocols end to end."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from neuralmorph.errors import InputError
from neuralmorph.evaluation import THRESHOLDS_MM, Protocol, evaluate, point_metrics, surface_points, vertex_error_mm
from neuralmorph.evaluation.protocol import _sample
from neuralmorph.geometry import Mesh, protocol_cameras, sample_surface

SMALL_RENDER = dict(kind="render", image_width=320, image_height=240, focal=610.0)


def sphere(radius: float = 100.0, subdivisions: int = 4) -> Mesh:
    s = trimesh.creation.icosphere(subdivisions, radius=radius)
    return Mesh(s.vertices, s.faces)


def test_plane_shifted_by_one_mm():
    sq = Mesh([[0, 0, 0], [100, 0, 0], [100, 100, 0], [0, 100, 0]], [[0, 1, 2], [0, 2, 3]])
    gt, gn, _ = sample_surface(sq.vertices, sq.faces, 200_000, seed=0)
    pred, pn, _ = sample_surface(sq.vertices, sq.faces, 200_000, seed=1)
    pred = pred + [0.0, 0.0, 1.0]
    m = point_metrics(pred, gt, pn, gn)
    assert m["accuracy_mm"] == pytest.approx(1.0, abs=0.02)
    assert m["completeness_mm"] == pytest.approx(1.0, abs=0.02)
    assert m["chamfer_l1_mm"] == pytest.approx(1.0, abs=0.02)
    assert m["chamfer_l2_mm2"] == pytest.approx(1.0, abs=0.04)
    assert m["normal_consistency"] == pytest.approx(1.0)
    for t in (2.5, 5.0, 10.0):
        assert m[f"fscore@{t:g}mm"] == 1.0
    # every distance is at least the 1 mm offset, so nothing is within 1 mm: defined, and zero
    assert m["precision@1mm"] == m["recall@1mm"] == m["fscore@1mm"] == 0.0
    assert set(m) >= {f"{k}@{t:g}mm" for k in ("precision", "recall", "fscore") for t in THRESHOLDS_MM}
    assert "fscore@2.5mm" in m and "precision@1mm" in m


def test_tiny_clouds_hand_computed():
    pred = np.array([[0, 0, 0], [3, 4, 0]], float)
    gt = np.array([[0, 0, 2], [6, 8, 0], [0, 0, -1]], float)
    # pred->gt: (0,0,0) -> (0,0,-1) = 1; (3,4,0) -> (6,8,0) = 5
    # gt->pred: (0,0,2) -> 2; (6,8,0) -> 5; (0,0,-1) -> 1
    m = point_metrics(pred, gt, thresholds=(1.0, 2.5, 5.0, 10.0))
    assert m["accuracy_mm"] == pytest.approx(3.0)
    assert m["completeness_mm"] == pytest.approx(8.0 / 3.0)
    assert m["chamfer_l1_mm"] == pytest.approx((3.0 + 8.0 / 3.0) / 2)
    assert m["chamfer_l2_mm2"] == pytest.approx((13.0 + 10.0) / 2)
    assert "normal_consistency" not in m
    # distances within t count (d <= t)
    assert (m["precision@1mm"], m["recall@1mm"]) == (pytest.approx(0.5), pytest.approx(1 / 3))
    assert m["fscore@1mm"] == pytest.approx(0.4)
    assert (m["precision@2.5mm"], m["recall@2.5mm"]) == (pytest.approx(0.5), pytest.approx(2 / 3))
    assert m["fscore@2.5mm"] == pytest.approx(4 / 7)
    assert m["fscore@5mm"] == m["fscore@10mm"] == 1.0


def test_identical_clouds_and_normal_consistency():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(500, 3))
    n = rng.normal(size=(500, 3))
    m = point_metrics(p, p.copy(), n, n)
    assert m["accuracy_mm"] == m["completeness_mm"] == m["chamfer_l2_mm2"] == 0.0
    assert all(m[f"fscore@{t:g}mm"] == 1.0 for t in THRESHOLDS_MM)
    assert m["normal_consistency"] == pytest.approx(1.0)
    assert point_metrics(p, p, n, -n)["normal_consistency"] == pytest.approx(1.0)  # orientation-free
    perp = np.cross(n, rng.normal(size=(500, 3)))
    assert point_metrics(p, p, n, perp)["normal_consistency"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("pred,gt", [
    (np.zeros((0, 3)), np.zeros((4, 3))), (np.zeros((4, 3)), np.zeros((0, 3))),
    (np.zeros((4, 2)), np.zeros((4, 3))), (np.array([[np.nan, 0, 0]]), np.zeros((4, 3))),
])
def test_point_metrics_rejects_bad_input(pred, gt):
    with pytest.raises(ValueError):
        point_metrics(pred, gt)


def test_vertex_error_known_displacement():
    v = np.random.default_rng(0).normal(size=(100, 3))
    assert vertex_error_mm(v + [3.0, 4.0, 0.0], v) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        vertex_error_mm(v[:-1], v)


def test_points_protocol_correspondence_regions_and_determinism():
    gt = sphere(100.0, 3)
    pred = Mesh(gt.vertices + [0.0, 0.0, 2.0], gt.faces)
    top = np.flatnonzero(gt.vertices[:, 1] > 30)
    proto = Protocol(n_points=20_000, seed=5)
    r = evaluate(pred, gt, proto, regions={"top": top})
    m = r["metrics"]
    assert m["vertex_error_mm"] == pytest.approx(2.0)
    assert m["top/vertex_error_mm"] == pytest.approx(2.0)
    assert 0.5 < m["chamfer_l1_mm"] < 2.0
    assert {"top/accuracy_mm", "top/completeness_mm", "top/fscore@2.5mm", "top/normal_consistency"} <= set(m)
    rec = r["protocol"]
    assert rec["kind"] == "points" and rec["units"] == "mm" and rec["seed"] == 5
    assert rec["n_points_pred"] == rec["n_points_gt"] == 20_000 and rec["correspondence"]
    assert 0 < rec["regions"]["top"]["gt_points"] < 20_000
    assert r == evaluate(pred, gt, proto, regions={"top": top})  # fully seeded
    with pytest.raises(InputError, match="regions"):
        evaluate(pred, gt, proto, regions={"bad": np.array([0, 10**6])})


def test_points_protocol_with_point_cloud_and_protocol_validation():
    gt = sphere(100.0, 3)
    cloud = Mesh(sample_surface(gt.vertices, gt.faces, 3000, seed=0)[0], np.zeros((0, 3)))
    r = evaluate(cloud, gt, Protocol(n_points=2000))
    assert r["protocol"]["n_points_pred"] == 2000 and "normal_consistency" not in r["metrics"]
    assert "vertex_error_mm" not in r["metrics"]
    with pytest.raises(InputError):
        evaluate(cloud, gt, Protocol(n_points=2000, **SMALL_RENDER))
    for bad in (dict(kind="rays"), dict(n_points=0), dict(focal=-1.0), dict(thresholds=())):
        with pytest.raises(InputError, match="protocol"):
            Protocol(**bad)


def _camera_frame_squares(cam, reverse: bool = False) -> Mesh:
    """A large square facing the camera and a smaller one beside it facing away (camera depth 600)."""
    def square(x0, x1, toward):
        pc = np.array([[x0, -40, 600], [x1, -40, 600], [x1, 40, 600], [x0, 40, 600]], float)
        f = np.array([[0, 2, 1], [0, 3, 2]]) if toward else np.array([[0, 1, 2], [0, 2, 3]])
        return pc, f
    a, fa = square(-60.0, 20.0, True)
    b, fb = square(30.0, 60.0, False)
    pc = np.vstack([a, b])
    f = np.vstack([fa, fb + 4])
    world = (pc - cam.world_to_camera[:3, 3]) @ cam.rotation
    return Mesh(world, f[:, ::-1] if reverse else f)


@pytest.mark.parametrize("reverse", [False, True])
def test_render_protocol_drops_back_facing_points(reverse):
    proto = Protocol(n_points=5000, n_views=1, **SMALL_RENDER)
    cam = protocol_cameras(1, 600.0, (0, 0, 0), 320, 240, 610.0)[0]
    mesh = _camera_frame_squares(cam, reverse)
    s = _sample(mesh, proto, 0, np.zeros(3), "mesh")
    assert s.counts["backfacing_dropped"] > 0
    # an inside-out mesh (most hits back-facing) is read with flipped normals, not discarded
    assert s.counts["flipped_winding"] == reverse
    x_cam = cam.to_camera(s.points)[:, 0]
    assert x_cam.max() < 20.0 + 1e-9  # nothing from the square that faces away
    rays = s.points - cam.position
    assert np.all(np.einsum("ij,ij->i", rays, s.normals) < 0)  # normals face their camera
    pts, nrm = surface_points(mesh, proto, 0, center=(0, 0, 0))
    np.testing.assert_array_equal(pts, s.points)


def test_render_protocol_sphere_vs_one_mm_larger():
    gt = sphere(100.0, 5)
    pred = Mesh(gt.vertices * 1.01, gt.faces)
    proto = Protocol(n_points=200_000, **SMALL_RENDER)
    pts, nrm = surface_points(gt, proto, 0)
    # closed sphere from outside: every kept normal points outward and the points cover the sphere
    assert np.all(np.einsum("ij,ij->i", nrm, pts) > 0)
    assert np.all(np.abs(pts).max(axis=0) > 95)
    r = evaluate(pred, gt, proto)
    m = r["metrics"]
    assert m["accuracy_mm"] == pytest.approx(1.0, abs=0.12)
    assert m["completeness_mm"] == pytest.approx(1.0, abs=0.12)
    assert m["fscore@2.5mm"] == pytest.approx(1.0, abs=1e-3)
    assert m["normal_consistency"] > 0.99
    rec = r["protocol"]
    assert rec["kind"] == "render" and rec["n_views"] == 10 and rec["image_width"] == 320
    assert rec["camera_target_mm"] == pytest.approx([0, 0, 0], abs=1e-9)
    assert rec["counts"]["gt"]["hits"] > 100_000 and not rec["counts"]["gt"]["flipped_winding"]


def test_render_neck_cut_ignores_what_hangs_below_the_ground_truth():
    """A prediction that closes the neck with a plate below the GT's lowest point: judged on it without the
    cut, not with it (NPHM's neck cut)."""
    s = trimesh.creation.icosphere(subdivisions=4, radius=100.0)
    gt = Mesh(s.vertices, s.faces)
    plate = trimesh.creation.box(extents=(150.0, 4.0, 150.0))
    plate.apply_translation((0.0, -130.0, 0.0))
    both = trimesh.util.concatenate([s, plate])
    pred = Mesh(both.vertices, both.faces)
    render = Protocol(kind="render", n_points=20_000)
    plain = evaluate(pred, gt, render)
    cut = evaluate(pred, gt, Protocol(kind="render", n_points=20_000, neck_cut_mm=0.0))
    baseline = evaluate(gt, gt, Protocol(kind="render", n_points=20_000, neck_cut_mm=0.0))["metrics"]["accuracy_mm"]
    assert plain["metrics"]["accuracy_mm"] > baseline + 5.0      # the plate is far from the sphere
    assert cut["metrics"]["accuracy_mm"] < baseline + 0.3        # only sampling noise is left
    assert cut["protocol"]["neck_cut_y_mm"] == pytest.approx(-100.0, abs=0.5)
    assert cut["protocol"]["counts"]["pred"]["below_neck_cut_dropped"] > 0
