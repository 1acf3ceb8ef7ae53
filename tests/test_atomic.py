"""Atomic outputs: never half-written, never over the user's files, modes from the umask, no leftovers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from neuralmorph.atomic import MARKER, atomic_dir, atomic_file, check_output_dir
from neuralmorph.errors import InputError


def test_a_folder_of_the_users_is_never_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="did not write"):
        check_output_dir(out, "fit")
    with pytest.raises(InputError, match="did not write"):
        with atomic_dir(out, "fit") as tmp:
            (tmp / "a.txt").write_text("new")
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind


def test_a_file_is_never_replaced_by_a_folder_nor_a_folder_by_a_file(tmp_path):
    f = tmp_path / "head.ply"
    f.write_text("mine")
    with pytest.raises(InputError, match="not a folder"):
        with atomic_dir(f, "fit"):
            pass
    d = tmp_path / "folder"
    d.mkdir()
    with pytest.raises(InputError, match="is a folder"):
        with atomic_file(d):
            pass
    assert f.read_text() == "mine" and d.is_dir()


def test_our_own_output_and_empty_folders_are_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # empty: fine
    with atomic_dir(out, "fit") as tmp:
        (tmp / "a.txt").write_text("1")
    assert (out / MARKER).is_file()
    with atomic_dir(out, "fit") as tmp:  # ours: replaced whole
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "b.txt"])


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "d", "fit") as tmp:
            (tmp / "x").write_text("1")
        with atomic_file(tmp_path / "f.txt") as tmp:
            tmp.write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    # a child process opens an atomic folder and is killed (SIGKILL) inside it
    code = ("import os, signal, sys\nfrom neuralmorph.atomic import atomic_dir\n"
            "with atomic_dir(sys.argv[1], 'fit') as tmp:\n    (tmp / 'x').write_text('1')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "data")])
    assert len(list(tmp_path.iterdir())) == 1 and not (tmp_path / "data").exists()  # the temporary
    with atomic_dir(tmp_path / "data", "fit") as tmp:
        (tmp / "y").write_text("2")
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_the_current_folder_as_output_is_checked_like_any_other(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="did not write"):
        with atomic_dir(".", "fit"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_an_output_of_another_kind_is_never_replaced(tmp_path):
    with atomic_dir(tmp_path / "model", "model") as tmp:
        (tmp / "weights").write_text("trained")
    with pytest.raises(InputError, match="holds a neuralmorph model, not a fit"):
        with atomic_dir(tmp_path / "model", "fit") as tmp:
            (tmp / "fit.ply").write_text("x")
    assert (tmp_path / "model" / "weights").read_text() == "trained"


# --- the data-loss cases of issue 14, through the CLI ---------------------------------------------------------


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "neuralmorph", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _refused(res, where):
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(where) in lines[0], res.stderr


@pytest.fixture(scope="module")
def pca_model(pca_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pca") / "model"
    assert _cli("train", "pca", "--data", pca_data, "--out", out, "--identity-dims", 4, "--expression-dims", 4).returncode == 0
    return out


def test_sample_never_deletes_the_users_files(pca_model, tmp_path):
    existing = tmp_path / "existing.ply"
    existing.write_bytes(b"mine")
    _refused(_cli("sample", "--model", pca_model, "--n", 1, "--out", existing), existing)
    assert existing.read_bytes() == b"mine"
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    _refused(_cli("sample", "--model", pca_model, "--n", 1, "--out", folder), folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_fit_and_sample_never_replace_a_trained_model(pca_model, tmp_path):
    assert _cli("sample", "--model", pca_model, "--n", 1, "--out", tmp_path / "heads").returncode == 0
    before = {p.name: p.read_bytes() for p in pca_model.iterdir()}
    _refused(_cli("sample", "--model", pca_model, "--n", 1, "--out", pca_model), pca_model)
    _refused(_cli("fit", "--model", pca_model, "--target", tmp_path / "heads" / "sample_000.ply", "--out", pca_model),
             pca_model)
    assert {p.name: p.read_bytes() for p in pca_model.iterdir()} == before


def test_ingest_never_writes_over_its_source_meshes(pca_model, tmp_path):
    src = tmp_path / "meshes"
    src.mkdir()
    res = _cli("sample", "--model", pca_model, "--n", 2, "--out", tmp_path / "heads")
    assert res.returncode == 0, res.stderr
    for i in range(2):
        (src / f"h{i}.ply").write_bytes((tmp_path / "heads" / f"sample_{i:03d}.ply").read_bytes())
    (src / "m.csv").write_text("path,subject,expression\nh0.ply,a,neutral\nh1.ply,b,neutral\n")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    _refused(_cli("data", "ingest", "--manifest", src / "m.csv", "--out", src), src)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
