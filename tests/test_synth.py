import filecmp
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.data.head_model import HeadModel
from neuralmorph.data.synth import SynthConfig, synthesize
from neuralmorph.errors import InputError
from neuralmorph.frame import Similarity
from neuralmorph.geometry.distance import closest_points
from neuralmorph.geometry.mesh import load_mesh


def _files(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


def test_synth_is_byte_identical_for_the_same_seed(small_synth, tmp_path):
    again = tmp_path / "again"
    synthesize(SynthConfig(out=again, subjects=3, expressions=3, seed=7, images=True, views=2, image_size=32),
               progress=False)  # small_synth's settings (tests/conftest.py)
    assert _files(small_synth) == _files(again)
    for rel in _files(small_synth):
        assert filecmp.cmp(small_synth / rel, again / rel, shallow=False), rel
    other = tmp_path / "other"
    synthesize(SynthConfig(out=other, subjects=3, expressions=3, seed=8, scans=False), progress=False)
    a, b = HeadDataset.load(small_synth), HeadDataset.load(other)
    assert np.abs(a.vertices - b.vertices).max() > 1.0


def test_synth_layout_labels_and_neutral_first(small_synth):
    ds = HeadDataset.load(small_synth)
    model = HeadModel.load()
    assert ds.vertices.shape == (9, len(model.vertices), 3)
    assert ds.vertices.dtype == np.float32
    assert [h.expression for h in ds.heads[:3]] == ["neutral", "expr01", "expr02"]
    assert len({h.subject for h in ds.heads}) == 3
    assert {h.split for h in ds.heads} <= {"train", "val", "test"}
    # every subject's heads share a split (identities are held out, not heads)
    for subject in {h.subject for h in ds.heads}:
        assert len({h.split for h in ds.heads if h.subject == subject}) == 1
    neutral = [h.registered for h in ds.heads if h.expression == "neutral"]
    assert np.all(ds.extras["synth.face_units"][neutral] == 0)
    assert np.all(ds.extras["synth.jaw"][neutral] == 0)
    # identities really differ (mm), expressions really move the face
    assert np.linalg.norm(ds.vertices[0] - ds.vertices[3], axis=1).mean() > 1.0
    assert np.linalg.norm(ds.vertices[0] - ds.vertices[1], axis=1).max() > 1.0
    assert ds.landmarks(0).shape == (68, 3)
    assert set(ds.region_names) >= {"nose", "ears", "neck"}


def test_jaw_opening_is_not_a_linear_blend_of_its_endpoints():
    model = HeadModel.load()
    neutral = model.identity(model_default_phenotype())
    closed = model.articulate(neutral, 0.0, np.zeros(3))
    half = model.articulate(neutral, np.deg2rad(12.5), np.zeros(3))
    full = model.articulate(neutral, np.deg2rad(25.0), np.zeros(3))
    moved = np.linalg.norm(full - closed, axis=1)
    assert moved.max() > 10.0  # the chin really moves (mm)
    off_blend = np.linalg.norm(half - (closed + full) / 2, axis=1)
    # a rotation's midpoint lies off the chord: sagitta r(1 - cos(θ/2)) is ~1 mm for r ~ 100 mm, θ = 25°
    assert off_blend.max() > 0.5


def model_default_phenotype():
    from neuralmorph.data.head_model import Phenotype

    return Phenotype()


def test_raw_scans_are_remeshed_posed_and_on_the_surface(small_synth):
    ds = HeadDataset.load(small_synth)
    head = ds.heads[1]
    scan = load_mesh(small_synth / head.scan)
    assert len(scan.vertices) != ds.n_vertices  # not in correspondence
    pose = Similarity.from_matrix(ds.extras["synth.scan_pose"][head.registered])
    back = pose.inverse().apply(scan.vertices)
    _, dist, _ = closest_points(back, ds.vertices[head.registered].astype(np.float64), ds.faces)
    assert np.median(dist) < 0.6      # re-meshed surface + 0.2 mm noise stays on the head
    assert np.abs(pose.apply(back) - scan.vertices).max() < 1e-6
    moved = np.linalg.norm(scan.vertices - back, axis=1).mean()
    assert moved > 1.0  # the scan is not handed over in the canonical pose
    landmarks = np.loadtxt(small_synth / head.scan.replace(".ply", ".landmarks.txt"))
    np.testing.assert_allclose(pose.inverse().apply(landmarks), ds.landmarks(head.registered), atol=1e-3)


def _splits_by_subject(ds: HeadDataset) -> dict[str, str]:
    """subject -> its split; asserts that every subject's heads share one split (identities are held out)."""
    out = {}
    for h in ds.heads:
        assert out.setdefault(h.subject, h.split) == h.split, h.subject
    return out


def test_synth_splits_identities_into_train_val_test(tmp_path):
    cfg = SynthConfig(out=tmp_path / "a", subjects=10, expressions=2, seed=4, scans=False)
    ds = synthesize(cfg, progress=False)
    by_subject = _splits_by_subject(ds)
    counts = {s: sum(v == s for v in by_subject.values()) for s in ("train", "val", "test")}
    n_test, n_val = round(cfg.test_fraction * 10), round(cfg.val_fraction * 10)
    assert n_val >= 1  # the default really holds identities out for validation
    assert counts == {"train": 10 - n_test - n_val, "val": n_val, "test": n_test}
    assert len(ds.registered_rows("val")) == 2 * n_val
    # the same seed gives byte-identical files with a val split too
    synthesize(SynthConfig(out=tmp_path / "b", subjects=10, expressions=2, seed=4, scans=False), progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    for rel in _files(tmp_path / "a"):
        assert filecmp.cmp(tmp_path / "a" / rel, tmp_path / "b" / rel, shallow=False), rel
    # the test identities do not depend on the val fraction; without one there is no val split
    plain = synthesize(SynthConfig(out=tmp_path / "c", subjects=10, expressions=2, seed=4, scans=False,
                                   val_fraction=0.0), progress=False)
    plain_splits = _splits_by_subject(plain)
    assert {s for s, v in plain_splits.items() if v == "test"} == {s for s, v in by_subject.items() if v == "test"}
    assert "val" not in plain_splits.values()
    np.testing.assert_array_equal(plain.vertices, ds.vertices)  # splits never change the heads


def test_identity_splits_at_the_demo_size_keep_a_training_majority():
    from neuralmorph.data.synth import identity_splits

    split = identity_splits(50, 0.2, 0.1, seed=0)
    assert (split.count("train"), split.count("val"), split.count("test")) == (35, 5, 10)
    old_rule = np.random.default_rng([0, 2**31]).permutation(50)[:10]   # the test split before val existed
    assert {i for i, s in enumerate(split) if s == "test"} == set(old_rule.tolist())


@pytest.mark.parametrize("kwargs", [{"val_fraction": 1.0}, {"val_fraction": -0.1}, {"val_fraction": float("nan")},
                                    {"test_fraction": 0.5, "val_fraction": 0.5},
                                    {"subjects": 2, "test_fraction": 0.5, "val_fraction": 0.4}],
                         ids=["one", "negative", "nan", "sum-one", "rounds-to-no-train"])
def test_bad_val_fraction_is_refused_naming_the_flag(tmp_path, kwargs):
    with pytest.raises(InputError) as err:
        SynthConfig(out=tmp_path / "d", **kwargs)
    assert err.value.where == "--val-fraction"


def test_cli_refuses_a_bad_val_fraction_in_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "neuralmorph", "data", "synth", "--out", str(tmp_path / "s"),
                          "--val-fraction", "0.9"], capture_output=True, text=True)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 1 and len(lines) == 1 and "--val-fraction" in lines[0], res.stderr
    assert not (tmp_path / "s").exists()
