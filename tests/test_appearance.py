"""The embedded head's UV layout (HeadModel.face_uvs) and the synthetic skin generator (data/appearance.py)."""

from __future__ import annotations

import numpy as np
import pytest

from neuralmorph.data.appearance import (AppearanceFactors, HeadTexturer, ValueNoise, generate_appearance,
                                         hair_color, sample_factors, skin_color, uv_atlas, uv_islands)
from neuralmorph.data.head_model import HeadModel
from neuralmorph.errors import InputError

SIZE = 256  # small textures keep these tests fast; the layout and masks do not depend on the size


@pytest.fixture(scope="module")
def m() -> HeadModel:
    return HeadModel.load()


@pytest.fixture(scope="module")
def tx(m) -> HeadTexturer:
    return HeadTexturer(m, SIZE)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.2126, 0.7152, 0.0722])


# ------------------------------------------------------------------------------------------ UV layout


def test_face_uvs_follow_the_quad_split(m):
    uv = m.face_uvs
    assert uv.shape == (len(m.faces), 3, 2) and uv.dtype == np.float32
    assert uv.min() >= 0 and uv.max() <= 1
    # quads were split (a,b,c), (a,c,d) into consecutive triangles: the shared diagonal a-c has the same
    # vertices and the same texture coordinates in both halves
    f = m.faces
    assert np.array_equal(f[0::2, 0], f[1::2, 0]) and np.array_equal(f[0::2, 2], f[1::2, 1])
    np.testing.assert_array_equal(uv[0::2, 0], uv[1::2, 0])
    np.testing.assert_array_equal(uv[0::2, 2], uv[1::2, 1])
    # a vertex keeps one texture coordinate except on seams (a few per cent of the vertices)
    key = np.c_[f.ravel(), uv.reshape(-1, 2)]
    per_vertex = np.bincount(np.unique(key, axis=0)[:, 0].astype(int), minlength=m.num_vertices)
    assert per_vertex.min() == 1 and (per_vertex > 1).mean() < 0.1
    # no fold-overs: within the layout every triangle keeps the orientation of its island
    e1, e2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    assert (np.abs(area) > 0).all()
    islands = uv_islands(f, uv)
    for k in np.unique(islands):
        sign = np.sign(area[islands == k])
        assert abs(sign.mean()) == 1.0, k


def test_uv_islands_are_the_head_its_pockets_and_the_neck(m):
    islands = uv_islands(m.faces, m.face_uvs)
    sizes = np.bincount(islands)
    assert len(sizes) == 5 and islands[0] == 0
    # the largest island holds the face (nose tip, chin); the eye sockets are mirror images of each other
    assert islands[np.flatnonzero((m.faces == m.landmark_ids[30]).any(axis=1))].tolist().count(int(np.argmax(sizes))) > 0
    assert sorted(sizes.tolist()).count(586) == 2


def test_uv_atlas_inverts_the_layout(m):
    texel, fid, bary = uv_atlas(m.face_uvs, 128)
    assert np.all(np.diff(texel) > 0) and 0.2 < len(texel) / 128**2 < 0.5  # a third of the atlas
    np.testing.assert_allclose(bary.sum(axis=1), 1.0, atol=1e-12)
    assert bary.min() >= 0
    # the barycentrics give back each texel's centre
    uv = np.einsum("pk,pkc->pc", bary, m.face_uvs[fid].astype(np.float64))
    row, col = np.divmod(texel, 128)
    np.testing.assert_allclose(uv, np.c_[(col + 0.5) / 128, 1 - (row + 0.5) / 128], atol=1e-9)


# ------------------------------------------------------------------------------------------ factors


def test_factors_cover_their_ranges_and_rare_traits_stay_rare():
    rng = np.random.default_rng(0)
    f = np.array([sample_factors(rng).vector() for _ in range(2000)])
    names = AppearanceFactors.names()
    assert f.shape == (2000, len(names)) and f.min() >= 0 and f.max() <= 1
    col = {n: f[:, i] for i, n in enumerate(names)}
    assert col["melanin"].min() < 0.02 and col["melanin"].max() > 0.98       # very fair to very dark
    assert 0.55 < (col["stubble"] == 0).mean() < 0.75                        # probability 0.35 of stubble
    assert 0.75 < (col["freckles"] == 0).mean() < 0.95                       # rarer, and on fair skin
    assert col["melanin"][col["freckles"] > 0].mean() < 0.4
    assert col["hair_darkness"][col["melanin"] > 0.8].min() > 0.7            # dark skin, dark hair
    assert np.all(f.std(axis=0) > 0.05)                                      # every factor varies
    assert np.array_equal(AppearanceFactors.from_vector(f[0]).vector(), f[0])
    with pytest.raises(InputError, match="melanin"):
        AppearanceFactors(*([1.5] + [0.5] * (len(names) - 1)))


def test_colour_models_are_monotone_and_calibrated():
    fair, dark = skin_color(0.0, 0.5), skin_color(1.0, 0.5)
    assert np.all(fair > dark) and np.all(fair[0] > fair[1:]) and np.all(dark[0] > dark[1:])
    np.testing.assert_allclose(fair, [0.80, 0.58, 0.47])         # linear RGB, about sRGB (231, 200, 182)
    ruddy, sallow = skin_color(0.3, 1.0), skin_color(0.3, 0.0)
    assert ruddy[0] / ruddy[1] > sallow[0] / sallow[1]           # blood absorbs green: redder
    assert np.all(hair_color(1.0, 0.0) < hair_color(0.0, 0.0))
    assert hair_color(0.0, 1.0)[0] / hair_color(0.0, 1.0)[2] > hair_color(0.0, 0.0)[0] / hair_color(0.0, 0.0)[2]


def test_value_noise_is_smooth_seeded_and_bounded():
    pts = np.random.default_rng(1).uniform(-300, 300, size=(5000, 3))
    a, b = ValueNoise(np.random.default_rng(5)), ValueNoise(np.random.default_rng(5))
    assert np.array_equal(a(pts), b(pts))
    assert not np.array_equal(a(pts), ValueNoise(np.random.default_rng(6))(pts))
    v = a.fbm(pts, 3.0, octaves=3)
    assert np.abs(v).max() <= 1 and abs(v.mean()) < 0.1 and v.std() > 0.1
    step = a.fbm(pts + 1e-3, 3.0, octaves=3) - v
    assert np.abs(step).max() < 0.01  # continuous


# ------------------------------------------------------------------------------------------ textures


def test_same_seed_same_texture_different_seed_different(tx):
    a, b = tx.generate(11), tx.generate(11)
    assert np.array_equal(a.texture, b.texture) and a.factors == b.factors
    c = tx.generate(12)
    assert a.factors != c.factors and np.abs(a.texture - c.texture).mean() > 0.005
    assert a.texture.shape == (SIZE, SIZE, 3) and a.texture.dtype == np.float32
    assert np.isfinite(a.texture).all() and a.texture.min() >= 0 and a.texture.max() <= 1
    # the cached generator of the embedded head gives the same arrays
    d = generate_appearance(11, size=SIZE)
    assert np.array_equal(d.texture, a.texture) and d.factors == a.factors
    # sequences of ints seed it too, as synth does with (seed, subject, 1)
    assert np.array_equal(tx.generate([0, 3, 1]).texture, tx.generate([0, 3, 1]).texture)


def test_empty_texels_copy_their_nearest_painted_texel(tx):
    t = tx.generate(0).texture.reshape(-1, 3)
    painted = np.zeros(len(t), dtype=bool)
    painted[tx.texels] = True
    assert 0.2 < painted.mean() < 0.5
    # every texel's colour is some painted texel's colour (the padding copies, never invents)
    pal = {tuple(c) for c in t[painted]}
    assert all(tuple(c) in pal for c in t[~painted][::97])


def _with(base: AppearanceFactors, **kw) -> AppearanceFactors:
    v = dict(zip(AppearanceFactors.names(), base.vector()))
    v.update(kw)
    return AppearanceFactors(**v)


def test_factors_drive_their_regions(tx):
    base = AppearanceFactors(melanin=0.3, haemoglobin=0.5, hair_darkness=0.9, hair_redness=0.1, lip_tint=0.5,
                             brow_density=0.5, cheek_flush=0.2, eye_shadow=0.3, stubble=0.0, scalp_hair=0.0,
                             freckles=0.0, iris=0.5)

    def paint(f, seed=3):
        return tx.paint(f, np.random.default_rng(seed)).reshape(-1, 3)[tx.texels]

    mk = tx.masks
    ref = paint(base)
    skin = (mk["lips"] < 0.01) & (mk["brows"] < 0.01) & (mk["eye_socket"] == 0) & (mk["mouth_inside"] == 0) \
        & (mk["scalp"] < 0.01)
    # melanin darkens the skin everywhere
    dark = paint(_with(base, melanin=0.9))
    assert _luminance(dark[skin]).mean() < 0.3 * _luminance(ref[skin]).mean()
    # lip tint reddens the lips, not the rest
    lips, away = mk["lips"] > 0.9, mk["lips"] == 0
    red = paint(_with(base, lip_tint=1.0))
    pale = paint(_with(base, lip_tint=0.0))
    ratio = lambda x: (x[:, 0] / x[:, 1]).mean()
    assert ratio(red[lips]) > ratio(pale[lips]) + 0.2
    assert np.array_equal(red[away], pale[away])
    # stubble darkens the beard area (dark hair on fair skin), brows the brows, hair the scalp
    for name, mask in (("stubble", "beard"), ("brow_density", "brows"), ("scalp_hair", "scalp")):
        on = paint(_with(base, **{name: 1.0, "brow_density": 1.0 if name == "brow_density" else 0.0}))
        off = paint(_with(base, **{name: 0.0, "brow_density": 0.0}))
        region, rest = mk[mask] > 0.9, mk[mask] == 0
        assert _luminance(on[region]).mean() < 0.7 * _luminance(off[region]).mean(), name
        assert np.array_equal(on[rest & skin], off[rest & skin]), name
    # the cheeks flush: more red relative to green there
    flush = paint(_with(base, cheek_flush=1.0))
    cheeks = mk["cheeks"] > 0.8
    assert ratio(flush[cheeks]) > ratio(ref[cheeks]) + 0.05
    # the iris colour shows only in the eye sockets
    blue, brown = paint(_with(base, iris=0.0)), paint(_with(base, iris=1.0))
    iris = mk["iris"] > 0.9
    assert iris.sum() > 20 and blue[iris, 2].mean() > 2 * brown[iris, 2].mean()
    assert np.array_equal(blue[mk["eye_socket"] == 0], brown[mk["eye_socket"] == 0])


def test_region_masks_sit_where_the_landmarks_are(m, tx):
    L = m.vertices[m.landmark_ids]
    p, mk = tx.positions, tx.masks
    lips = p[mk["lips"] > 0.5]
    assert len(lips) > 50 and np.all(np.abs(lips[:, 1] - L[48:60, 1].mean()) < 15)
    brows = p[mk["brows"] > 0.5]
    assert np.all(brows[:, 1] > L[36:48, 1].max()) and np.all(np.abs(brows[:, 0]) > 10)
    beard = p[mk["beard"] > 0.5]
    middle = np.abs(beard[:, 0]) < 25
    assert np.all(beard[middle, 1] < L[33, 1]) and beard[:, 1].min() < L[8, 1] - 20  # under the nose and chin
    assert np.all(beard[:, 1] < L[0, 1]) and beard[~middle, 1].max() > L[33, 1] + 20  # sideburns, below the eyes
    scalp = p[mk["scalp"] > 0.5]
    assert scalp[:, 1].min() > L[8, 1] and np.percentile(scalp[:, 1], 10) > L[30, 1] - 40
    for name in ("eye_socket", "mouth_inside"):
        assert (mk[name] > 0.5).sum() > 20, name
    sockets = p[mk["eye_socket"] > 0.5]
    assert np.all(np.abs(sockets[:, 1] - L[36:48, 1].mean()) < 20)


def test_a_model_without_uvs_is_refused(m):
    data = {"face_uvs": None}
    bare = object.__new__(HeadModel)
    bare.__dict__.update(m.__dict__)
    bare.__dict__.update(data)
    with pytest.raises(InputError, match="face_uvs"):
        HeadTexturer(bare, SIZE)
    with pytest.raises(InputError, match="texture size"):
        HeadTexturer(m, 8)
