"""Tests for the embedded head model asset and its loader (fast: numpy only)."""

from __future__ import annotations

import importlib.resources

import numpy as np
import pytest

from neuralmorph.data.head_model import HeadModel, Phenotype

ASSET = importlib.resources.files("neuralmorph") / "assets" / "head_model.npz"


@pytest.fixture(scope="module")
def m() -> HeadModel:
    return HeadModel.load()


def _unit(m: HeadModel, name: str) -> np.ndarray:
    w = np.zeros(len(m.face_unit_names))
    w[m.face_unit_names.index(name)] = 1.0
    return w


def test_asset_is_small_and_pickle_free():
    with importlib.resources.as_file(ASSET) as path:
        assert path.stat().st_size <= 3_000_000
        with np.load(path, allow_pickle=False) as z:
            for k in z.files:
                assert z[k].dtype != object, k
    assert (importlib.resources.files("neuralmorph") / "assets" / "HEAD_MODEL_LICENSE.md").is_file()


def test_mesh(m):
    n = m.num_vertices
    assert 4000 <= n <= 6000
    assert m.vertices.shape == (n, 3) and m.vertices.dtype == np.float32
    assert m.faces.dtype == np.int64 and m.faces.min() == 0 and m.faces.max() == n - 1
    assert len(np.unique(m.faces)) == n  # no unreferenced vertices
    assert (np.diff(np.sort(m.faces, axis=1), axis=1) > 0).all()  # no degenerate triangles
    v = m.vertices.astype(np.float64)
    # outward winding: the signed volume of the (nearly closed) head is positive
    vol = np.einsum("ij,ij->i", v[m.faces[:, 0]], np.cross(v[m.faces[:, 1]], v[m.faces[:, 2]])).sum() / 6
    assert vol > 0
    # millimetres, human head: ~ 20-35 cm tall including neck, ~ 15-25 cm wide (ears)
    ext = np.ptp(v, axis=0)
    assert 150 < ext[0] < 260 and 200 < ext[1] < 400
    # the face looks to +z: the nose tip is the front-most landmark
    assert m.vertices[m.landmark_ids[30], 2] > m.vertices[m.landmark_ids[[36, 45, 48, 54]], 2].max()
    assert len(m.source_vertex_ids) == n and len(np.unique(m.source_vertex_ids)) == n
    assert not m.vertices.flags.writeable


def test_regions_partition(m):
    for r in ("forehead", "eyes", "nose", "mouth", "cheeks", "ears", "chin", "skull", "neck", "face"):
        assert len(m.regions[r]) > 0, r
    counts = np.zeros(m.num_vertices, int)
    for r in m.region_names:
        counts[m.regions[r]] += 1
    assert (counts == 1).all()
    assert set(m.regions["face"]) >= set(m.regions["nose"]) | set(m.regions["mouth"])
    assert not set(m.regions["face"]) & set(m.regions["skull"])
    y = lambda r: m.vertices[m.regions[r], 1].mean()
    assert y("forehead") > y("eyes") > y("nose") > y("mouth") > y("chin") > y("neck")
    x = m.vertices[m.regions["ears"], 0]
    assert np.abs(x).min() > 50 and (x > 0).sum() == (x < 0).sum()  # both ears, far from the midline


def test_landmarks(m):
    lm = m.landmark_ids
    assert lm.shape == (68,) and len(np.unique(lm)) == 68
    p = m.vertices[lm]
    assert p[0, 0] < 0 < p[16, 0]  # jaw contour runs from the subject's right to left
    assert p[8, 1] < p[57, 1] < p[51, 1] < p[33, 1] < p[30, 1] < p[27, 1]  # midline top to bottom
    assert np.abs(p[[8, 27, 30, 33, 51, 57], 0]).max() < 1.0
    assert p[36, 0] < p[39, 0] < 0 < p[42, 0] < p[45, 0]  # eye corners
    assert (p[17:27, 1] > p[36:48, 1].max()).all()  # brows above the eyes
    assert set(lm[36:48]) <= set(m.regions["eyes"])
    assert set(lm[[30, 31, 35]]) <= set(m.regions["nose"])
    # mirror symmetry of the scheme: 36 <-> 45, 48 <-> 54, 0 <-> 16
    assert np.allclose(p[[36, 48, 0]] * [-1, 1, 1], p[[45, 54, 16]], atol=1.0)


def test_mirror(m):
    mi = m.mirror_ids
    assert np.mean(mi[mi] == np.arange(m.num_vertices)) > 0.99
    err = np.linalg.norm(m.vertices[mi] * [-1, 1, 1] - m.vertices, axis=1)
    assert err.max() < 1.0
    assert np.array_equal(m.region_labels[mi], m.region_labels)


def test_phenotype_validation():
    with pytest.raises(ValueError, match="age"):
        Phenotype(age=1.5)
    with pytest.raises(ValueError, match="ethnicities"):
        Phenotype(african=0, asian=0, caucasian=0)
    p = Phenotype(african=2 / 3, asian=2 / 3, caucasian=2 / 3)
    assert abs(p.african + p.asian + p.caucasian - 1) < 1e-12


def test_macro_weights(m):
    w = m.macro_weights(Phenotype())
    race = np.array([not n.startswith("universal") for n in m.macro_names])
    # each family of targets is a partition of unity
    assert np.isclose(w[race].sum(), 1) and np.isclose(w[~race].sum(), 1)
    assert (w >= 0).all()
    # default: young, average muscle/weight, 50/50 gender, 1/3 per ethnicity
    i = m.macro_names.index("caucasian-male-young")
    assert np.isclose(w[i], 0.5 / 3)
    assert np.isclose(w[m.macro_names.index("universal-female-young-averagemuscle-averageweight")], 0.5)
    # age breakpoints: 0.1875 is exactly "child", 0.75 half young half old
    wc = m.macro_weights(Phenotype(age=0.1875, gender=0, african=1, asian=0, caucasian=0))
    assert np.isclose(wc[m.macro_names.index("african-female-child")], 1)
    wo = m.macro_weights(Phenotype(age=0.75, gender=1, african=0, asian=0, caucasian=1, muscle=1))
    assert np.isclose(wo[m.macro_names.index("caucasian-male-old")], 0.5)
    assert np.isclose(wo[m.macro_names.index("universal-male-old-maxmuscle-averageweight")], 0.5)


def test_identity(m):
    base = m.identity()
    assert base.shape == m.vertices.shape and base.dtype == np.float32
    f = m.identity(Phenotype(gender=0, age=0.5))
    o = m.identity(Phenotype(gender=1, age=1))
    d = np.linalg.norm(f - o, axis=1)
    assert 5 < d.mean() < 30 and d.max() < 60  # plausible mm differences between two adults
    # local modifiers: dict and array forms agree, and clipping to [min, 1] applies
    name = "nose/nose-scale-horiz-decr-incr"
    a = m.identity(local={name: 1.0})
    vec = np.zeros(len(m.local_modifier_names))
    vec[m.local_modifier_names.index(name)] = 3.0  # clipped to 1
    assert np.allclose(a, m.identity(local=vec))
    moved = np.linalg.norm(a - base, axis=1) > 0.1
    assert moved.sum() > 20 and np.isin(np.flatnonzero(moved), m.regions["nose"]).mean() > 0.6
    assert not np.allclose(m.identity(local={name: -1.0}), base)
    with pytest.raises(KeyError):
        m.identity(local={"nose/unknown": 1.0})


def test_expression_offsets(m):
    assert len(m.face_unit_names) == 52 and m.face_unit_names[0] == "eyeBlinkLeft"
    assert not m.expression_offsets(np.zeros(52)).any()
    o = np.linalg.norm(m.expression_offsets(_unit(m, "jawOpen")), axis=1)
    assert o.max() > 5
    big = np.flatnonzero(o > 0.5 * o.max())
    assert np.isin(big, np.concatenate([m.regions["mouth"], m.regions["chin"]])).mean() > 0.9
    # "Left" is the subject's left (+x)
    blink = np.linalg.norm(m.expression_offsets(_unit(m, "eyeBlinkLeft")), axis=1)
    assert m.vertices[np.argmax(blink), 0] > 0


def test_articulate(m):
    v = m.identity(Phenotype(gender=0.8, age=0.7))
    assert np.allclose(m.articulate(v, 0.0, np.zeros(3)), v, atol=1e-4)

    opened = m.articulate(v, 0.3, np.zeros(3))
    d = np.linalg.norm(opened - v, axis=1)
    assert d[m.regions["chin"]].mean() > 10
    assert (opened[m.landmark_ids[8], 1] < v[m.landmark_ids[8], 1] - 10)  # chin drops
    above_eyes = m.vertices[:, 1] > m.vertices[m.landmark_ids[37], 1]
    assert d[above_eyes].max() < 1e-3  # the cranium does not follow the jaw
    upper = m.vertices[:, 1] > m.vertices[m.landmark_ids[30], 1]  # above the nose tip
    assert d[upper & (m.region_labels != m.region_names.index("mouth"))].max() < 2.0  # TMJ skin
    assert d[m.regions["forehead"]].max() < 1e-3 and d[m.regions["ears"]].max() < 1e-3

    bent = m.articulate(v, 0.0, np.array([0.2, 0.3, -0.1]))
    rigid = np.flatnonzero(m.head_weights >= 1.0)
    assert len(rigid) > 0.7 * m.num_vertices
    i, j = rigid[:: 7], rigid[3:: 7][: len(rigid[:: 7])]
    i = i[: len(j)]
    before = np.linalg.norm(v[i] - v[j], axis=1)
    after = np.linalg.norm(bent[i] - bent[j], axis=1)
    assert np.allclose(before, after, atol=1e-2)  # distance preserving on the rigid head
    assert np.linalg.norm(bent[rigid] - v[rigid], axis=1).mean() > 10
    assert np.allclose(bent[m.head_weights == 0], v[m.head_weights == 0], atol=1e-4)  # torso cut stays


def test_load_path_and_cache(m):
    assert HeadModel.load() is m
    with importlib.resources.as_file(ASSET) as path:
        m2 = HeadModel.load(path)
    assert m2 is not m and np.array_equal(m2.faces, m.faces)
