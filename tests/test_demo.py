"""The demo on a few heads: everything it fits or samples is left as a mesh with a latents file that
decodes back to it, inside its output folder."""

import json

import numpy as np
import pytest
import torch

from neuralmorph.commands.demo import DemoConfig, run_demo
from neuralmorph.data.dataset import HeadDataset
from neuralmorph.frame import Similarity
from neuralmorph.geometry.mesh import load_mesh, load_points
from neuralmorph.models import MorphableModel
from neuralmorph.models.latents import load_latents


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    # one point-cloud and one scan fit (about 15 s each on one thread), of the one held-out identity's 2 heads
    cfg = DemoConfig(out=out, subjects=5, expressions=2, identity_dims=2, expression_dims=2, point_fits=1,
                     scan_fits=1, samples=2, eval_points=2_000, appearance=False)  # appearance: its own test
    return cfg, run_demo(cfg)


def _decoded(model, latents_file) -> np.ndarray:
    """The head a latents file describes, placed by its pose (model frame -> the observation's), mm."""
    latents = load_latents(latents_file, model)
    with torch.no_grad():
        head = model.decode(latents)[0].double().numpy()
    pose = json.loads(latents_file.read_text()).get("pose")
    if pose is None:
        return head
    return Similarity(pose["scale"], np.array(pose["rotation"]), np.array(pose["translation"])).apply(head)


def test_demo_keeps_every_fit_and_sample_with_its_latents(demo):
    cfg, result = demo
    out = cfg.out
    model = MorphableModel.load(out / "model")
    data = HeadDataset.load(out / "data")
    assert {h.split for h in data.heads} == {"train", "test"}   # no val split: the PCA model validates on nothing
    test = [f"{h.subject}_{h.expression}" for h in data.heads if h.split == "test"]
    # the demo spreads its point fits over the held-out heads (the first when there is one) and fits the
    # first of those from scans
    expected = {"registered": test, "points": test[:1], "scans": test[:1]}
    assert result["protocol"]["registered_fit"]["heads"] == len(test)
    for kind, names in expected.items():
        folder = out / "fits" / kind
        assert sorted(p.name for p in folder.glob("*.latents.json")) == sorted(f"{n}.latents.json" for n in names)
        for name in names:
            fitted = load_mesh(folder / f"{name}.ply")
            assert fitted.vertices.shape == (model.n_vertices, 3)
            # the latents (and pose) decode to the mesh written beside them
            np.testing.assert_allclose(_decoded(model, folder / f"{name}.latents.json"), fitted.vertices, atol=1e-3)
            if kind == "registered":   # an exact fit of a held-out head lies on it within a few mm
                truth = data.vertices[next(h.registered for h in data.heads if f"{h.subject}_{h.expression}" == name)]
                assert np.linalg.norm(fitted.vertices - truth, axis=1).mean() < 10.0
    for name in expected["points"]:
        points, _ = load_points(out / "fits" / "points" / f"{name}.points.ply")
        assert points.shape == (2500, 3)
    for name in expected["scans"]:
        scan = load_mesh(out / "fits" / "scans" / f"{name}.scan.ply")
        assert len(scan.faces) and len(scan.vertices) != model.n_vertices   # the raw scan, its own topology
    samples = sorted((out / "samples").glob("sample_*.ply"))
    assert len(samples) == cfg.samples
    for mesh_file in samples:
        np.testing.assert_allclose(_decoded(model, mesh_file.with_suffix(".json")), load_mesh(mesh_file).vertices,
                                   atol=1e-3)
    assert (out / "report.html").is_file() and (out / "metrics.json").is_file()
    assert not [p for p in out.parent.iterdir() if p != out]   # nothing written beside the output folder


def test_demo_appearance_fits_one_photo_of_an_unseen_head_with_the_shipped_model(tmp_path):
    """The demo's appearance section (short fits): every case is kept as `fit` keeps an image fit, its latents
    decode to the fitted mesh, its scores cover input and unseen views, and the fitted code explains the
    input view better than the mean appearance does."""
    from neuralmorph.commands.demo_appearance import METHODS, VIEWS, appearance_cases
    from neuralmorph.fitting.image import ImageFitConfig
    from neuralmorph.models.appearance.pretrained import SEED, load_pretrained
    from neuralmorph.splat.ply import load_gaussians_ply

    model = load_pretrained()
    cases, protocol = appearance_cases(tmp_path, seed=0, fit_cfg=ImageFitConfig(steps=60, refine_steps=20),
                                       synthetic=1, james=False)
    assert [c.name for c in cases] == ["synthetic_subj000"] and protocol["james"] == "left out"
    assert protocol["synthetic_seed"] == 0 != SEED
    (case,) = cases
    assert set(case.scores) == set(METHODS)
    for row in case.scores.values():
        assert set(row) == {"psnr_heldout_db", "psnr_heldout_masked_db", "ssim_heldout", "psnr_input_db", "fit_seconds"}
        assert all(np.isfinite(v) for v in row.values())
    # measured 23.1 against 22.3 dB
    assert case.scores["identity_field"]["psnr_input_db"] > case.scores["mean_appearance"]["psnr_input_db"] + 0.4
    folder = tmp_path / "appearance" / case.name
    fitted = load_mesh(folder / "fit.ply")
    np.testing.assert_allclose(_decoded(model, folder / "latents.json"), fitted.vertices, atol=1e-3)
    assert len(load_gaussians_ply(folder / "gaussians.ply").means) == len(model.layout_faces)
    assert case.strip.shape[1] > VIEWS * 128 and (folder / "views.png").is_file()
    assert len(HeadDataset.load(tmp_path / "appearance" / "data").images) == VIEWS
