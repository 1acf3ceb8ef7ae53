"""Atomic outputs: never half-written, never over the user's files, modes from the umask, no leftovers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import numpy as np

from neuralmorph.atomic import (MARKER, SIGNATURE, atomic_dir, atomic_file, check_output_dir, check_output_file,
                                is_signed, output_files, read_json, write_json)
from neuralmorph.errors import InputError
from neuralmorph.geometry.mesh import Mesh, save_mesh


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


def test_our_own_output_is_replaced_only_with_overwrite_and_empty_folders_always(tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # empty: fine
    with atomic_dir(out, "fit") as tmp:
        (tmp / "a.txt").write_text("1")
    assert (out / MARKER).is_file()
    with pytest.raises(InputError, match="pass --overwrite"):
        with atomic_dir(out, "fit") as tmp:
            (tmp / "b.txt").write_text("2")
    with atomic_dir(out, "fit", overwrite=True) as tmp:  # ours, same kind, asked for: replaced whole
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "b.txt"])


def test_file_outputs_replace_only_signed_files_and_commit_together(tmp_path):
    mine = tmp_path / "head.json"
    mine.write_text('{"mine": 1}')
    with pytest.raises(InputError, match="not an output of neuralmorph"):
        with output_files(tmp_path / "head.ply", mine, overwrite=True):
            pass
    assert mine.read_text() == '{"mine": 1}' and not (tmp_path / "head.ply").exists()
    with output_files(tmp_path / "a.ply", tmp_path / "a.json") as (mesh_tmp, json_tmp):
        save_mesh(mesh_tmp, Mesh(np.eye(3), np.array([[0, 1, 2]])))
        write_json(json_tmp, {"x": 1})
    assert is_signed(tmp_path / "a.ply") and is_signed(tmp_path / "a.json")
    with pytest.raises(InputError, match="pass --overwrite"):
        check_output_file(tmp_path / "a.ply")
    check_output_file(tmp_path / "a.ply", overwrite=True)
    with pytest.raises(RuntimeError):  # a failing writer leaves both outputs as they were
        with output_files(tmp_path / "a.ply", tmp_path / "a.json", overwrite=True) as (mesh_tmp, json_tmp):
            write_json(json_tmp, {"x": 2})
            raise RuntimeError("boom")
    assert read_json(tmp_path / "a.json")["x"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.ply", "head.json"]


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".off", ".stl", ".glb"])
def test_every_mesh_format_we_write_is_signed(tmp_path, suffix):
    save_mesh(tmp_path / f"m{suffix}", Mesh(np.eye(3) * 10, np.array([[0, 1, 2]])))
    assert is_signed(tmp_path / f"m{suffix}")


def test_a_png_we_write_is_signed_and_a_users_is_not(tmp_path):
    from neuralmorph.render import save_png

    save_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    assert is_signed(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes().replace(SIGNATURE.encode(), b"x" * len(SIGNATURE)))
    assert not is_signed(tmp_path / "b.png")


def test_outputs_are_refused_when_they_overlap_an_input(tmp_path):
    from neuralmorph.outputs import Output, check_apart

    model = tmp_path / "model"
    model.mkdir()
    for out, word in ((model, "is also the input"), (model / "fits", "is inside the input"),
                      (tmp_path, "contains the input")):
        with pytest.raises(InputError, match=word):
            check_apart([Output("--out", out, "fit")], [("--model", model)])
    check_apart([Output("--out", tmp_path / "fit", "fit")], [("--model", model)])


def test_a_second_run_into_a_locked_run_folder_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    from neuralmorph.training.run_folder import LOCK_FILE, claim_run_folder

    run = tmp_path / "run"
    lock = claim_run_folder(run, resume=False, overwrite=False)
    with pytest.raises(InputError, match="another training run"):
        claim_run_folder(run, resume=True, overwrite=False)
    with pytest.raises(InputError, match="another training run"):
        claim_run_folder(run, resume=False, overwrite=True)
    lock.release()
    assert not (run / LOCK_FILE).exists()
    with pytest.raises(InputError, match="already holds a training run"):
        claim_run_folder(run, resume=False, overwrite=False)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / LOCK_FILE).write_text(f"{int(dead.stdout)} {__import__('socket').gethostname()}\n")
    claim_run_folder(run, resume=True, overwrite=False).release()  # the process is gone: a stale lock
    assert "stale lock" in capsys.readouterr().err
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="did not write"):
        claim_run_folder(user, resume=False, overwrite=True)


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


# --- data-loss cases, through the CLI ---------------------------------------------------------


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


def test_a_second_output_in_the_way_leaves_the_first_unwritten(pca_model, tmp_path):
    assert _cli("sample", "--model", pca_model, "--n", 2, "--out", tmp_path / "heads").returncode == 0
    heads = tmp_path / "heads"
    (tmp_path / "swap.json").mkdir()  # transfer's latents would go here: a folder in the way
    _refused(_cli("transfer", "--model", pca_model, "--identity", heads / "sample_000.json",
                  "--expression", heads / "sample_001.json", "--out", tmp_path / "swap.ply"), "swap.json")
    assert not (tmp_path / "swap.ply").exists()


def test_overwrite_replaces_only_our_own_output_of_the_same_kind(pca_model, tmp_path):
    out = tmp_path / "heads"
    assert _cli("sample", "--model", pca_model, "--n", 1, "--out", out).returncode == 0
    _refused(_cli("sample", "--model", pca_model, "--n", 2, "--out", out), "--overwrite")
    assert _cli("sample", "--model", pca_model, "--n", 2, "--out", out, "--overwrite").returncode == 0
    assert (out / "sample_001.ply").is_file()
    _refused(_cli("sample", "--model", pca_model, "--n", 1, "--out", out / "sample_000.ply", "--overwrite"),
             "sample_000.ply")  # a file of ours where a folder should go: still refused
    head = out / "sample_000.ply"
    assert _cli("export", "--model", pca_model, "--out", tmp_path / "avg.ply").returncode == 0
    _refused(_cli("export", "--model", pca_model, "--out", tmp_path / "avg.ply"), "--overwrite")
    assert _cli("export", "--model", pca_model, "--out", tmp_path / "avg.ply", "--overwrite").returncode == 0
    mine = tmp_path / "mine.ply"
    mine.write_bytes(head.read_bytes().replace(b"written by neuralmorph", b"my own scan of a head"))
    _refused(_cli("export", "--model", pca_model, "--out", mine, "--overwrite"), "mine.ply")
    assert b"my own scan" in mine.read_bytes()


def test_a_fit_is_never_written_around_its_own_target(pca_model, tmp_path):
    assert _cli("sample", "--model", pca_model, "--n", 1, "--out", tmp_path / "heads").returncode == 0
    assert _cli("fit", "--model", pca_model, "--target", tmp_path / "heads" / "sample_000.ply",
                "--out", tmp_path / "fit").returncode == 0
    target = tmp_path / "fit" / "fit.ply"  # refit the fit's own mesh into its folder: the folder holds the input
    before = target.read_bytes()
    _refused(_cli("fit", "--model", pca_model, "--target", target, "--out", tmp_path / "fit", "--overwrite"),
             "contains the input --target")
    assert target.read_bytes() == before


def test_scans_whose_labels_differ_only_in_unsafe_characters_get_distinct_files(pca_model, tmp_path):
    assert _cli("sample", "--model", pca_model, "--n", 2, "--out", tmp_path / "heads").returncode == 0
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,subject,expression\nheads/sample_000.ply,a/b,x\nheads/sample_001.ply,a_b,x\n")
    res = _cli("data", "ingest", "--manifest", manifest, "--out", tmp_path / "ds", "--kind", "scans")
    assert res.returncode == 0, res.stderr
    scans = sorted(p.name for p in (tmp_path / "ds" / "scans").iterdir())
    assert len(scans) == 2, scans
    a, b = ((tmp_path / "ds" / "scans" / n).read_bytes() for n in scans)
    assert a != b


def test_a_second_concurrent_training_into_the_same_out_is_refused(pca_data, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "neuralmorph", "train", "regional", "--data", str(pca_data),
                              "--out", str(out), "--max-steps", "100000"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        import time

        deadline = time.monotonic() + 120
        while not (out / "run.lock").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / "run.lock").exists(), "the first run never started"
        for extra in ([], ["--resume"], ["--overwrite"]):
            _refused(_cli("train", "regional", "--data", pca_data, "--out", out, "--max-steps", 1, *extra),
                     "another training run")
    finally:
        first.kill()
        first.wait()
    # the killed run's lock is stale: a resume reports and takes it
    res = _cli("train", "regional", "--data", pca_data, "--out", out, "--max-steps", 1, "--overwrite")
    assert res.returncode == 0 and "stale lock" in res.stderr, res.stderr
