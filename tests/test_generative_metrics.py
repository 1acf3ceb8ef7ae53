"""Generative metrics (MMD, COV, 1-NNA, specificity): hand-made matrices, brute force, and limiting cases."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from neuralmorph.errors import InputError
from neuralmorph.evaluation.generative import coverage, generative_metrics, head_points, mmd, nna_1, pairwise_chamfer

N_POINTS = 256  # small meshes and few points keep the file at a few seconds
ICO = trimesh.creation.icosphere(1)  # 42 vertices, 80 faces
FACES = np.asarray(ICO.faces)


def heads(n: int, radius: float = 50.0, seed: int = 0) -> np.ndarray:
    """n distinct ellipsoids (n, 42, 3) mm sharing FACES."""
    scale = 1.0 + 0.5 * np.random.default_rng(seed).random((n, 1, 3))
    return radius * scale * np.asarray(ICO.vertices)[None]


def metrics(s, r, **kw):
    return generative_metrics(s, r, FACES, n_points=N_POINTS, **kw)


def brute_chamfer(a: np.ndarray, b: np.ndarray) -> float:
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return 0.5 * (d.min(axis=1).mean() + d.min(axis=0).mean())


def test_pairwise_chamfer_matches_brute_force_and_is_symmetric():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4, 30, 3)) * 10, rng.normal(size=(3, 45, 3)) * 10 + 2
    want = np.array([[brute_chamfer(a, b) for b in y] for a in x])
    np.testing.assert_allclose(pairwise_chamfer(x, y), want, rtol=1e-12)
    sym = pairwise_chamfer(x)
    assert sym.shape == (4, 4) and sym.dtype == np.float64
    np.testing.assert_array_equal(sym, sym.T)
    np.testing.assert_array_equal(np.diag(sym), 0.0)
    np.testing.assert_allclose(sym, [[brute_chamfer(a, b) for b in x] for a in x], rtol=1e-12)
    np.testing.assert_array_equal(pairwise_chamfer(x, x), sym)  # `y is x` takes the symmetric path


def test_hand_made_mmd_and_coverage():
    # rows: samples, columns: references
    d_sr = np.array([[5.0, 4.0, 1.0],
                     [6.0, 3.0, 2.0],
                     [0.5, 9.0, 7.0],
                     [8.0, 8.0, 3.0]])
    assert coverage(d_sr) == pytest.approx(2 / 3)  # samples match references 2, 2, 0, 2
    assert mmd(d_sr) == pytest.approx((0.5 + 3.0 + 1.0) / 3)  # per reference: its nearest sample


def test_identical_sets_zero_mmd_full_coverage_and_nna_zero():
    h = heads(5)
    m = metrics(h, h.copy())
    assert m["mmd_cd_mm"] == 0.0
    assert m["cov"] == 1.0
    # each head's nearest neighbour is its twin on the other side: copying the references scores 0, not 0.5
    assert m["nna_1"] == 0.0


def test_nna_ties_count_half():
    a = heads(1)[0]
    same = np.stack([a, a, a])
    assert metrics(same, same)["nna_1"] == 0.5  # every head ties with both labels
    # S = {A, A}, R = {A, B}: the S heads tie with both labels (1/2 each), the R copy of A sees only S
    # heads (0), B is equally far from all three A (1/2): 1.5 / 4. Lowest-index tie breaking would give
    # 0.5 here and 0.25 with the sets swapped.
    b = 3.0 * a
    assert metrics(np.stack([a, a]), np.stack([a, b]))["nna_1"] == 0.375
    assert metrics(np.stack([a, b]), np.stack([a, a]))["nna_1"] == 0.375


def test_nna_on_a_hand_made_matrix():
    d_ss = np.array([[0.0, 1.0], [1.0, 0.0]])
    d_rr = np.array([[0.0, 5.0], [5.0, 0.0]])
    d_sr = np.array([[2.0, 9.0], [9.0, 0.5]])
    # s0 -> s1 (right), s1 -> r1 (wrong), r0 -> s0 (wrong), r1 -> s1 (wrong)
    assert nna_1(d_ss, d_rr, d_sr) == 0.25


def test_far_apart_sets():
    h = heads(6, radius=5.0)
    shifted = h + np.array([0.0, 0.0, 1000.0])  # 1 m away along z
    m = metrics(h, shifted)
    assert m["nna_1"] == 1.0
    assert m["cov"] < 0.5
    assert m["mmd_cd_mm"] == pytest.approx(1000.0, abs=15.0)  # heads span < 15 mm


def test_subset_of_references_covers_its_share():
    r = heads(5)
    m = metrics(r[[1, 3]], r)
    assert m["cov"] == 2 / 5
    assert m["mmd_cd_mm"] > 0.0  # references 0, 2, 4 have no copy among the samples


def test_specificity_and_protocol():
    train = heads(4, seed=3)
    m = metrics(train[:2], heads(3, seed=4), training=train)
    assert m["specificity_cd_mm"] == 0.0  # every sample is a training head
    far = metrics(train[:2] * 2.0, heads(3, seed=4), training=train)
    assert far["specificity_cd_mm"] > 10.0
    p = m["protocol"]
    assert p["n_points"] == N_POINTS and p["distance"] == "chamfer-L1 mm"
    assert (p["samples"], p["references"], p["training"], p["seed"]) == (2, 3, 4, 0)
    assert "1/2" in p["tie_rule"]
    assert "specificity_cd_mm" not in metrics(train[:2], train)


def test_deterministic_under_a_seed():
    s, r = heads(3, seed=5), heads(4, seed=6)
    np.testing.assert_array_equal(head_points(s, FACES, 64, seed=7), head_points(s, FACES, 64, seed=7))
    assert not np.array_equal(head_points(s, FACES, 64, seed=7), head_points(s, FACES, 64, seed=8))
    a, b = metrics(s, r, seed=7), metrics(s, r, seed=7)
    assert a == b
    assert metrics(s, r, seed=8)["mmd_cd_mm"] != a["mmd_cd_mm"]


def test_torch_input():
    torch = pytest.importorskip("torch")
    s, r = heads(2), heads(3, seed=1)
    assert metrics(torch.as_tensor(s, dtype=torch.float32), r)["cov"] == metrics(s.astype(np.float32), r)["cov"]


@pytest.mark.parametrize("which", ["samples", "references"])
def test_too_few_heads(which):
    args = {"samples": heads(3), "references": heads(3)}
    args[which] = args[which][:1]
    with pytest.raises(InputError, match=f"^{which}: needs at least 2 heads, got 1$"):
        generative_metrics(args["samples"], args["references"], FACES, n_points=N_POINTS)


def test_bad_shapes():
    with pytest.raises(InputError, match="^references: has 10 vertices per head"):
        metrics(heads(2), heads(2)[:, :10])
    with pytest.raises(InputError, match="^samples: must be heads"):
        metrics(heads(2)[0], heads(2))
    with pytest.raises(InputError, match="^faces:"):
        generative_metrics(heads(2), heads(2), FACES[:, :2])
    with pytest.raises(InputError, match="^n_points:"):
        generative_metrics(heads(2), heads(2), FACES, n_points=0)


def test_one_head_per_identity_draws_distinct_people(pca_data):
    from neuralmorph.data.dataset import HeadDataset
    from neuralmorph.evaluation.generative import one_head_per_identity

    data = HeadDataset.load(pca_data)
    subject_of = {h.registered: (h.subject, h.split) for h in data.heads}
    rows = one_head_per_identity(data, "train", 5, np.random.default_rng(0))
    assert len(rows) == 5 and len({subject_of[r][0] for r in rows}) == 5
    assert all(subject_of[r][1] == "train" for r in rows)
    test = one_head_per_identity(data, "test", 100, np.random.default_rng(0))  # capped at the split's people
    assert sorted(subject_of[r][0] for r in test) == sorted({h.subject for h in data.heads if h.split == "test"})
    assert rows == one_head_per_identity(data, "train", 5, np.random.default_rng(0))
