import json
import subprocess
import sys

import numpy as np
import pytest

from neuralmorph.geometry.mesh import Mesh, load_mesh, save_mesh

NEW_VERBS = [["train"], ["train", "pca"], ["train", "regional"], ["train", "prior"], ["bench", "prior"], ["fit"],
             ["sample"], ["interpolate"], ["transfer"],
             ["edit"], ["export"], ["evaluate-model"], ["evaluate-real"], ["render"], ["data", "fetch"],
             ["bench"], ["bench", "fidelity"]]


def nm(*args):
    return subprocess.run([sys.executable, "-m", "neuralmorph", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("verb", NEW_VERBS, ids=" ".join)
def test_help(verb):
    res = nm(*verb, "--help")
    assert res.returncode == 0, res.stderr
    assert "usage: neuralmorph" in res.stdout


@pytest.fixture(scope="module")
def model_dir(pca_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model"
    res = nm("train", "pca", "--data", pca_data, "--out", out, "--identity-dims", 6, "--expression-dims", 6)
    assert res.returncode == 0, res.stderr
    return out


def test_train_sample_fit_interpolate_transfer_render(model_dir, tmp_path):
    res = nm("sample", "--model", model_dir, "--n", 3, "--out", tmp_path / "s", "--seed", 4)
    assert res.returncode == 0, res.stderr
    a, b = load_mesh(tmp_path / "s" / "sample_000.ply"), load_mesh(tmp_path / "s" / "sample_001.ply")
    assert np.abs(a.vertices - b.vertices).max() > 1.0

    res = nm("fit", "--model", model_dir, "--target", tmp_path / "s" / "sample_000.ply", "--out", tmp_path / "f")
    assert res.returncode == 0, res.stderr
    metrics = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert metrics["fit"]["kind"] == "registered"
    assert metrics["metrics"]["vertex_error_mm"] < 1e-2
    fitted = json.loads((tmp_path / "f" / "latents.json").read_text())
    drawn = json.loads((tmp_path / "s" / "sample_000.json").read_text())
    np.testing.assert_allclose(fitted["latents"]["identity"], drawn["latents"]["identity"], atol=1e-2)

    res = nm("interpolate", "--model", model_dir, "--start", tmp_path / "s" / "sample_000.json",
             "--end", tmp_path / "s" / "sample_001.json", "--steps", 3, "--out", tmp_path / "i")
    assert res.returncode == 0, res.stderr
    mid = load_mesh(tmp_path / "i" / "interp_001.ply")
    np.testing.assert_allclose(mid.vertices, (a.vertices + b.vertices) / 2, atol=1e-3)  # the model is linear

    res = nm("transfer", "--model", model_dir, "--identity", tmp_path / "s" / "sample_000.json",
             "--expression", tmp_path / "s" / "sample_001.json", "--out", tmp_path / "t.ply")
    assert res.returncode == 0, res.stderr
    t = json.loads((tmp_path / "t.json").read_text())["latents"]
    assert t["identity"] == drawn["latents"]["identity"]
    assert t["expression"] == json.loads((tmp_path / "s" / "sample_001.json").read_text())["latents"]["expression"]

    res = nm("render", "--mesh", tmp_path / "t.ply", "--out", tmp_path / "t.png", "--size", 128)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_partial_point_cloud_file(model_dir, tmp_path, pca_data):
    from neuralmorph.data.dataset import HeadDataset
    from neuralmorph.data.observe import single_view_points

    ds = HeadDataset.load(pca_data)
    truth = ds.vertices[ds.registered_rows("test")[0]].astype(np.float64)
    points, _ = single_view_points(truth, ds.faces, np.random.default_rng(1))
    np.savetxt(tmp_path / "view.xyz", points)
    res = nm("fit", "--model", model_dir, "--target", tmp_path / "view.xyz", "--out", tmp_path / "f",
             "--fit.steps", 60)
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert m["fit"]["kind"] == "points"
    assert m["metrics"]["completeness_mm"] < 3.0  # observed points -> fitted surface


def test_evaluate_model_writes_curves(model_dir, pca_data, tmp_path):
    res = nm("evaluate-model", "--model", model_dir, "--data", pca_data, "--out", tmp_path / "q", "--sizes", 1, 3, 6,
             "--samples", 10)
    assert res.returncode == 0, res.stderr
    q = json.loads((tmp_path / "q" / "model_quality.json").read_text())
    assert q["curves"]["k"] == [1, 3, 6]
    g = q["curves"]["generalisation_mm"]
    assert g[0] >= g[1] >= g[2] > 0
    assert all(s > 0 for s in q["curves"]["specificity_mm"])
    assert "<svg" in (tmp_path / "q" / "model_quality.html").read_text()


def _one_line_error(res, *needles):
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert str(n) in lines[0]


def test_bad_inputs(model_dir, tmp_path, pca_data):
    _one_line_error(nm("sample", "--model", tmp_path / "nope", "--out", tmp_path / "s"), "nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    _one_line_error(nm("interpolate", "--model", model_dir, "--start", bad, "--end", bad, "--out", tmp_path / "i"), bad)
    other = tmp_path / "other.ply"
    save_mesh(other, Mesh(np.random.default_rng(0).normal(size=(30, 3)) * 50, np.array([[0, 1, 2], [2, 3, 4]])))
    _one_line_error(nm("fit", "--model", model_dir, "--target", other, "--out", tmp_path / "f", "--kind", "registered"),
                    "topology")
    assert not (tmp_path / "f").exists()
    (tmp_path / "no_data").mkdir()
    _one_line_error(nm("train", "pca", "--data", tmp_path / "no_data", "--out", tmp_path / "m"), "manifest")
    _one_line_error(nm("sample", "--model", model_dir, "--out", tmp_path / "s", "--n", 0), "--n")


def test_train_regional_stage_1_then_2_and_edit(pca_data, tmp_path):
    small = ["--model.dim", 32, "--model.heads", 2, "--model.encoder-depth", 1, "--model.decoder-depth", 1,
             "--model.latent-size", 8, "--batch-size", 8, "--checkpoint-every", 2, "--val-every", 0, "--no-tensorboard"]
    res = nm("train", "regional", "--data", pca_data, "--out", tmp_path / "r1", "--max-steps", 3, *small)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "r1" / "model" / "config.json").is_file()
    assert (tmp_path / "r1" / "checkpoints" / "latest").is_file()
    res = nm("sample", "--model", tmp_path / "r1" / "model", "--n", 1, "--out", tmp_path / "s")
    assert res.returncode == 0, res.stderr
    head = tmp_path / "s" / "sample_000.ply"
    # a stage-1 model has no trained control pathway: editing is refused with one clear line
    _one_line_error(nm("edit", "--model", tmp_path / "r1" / "model", "--target", head, "--resample-region", "nose",
                       "--out", tmp_path / "e.ply"), "stage 1")
    res = nm("train", "regional", "--data", pca_data, "--out", tmp_path / "r2", "--init", tmp_path / "r1" / "model",
             "--model.stage", 2, "--max-steps", 3, *small)
    assert res.returncode == 0, res.stderr
    # three steps of stage 2 (all inside the warm-up) leave the control pathway without effect: the edit is
    # refused rather than written as an unchanged head (tests/test_edit.py edits with a trained one)
    _one_line_error(nm("edit", "--model", tmp_path / "r2" / "model", "--target", head, "--resample-region", "nose",
                       "--out", tmp_path / "e.ply"), tmp_path / "r2" / "model", "control pathway has no effect")
    assert not (tmp_path / "e.ply").exists() and not (tmp_path / "e.json").exists()


def test_fit_prints_both_directions_and_warns_about_an_untrained_model(model_dir, pca_data, tmp_path):
    from neuralmorph.data.dataset import HeadDataset

    ds = HeadDataset.load(pca_data)
    head = tmp_path / "head.ply"
    save_mesh(head, Mesh(ds.vertices[ds.registered_rows("test")[0]].astype(np.float64), ds.faces))
    # a PCA model built normally: no warning, and one line with completeness, accuracy and chamfer
    res = nm("fit", "--model", model_dir, "--target", head, "--out", tmp_path / "pca_fit")
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr, res.stderr
    m = json.loads((tmp_path / "pca_fit" / "metrics.json").read_text())["metrics"]
    line = [l for l in res.stdout.splitlines() if l.startswith("fitted")]
    assert len(line) == 1, res.stdout
    for text in (f"completeness (target->fit) {m['completeness_mm']:.3f} mm", f"accuracy (fit->target) "
                 f"{m['accuracy_mm']:.3f} mm", f"chamfer-L1 {m['chamfer_l1_mm']:.3f} mm"):
        assert text in line[0], line[0]

    # a regional model trained for one step: the fit runs, with one warning line saying why
    small = ["--model.dim", 32, "--model.heads", 2, "--model.encoder-depth", 1, "--model.decoder-depth", 1,
             "--model.latent-size", 8, "--batch-size", 8, "--checkpoint-every", 0, "--no-tensorboard"]
    res = nm("train", "regional", "--data", pca_data, "--out", tmp_path / "r", "--max-steps", 1, *small)
    assert res.returncode == 0, res.stderr
    res = nm("fit", "--model", tmp_path / "r" / "model", "--target", head, "--out", tmp_path / "regional_fit")
    assert res.returncode == 0, res.stderr
    warnings = [l for l in res.stderr.splitlines() if "warning" in l]
    assert len(warnings) == 1 and warnings[0].startswith("neuralmorph: warning: "), res.stderr
    assert "1 optimiser step" in warnings[0] and "warm-up" in warnings[0]
    assert (tmp_path / "regional_fit" / "fit.ply").is_file()


def test_train_regional_under_torchrun_two_cpu_processes(pca_data, tmp_path):
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--data", pca_data, "--out", tmp_path / "ddp", "--max-steps", 2, "--batch-size", 4, "--checkpoint-every", 1,
            "--val-every", 0, "--no-tensorboard", "--model.dim", 16, "--model.heads", 2, "--model.encoder-depth", 1,
            "--model.decoder-depth", 1, "--model.latent-size", 4]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                          "-m", "neuralmorph", "train", "regional", *map(str, args)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("trained regional") == 1  # only rank 0 reports and writes
    assert (tmp_path / "ddp" / "model" / "weights.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["latest", "step_0000001", "step_0000002"]


def test_export_decodes_latents_to_any_mesh_format(model_dir, tmp_path):
    assert nm("sample", "--model", model_dir, "--n", 1, "--out", tmp_path / "s").returncode == 0
    res = nm("export", "--model", model_dir, "--latents", tmp_path / "s" / "sample_000.json", "--out", tmp_path / "h.obj")
    assert res.returncode == 0, res.stderr
    np.testing.assert_allclose(load_mesh(tmp_path / "h.obj").vertices, load_mesh(tmp_path / "s" / "sample_000.ply").vertices,
                               atol=1e-9)
    res = nm("export", "--model", model_dir, "--out", tmp_path / "mean.glb")
    assert res.returncode == 0, res.stderr
    import trimesh

    glb = trimesh.load(tmp_path / "mean.glb", force="mesh")
    assert 0.1 < glb.extents.max() < 0.5  # metres: a head is a few decimetres
    _one_line_error(nm("export", "--model", model_dir, "--out", tmp_path / "x.xyz"), "x.xyz")
