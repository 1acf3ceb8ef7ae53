import filecmp
from pathlib import Path

import numpy as np

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.data.head_model import HeadModel
from neuralmorph.data.synth import SynthConfig, synthesize
from neuralmorph.frame import Similarity
from neuralmorph.geometry.distance import closest_points
from neuralmorph.geometry.mesh import load_mesh


def _files(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


def test_synth_is_byte_identical_for_the_same_seed(small_synth, tmp_path):
    again = tmp_path / "again"
    synthesize(SynthConfig(out=again, subjects=3, expressions=3, seed=7), progress=False)
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
    assert {h.split for h in ds.heads} <= {"train", "test"}
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
