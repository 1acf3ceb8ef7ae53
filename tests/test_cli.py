import json
import subprocess
import sys

import numpy as np
import pytest

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.geometry.mesh import Mesh, save_mesh

VERBS = [[], ["data"], ["data", "synth"], ["data", "ingest"], ["data", "info"], ["align"], ["evaluate"], ["demo"]]


def nm(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "neuralmorph", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v) or "top")
def test_every_verb_has_help(verb):
    res = nm(*verb, "--help")
    assert res.returncode == 0, res.stderr
    assert "usage: neuralmorph" in res.stdout


def _one_clean_error(res, *needles):
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert str(n) in lines[0]


def test_evaluate_writes_metrics_json_and_align_recovers_pose(small_synth, tmp_path):
    ds = HeadDataset.load(small_synth)
    gt = tmp_path / "gt.ply"
    save_mesh(gt, Mesh(ds.vertices[0].astype(np.float64), ds.faces))
    shifted = tmp_path / "pred.ply"
    save_mesh(shifted, Mesh(ds.vertices[0].astype(np.float64) + [0.0, 0.0, 0.5], ds.faces))
    out = tmp_path / "m.json"
    res = nm("evaluate", "--pred", shifted, "--gt", gt, "--out", out, "--n-points", 20000)
    assert res.returncode == 0, res.stderr
    result = json.loads(out.read_text())
    assert set(result) >= {"metrics", "protocol"}
    assert result["metrics"]["vertex_error_mm"] == pytest.approx(0.5, abs=1e-4)
    assert result["metrics"]["fscore@10mm"] == pytest.approx(1.0)  # 20k samples lie ~3 mm apart: only a wide threshold is exact
    assert result["protocol"]["seed"] == 0

    scan = small_synth / ds.heads[1].scan
    reg = tmp_path / "reg.ply"
    save_mesh(reg, Mesh(ds.vertices[ds.heads[1].registered].astype(np.float64), ds.faces))
    lm = str(scan).replace(".ply", ".landmarks.txt")
    reg_lm = tmp_path / "reg_lm.txt"
    np.savetxt(reg_lm, ds.landmarks(ds.heads[1].registered))
    res = nm("align", "--source", scan, "--target", reg, "--out", tmp_path / "aligned.ply",
             "--source-landmarks", lm, "--target-landmarks", reg_lm, "--no-scale")
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "aligned.json").read_text())
    assert summary["rmse_mm"] < 0.5
    assert summary["transform"]["scale"] == 1.0


def test_bad_inputs_give_one_clear_line(tmp_path, small_synth):
    missing = tmp_path / "nope.ply"
    _one_clean_error(nm("evaluate", "--pred", missing, "--gt", missing, "--out", tmp_path / "m.json"), missing)
    assert not (tmp_path / "m.json").exists()

    garbage = tmp_path / "garbage.ply"
    garbage.write_bytes(b"ply\nformat nonsense\n\x00\x01\x02")
    _one_clean_error(nm("evaluate", "--pred", garbage, "--gt", garbage), garbage)

    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    ds = HeadDataset.load(small_synth)
    gt = tmp_path / "gt.ply"
    save_mesh(gt, Mesh(ds.vertices[0].astype(np.float64), ds.faces))
    _one_clean_error(nm("evaluate", "--pred", empty, "--gt", gt), empty)

    _one_clean_error(nm("data", "info", "--data", tmp_path), "manifest")
    _one_clean_error(nm("data", "ingest", "--manifest", tmp_path / "m.csv", "--out", tmp_path / "o"), "m.csv")
    res = nm("data", "synth", "--out", tmp_path / "s", "--subjects", 0)
    _one_clean_error(res, "subject")
    assert not (tmp_path / "s").exists()


def test_data_info_summarises(small_synth):
    res = nm("data", "info", "--data", small_synth)
    assert res.returncode == 0, res.stderr
    assert "9 heads of 3 subjects" in res.stdout
    assert "raw scans: 9" in res.stdout
