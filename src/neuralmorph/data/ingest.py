"""Bring your own heads: a folder of meshes plus a manifest, and/or posed images, become a neuralmorph dataset.

The manifest is CSV (header `path,subject,expression[,split]`) or YAML (a list of mappings with those
keys, or `{heads: [...]}`); paths are relative to the manifest's folder. Registered meshes must share
one topology (as LAMM's and NPHM's registrations do); raw scans may each have their own.

Posed images come as a nerfstudio transforms.json (`--transforms`, read by `neuralmorph.data.images`):
the images and masks are copied into the dataset's images/ folder, the cameras converted to millimetres
(`--units` when the file does not say). With a manifest too, the cameras must be in the meshes' frame;
each image is linked to the registered head of its subject and expression. Without one the dataset
holds images only (no manifest.csv).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from tqdm import tqdm

from neuralmorph.atomic import atomic_dir, check_output_dir
from neuralmorph.data.dataset import SPLITS, Head, HeadDataset
from neuralmorph.data.images import IMAGES_DIR, ImageFrame, read_transforms
from neuralmorph.errors import InputError
from neuralmorph.frame import Frame, umeyama
from neuralmorph.geometry.mesh import Mesh, degeneracy, load_mesh, save_mesh
from neuralmorph.outputs import Verb, check_apart


@dataclass(frozen=True)
class IngestConfig(Verb):
    """Turn a folder of .obj/.ply/.off/.stl meshes and a manifest, and/or posed images, into a dataset."""

    out_kind = "dataset"

    out: Path
    """Output dataset folder (replaced atomically when the run succeeds)."""
    manifest: Path | None = None
    """CSV or YAML listing path, subject, expression and optionally split for every mesh."""
    transforms: Path | None = None
    """Posed images: a nerfstudio transforms.json (or its folder); images and masks are copied into the dataset."""
    subject: str | None = None
    """--transforms only: the subject of frames without a "subject" key."""
    expression: str | None = None
    """--transforms only: the expression of frames without an "expression" key (unset: left empty, unknown)."""
    kind: Literal["registered", "scans"] = "registered"
    """registered: meshes in correspondence (one topology); scans: raw scans, any topology."""
    units: Literal["mm", "cm", "dm", "m"] | None = None
    """Units of the mesh files and of the camera positions in --transforms; the dataset stores millimetres.
    Unset: mm for meshes, and the transforms.json must say (a top-level "units" key)."""
    align: Literal["none", "rigid"] = "none"
    """registered only: rigidly align all meshes to their mean shape (generalised Procrustes)."""
    landmarks: Path | None = None
    """registered only: JSON or text file with the template vertex ids of the landmarks."""
    regions: Path | None = None
    """registered only: YAML/JSON mapping region name -> vertex ids; shared vertices get equal weights."""
    test_fraction: float = 0.2
    """Fraction of subjects held out as test when the manifest has no split column."""
    seed: int = 0
    """Seed for the subject split."""


@dataclass(frozen=True)
class ManifestRow:
    path: Path
    subject: str
    expression: str
    split: str | None


MANIFEST_KEYS = ("path", "subject", "expression", "split")
"""The columns (CSV) or keys (YAML) an ingest manifest's rows may have; others are ignored with a warning."""


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML parse error in one line: where (line, column) and what, without PyYAML's quoted context."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = " ".join(str(getattr(exc, "problem", None) or exc).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}" if mark is not None else what


def read_manifest(path: Path) -> list[ManifestRow]:
    """Parse a CSV or YAML manifest; every problem is an InputError naming the manifest and the entry."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "manifest not found")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            rows = data.get("heads") if isinstance(data, dict) else data
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise InputError(path, "YAML manifest must be a list of {path, subject, expression} mappings")
            extra = sorted({str(k) for r in rows for k in r} - set(MANIFEST_KEYS))
        else:
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                rows = list(reader)
                extra = [str(k) for k in (reader.fieldnames or []) if k not in MANIFEST_KEYS]
            # csv puts the cells beyond the header under the key None; empty ones are trailing commas
            if any(any(str(c).strip() for c in r.get(None) or ()) for r in rows):
                extra.append("(cells beyond the header)")
    except yaml.YAMLError as exc:
        raise InputError(path, f"cannot parse manifest: {yaml_problem(exc)}") from None
    except UnicodeDecodeError:
        raise InputError(path, "cannot parse manifest: not UTF-8 text (a binary file?)") from None
    except csv.Error as exc:
        raise InputError(path, f"cannot parse manifest: {exc}") from None
    if not rows:
        raise InputError(path, "manifest lists no meshes")
    if extra:
        print(f"neuralmorph: warning: {path}: ignoring manifest column(s) {', '.join(extra)} (known: "
              f"{', '.join(MANIFEST_KEYS)})", file=sys.stderr)
    out, seen = [], set()
    for i, row in enumerate(rows, start=1):
        missing = [k for k in ("path", "subject", "expression") if not str(row.get(k) or "").strip()]
        if missing:
            raise InputError(path, f"entry {i} lacks {', '.join(missing)}")
        key = (str(row["subject"]).strip(), str(row["expression"]).strip())
        if key in seen:
            raise InputError(path, f"entry {i} repeats subject {key[0]!r} expression {key[1]!r}")
        seen.add(key)
        split = str(row.get("split") or "").strip() or None
        if split is not None and split not in SPLITS:
            raise InputError(path, f"entry {i} has split {split!r}; use one of {', '.join(SPLITS)}")
        out.append(ManifestRow(path.parent / str(row["path"]).strip(), key[0], key[1], split))
    return out


def read_vertex_ids(path: Path, n_vertices: int) -> np.ndarray:
    try:
        text = Path(path).read_text()
        ids = np.asarray(json.loads(text) if text.lstrip().startswith("[") else text.split(), dtype=np.int64)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (ValueError, json.JSONDecodeError):
        raise InputError(path, "expected a JSON list or whitespace-separated vertex ids") from None
    if ids.ndim != 1 or (len(ids) and (ids.min() < 0 or ids.max() >= n_vertices)):
        raise InputError(path, f"vertex ids must be a flat list in [0, {n_vertices})")
    return ids


def read_regions(path: Path, n_vertices: int) -> tuple[tuple[str, ...], np.ndarray]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))  # YAML is a superset of JSON
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except UnicodeDecodeError:
        raise InputError(path, "cannot parse regions: not UTF-8 text (a binary file?)") from None
    except yaml.YAMLError as exc:
        raise InputError(path, f"cannot parse regions: {yaml_problem(exc)}") from None
    if not isinstance(data, dict) or not data:
        raise InputError(path, "regions must map region names to lists of vertex ids")
    names = tuple(str(k) for k in data)
    member = np.zeros((n_vertices, len(names)), np.float32)
    for r, (name, values) in enumerate(data.items()):
        if not isinstance(values, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in values):
            raise InputError(path, f"region {name!r} must be a flat list of integer vertex ids")
        ids = np.asarray(values, dtype=np.int64).reshape(-1)
        if len(ids) == 0 or ids.min() < 0 or ids.max() >= n_vertices:
            raise InputError(path, f"region {name!r} must list vertex ids in [0, {n_vertices})")
        member[ids, r] = 1.0
    counts = member.sum(axis=1)
    if (counts == 0).any():
        raise InputError(path, f"{int((counts == 0).sum())} vertices (first {int(np.argmax(counts == 0))}) belong to no region")
    return names, member / counts[:, None]  # overlaps are shared, never counted twice


def _procrustes(vertices: np.ndarray, iterations: int = 5) -> np.ndarray:
    """Rigidly align (S, N, 3) shapes to their evolving mean (generalised Procrustes, no scaling)."""
    out = vertices.astype(np.float64).copy()
    mean = out[0]
    for _ in range(iterations):
        for i in range(len(out)):
            out[i] = umeyama(out[i], mean, with_scale=False).apply(out[i])
        mean = out.mean(axis=0)
    return out


def _splits(rows: list[ManifestRow], fraction: float, seed: int) -> list[str]:
    if all(r.split for r in rows):
        return [r.split for r in rows]
    subjects = sorted({r.subject for r in rows})
    order = np.random.default_rng(seed).permutation(len(subjects))
    test = {subjects[i] for i in order[: int(round(fraction * len(subjects)))]}
    return [r.split or ("test" if r.subject in test else "train") for r in rows]


def ingest(config: IngestConfig, progress: bool = True) -> HeadDataset:
    """Validate every mesh in the manifest and every posed image, and write the dataset to `config.out`;
    returns it."""
    check_output_dir(config.out, "dataset", config.overwrite)  # before any work: never over a folder of the user's
    if config.manifest is None and config.transforms is None:
        raise InputError("--manifest", "give --manifest (meshes), --transforms (posed images) or both")
    if config.transforms is None and (config.subject is not None or config.expression is not None):
        raise InputError("--subject" if config.subject is not None else "--expression",
                         "labels images: use it with --transforms")
    if config.transforms is not None and config.manifest is not None and config.align == "rigid":
        raise InputError("--align", "rigid alignment would move the meshes away from the cameras of --transforms; "
                                    "align them before ingesting")
    images = _read_images(config) if config.transforms is not None else None
    if config.manifest is None:
        return _ingest_images_only(config, images, progress)
    rows = read_manifest(config.manifest)
    # the meshes the manifest lists are inputs too: never write the dataset over or around them
    check_apart(config.outputs(), [(f"{config.manifest} row {i + 1}", r.path) for i, r in enumerate(rows)])
    splits = _splits(rows, config.test_fraction, config.seed)
    if config.kind == "scans":
        return _ingest_scans(config, rows, splits, progress, images)

    first = None
    verts = []
    for row in tqdm(rows, desc="ingest", unit="mesh", disable=not progress):
        mesh = _load_surface(row.path, config.units or "mm")
        if first is None:
            first = (row.path, mesh)
        elif len(mesh.vertices) != len(first[1].vertices):
            raise InputError(row.path, f"has {len(mesh.vertices)} vertices, expected {len(first[1].vertices)} "
                                       f"like {first[0].name} (registered meshes must share one topology)")
        elif not np.array_equal(mesh.faces, first[1].faces):
            raise InputError(row.path, f"has different triangles from {first[0].name} (registered meshes must share one topology)")
        verts.append(mesh.vertices)
    vertices = np.stack(verts)
    if config.align == "rigid":
        vertices = _procrustes(vertices)
    n = vertices.shape[1]
    landmark_ids = read_vertex_ids(config.landmarks, n) if config.landmarks else np.zeros(0, np.int64)
    region_names, region_weights = read_regions(config.regions, n) if config.regions else ((), None)
    heads = [Head(r.subject, r.expression, s, i) for i, (r, s) in enumerate(zip(rows, splits))]
    copies, frames = _plan_images(images, heads)
    dataset = HeadDataset(heads, vertices.astype(np.float32), first[1].faces, landmark_ids, region_names,
                          region_weights, Frame.fit(vertices.mean(axis=0)), images=frames)
    with atomic_dir(config.out, "dataset", config.overwrite) as tmp:
        _copy_images(tmp, copies, progress)
        dataset.save(tmp)
    dataset.folder = Path(config.out)  # saved in a temporary sibling, renamed into place
    return dataset


def _load_surface(path: Path, units: str) -> Mesh:
    """A manifest's mesh, refused when its surface is degenerate (zero area: e.g. every vertex at one
    point), which no model can learn a head from."""
    mesh = load_mesh(path, units=units)
    if not mesh.area > 0:
        problem = degeneracy(mesh.vertices)
        raise InputError(path, "has zero surface area" + (f" ({problem})" if problem else " (every triangle is degenerate)")
                         + "; a head needs a surface")
    return mesh


def _safe_name(label: str) -> str:
    """A label usable as part of a file name (labels are free text in the manifest)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", label)


def _ingest_scans(config: IngestConfig, rows: list[ManifestRow], splits: list[str], progress: bool,
                  images: tuple[Path, list[ImageFrame]] | None = None) -> HeadDataset:
    heads, taken = [], set()
    with atomic_dir(config.out, "dataset", config.overwrite) as tmp:
        for row, split in tqdm(list(zip(rows, splits)), desc="ingest", unit="scan", disable=not progress):
            mesh = _load_surface(row.path, config.units or "mm")
            stem = f"{_safe_name(row.subject)}_{_safe_name(row.expression)}"
            # labels that differ only in characters a file name cannot hold (a/b, a_b) get numbered names
            rel = next(f"scans/{stem}{suffix}.ply" for suffix in [""] + [f"-{k}" for k in range(2, len(rows) + 2)]
                       if f"scans/{stem}{suffix}.ply".lower() not in taken)
            taken.add(rel.lower())
            save_mesh(tmp / rel, mesh)
            heads.append(Head(row.subject, row.expression, split, -1, rel))
        copies, frames = _plan_images(images, heads)
        dataset = HeadDataset(heads, images=frames)
        _copy_images(tmp, copies, progress)
        dataset.save(tmp)
    dataset.folder = Path(config.out)  # saved in a temporary sibling, renamed into place
    return dataset


# --- posed images -----------------------------------------------------------------------------------


def _read_images(config: IngestConfig) -> tuple[Path, list[ImageFrame]]:
    """The frames of --transforms (every file checked), labelled, and the folder their paths are relative
    to; refused when the output would go over or around one of their files."""
    path = Path(config.transforms)
    frames = read_transforms(path, units=config.units)
    folder = (path if path.is_dir() else path.parent)
    labelled = []
    for i, f in enumerate(frames):
        subject = f.subject or (config.subject or "").strip()
        if not subject:
            raise InputError(path, f"frames[{i}] ({f.image}) has no subject: add a \"subject\" key or pass --subject")
        expression = f.expression or (config.expression or "").strip()
        labelled.append(ImageFrame(f.image, f.camera, subject, expression, -1, f.mask))
    files = [(f"{path} frames[{i}]", folder / p) for i, f in enumerate(labelled)
             for p in (f.image, f.mask) if p is not None]
    check_apart(config.outputs(), files + [("--transforms", path)])
    return folder, labelled


def _plan_images(images: tuple[Path, list[ImageFrame]] | None, heads: list[Head]
                 ) -> tuple[list[tuple[Path, str]], list[ImageFrame]]:
    """Where each image and mask goes in the dataset (images/NAME, names made unique ignoring case, a mask
    named after its image) and the dataset's frames: paths rewritten, each linked to the registered head
    of its subject and expression (a "registered" key of the source file indexes another dataset)."""
    if images is None:
        return [], []
    folder, frames = images
    rows = {(h.subject, h.expression): h.registered for h in heads if h.registered >= 0}
    taken: set[str] = set()

    def unique(stem: str, suffix: str) -> str:
        for k in range(len(frames) * 2 + 2):
            rel = f"{IMAGES_DIR}/{stem}{'' if k == 0 else f'-{k + 1}'}{suffix}"
            if rel.lower() not in taken:
                taken.add(rel.lower())
                return rel
        raise AssertionError("unreachable: more names tried than files")

    copies, out = [], []
    for f in frames:
        src = folder / f.image
        image = unique(_safe_name(src.stem), src.suffix.lower())
        copies.append((src, image))
        mask = None
        if f.mask is not None:
            msrc = folder / f.mask
            mask = unique(_safe_name(Path(image).stem) + ".mask", msrc.suffix.lower())
            copies.append((msrc, mask))
        out.append(ImageFrame(image, f.camera, f.subject, f.expression, rows.get((f.subject, f.expression), -1), mask))
    return copies, out


def _copy_images(tmp: Path, copies: list[tuple[Path, str]], progress: bool) -> None:
    """Copy image and mask files byte for byte (never re-encoded) into the dataset being written."""
    if copies:
        (tmp / IMAGES_DIR).mkdir(exist_ok=True)
    for src, rel in tqdm(copies, desc="images", unit="file", disable=not progress or not copies):
        shutil.copyfile(src, tmp / rel)


def _ingest_images_only(config: IngestConfig, images: tuple[Path, list[ImageFrame]], progress: bool) -> HeadDataset:
    copies, frames = _plan_images(images, [])
    dataset = HeadDataset([], images=frames)
    with atomic_dir(config.out, "dataset", config.overwrite) as tmp:
        _copy_images(tmp, copies, progress)
        dataset.save(tmp)
    dataset.folder = Path(config.out)  # saved in a temporary sibling, renamed into place
    return dataset
