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


def _all_verbs(level=None, prefix=()):
    from neuralmorph.commands import COMMANDS

    for name, entry in (COMMANDS if level is None else level).items():
        if isinstance(entry, dict):
            yield from _all_verbs(entry, (*prefix, name))
        else:
            yield [*prefix, name]


@pytest.mark.parametrize("verb", list(_all_verbs()), ids=" ".join)
def test_help_reads_cleanly(verb, capsys, monkeypatch):
    """Every verb's --help: optional flags show their value's kind (PATH, not {None}|PATH), at most one
    --device, no research notes or issue numbers, and field help as flowing sentences: a help line ends
    only where the next word would not fit (never where the source docstring broke its line)."""
    from neuralmorph.cli import _parse

    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_:
        _parse([*verb, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: neuralmorph" in text
    assert "{None}" not in text and ",None}" not in text, text
    body = text.split("\n\n", 1)[1]  # after the usage lines; boxed (│ ... │) or plain, by terminal
    rows = [line[1:-1] if line.startswith("│") else line for line in body.splitlines() if line.startswith(("│", " "))]
    assert len(rows) > 3, text
    flags = [row.split()[0].rstrip(",") for row in rows if row.lstrip().startswith("--")]
    assert len([f for f in flags if f == "--device" or f.endswith(".device")]) <= 1, flags
    for note in ("(NPHM", "; NPHM", "(MonoNPHM", "MonoNPHM's", "(LAMM)", "LAMM;", "issue", "docs/benchmarks.md",
                 "measured"):
        assert note not in text, note
    for above, below in zip(rows, rows[1:]):
        upper, lower = above.rstrip(), below.strip()
        flag_only = upper.lstrip().startswith(("-", "{")) and "  " not in upper.strip()
        if not lower or not upper.strip() or flag_only or lower.startswith(("-", "{", "─")) or "─" in upper:
            continue
        if below.startswith(" " * (len(below) - len(below.lstrip()))) and not below.lstrip().startswith("-"):
            room = len(above) - 1 - len(upper)  # free columns left on the line above (one is padding)
            assert room < len(lower.split()[0]) + 1, f"line broken early:\n{above}\n{below}"


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


def test_demo_threads_follow_omp_num_threads_or_the_cores(monkeypatch):
    import os

    import torch

    from neuralmorph.commands.demo import MAX_THREADS, _set_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        assert _set_threads() == min(cores, MAX_THREADS) == torch.get_num_threads()
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # set: torch read it at start-up; the demo leaves it be
        assert _set_threads() == 1
    finally:
        torch.set_num_threads(before)
