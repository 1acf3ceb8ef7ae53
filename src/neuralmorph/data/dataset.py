"""The on-disk dataset: registered heads in correspondence, raw scans, labels and splits.

A dataset is a folder:

    DIR/heads.safetensors   registered heads (absent when the dataset holds raw scans only)
        vertices       (S, N, 3) float32  millimetres, one row per registered head
        faces          (F, 3)    int64    the one shared topology
        landmark_ids   (L,)      int64    template vertex ids of the landmarks (may be empty)
        region_weights (N, R)    float32  soft region membership; rows sum to 1 (names in the metadata)
        + any extra arrays a generator records (e.g. the synthetic heads' true parameters, `synth.*`)
        metadata: format, frame (canonical frame as JSON), region names
    DIR/manifest.csv        one row per head: index, subject, expression, split, registered, scan
        registered: row in `vertices` or -1; scan: path of the raw scan relative to DIR, or empty
    DIR/scans/*.ply         raw scans (own topology each, millimetres), when there are any
    DIR/transforms.json     posed images (nerfstudio layout, cameras in mm; `neuralmorph.data.images`),
    DIR/images/*            their image and mask files, when there are any

Vertex positions and camera positions are millimetres on disk, in one frame; the canonical frame says how
models see them. A dataset holds heads, images or both: one of images only has no manifest.csv.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neuralmorph.data.images import TRANSFORMS_FILE, ImageFrame, read_transforms, write_transforms
from neuralmorph.errors import InputError
from neuralmorph.frame import Frame
from neuralmorph.geometry.mesh import MAX_COORDINATE_MM
from neuralmorph.tensorfile import load_arrays, save_arrays

FORMAT = "neuralmorph.heads/1"
HEADS_FILE = "heads.safetensors"
MANIFEST_FILE = "manifest.csv"
MANIFEST_COLUMNS = ("index", "subject", "expression", "split", "registered", "scan")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Head:
    """One manifest row: a labelled head, registered (row into the vertex array) and/or as a raw scan."""

    subject: str
    expression: str
    split: str = "train"
    registered: int = -1   # row in HeadDataset.vertices, -1 if this head has no registered mesh
    scan: str = ""         # raw scan path relative to the dataset folder, "" if none


@dataclass
class HeadDataset:
    """Registered heads (arrays, millimetres) plus labels; see the module docstring for the files."""

    heads: list[Head]
    vertices: np.ndarray | None = None              # (S, N, 3) float32, mm
    faces: np.ndarray | None = None                 # (F, 3) int64
    landmark_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (L,) int64
    region_names: tuple[str, ...] = ()
    region_weights: np.ndarray | None = None        # (N, R) float32, rows sum to 1
    frame: Frame = field(default_factory=Frame)
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # generator-specific arrays, saved as-is
    images: list[ImageFrame] = field(default_factory=list)  # posed images (transforms.json), paths relative
                                                            # to the folder; empty when there are none
    folder: Path | None = field(default=None, compare=False)  # where it was loaded from or saved to: raw
                                                              # scan paths are relative to it

    def __post_init__(self):
        self.validate(self.where)

    # --- views ------------------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """What errors about this dataset call it: its folder, when it has one."""
        return str(self.folder) if self.folder is not None else "dataset"

    @property
    def n_vertices(self) -> int:
        return 0 if self.vertices is None else self.vertices.shape[1]

    @property
    def regions(self) -> dict[str, np.ndarray]:
        """Region name -> vertex ids (int64) of every vertex with a non-zero weight in that region."""
        if self.region_weights is None:
            return {}
        return {name: np.flatnonzero(self.region_weights[:, r] > 0) for r, name in enumerate(self.region_names)}

    def landmarks(self, row: int) -> np.ndarray:
        """(L, 3) float32 landmark positions of registered head `row`, mm."""
        return self.vertices[row, self.landmark_ids]

    def scan_path(self, head: Head) -> Path:
        """The raw scan file of `head`; InputError when the dataset has no folder to find it in."""
        if not head.scan:
            raise InputError(self.where, f"head {head.subject}/{head.expression} has no raw scan")
        if self.folder is None:
            raise InputError(self.where, "lists raw scans but has no folder to read them from (load it with HeadDataset.load)")
        return self.folder / head.scan

    def registered_rows(self, split: str | None = None) -> np.ndarray:
        """Rows of `vertices` in manifest order, optionally restricted to one split."""
        return np.array([h.registered for h in self.heads if h.registered >= 0 and (split is None or h.split == split)],
                        dtype=np.int64)

    # --- checks -----------------------------------------------------------------------------------

    def validate(self, where: str = "dataset") -> None:
        """Raise InputError naming `where` if the arrays and labels do not fit together."""
        if not self.heads and not self.images:
            raise InputError(where, "holds no heads")
        self._validate_images(where)
        for h in self.heads:
            if h.split not in SPLITS:
                raise InputError(where, f"head {h.subject}/{h.expression} has unknown split {h.split!r} (use {', '.join(SPLITS)})")
            if h.registered < 0 and not h.scan:
                raise InputError(where, f"head {h.subject}/{h.expression} has neither a registered mesh nor a scan")
        if self.vertices is None:
            if any(h.registered >= 0 for h in self.heads):
                raise InputError(where, "manifest refers to registered meshes but there are none")
            return
        v = self.vertices
        if v.ndim != 3 or v.shape[2] != 3:
            raise InputError(where, f"vertices must have shape (S, N, 3), got {v.shape}")
        if not np.isfinite(v).all():
            bad = int(np.flatnonzero(~np.isfinite(v).all(axis=(1, 2)))[0])
            raise InputError(where, f"registered head {bad} has NaN or infinite coordinates")
        if v.size:
            largest = np.abs(v).max(axis=(1, 2))
            if not largest.max() <= MAX_COORDINATE_MM:
                bad = int(np.argmax(largest))
                raise InputError(where, f"registered head {bad} has coordinates up to {largest[bad]:.3g} mm, beyond any "
                                        f"head's scale (at most {MAX_COORDINATE_MM:g} mm)")
        rows = [h.registered for h in self.heads if h.registered >= 0]
        if sorted(rows) != list(range(len(v))):
            raise InputError(where, f"manifest's registered rows {sorted(rows)[:5]}… do not index the {len(v)} meshes once each")
        f = self.faces
        if f is None or f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
            raise InputError(where, "registered heads need a (F, 3) triangle array")
        if f.min() < 0 or f.max() >= v.shape[1]:
            raise InputError(where, f"face indices must lie in [0, {v.shape[1]}), found {f.min()}..{f.max()}")
        for i, head in enumerate(v):  # a head without surface (every vertex at one point, or on a line)
            tri = head[f].astype(np.float64)
            if not np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).max() > 0:
                raise InputError(where, f"registered head {i} has zero surface area (degenerate: no head to learn)")
        if len(self.landmark_ids) and (self.landmark_ids.min() < 0 or self.landmark_ids.max() >= v.shape[1]):
            raise InputError(where, "landmark ids out of range of the vertices")
        if self.region_weights is not None:
            w = self.region_weights
            if w.shape != (v.shape[1], len(self.region_names)):
                raise InputError(where, f"region weights must be (N={v.shape[1]}, R={len(self.region_names)}), got {w.shape}")
            if (w < 0).any():
                raise InputError(where, "region weights must not be negative")
            off = np.flatnonzero(~np.isclose(w.sum(axis=1), 1.0, atol=1e-4))
            if len(off):
                raise InputError(where, f"region weights must sum to 1 per vertex; {len(off)} vertices (first {off[0]}) do not")

    def _validate_images(self, where: str) -> None:
        """Image frames must stay inside the folder and point at registered heads of their own labels."""
        rows = {h.registered: h for h in self.heads if h.registered >= 0}
        for i, f in enumerate(self.images):
            if not isinstance(f, ImageFrame):
                raise InputError(where, f"image {i} is a {type(f).__name__}, not an ImageFrame")
            for p in (f.image, f.mask):
                if p is not None and (Path(p).is_absolute() or ".." in Path(p).parts):
                    raise InputError(where, f"image {i}: path {p!r} must be relative to the dataset folder, "
                                            "inside it")
            if f.registered >= 0:
                head = rows.get(f.registered)
                if head is None:
                    raise InputError(where, f"image {i} ({f.image}) refers to registered head {f.registered}, "
                                            f"which the manifest does not list")
                if (head.subject, head.expression) != (f.subject, f.expression):
                    raise InputError(where, f"image {i} ({f.image}) is labelled {f.subject}/{f.expression} but its "
                                            f"registered head {f.registered} is {head.subject}/{head.expression}")

    # --- files ------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> None:
        """Write heads.safetensors, manifest.csv (when there are heads) and transforms.json (when there are
        images) into `folder`. Scans and image files are written by their producer."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        if self.vertices is not None:
            arrays = {
                "vertices": self.vertices.astype(np.float32),
                "faces": self.faces.astype(np.int64),
                "landmark_ids": self.landmark_ids.astype(np.int64),
                **({} if self.region_weights is None else {"region_weights": self.region_weights.astype(np.float32)}),
                **self.extras,
            }
            meta = {"format": FORMAT, "units": "mm", "frame": self.frame.as_dict(), "region_names": list(self.region_names)}
            save_arrays(folder / HEADS_FILE, arrays, meta)
        if self.heads:
            with open(folder / MANIFEST_FILE, "w", newline="") as fh:
                writer = csv.writer(fh, lineterminator="\n")
                writer.writerow(MANIFEST_COLUMNS)
                for i, h in enumerate(self.heads):
                    writer.writerow([i, h.subject, h.expression, h.split, h.registered, h.scan])
        if self.images:
            write_transforms(folder, self.images)

    @classmethod
    def load(cls, folder: str | Path) -> "HeadDataset":
        """Read a dataset folder written by `save` (or by `neuralmorph data synth` / `data ingest`)."""
        folder = Path(folder)
        manifest = folder / MANIFEST_FILE
        if not folder.is_dir():
            raise InputError(folder, "dataset folder not found")
        transforms = folder / TRANSFORMS_FILE
        if not manifest.is_file() and not transforms.is_file():
            raise InputError(manifest, "dataset manifest not found (is this a neuralmorph dataset folder?)")
        heads = _read_manifest(manifest) if manifest.is_file() else []
        images = read_transforms(transforms) if transforms.is_file() else []
        heads_file = folder / HEADS_FILE
        if not heads_file.is_file():
            return cls(heads, images=images, folder=folder)
        arrays, meta = load_arrays(heads_file)
        if meta.get("format") != FORMAT:
            raise InputError(heads_file, f"not a {FORMAT} file (format {meta.get('format')!r})")
        for key in ("vertices", "faces"):
            if key not in arrays:
                raise InputError(heads_file, f"missing array {key!r}")
        known = {"vertices", "faces", "landmark_ids", "region_weights"}
        ds = cls(
            heads,
            vertices=arrays["vertices"],
            faces=arrays["faces"].astype(np.int64),
            landmark_ids=arrays.get("landmark_ids", np.zeros(0, np.int64)).astype(np.int64),
            region_names=tuple(meta.get("region_names", ())),
            region_weights=arrays.get("region_weights"),
            frame=_frame(meta, heads_file),
            extras={k: v for k, v in arrays.items() if k not in known},
            images=images,
            folder=folder,
        )
        ds.validate(str(folder))
        return ds


def _frame(meta: dict, path: Path) -> Frame:
    """The frame stored in a heads file's metadata (the identity frame when absent)."""
    if "frame" not in meta:
        return Frame()
    try:
        return Frame.from_dict(meta["frame"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"its metadata holds no valid frame ({type(exc).__name__}: {exc})") from None


def _read_manifest(path: Path) -> list[Head]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except UnicodeDecodeError:
        raise InputError(path, "not a readable manifest: not UTF-8 text (a binary file?)") from None
    except csv.Error as exc:
        raise InputError(path, f"not a readable manifest: {exc}") from None
    if not rows:
        raise InputError(path, "manifest has no rows")
    missing = [c for c in MANIFEST_COLUMNS if c not in rows[0]]
    if missing:
        raise InputError(path, f"manifest lacks column(s) {', '.join(missing)}")
    heads = []
    for line, row in enumerate(rows, start=2):
        try:
            registered = int(row["registered"])
        except ValueError:
            raise InputError(path, f"line {line}: 'registered' must be an integer, got {row['registered']!r}") from None
        heads.append(Head(row["subject"], row["expression"], row["split"], registered, row["scan"] or ""))
    return heads
