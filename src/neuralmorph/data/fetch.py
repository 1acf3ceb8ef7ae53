"""`neuralmorph data fetch`: public real evaluation sets, fetched on request from PyPI, and their loaders.

Nothing here downloads at import time or behind a loader's back: only `fetch` (and the CLI verb that
calls it) touches the network, and only the package registry. Each set lives in one pinned PyPI
artifact; we download that artifact (never install it, never import or build it), check its sha256
against the pinned digest, and copy out only the data files we need into ``<cache>/<name>/``, together
with ``LICENSE.txt`` (the package's own license text plus our attribution line) and ``SOURCE.json``
(what came from where, when). See docs/real_data.md.

Sets:
- ``simpop``: the 45 SIMPOP faces (MeshMonk topology, 7,160 vertices, mm) and their Age/Sex/BMI table,
  from the python-shape-stats 1.0.0 wheel (MIT). Fetching it also fetches ``meshmonk-template``.
- ``meshmonk-template``: the MeshMonk face template (same topology) from the autofacemonker 0.2.0 wheel
  (MIT).
- ``james``: one real textured head scan with 68 iBUG landmarks, from the menpo3d 0.8.6 sdist (BSD-3).

Wheels come through ``python -m pip download --no-deps --only-binary=:all:`` (so pip's own index,
proxy and certificate settings apply). An sdist cannot go through ``pip download``: pip runs the
package's build backend (its setup.py) to read the metadata even with ``--no-deps``, which would run
third-party code (and fails for menpo3d without numpy and Cython). The sdist is therefore read from the
PyPI simple index that pip uses (``$PIP_INDEX_URL`` or https://pypi.org/simple), fetched from the file
link it lists and checked against both the index's and our pinned sha256.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal
from xml.etree import ElementTree

import numpy as np

from neuralmorph.atomic import atomic_dir
from neuralmorph.errors import InputError
from neuralmorph.geometry.mesh import Mesh, load_mesh


@dataclass(frozen=True)
class Source:
    """One fetchable set: a pinned PyPI artifact and the files we copy out of it."""

    name: str
    """Our name for the set (the folder under the cache)."""
    package: str
    """PyPI project name."""
    version: str
    """Pinned version."""
    artifact: Literal["wheel", "sdist"]
    """Which artifact holds the data."""
    license: str
    """SPDX id of the package's license."""
    attribution: str
    """One line crediting the authors; written into LICENSE.txt and SOURCE.json."""
    members: tuple[str, ...]
    """Paths inside the archive to extract; each lands in ``<cache>/<name>/<basename>``."""
    sha256: str = ""
    """Pinned sha256 of the artifact on PyPI; a download that differs is refused."""
    license_member: str | None = None
    """Path of the package's license text inside the archive, if it ships one."""
    requires: tuple[str, ...] = ()
    """Other sets fetched along with this one (when downloading, not with ``archive=``)."""

    @property
    def artifact_file(self) -> str:
        """The artifact's file name on PyPI."""
        if self.artifact == "wheel":
            return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"
        return f"{self.package}-{self.version}.tar.gz"


_PSS = "python_shape_stats/data/sim_faces"
SIMPOP_IDS = tuple(f"SIMPOP_{i:02d}" for i in range(1, 46))
_MENPO = "menpo3d-0.8.6/menpo3d/data"

SOURCES: dict[str, Source] = {
    "simpop": Source(
        name="simpop",
        package="python-shape-stats",
        version="1.0.0",
        artifact="wheel",
        license="MIT",
        attribution="SIMPOP simulated faces and SIMPOP_Metadata.xlsx from python-shape-stats 1.0.0 "
                    "(MIT License, Copyright (c) 2023 harrymatthews50; MeshMonk, KU Leuven), "
                    "https://pypi.org/project/python-shape-stats/1.0.0/",
        members=tuple(f"{_PSS}/faces/{i}.obj" for i in SIMPOP_IDS) + (f"{_PSS}/SIMPOP_Metadata.xlsx",),
        sha256="bd3e79ba11618bb71f8ecd8b2fc212162b1572731be2c6fe149a1b0d215df5b7",
        license_member="python_shape_stats-1.0.0.dist-info/LICENSE",
        requires=("meshmonk-template",),
    ),
    "meshmonk-template": Source(
        name="meshmonk-template",
        package="autofacemonker",
        version="0.2.0",
        artifact="wheel",
        license="MIT",
        attribution="MeshMonk face template (template.ply) from autofacemonker 0.2.0 "
                    "(MIT License, author gfacchi-dev, as declared in the package metadata), "
                    "https://pypi.org/project/autofacemonker/0.2.0/",
        members=("autofacemonker/data/template.ply",),
        sha256="828b58ecda143cb0097c84656254f01bfae17bbb46ff5093c2cd902d2edc9f0b",
        license_member=None,  # the wheel ships no license file; METADATA says "License: MIT"
    ),
    "james": Source(
        name="james",
        package="menpo3d",
        version="0.8.6",
        artifact="sdist",
        license="BSD-3-Clause",
        attribution="james.obj/.obj.mtl/.jpg and james.ljson from menpo3d 0.8.6 "
                    "(BSD 3-Clause License, Copyright (c) 2014, Imperial College London and others), "
                    "https://pypi.org/project/menpo3d/0.8.6/",
        members=(f"{_MENPO}/james.obj", f"{_MENPO}/james.obj.mtl", f"{_MENPO}/james.jpg",
                 f"{_MENPO}/james.ljson"),
        sha256="96ad2c8b55b74e026cdc190cf6b1564ad7c8e6c53976cf897d6a1bf4940f084a",
        license_member="menpo3d-0.8.6/LICENSE.txt",
    ),
}

# The MIT text for packages that declare MIT in their metadata but ship no license file.
_MIT_TEXT = """\
Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense,
and/or sell copies of the Software, and to permit persons to whom the Software is furnished to do so,
subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial
portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT
LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN
NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY,
WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE
SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""

# menpo3d's james.obj is written in millimetres (docs/real_data.md gives the evidence).
JAMES_MM_PER_UNIT = 1.0

_DEFAULT_INDEX = "https://pypi.org/simple"


def cache_dir() -> Path:
    """Where fetched sets live: ``$NEURALMORPH_CACHE``, else ``~/.cache/neuralmorph``."""
    env = os.environ.get("NEURALMORPH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "neuralmorph"


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise InputError("fetch", f"unknown data set {name!r}; expected one of {', '.join(SOURCES)}")
    return SOURCES[name]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_fetched(folder: Path, src: Source) -> bool:
    return (folder / "SOURCE.json").is_file() and all(
        (folder / Path(m).name).is_file() for m in src.members)


def is_fetched(name: str, cache: Path | None = None) -> bool:
    """Whether set `name` is complete in ``<cache>/<name>/`` (cache: default `cache_dir()`)."""
    src = _source(name)
    return _is_fetched((Path(cache) if cache is not None else cache_dir()) / src.name, src)


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- download

def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _pip_download_wheel(src: Source, dest: Path) -> Path:
    """`pip download` the pinned wheel into `dest` (no deps, never builds or installs); its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--ignore-requires-python", "--disable-pip-version-check", "--no-input",
           f"{src.package}=={src.version}", "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise InputError(src.name, f"cannot run pip ({e})") from None
    if proc.returncode != 0:
        raise InputError(src.name, f"pip could not download {src.package}=={src.version} (no network?): "
                                   f"{_last_line(proc.stderr or proc.stdout)}")
    found = sorted(dest.glob("*.whl"))
    if len(found) != 1:
        raise InputError(src.name, f"pip download of {src.package}=={src.version} left "
                                   f"{len(found)} wheels instead of one")
    return found[0]


def _index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", _DEFAULT_INDEX).rstrip("/")


def _download_sdist(src: Source, dest: Path) -> Path:
    """The pinned sdist from the PyPI simple index (PEP 503), sha256 checked; its path in `dest`."""
    page = f"{_index_url()}/{src.package}/"
    try:
        with urllib.request.urlopen(page, timeout=60) as resp:
            html = resp.read().decode("utf-8", "replace")
    except Exception as e:  # URLError, HTTPError, timeouts, ...: all mean "cannot reach the index"
        raise InputError(src.name, f"could not read the package index {page} (no network?): {e}") from None
    link = None
    for href in re.findall(r'href="([^"]+)"', html):
        url = urllib.parse.urljoin(page, href.replace("&amp;", "&"))
        if urllib.parse.unquote(urllib.parse.urlsplit(url).path).rsplit("/", 1)[-1] == src.artifact_file:
            link = url
            break
    if link is None:
        raise InputError(src.name, f"{src.artifact_file} is not listed on {page}")
    url, _, fragment = link.partition("#")
    listed = dict(urllib.parse.parse_qsl(fragment)).get("sha256")
    out = dest / src.artifact_file
    try:
        with urllib.request.urlopen(url, timeout=300) as resp, open(out, "wb") as fh:
            while block := resp.read(1 << 20):
                fh.write(block)
    except Exception as e:
        raise InputError(src.name, f"could not download {url} (no network?): {e}") from None
    if listed and _sha256(out) != listed:
        raise InputError(src.name, f"{src.artifact_file}: sha256 differs from the one the index lists")
    return out


# ---------------------------------------------------------------------------------------- extraction

def _open_reader(archive: Path, name: str):
    """A function member -> bytes (KeyError when absent) for a wheel (zip) or sdist (tar) archive."""
    try:
        if zipfile.is_zipfile(archive):
            zf = zipfile.ZipFile(archive)
            return zf, lambda m: zf.read(m)
        if tarfile.is_tarfile(archive):
            tf = tarfile.open(archive)

            def read(m: str) -> bytes:
                info = tf.getmember(m)
                fh = tf.extractfile(info) if info.isfile() else None
                if fh is None:
                    raise KeyError(m)
                return fh.read()
            return tf, read
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError) as e:
        raise InputError(archive, f"{name}: cannot open the archive ({e.__class__.__name__}: {e})") from None
    raise InputError(archive, f"{name}: not a wheel (zip) or sdist (tar) archive")


def _license_text(src: Source, read, archive_name: str) -> str:
    head = (f"Files in this folder: {src.attribution}\n"
            f"Fetched from {archive_name} on PyPI; license: {src.license}.\n"
            f"Redistribute them only under the terms below.\n\n")
    if src.license_member:
        try:
            return head + read(src.license_member).decode("utf-8", "replace")
        except KeyError:
            pass  # a local archive without the license file: fall through to the declared license
    if src.license == "MIT":
        return head + ("The package declares the MIT License in its metadata but ships no license file; "
                       "the standard MIT terms:\n\n" + _MIT_TEXT)
    return head + f"(the archive ships no license text; the package declares {src.license})\n"


def _extract(src: Source, archive: Path, folder: Path, origin: str) -> None:
    digest = _sha256(archive)
    handle, read = _open_reader(archive, src.name)
    # an incomplete set of ours (files removed by hand) is replaced; anything else in the way is refused
    with handle, atomic_dir(folder, "fetched data set", overwrite=True) as tmp:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; a cache folder is ordinary
        for member in src.members:
            try:
                data = read(member)
            except KeyError:
                raise InputError(archive, f"{src.name}: the archive has no {member}") from None
            except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError) as e:
                raise InputError(archive, f"{src.name}: corrupt archive, cannot read {member} "
                                          f"({e.__class__.__name__}: {e})") from None
            (tmp / Path(member).name).write_bytes(data)
        (tmp / "LICENSE.txt").write_text(_license_text(src, read, archive.name))
        info = {
            "name": src.name,
            "package": src.package,
            "version": src.version,
            "artifact": src.artifact,
            "artifact_file": archive.name,
            "sha256": digest,
            "sha256_pinned": src.sha256,
            "verified": digest == src.sha256,
            "origin": origin,
            "license": src.license,
            "attribution": src.attribution,
            "date_fetched": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "files": [Path(m).name for m in src.members],
        }
        (tmp / "SOURCE.json").write_text(json.dumps(info, indent=2) + "\n")


def fetch(name: str, cache: Path | None = None, archive: Path | None = None, progress: bool = True) -> Path:
    """Fetch one data set into ``<cache>/<name>/`` and return that folder (already there: returned as is).

    name: a key of SOURCES ("simpop", "meshmonk-template", "james").
    cache: the cache root; default `cache_dir()`.
    archive: a local copy of the artifact to use instead of downloading (offline use, tests). Its
        sha256 is recorded in SOURCE.json, with ``verified`` saying whether it is PyPI's file.
        Sets in ``requires`` are not fetched along with an explicit archive.
    progress: print one line per step to stderr.
    Raises InputError (one line) for an unknown name, a failed download, or an archive that is
    corrupt or lacks a member; nothing is left half-written.
    """
    src = _source(name)
    root = Path(cache) if cache is not None else cache_dir()
    folder = root / src.name
    if archive is None:
        for dep in src.requires:
            fetch(dep, root, None, progress)
    if _is_fetched(folder, src):
        _say(progress, f"{src.name}: already fetched in {folder}")
        return folder
    if archive is not None:
        archive = Path(archive)
        if not archive.is_file():
            raise InputError(archive, f"{src.name}: archive not found")
        _say(progress, f"{src.name}: extracting {len(src.members)} files from {archive}")
        _extract(src, archive, folder, f"local archive {archive.name}")
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download.", dir=root) as tmp:
        _say(progress, f"{src.name}: downloading {src.package}=={src.version} ({src.artifact}) from PyPI")
        if src.artifact == "wheel":
            path = _pip_download_wheel(src, Path(tmp))
            origin = "pip download (PyPI)"
        else:
            path = _download_sdist(src, Path(tmp))
            origin = f"{_index_url()}/{src.package}/"
        digest = _sha256(path)
        if src.sha256 and digest != src.sha256:
            raise InputError(src.name, f"{path.name}: sha256 {digest[:12]}... is not the pinned "
                                       f"{src.sha256[:12]}...; refusing a changed artifact")
        _say(progress, f"{src.name}: extracting {len(src.members)} files")
        _extract(src, path, folder, origin)
    return folder


# ---------------------------------------------------------------------------------------- xlsx

_XL = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"


def _column_index(ref: str) -> int:
    col = 0
    for ch in re.match(r"[A-Z]+", ref).group(0):
        col = col * 26 + ord(ch) - 64
    return col - 1


def read_xlsx(path: str | os.PathLike, sheet: str = "xl/worksheets/sheet1.xml") -> list[list[object]]:
    """Rows of one sheet of an .xlsx file: strings stay str, numbers become float, empty cells None.

    A minimal reader (zipfile + ElementTree over the shared strings and the sheet XML), enough for
    small data tables; no formulas are evaluated (their cached values are read).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            shared: list[str] = []
            if "xl/sharedStrings.xml" in names:
                for si in ElementTree.fromstring(zf.read("xl/sharedStrings.xml")).iter(f"{_XL}si"):
                    shared.append("".join(t.text or "" for t in si.iter(f"{_XL}t")))
            if sheet not in names:
                raise InputError(path, f"no {sheet} in the workbook")
            root = ElementTree.fromstring(zf.read(sheet))
    except (zipfile.BadZipFile, ElementTree.ParseError, KeyError, OSError) as e:
        raise InputError(path, f"cannot read as .xlsx ({e.__class__.__name__}: {e})") from None
    rows: list[list[object]] = []
    for row in root.iter(f"{_XL}row"):
        cells: dict[int, object] = {}
        for k, c in enumerate(row.iter(f"{_XL}c")):
            col = _column_index(c.get("r")) if c.get("r") else k
            kind = c.get("t", "n")
            v = c.find(f"{_XL}v")
            if kind == "inlineStr":
                value: object = "".join(t.text or "" for t in c.iter(f"{_XL}t"))
            elif v is None or v.text is None:
                value = None
            elif kind == "s":
                value = shared[int(v.text)]
            elif kind in ("str", "e"):
                value = v.text
            elif kind == "b":
                value = float(v.text == "1")
            else:
                value = float(v.text)
            cells[col] = value
        width = max(cells) + 1 if cells else 0
        rows.append([cells.get(i) for i in range(width)])
    return rows


def _simpop_metadata(path: Path) -> dict[str, tuple[float, float, float]]:
    """SIMPOP_Metadata.xlsx -> ID -> (age, sex, bmi)."""
    rows = read_xlsx(path)
    if not rows:
        raise InputError(path, "empty sheet")
    header = [str(h).strip().lower() if h is not None else "" for h in rows[0]]
    try:
        cols = [header.index(k) for k in ("id", "age", "sex", "bmi")]
    except ValueError:
        raise InputError(path, f"expected columns ID, Age, Sex, BMI; found {rows[0]}") from None
    out = {}
    for n, r in enumerate(rows[1:], start=2):
        r = r + [None] * (max(cols) + 1 - len(r))
        if r[cols[0]] is None:
            continue
        try:
            out[str(r[cols[0]]).strip()] = tuple(float(r[c]) for c in cols[1:])
        except (TypeError, ValueError):
            raise InputError(path, f"row {n}: Age/Sex/BMI must be numbers, got {r}") from None
    return out


# ---------------------------------------------------------------------------------------- loaders

def _fetched(name: str, cache: Path | None) -> Path:
    src = _source(name)
    folder = (Path(cache) if cache is not None else cache_dir()) / src.name
    if not _is_fetched(folder, src):
        cmd = "simpop" if name == "meshmonk-template" else name
        raise InputError(folder, f"not fetched yet: run `neuralmorph data fetch {cmd}`")
    return folder


def meshmonk_landmarks() -> dict:
    """The bundled iBUG landmark vertex ids on the MeshMonk topology (assets/meshmonk_landmarks.json)."""
    text = resources.files("neuralmorph").joinpath("assets/meshmonk_landmarks.json").read_text()
    return json.loads(text)


@dataclass(frozen=True)
class SimpopFaces:
    """The 45 SIMPOP faces, in correspondence on the MeshMonk topology."""

    vertices: np.ndarray
    """(45, 7160, 3) float64 mm, as shipped (poses and positions differ between faces)."""
    faces: np.ndarray
    """(14050, 3) int64, shared by all faces."""
    ids: tuple[str, ...]
    """SIMPOP_01 .. SIMPOP_45."""
    age: np.ndarray
    """(45,) float64 years."""
    sex: np.ndarray
    """(45,) float64 as coded in the table (1 or 2; the table does not say which is which)."""
    bmi: np.ndarray
    """(45,) float64 kg/m^2."""
    landmark_ids: np.ndarray
    """(L,) int64 vertex ids on the MeshMonk topology."""
    landmark_index: np.ndarray
    """(L,) int64: which of the 68 iBUG points each landmark is."""

    def landmarks(self) -> np.ndarray:
        """(45, L, 3) float64 landmark positions, mm."""
        return self.vertices[:, self.landmark_ids]


def load_simpop(cache: Path | None = None) -> SimpopFaces:
    """The fetched SIMPOP faces with metadata and landmark ids (InputError if not fetched yet)."""
    folder = _fetched("simpop", cache)
    meshes = [load_mesh(folder / f"{i}.obj") for i in SIMPOP_IDS]
    faces = meshes[0].faces
    for i, m in zip(SIMPOP_IDS, meshes):
        if m.vertices.shape != meshes[0].vertices.shape or not np.array_equal(m.faces, faces):
            raise InputError(folder / f"{i}.obj", "not on the shared SIMPOP topology")
    meta = _simpop_metadata(folder / "SIMPOP_Metadata.xlsx")
    missing = [i for i in SIMPOP_IDS if i not in meta]
    if missing:
        raise InputError(folder / "SIMPOP_Metadata.xlsx", f"no row for {', '.join(missing[:3])}")
    table = np.array([meta[i] for i in SIMPOP_IDS], dtype=np.float64)
    lm = meshmonk_landmarks()
    lm_ids = np.asarray(lm["vertex_id"], dtype=np.int64)
    if lm_ids.size and lm_ids.max() >= meshes[0].vertices.shape[0]:
        raise InputError(folder, "landmark ids exceed the SIMPOP vertex count")
    return SimpopFaces(
        vertices=np.stack([m.vertices for m in meshes]),
        faces=np.asarray(faces, dtype=np.int64),
        ids=SIMPOP_IDS,
        age=table[:, 0], sex=table[:, 1], bmi=table[:, 2],
        landmark_ids=lm_ids,
        landmark_index=np.asarray(lm["ibug_index"], dtype=np.int64),
    )


def load_meshmonk_template(cache: Path | None = None) -> Mesh:
    """The MeshMonk face template, scaled to mm (the file is in normalised units; see the landmark JSON).

    Vertex order is the file's, the same topology as SIMPOP; axes as shipped (+y up, +z forward,
    +x the subject's left), origin as shipped.
    """
    folder = _fetched("meshmonk-template", cache)
    mesh = load_mesh(folder / "template.ply")
    scale = float(meshmonk_landmarks().get("template_mm_per_unit", 1.0))
    return Mesh(mesh.vertices * scale, mesh.faces)


def _ibug_order(ljson: dict, path: Path) -> np.ndarray:
    """menpo LJSON v3 points -> (68, 3) in iBUG order.

    menpo3d's james.ljson stores the points grouped by its labels (chin, leye, reye, leyebrow, nose,
    reyebrow, mouth), not in iBUG order; the label masks say which point is which. menpo's "left" is
    the image left, i.e. the subject's right: iBUG 17-21 and 36-41.
    """
    try:
        group = ljson["groups"][next(iter(ljson["groups"]))] if "groups" in ljson else ljson
        pts = np.asarray(group["landmarks"]["points"], dtype=np.float64)
        labels = {lab["label"]: list(lab["mask"]) for lab in group["labels"]}
    except (KeyError, TypeError, ValueError, StopIteration):
        raise InputError(path, "not a menpo LJSON v3 landmark file") from None
    ibug_ranges = {"chin": range(0, 17), "leyebrow": range(17, 22), "reyebrow": range(22, 27),
                   "nose": range(27, 36), "leye": range(36, 42), "reye": range(42, 48),
                   "mouth": range(48, 68)}
    if pts.shape != (68, 3) or set(labels) != set(ibug_ranges):
        raise InputError(path, f"expected 68 points labelled {sorted(ibug_ranges)}, "
                               f"got {pts.shape} labelled {sorted(labels)}")
    out = np.full((68, 3), np.nan)
    for label, ids in ibug_ranges.items():
        if len(labels[label]) != len(ids):
            raise InputError(path, f"label {label!r} has {len(labels[label])} points, expected {len(ids)}")
        out[list(ids)] = pts[labels[label]]
    if not np.isfinite(out).all():
        raise InputError(path, "landmark labels do not cover all 68 points")
    return out


def load_james(cache: Path | None = None) -> tuple[Mesh, np.ndarray]:
    """menpo3d's "james" scan: the mesh in mm (vertex order as in the obj) and (68, 3) iBUG landmarks, mm.

    Axes as shipped: +y up, +z forward (where the face looks), +x the subject's left.
    """
    folder = _fetched("james", cache)
    mesh = load_mesh(folder / "james.obj")
    path = folder / "james.ljson"
    try:
        ljson = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot read landmarks ({e.__class__.__name__})") from None
    lms = _ibug_order(ljson, path)
    return Mesh(mesh.vertices * JAMES_MM_PER_UNIT, mesh.faces), lms * JAMES_MM_PER_UNIT
