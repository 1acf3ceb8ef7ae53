"""Streamed training samples of the implicit families: shapes, determinism, units, labels, correspondences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from torch.utils.data import default_collate

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.errors import InputError
from neuralmorph.geometry.distance import closest_points
from neuralmorph.geometry.mesh import Mesh
from neuralmorph.models.implicit.samples import (ImplicitSampleConfig, ImplicitSamples, barycentric_pairs,
                                          face_vertex_mask, subject_neutrals)

CFG = ImplicitSampleConfig(surface_points=200, near_points=300, far_points=50, correspondences=80, pool_size=6000,
                           draws_per_head=4)


@pytest.fixture(scope="module")
def data(small_synth):
    return HeadDataset.load(small_synth)


@pytest.fixture(scope="module")
def stream(data, small_synth):
    return ImplicitSamples(data, CFG, "train", seed=3, anchor_ids=np.array([10, 20, 30]))


def _mm(ds: HeadDataset, x) -> np.ndarray:
    return ds.frame.to_mm(np.asarray(x, np.float64))


def test_items_have_fixed_shapes_and_collate(stream):
    n_train_heads = 6   # small_synth: 3 subjects x 3 expressions, one subject held out
    assert len(stream.head_ids) == n_train_heads and len(stream) == n_train_heads * CFG.draws_per_head
    item = stream[5]
    shapes = {k: tuple(v.shape) for k, v in item.items()}
    assert shapes == {"subject": (), "head": (), "neutral": (), "surface": (200, 3), "surface_normals": (200, 3),
                      "surface_face": (200,), "near": (300, 3), "far": (50, 3), "corr_neutral": (80, 3),
                      "corr_posed": (80, 3), "anchors": (3, 3), "space": (256, 3), "space_sign": (256,)}
    assert all(v.dtype == torch.float32 for k, v in item.items() if k not in ("subject", "head"))
    batch = default_collate([stream[i] for i in range(4)])
    assert batch["surface"].shape == (4, 200, 3) and batch["subject"].dtype == torch.int64
    with pytest.raises(IndexError):
        stream[len(stream)]


def test_items_are_a_pure_function_of_seed_and_index(data, small_synth, stream):
    again = ImplicitSamples(data, CFG, "train", seed=3, anchor_ids=np.array([10, 20, 30]))
    for i in (0, 7, len(stream) - 1):
        a, b = stream[i], again[i]
        assert all(torch.equal(a[k], b[k]) for k in a)
    # order of access does not matter, other indices and other seeds differ
    assert torch.equal(stream[7]["near"], stream[7]["near"])
    assert not torch.equal(stream[7]["near"], stream[7 + len(stream.head_ids)]["near"])
    other = ImplicitSamples(data, CFG, "train", seed=4)
    assert not torch.equal(other[7]["far"], stream[7]["far"])


def test_surface_samples_come_from_aligned_scans_in_canonical_units(data, stream):
    assert all(p["from_scan"] for p in stream.pools.values())          # every train head has a scan
    for i in (0, 1, 4):
        item = stream[i]
        k = int(item["head"])
        neutral = stream.neutral_of[k]
        reg = data.vertices[data.heads[neutral].registered]
        pts = _mm(data, item["surface"])
        _, dist, face_ids = closest_points(pts, reg, data.faces)
        # scans: 3 mm re-meshing + 0.2 mm noise, rigidly aligned back; unaligned they would be ~20 mm off
        assert np.median(dist) < 0.5 and np.percentile(dist, 95) < 1.5
        n = item["surface_normals"].numpy()
        assert np.allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-4)
        agree = np.sum(n * Mesh(reg, data.faces).face_normals[face_ids], axis=1)
        assert np.mean(agree > 0.7) > 0.95                                # oriented like the registered surface
        # near points: surface + N(0, 2.5 mm) per coordinate -> distance spread of that order
        near_d = closest_points(_mm(data, item["near"]), reg, data.faces)[1]
        assert 1.0 < np.median(near_d) < 4.0
        lo, hi = stream.bounds
        far = item["far"].numpy()
        assert (far >= lo).all() and (far <= hi).all()


def test_bounds_contain_training_heads_with_margin(data, stream):
    rows = [data.heads[i].registered for i in stream.head_ids]
    v = data.frame.to_canonical(data.vertices[rows].reshape(-1, 3))
    lo, hi = stream.bounds
    margin = CFG.bounds_margin_mm / data.frame.mm_per_unit
    assert stream.bounds.dtype == np.float32 and stream.bounds.shape == (2, 3)
    assert np.allclose(v.min(0) - lo, margin, atol=1e-5) and np.allclose(hi - v.max(0), margin, atol=1e-5)


def test_face_labels_and_face_fraction(data, stream):
    face_v = face_vertex_mask(data)
    item = stream[2]
    k = int(item["head"])
    reg = data.vertices[data.heads[stream.neutral_of[k]].registered]
    _, nearest = cKDTree(reg).query(_mm(data, item["surface"]))
    labels = item["surface_face"].numpy() > 0.5
    assert labels.sum() == round(CFG.face_fraction * CFG.surface_points)
    assert np.array_equal(face_v[nearest], labels)


def test_correspondences(data, stream):
    neutrals = subject_neutrals(data, "train")
    for k in range(len(stream.head_ids)):
        item = stream[k]
        i = stream.head_ids[k]
        if stream.neutral_of[k] == i:
            assert float(item["neutral"]) == 1.0
            assert torch.equal(item["corr_neutral"], item["corr_posed"])   # neutral: zero deformation
            continue
        assert float(item["neutral"]) == 0.0 and stream.neutral_of[k] == neutrals[data.heads[i].subject]
        a = data.vertices[data.heads[stream.neutral_of[k]].registered]
        b = data.vertices[data.heads[i].registered]
        da = closest_points(_mm(data, item["corr_neutral"]), a, data.faces)[1]
        db = closest_points(_mm(data, item["corr_posed"]), b, data.faces)[1]
        # offsets along the normal by N(0, 2.5 mm) / N(0, 0.5 mm): the same |t| on both sides
        assert np.median(da) < 2.5 and np.max(da) < 15.0
        assert np.allclose(np.sort(da), np.sort(db), atol=0.6)
        # the pairs really move where the expression moved the registered head
        moved = np.linalg.norm(_mm(data, item["corr_posed"]) - _mm(data, item["corr_neutral"]), axis=1)
        assert moved.max() > 1.0 and np.linalg.norm(b - a, axis=1).max() > 1.0


def test_barycentric_pairs_follow_the_mesh():
    rng = np.random.default_rng(0)
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], float)
    f = np.array([[0, 1, 2], [1, 3, 2]])
    normals = np.tile([0.0, 0.0, 1.0], (4, 1))
    moved = v * 2 + np.array([0, 0, 5.0])
    src, dst = barycentric_pairs(v, moved, f, normals, normals, np.arange(2), 500, 0.1, rng)
    # same barycentrics: the xy part scales by 2, the offset along z is carried over unchanged
    assert np.allclose(dst[:, :2], 2 * src[:, :2]) and np.allclose(dst[:, 2] - 5.0, src[:, 2])
    assert 0.07 < src[:, 2].std() < 0.13


def test_registered_fallback_and_bad_configs(data, small_synth):
    first = next(i for i, h in enumerate(data.heads) if h.split == "train")
    plain = ImplicitSamples(data, ImplicitSampleConfig(**{**CFG.to_dict(), "use_scans": False}), "train", seed=0,
                            heads=[first])
    assert plain.head_ids == [first] and not any(p["from_scan"] for p in plain.pools.values())
    pts = _mm(data, plain[0]["surface"])
    assert closest_points(pts, data.vertices[data.heads[first].registered], data.faces)[1].max() < 1e-3
    with pytest.raises(InputError):
        ImplicitSampleConfig(correspondences=6)
    with pytest.raises(InputError):
        ImplicitSampleConfig(face_fraction=1.5)
    with pytest.raises(InputError):
        ImplicitSamples(data, CFG, "val")               # no val heads in small_synth


def test_sign_labels_follow_the_registered_surface(data, stream):
    """Labelled space points: −1 inside the registered neutral head, +1 outside, 0 only near the open neck
    or the surface; each label agrees with the exact winding number's side."""
    import igl

    pool = stream.pools[stream.neutral_of[0]]
    pts, sign = pool["space"], pool["space_sign"]
    assert set(np.unique(sign)) <= {-1.0, 0.0, 1.0} and (sign == -1).sum() > 100 and (sign == 1).sum() > 100
    reg = stream._reg_mm[stream.neutral_of[0]]
    w = igl.winding_number(reg, stream.faces, stream.frame.to_mm(pts[sign != 0].astype(np.float64)))
    assert np.all((w > 0.5) == (sign[sign != 0] < 0))
    # the bounding box's corners are outside every head
    lo, hi = stream.bounds
    assert stream.frame.to_canonical(reg).min(0).min() > lo.min()
    corner = stream.frame.to_mm(np.array([hi], np.float64))
    assert igl.winding_number(reg, stream.faces, corner)[0] < 0.25


def test_raw_scans_need_the_dataset_folder(data):
    # a dataset that lists raw scans but was not loaded from (or saved to) a folder cannot find them:
    # an error, never a silent fall back to the registered meshes
    import dataclasses

    bare = dataclasses.replace(data, folder=None)
    with pytest.raises(InputError, match="no folder"):
        ImplicitSamples(bare, CFG, "train", seed=0)
