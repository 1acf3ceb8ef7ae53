"""Triangle meshes in millimetres: one checked container plus loaders and writers.

Vertex order is sacred: registered meshes are compared vertex by vertex, so no loader here merges,
splits or reorders vertices. OBJ is parsed by hand for that reason (texture seams make general OBJ
loaders duplicate or merge vertices); PLY, OFF and STL go through trimesh with `process=False`.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import trimesh

from ..atomic import SIGNATURE, atomic_file
from ..errors import InputError

UNITS_MM = {"mm": 1.0, "cm": 10.0, "dm": 100.0, "m": 1000.0}

MESH_SUFFIXES = (".obj", ".ply", ".off", ".stl")
POINT_SUFFIXES = (".ply", ".obj", ".xyz", ".txt", ".npy")


@dataclass(frozen=True, eq=False)
class Mesh:
    """A triangle mesh (or a point cloud when `faces` is empty), coordinates in millimetres.

    vertices: (V, 3) float64, millimetres.
    faces: (F, 3) int64 vertex ids; (0, 3) for a point cloud.

    Both arrays are copied and made read-only, so the cached normals and area can never go stale.
    Invalid shapes, non-finite coordinates or out-of-range face ids raise ValueError.
    """

    vertices: np.ndarray
    faces: np.ndarray

    def __post_init__(self) -> None:
        v = np.array(self.vertices, dtype=np.float64, copy=True)
        f = np.array(self.faces, copy=True)
        if f.size == 0:
            f = np.zeros((0, 3), dtype=np.int64)
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"vertices must be (V, 3), got {v.shape}")
        if f.ndim != 2 or f.shape[1] != 3:
            raise ValueError(f"faces must be (F, 3), got {f.shape}")
        if f.dtype.kind not in "iu":
            if not np.all(np.equal(np.mod(f, 1), 0)):
                raise ValueError("faces must hold integer vertex ids")
        f = f.astype(np.int64)
        if not np.isfinite(v).all():
            raise ValueError("vertices contain NaN or inf")
        if f.size and (f.min() < 0 or f.max() >= len(v)):
            raise ValueError(f"face ids must lie in [0, {len(v)}), got [{f.min()}, {f.max()}]")
        v.setflags(write=False)
        f.setflags(write=False)
        object.__setattr__(self, "vertices", v)
        object.__setattr__(self, "faces", f)

    @property
    def is_point_cloud(self) -> bool:
        return len(self.faces) == 0

    @cached_property
    def _face_cross(self) -> np.ndarray:
        """(F, 3) float64: edge cross products; length is twice the face area."""
        tri = self.vertices[self.faces]
        return np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])

    @cached_property
    def face_areas(self) -> np.ndarray:
        """(F,) float64 triangle areas in mm²."""
        return 0.5 * np.linalg.norm(self._face_cross, axis=1)

    @cached_property
    def face_normals(self) -> np.ndarray:
        """(F, 3) float64 unit normals following the winding (right hand); zero for degenerate faces."""
        return _unit(self._face_cross)

    @cached_property
    def vertex_normals(self) -> np.ndarray:
        """(V, 3) float64 unit normals, the area-weighted mean of the incident face normals."""
        # the raw cross product is already area-weighted (|c| = 2 * area); bincount beats np.add.at
        ids = self.faces.ravel()
        w = np.repeat(self._face_cross, 3, axis=0)
        acc = np.stack([np.bincount(ids, w[:, k], minlength=len(self.vertices)) for k in range(3)], axis=1)
        out = _unit(acc)
        out.setflags(write=False)
        return out

    @cached_property
    def area(self) -> float:
        """Total surface area in mm²."""
        return float(self.face_areas.sum())

    def to_trimesh(self) -> trimesh.Trimesh:
        """A trimesh view with the same vertex order (process=False)."""
        return trimesh.Trimesh(vertices=self.vertices.copy(), faces=self.faces.copy(), process=False)


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows of x scaled to unit length; zero rows stay zero."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def _scale_for(units: str) -> float:
    if units not in UNITS_MM:
        raise InputError("units", f"unknown unit {units!r}; expected one of {sorted(UNITS_MM)}")
    return UNITS_MM[units]


def _check_file(path: Path, suffixes: tuple[str, ...]) -> str:
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise InputError(path, f"unsupported file type {suffix!r}; expected one of {', '.join(suffixes)}")
    if not path.is_file():
        raise InputError(path, "file not found")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty")
    return suffix


_OBJ_V = re.compile(r"^[ \t]*v[ \t]+(\S+)[ \t]+(\S+)[ \t]+(\S+)", re.M)
_OBJ_VN = re.compile(r"^[ \t]*vn[ \t]+(\S+)[ \t]+(\S+)[ \t]+(\S+)", re.M)
_OBJ_F = re.compile(r"^[ \t]*f[ \t]+(.*?)[ \t]*$", re.M)
_OBJ_V_ANY = re.compile(r"^[ \t]*v[ \t]", re.M)
_OBJ_SLASH = re.compile(r"/\S*")


def _read_obj_fast(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """Vectorised parse of a well-formed all-triangle OBJ with positive ids; None if anything is unusual."""
    if "\x00" in text:
        return None
    try:
        v = np.array(_OBJ_V.findall(text), dtype=np.float64).reshape(-1, 3)
        vn = np.array(_OBJ_VN.findall(text), dtype=np.float64).reshape(-1, 3)
        face_lines = _OBJ_F.findall(text)
        ids = _OBJ_SLASH.sub("", " ".join(face_lines)).split()
        if len(ids) != 3 * len(face_lines):
            return None  # polygons or malformed faces: let the line parser handle them
        f = np.array(ids, dtype=np.int64).reshape(-1, 3)
    except ValueError:
        return None
    if f.size and f.min() < 1:
        return None  # negative (relative) or zero ids
    if len(_OBJ_V_ANY.findall(text)) != len(v):
        return None  # a vertex line the regex did not take (e.g. too few coordinates)
    return v, f - 1, (vn if len(vn) == len(v) else None)


def _read_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Parse `v`, `vn` and `f` lines: (V,3) vertices, (F,3) faces (polygons fan-split), normals or None.

    Only the position index of each face corner is used, so texture seams never change the vertices.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, OSError) as e:
        raise InputError(path, f"cannot read as OBJ text ({e.__class__.__name__})") from None
    fast = _read_obj_fast(text)
    if fast is not None:
        return fast
    # line by line: slower, but handles polygons and relative ids and names the offending line
    verts: list[list[str]] = []
    normals: list[list[str]] = []
    faces: list[tuple[int, int, int]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        key = parts[0] if parts else ""
        if key == "v":
            if len(parts) < 4:
                raise InputError(path, f"line {n}: vertex needs 3 coordinates")
            verts.append(parts[1:4])  # extra columns (w, vertex colours) are ignored
        elif key == "vn" and len(parts) >= 4:
            normals.append(parts[1:4])
        elif key == "f":
            try:
                ids = [int(tok.split("/", 1)[0]) for tok in parts[1:]]
            except ValueError:
                raise InputError(path, f"line {n}: bad face {line.strip()!r}") from None
            if len(ids) < 3:
                raise InputError(path, f"line {n}: a face needs at least 3 vertices")
            if 0 in ids:
                raise InputError(path, f"line {n}: OBJ vertex ids start at 1, found 0")
            # negative ids count back from the vertices defined so far
            nv = len(verts)
            ids = [i - 1 if i > 0 else nv + i for i in ids]
            faces.extend((ids[0], ids[k], ids[k + 1]) for k in range(1, len(ids) - 1))
        elif "\x00" in line:
            raise InputError(path, f"line {n}: binary data, not OBJ text")
    try:
        v = np.array(verts, dtype=np.float64).reshape(-1, 3)
        # per-vertex normals only when there is one per vertex (mesh OBJs index vn per face corner)
        vn = np.array(normals, dtype=np.float64).reshape(-1, 3) if len(normals) == len(verts) else None
    except ValueError:
        raise InputError(path, "a vertex coordinate is not a number") from None
    f = np.array(faces, dtype=np.int64).reshape(-1, 3)
    return v, f, vn


def _read_trimesh(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """PLY/OFF/STL through trimesh without any processing; returns vertices, faces, vertex normals or None."""
    try:
        geom = trimesh.load(str(path), process=False, maintain_order=True, validate=False)
    except Exception:  # trimesh raises many types on garbage; all mean "unreadable"
        # not the loader's own words: on garbage they can name a missing optional module (trimesh's text
        # decoder wants charset_normalizer) or quote binary bytes
        raise InputError(path, f"not a readable {path.suffix[1:].upper()} mesh (damaged, or not in that format)") from None
    if isinstance(geom, trimesh.Scene):
        parts = list(geom.geometry.values())
        if len(parts) != 1:
            raise InputError(path, f"not a readable {path.suffix[1:].upper()} mesh (no geometry found)" if not parts
                             else f"expected one mesh, found {len(parts)} geometries")
        geom = parts[0]
    if isinstance(geom, trimesh.PointCloud):
        v, f = np.asarray(geom.vertices), np.zeros((0, 3), np.int64)
    elif isinstance(geom, trimesh.Trimesh):
        v, f = np.asarray(geom.vertices), np.asarray(geom.faces)
    else:
        raise InputError(path, f"unsupported content ({type(geom).__name__})")
    # normals only when the PLY stored them per vertex (never recomputed from faces here)
    normals = None
    raw = geom.metadata.get("_ply_raw", {}).get("vertex", {}).get("data")
    # binary PLYs give a structured array, ASCII ones a dict of columns
    names = (raw.dtype.names or ()) if hasattr(raw, "dtype") else tuple(raw or ())
    if {"nx", "ny", "nz"} <= set(names):
        normals = np.stack([raw["nx"], raw["ny"], raw["nz"]], axis=1).astype(np.float64).reshape(-1, 3)
    return np.asarray(v, np.float64).reshape(-1, 3), np.asarray(f).reshape(-1, 3), normals


def _read_any(path: Path, suffix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if suffix == ".obj":
        return _read_obj(path)
    return _read_trimesh(path)


MAX_COORDINATE_MM = 1e6
"""Coordinates beyond this (a kilometre) are refused when a file is read: a head spans about 300 mm, and
far larger numbers only overflow the distance computations (wrong units, or a damaged file)."""


def _check_arrays(path: Path, v: np.ndarray, f: np.ndarray, allow_points: bool, scale: float = 1.0) -> None:
    if len(v) == 0:
        raise InputError(path, "no vertices")
    if not np.isfinite(v).all():
        bad = int(np.flatnonzero(~np.isfinite(v).all(axis=1))[0])
        raise InputError(path, f"vertex {bad} has a NaN or infinite coordinate")
    check_magnitude(path, float(np.abs(v).max()) * scale)  # Python floats: overflow to inf without a warning
    if len(f) and (f.min() < 0 or f.max() >= len(v)):
        raise InputError(path, f"face vertex id out of range [0, {len(v)}): min {f.min()}, max {f.max()}")
    if len(f) == 0 and not allow_points:
        raise InputError(path, "no faces (a point cloud where a mesh is required)")


def check_magnitude(where: str | os.PathLike, largest_mm: float) -> None:
    """InputError naming `where` when its largest absolute coordinate (mm) is beyond `MAX_COORDINATE_MM`."""
    if not largest_mm <= MAX_COORDINATE_MM:
        raise InputError(where, f"coordinates reach {largest_mm:.3g} mm, beyond any head's scale (at most "
                                f"{MAX_COORDINATE_MM:g} mm are accepted; wrong --units, or a damaged file?)")


MIN_CLOUD_POINTS = 7
"""Points a cloud needs for an alignment: a similarity has 7 degrees of freedom."""


def degeneracy(points: np.ndarray) -> str | None:
    """What makes `points` (P, 3) mm useless for estimating a pose, in words, or None: all at one point, or
    all on one line (the rotation about it is not determined)."""
    p = np.asarray(points, np.float64)
    if len(p) == 0:
        return "no points"
    spread = np.linalg.svd(p - p.mean(axis=0), compute_uv=False)
    if spread[0] <= 1e-9 * max(1.0, float(np.abs(p).max())):
        return f"all {len(p)} points coincide"
    if len(spread) < 2 or spread[1] <= 1e-9 * spread[0]:
        return f"all {len(p)} points lie on one line"
    return None


def check_cloud(where: str | os.PathLike, points: np.ndarray, what: str = "points",
                min_points: int = MIN_CLOUD_POINTS) -> np.ndarray:
    """`points` (P, 3) mm if a pose (and a fit) can be estimated from them: at least `min_points`, neither
    all at one point nor all on one line; else InputError naming `where`."""
    p = np.asarray(points, np.float64)
    if len(p) < min_points:
        said = what[:-1] if len(p) == 1 and what.endswith("s") else what
        raise InputError(where, f"has {len(p)} {said}; aligning needs at least {min_points} {what}")
    problem = degeneracy(p)
    if problem is not None:
        raise InputError(where, f"{what} are degenerate: {problem}; nothing can be aligned to them")
    return p


def load_landmarks(path: str | os.PathLike, units: str = "mm") -> np.ndarray:
    """(L, 3) float64 mm landmark positions (a point table, see `load_points`), checked to determine a
    pose: at least 3, not all on one line."""
    points, _ = load_points(path, units)
    return check_cloud(path, points, "landmarks", min_points=3)


def load_mesh(path: str | os.PathLike, units: str = "mm", allow_points: bool = False) -> Mesh:
    """Read .obj/.ply/.off/.stl keeping the file's vertex order exactly; coordinates scaled to mm.

    units: the unit the file is written in (a key of UNITS_MM).
    allow_points: accept files without faces (the Mesh is then a point cloud), including the point
    formats of `load_points` (.xyz/.txt/.npy).
    Raises InputError naming the path for anything wrong with the file.
    """
    path = Path(path)
    scale = _scale_for(units)
    if allow_points and path.suffix.lower() in set(POINT_SUFFIXES) - set(MESH_SUFFIXES):
        points, _ = load_points(path, units)
        return Mesh(points, np.zeros((0, 3), np.int64))
    suffix = _check_file(path, MESH_SUFFIXES + (POINT_SUFFIXES if allow_points else ()))
    v, f, _ = _read_any(path, suffix)
    _check_arrays(path, v, f, allow_points, scale)
    return Mesh(v * scale, f)


def load_points(path: str | os.PathLike, units: str = "mm") -> tuple[np.ndarray, np.ndarray | None]:
    """Read a point set: (P, 3) float64 mm points and (P, 3) unit normals or None.

    .ply/.obj: the vertices (faces ignored; normals when stored per vertex); .xyz/.txt: whitespace or
    comma separated columns x y z [nx ny nz]; .npy: a (P, 3) or (P, 6) array.
    """
    path = Path(path)
    scale = _scale_for(units)
    suffix = _check_file(path, POINT_SUFFIXES)
    if suffix in (".ply", ".obj"):
        pts, _, normals = _read_any(path, suffix)
    else:
        arr = _read_table(path, suffix)
        if arr.ndim != 2 or arr.shape[1] not in (3, 6):
            raise InputError(path, f"expected 3 (xyz) or 6 (xyz + normal) columns, got shape {arr.shape}")
        pts, normals = arr[:, :3], (arr[:, 3:] if arr.shape[1] == 6 else None)
    _check_arrays(path, pts, np.zeros((0, 3), np.int64), allow_points=True, scale=scale)
    if normals is not None:
        if normals.shape != pts.shape or not np.isfinite(normals).all():
            raise InputError(path, "normals do not match the points or are not finite")
        normals = _unit(normals)
    return pts * scale, normals


def _read_table(path: Path, suffix: str) -> np.ndarray:
    try:
        if suffix == ".npy":
            return np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
        text = path.read_text(encoding="utf-8").replace(",", " ")
        rows = [ln.split() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not rows:
            return np.zeros((0, 3))
        return np.array(rows, dtype=np.float64)
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise InputError(path, f"cannot parse as a point table ({e.__class__.__name__})") from None


SAVE_SUFFIXES = (".ply", ".obj", ".stl", ".off", ".glb")


def check_mesh_suffix(flag: str, path: str | os.PathLike) -> None:
    """InputError naming `flag` unless `save_mesh` can write `path`'s format (checked before any work)."""
    if Path(path).suffix.lower() not in SAVE_SUFFIXES:
        raise InputError(flag, f"{path}: cannot write {Path(path).suffix or 'a file without a suffix'}; "
                               f"use one of {', '.join(SAVE_SUFFIXES)}")


def save_mesh(path: str | os.PathLike, mesh: Mesh) -> None:
    """Write a mesh by suffix, atomically: .ply (binary little endian, float64) or .obj, our own writers;
    .stl, .off or .glb through trimesh (for other tools; .glb in metres, as glTF requires).

    .ply and .obj: the same mesh always gives the same bytes (no timestamps, fixed number formatting),
    in millimetres at full float64 precision, so a load after a save gives the same arrays.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SAVE_SUFFIXES:
        raise InputError(path, f"cannot write {suffix!r}; use one of {', '.join(SAVE_SUFFIXES)}")
    with atomic_file(path) as tmp:
        if suffix in (".ply", ".obj"):
            with open(tmp, "wb") as fh:
                (_write_ply if suffix == ".ply" else _write_obj)(fh, mesh)
        else:
            scale = 1e-3 if suffix == ".glb" else 1.0
            tm = trimesh.Trimesh(mesh.vertices * scale, mesh.faces, process=False)
            tmp.write_bytes(_signed(tm.export(file_type=suffix[1:]), suffix))


def _signed(data: bytes | str, suffix: str) -> bytes:
    """trimesh's .off/.stl/.glb bytes with `SIGNATURE` where each format keeps free text: an OFF comment
    line, the binary STL header, the glTF asset's generator."""
    data = data.encode("ascii") if isinstance(data, str) else data
    if suffix == ".off":
        first, rest = data.split(b"\n", 1)
        return first + f"\n# {SIGNATURE}, units mm\n".encode() + rest
    if suffix == ".stl":
        return SIGNATURE.encode().ljust(80, b" ") + data[80:]
    # .glb: 12-byte header, then the JSON chunk (length, type, text padded with spaces to 4 bytes)
    (json_len,) = struct.unpack_from("<I", data, 12)
    gltf = json.loads(data[20:20 + json_len])
    gltf.setdefault("asset", {})["generator"] = SIGNATURE
    text = json.dumps(gltf, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    rest = data[20 + json_len:]
    body = struct.pack("<I", len(text)) + b"JSON" + text + rest
    return data[:8] + struct.pack("<I", 12 + len(body)) + body


def _write_ply(fh, mesh: Mesh) -> None:
    header = ["ply", "format binary_little_endian 1.0", f"comment {SIGNATURE}, units mm",
              f"element vertex {len(mesh.vertices)}",
              "property double x", "property double y", "property double z"]
    if not mesh.is_point_cloud:
        header += [f"element face {len(mesh.faces)}", "property list uchar int vertex_indices"]
    header.append("end_header")
    fh.write(("\n".join(header) + "\n").encode("ascii"))
    fh.write(np.ascontiguousarray(mesh.vertices, dtype="<f8").tobytes())
    if not mesh.is_point_cloud:
        rec = np.empty(len(mesh.faces), dtype=[("n", "u1"), ("ids", "<i4", (3,))])
        rec["n"] = 3
        rec["ids"] = mesh.faces
        fh.write(rec.tobytes())


def _write_obj(fh, mesh: Mesh) -> None:
    fh.write(f"# {SIGNATURE}, units mm\n".encode())
    v = mesh.vertices
    # %.17g round-trips every float64 exactly
    fh.write((("v %.17g %.17g %.17g\n" * len(v)) % tuple(v.ravel())).encode("ascii"))
    f = mesh.faces + 1
    fh.write((("f %d %d %d\n" * len(f)) % tuple(f.ravel().tolist())).encode("ascii"))
