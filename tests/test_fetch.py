"""`neuralmorph.data.fetch` on small fake wheels/sdists with the real internal paths; no network."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

import neuralmorph.data.fetch as fx
from neuralmorph.atomic import MARKER
from neuralmorph.commands.data import FetchConfig, run_fetch
from neuralmorph.errors import InputError

N_VERTS = 7160  # the MeshMonk topology's vertex count (the landmark ids must fit)


# ------------------------------------------------------------------------------------- fake archives

def _xlsx_bytes(rows: list[list[object]]) -> bytes:
    """A minimal .xlsx: strings go to the shared-strings table, numbers inline; B3 left empty on purpose."""
    shared: list[str] = []
    cells_xml = []
    for r, row in enumerate(rows, start=1):
        cells = []
        for c, value in enumerate(row):
            ref = f"{'ABCD'[c]}{r}"
            if value is None:
                continue
            if isinstance(value, str):
                shared.append(value)
                cells.append(f'<c r="{ref}" t="s"><v>{len(shared) - 1}</v></c>')
            else:
                cells.append(f'<c r="{ref}"><v>{value!r}</v></c>')
        cells_xml.append(f'<row r="{r}">{"".join(cells)}</row>')
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    sst = f'<sst {ns} count="{len(shared)}">' + "".join(f"<si><t>{s}</t></si>" for s in shared) + "</sst>"
    sheet = f'<worksheet {ns}><sheetData>{"".join(cells_xml)}</sheetData></worksheet>'
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("xl/workbook.xml", f"<workbook {ns}/>")
        zf.writestr("xl/sharedStrings.xml", sst)
        zf.writestr("xl/worksheets/sheet1.xml", sheet)
    return buf.getvalue()


def _grid_obj(shift: float) -> bytes:
    """A 7160-vertex OBJ (a 80 x 89.5 grid, shifted) with a few triangles."""
    i = np.arange(N_VERTS)
    v = np.stack([i % 80, i // 80, np.full(N_VERTS, shift)], 1).astype(float)
    lines = ["# fake SIMPOP face", "mtllib missing.mtl"]
    lines += [f"v {x:.1f} {y:.1f} {z:.1f}" for x, y, z in v]
    lines += ["f 1 2 81", "f 2 82 81", "f 3 4 83"]
    return ("\n".join(lines) + "\n").encode()


def _meta_rows() -> list[list[object]]:
    rows: list[list[object]] = [["ID", "Age", "Sex", "BMI"]]
    rows += [[f"SIMPOP_{k:02d}", 20.0 + k, float(1 + k % 2), 18.5 + k / 10] for k in range(1, 46)]
    return rows


def make_simpop_wheel(path: Path, drop: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for k in range(1, 46):
            name = f"python_shape_stats/data/sim_faces/faces/SIMPOP_{k:02d}.obj"
            if name != drop:
                zf.writestr(name, _grid_obj(float(k)))
        zf.writestr("python_shape_stats/data/sim_faces/SIMPOP_Metadata.xlsx", _xlsx_bytes(_meta_rows()))
        zf.writestr("python_shape_stats-1.0.0.dist-info/LICENSE", "MIT License\nCopyright (c) 2023 test\n")
        zf.writestr("python_shape_stats/__init__.py", "raise RuntimeError('must never be imported')\n")
    return path


def make_template_wheel(path: Path) -> Path:
    v = np.random.default_rng(0).normal(size=(N_VERTS, 3))
    header = ("ply\nformat ascii 1.0\nelement vertex %d\nproperty float x\nproperty float y\n"
              "property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n" % N_VERTS)
    body = "".join(f"{a:.5f} {b:.5f} {c:.5f}\n" for a, b, c in v) + "3 0 1 2\n"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("autofacemonker/data/template.ply", header + body)
    return path


IBUG_TO_LABEL = [("chin", range(0, 17)), ("leye", range(36, 42)), ("reye", range(42, 48)),
                 ("leyebrow", range(17, 22)), ("nose", range(27, 36)), ("reyebrow", range(22, 27)),
                 ("mouth", range(48, 68))]


def make_james_sdist(path: Path) -> Path:
    """menpo3d-like sdist: a quad of a mesh and an LJSON whose points are grouped by label (not iBUG order)."""
    obj = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\nf 2/2 4/1 3/3\n"
    points, labels = [], []
    for label, ibug in IBUG_TO_LABEL:
        labels.append({"label": label, "mask": list(range(len(points), len(points) + len(ibug)))})
        points += [[float(k), 0.0, 0.0] for k in ibug]  # x = the point's iBUG index
    ljson = {"version": 3, "groups": {"LJSON": {"labels": labels,
                                                "landmarks": {"points": points, "connectivity": []}}}}
    files = {
        "menpo3d-0.8.6/LICENSE.txt": b"Copyright (c) 2014, Imperial College London and others.\nBSD\n",
        "menpo3d-0.8.6/menpo3d/data/james.obj": obj,
        "menpo3d-0.8.6/menpo3d/data/james.obj.mtl": b"newmtl m\nmap_Kd james.jpg\n",
        "menpo3d-0.8.6/menpo3d/data/james.jpg": b"\xff\xd8\xff not really a jpeg",
        "menpo3d-0.8.6/menpo3d/data/james.ljson": json.dumps(ljson).encode(),
        "menpo3d-0.8.6/setup.py": b"raise SystemExit('must never be run')\n",
    }
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to download fails the test."""
    def boom(*a, **k):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(fx.subprocess, "run", boom)
    monkeypatch.setattr(fx.urllib.request, "urlopen", boom)


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------- fetch

def test_fetch_from_archive_extracts_license_and_source(tmp_path, no_network):
    arc = make_simpop_wheel(tmp_path / "python_shape_stats-1.0.0-py3-none-any.whl")
    cache = tmp_path / "cache"
    folder = fx.fetch("simpop", cache=cache, archive=arc, progress=False)
    assert folder == cache / "simpop"
    names = {p.name for p in folder.iterdir()}
    assert names == {f"SIMPOP_{k:02d}.obj" for k in range(1, 46)} | {
        "SIMPOP_Metadata.xlsx", "LICENSE.txt", "SOURCE.json", MARKER}  # no code, nothing else but our marker
    lic = (folder / "LICENSE.txt").read_text()
    assert "Copyright (c) 2023 test" in lic and "harrymatthews50" in lic
    src = json.loads((folder / "SOURCE.json").read_text())
    assert src["sha256"] == hashlib.sha256(arc.read_bytes()).hexdigest()
    assert src["package"] == "python-shape-stats" and src["version"] == "1.0.0"
    assert src["artifact_file"] == arc.name and src["license"] == "MIT"
    assert src["verified"] is False  # not PyPI's file
    assert src["date_fetched"]
    assert _leftovers(cache) == []


def test_fetch_is_idempotent(tmp_path, no_network):
    cache = tmp_path / "cache"
    fx.fetch("meshmonk-template", cache, make_template_wheel(tmp_path / "t.whl"), progress=False)
    folder = fx.fetch("simpop", cache, make_simpop_wheel(tmp_path / "s.whl"), progress=False)
    stamp = (folder / "SOURCE.json").stat().st_mtime_ns
    # no archive: everything (the template too) is already there, so nothing is downloaded
    assert fx.fetch("simpop", cache, progress=False) == folder
    assert fx.fetch("simpop", cache, make_simpop_wheel(tmp_path / "s2.whl"), progress=False) == folder
    assert (folder / "SOURCE.json").stat().st_mtime_ns == stamp


def test_missing_member_leaves_nothing(tmp_path, no_network):
    member = "python_shape_stats/data/sim_faces/faces/SIMPOP_45.obj"
    arc = make_simpop_wheel(tmp_path / "s.whl", drop=member)
    cache = tmp_path / "cache"
    with pytest.raises(InputError, match="SIMPOP_45.obj"):
        fx.fetch("simpop", cache, arc, progress=False)
    assert not (cache / "simpop").exists()
    assert _leftovers(cache) == []


@pytest.mark.parametrize("content", [b"this is not an archive at all", b"PK\x03\x04" + b"\x00" * 40])
def test_corrupt_archive(tmp_path, no_network, content):
    arc = tmp_path / "bad.whl"
    arc.write_bytes(content)
    with pytest.raises(InputError, match="simpop"):
        fx.fetch("simpop", tmp_path / "cache", arc, progress=False)
    assert not (tmp_path / "cache" / "simpop").exists()


def test_truncated_zip(tmp_path, no_network):
    good = make_template_wheel(tmp_path / "t.whl").read_bytes()
    arc = tmp_path / "cut.whl"
    arc.write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError):
        fx.fetch("meshmonk-template", tmp_path / "cache", arc, progress=False)
    assert not (tmp_path / "cache" / "meshmonk-template").exists()


def test_unknown_name_and_missing_archive(tmp_path, no_network):
    with pytest.raises(InputError, match="unknown data set 'faces'"):
        fx.fetch("faces", tmp_path)
    with pytest.raises(InputError, match="archive not found"):
        fx.fetch("james", tmp_path, tmp_path / "nope.tar.gz", progress=False)


def test_pip_failure_is_one_clear_line(tmp_path, monkeypatch):
    def fake_run(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "--only-binary=:all:" in cmd
        assert "autofacemonker==0.2.0" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "Looking in indexes...\nERROR: No matching distribution\n")
    monkeypatch.setattr(fx.subprocess, "run", fake_run)
    with pytest.raises(InputError) as e:
        fx.fetch("simpop", tmp_path / "cache", progress=False)
    msg = str(e.value)
    assert "pip could not download autofacemonker==0.2.0 (no network?)" in msg
    assert msg.endswith("ERROR: No matching distribution") and "\n" not in msg
    assert not (tmp_path / "cache" / "simpop").exists()


class _Resp(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_sdist_from_index_checks_sha256(tmp_path, monkeypatch):
    data = make_james_sdist(tmp_path / "menpo3d-0.8.6.tar.gz").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        if url.endswith("/simple/menpo3d/"):
            return _Resp(f'<a href="../../files/menpo3d-0.8.6.tar.gz#sha256={digest}">x</a>'.encode())
        assert url == "https://pypi.org/files/menpo3d-0.8.6.tar.gz"
        return _Resp(data)

    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.setattr(fx.urllib.request, "urlopen", fake_urlopen)
    # the fake is not PyPI's file: the pinned digest refuses it
    with pytest.raises(InputError, match="not the pinned"):
        fx.fetch("james", tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache" / "james").exists()
    monkeypatch.setitem(fx.SOURCES, "james", dataclasses.replace(fx.SOURCES["james"], sha256=digest))
    folder = fx.fetch("james", tmp_path / "cache", progress=False)
    info = json.loads((folder / "SOURCE.json").read_text())
    assert info["verified"] is True and info["sha256"] == digest
    assert calls[0] == "https://pypi.org/simple/menpo3d/"
    assert "Imperial College London" in (folder / "LICENSE.txt").read_text()


# ------------------------------------------------------------------------------------- loaders

def test_read_xlsx_and_metadata(tmp_path):
    p = tmp_path / "m.xlsx"
    p.write_bytes(_xlsx_bytes([["ID", "Age", "Sex", "BMI"], ["A", 30.5, 1.0, 22.25], ["B", None, 2.0, 19.0]]))
    rows = fx.read_xlsx(p)
    assert rows[0] == ["ID", "Age", "Sex", "BMI"]
    assert rows[1] == ["A", 30.5, 1.0, 22.25]
    assert rows[2] == ["B", None, 2.0, 19.0]  # the sparse cell keeps its column
    with pytest.raises(InputError, match="row 3"):
        fx._simpop_metadata(p)
    p.write_bytes(_xlsx_bytes(_meta_rows()))
    meta = fx._simpop_metadata(p)
    assert meta["SIMPOP_01"] == (21.0, 2.0, 18.6) and len(meta) == 45
    bad = tmp_path / "bad.xlsx"
    bad.write_bytes(b"nope")
    with pytest.raises(InputError, match="bad.xlsx"):
        fx.read_xlsx(bad)


@pytest.mark.parametrize("loader, verb", [(fx.load_simpop, "simpop"), (fx.load_meshmonk_template, "simpop"),
                                          (fx.load_james, "james")])
def test_load_before_fetch(tmp_path, loader, verb):
    with pytest.raises(InputError, match=f"not fetched yet: run `neuralmorph data fetch {verb}`"):
        loader(tmp_path)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NEURALMORPH_CACHE", str(tmp_path / "c"))
    assert fx.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("NEURALMORPH_CACHE")
    assert fx.cache_dir() == Path.home() / ".cache" / "neuralmorph"


def test_load_simpop_and_template_from_fake(tmp_path, no_network):
    cache = tmp_path / "cache"
    fx.fetch("simpop", cache, make_simpop_wheel(tmp_path / "s.whl"), progress=False)
    fx.fetch("meshmonk-template", cache, make_template_wheel(tmp_path / "t.whl"), progress=False)
    s = fx.load_simpop(cache)
    assert s.vertices.shape == (45, N_VERTS, 3) and s.vertices.dtype == np.float64
    assert s.faces.shape == (3, 3) and s.faces.dtype == np.int64
    assert s.ids[0] == "SIMPOP_01" and s.ids[-1] == "SIMPOP_45"
    np.testing.assert_allclose(s.vertices[:, 0, 2], np.arange(1, 46))  # file order kept
    np.testing.assert_allclose(s.age, 20 + np.arange(1, 46))
    np.testing.assert_allclose(s.sex, 1 + np.arange(1, 46) % 2)
    np.testing.assert_allclose(s.bmi, 18.5 + np.arange(1, 46) / 10)
    assert s.landmark_ids.shape == s.landmark_index.shape and s.landmarks().shape == (45, len(s.landmark_ids), 3)
    t = fx.load_meshmonk_template(cache)
    assert t.vertices.shape == (N_VERTS, 3)
    raw_scale = fx.meshmonk_landmarks()["template_mm_per_unit"]
    assert 40 < raw_scale < 90  # normalised units -> mm


def test_load_james_reorders_to_ibug(tmp_path, no_network):
    cache = tmp_path / "cache"
    fx.fetch("james", cache, make_james_sdist(tmp_path / "menpo3d-0.8.6.tar.gz"), progress=False)
    names = {p.name for p in (cache / "james").iterdir()}
    assert names == {"james.obj", "james.obj.mtl", "james.jpg", "james.ljson", "LICENSE.txt", "SOURCE.json", MARKER}
    mesh, lms = fx.load_james(cache)
    assert mesh.vertices.shape == (4, 3) and mesh.faces.shape == (2, 3)  # seams never split vertices
    assert lms.shape == (68, 3)
    np.testing.assert_array_equal(lms[:, 0], np.arange(68))  # x was each point's iBUG index


def test_run_fetch_prints_where_and_license(tmp_path, no_network, capsys):
    cfg = FetchConfig(name="james", cache=tmp_path / "c", archive=make_james_sdist(tmp_path / "j.tar.gz"))
    run_fetch(cfg)
    out = capsys.readouterr().out
    assert str(tmp_path / "c" / "james") in out and "BSD-3-Clause" in out and "LICENSE.txt" in out
    with pytest.raises(InputError, match="not 'all'"):
        run_fetch(FetchConfig(name="all", cache=tmp_path / "c", archive=tmp_path / "j.tar.gz"))


# ------------------------------------------------------------------------------------- landmark asset

def test_meshmonk_landmark_asset_is_valid():
    lm = fx.meshmonk_landmarks()
    ids = np.asarray(lm["vertex_id"])
    ibug = np.asarray(lm["ibug_index"])
    assert lm["source"] and lm["method"] and lm["template_axes"]["up"] == "+y"
    assert len(ids) == len(ibug) >= 16
    assert ids.dtype.kind == "i" and ((0 <= ids) & (ids < N_VERTS)).all()
    assert len(set(ids.tolist())) == len(ids) and len(set(ibug.tolist())) == len(ibug)
    assert ((0 <= ibug) & (ibug <= 67)).all()
    # the stable points the evaluation relies on are all there
    assert {8, 19, 24, 27, 30, 31, 33, 35, 36, 39, 42, 45, 48, 51, 54, 57} <= set(ibug.tolist())


@pytest.mark.skipif(not (fx.cache_dir() / "simpop" / "SOURCE.json").is_file(),
                    reason="real SIMPOP not fetched (run `neuralmorph data fetch simpop`)")
def test_real_simpop_if_fetched():
    s = fx.load_simpop()
    assert s.vertices.shape == (45, 7160, 3) and s.faces.shape == (14050, 3)
    lm = s.landmarks()
    i36, i45 = list(s.landmark_index).index(36), list(s.landmark_index).index(45)
    outer = np.linalg.norm(lm[:, i36] - lm[:, i45], axis=1)
    assert 75 < outer.mean() < 110  # outer canthal width of adults, mm
