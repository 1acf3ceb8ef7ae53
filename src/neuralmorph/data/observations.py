"""What an implicit model is fitted to: point clouds of one subject, or a depth-map sequence of one subject.

Three kinds of target, all in millimetres once read:

* one point-cloud (or mesh) file: .ply/.obj/.off/.stl/.xyz/.txt/.npy — one observation;
* a folder of such files: several observations of the same subject (e.g. one scan per expression),
  taken in name order;
* a depth-sequence folder: `camera.json` plus one depth image per frame (`.npy` float or 16-bit `.png`),
  in the order `camera.json` lists them. The format is documented in docs/implicit_fitting.md:

      {"format": "neuralmorph.depth_sequence/1",
       "units": "mm",             # depth values and pose translations (mm, cm, dm or m)
       "depth_scale": 1.0,        # a stored depth value (or 16-bit PNG count) times this, in `units`
       "intrinsics": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
       "frames": [{"depth": "depth_000.png", "camera_to_world": [[...4 rows...]]},
                  {"depth": "depth_001.png", "intrinsics": [[...]]}, ...]}

  Cameras follow OpenCV (x right, y down, z forward; pixel (row i, column j) is at u = j, v = i);
  `camera_to_world` defaults to the identity, `intrinsics` per frame override the shared ones. A depth of 0
  (or NaN in a .npy) means no hit; depth is the camera z of the hit, not the ray length. The images should
  hold the head only (mask the background to 0): every valid pixel becomes an observed point.

Everything wrong with a target raises `InputError` naming the file and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from neuralmorph.atomic import atomic_file, read_json, write_json
from neuralmorph.errors import InputError
from neuralmorph.geometry.camera import Camera
from neuralmorph.geometry.mesh import MESH_SUFFIXES, POINT_SUFFIXES, UNITS_MM, check_cloud, check_magnitude, load_mesh
from neuralmorph.geometry.raycast import backproject
from neuralmorph.geometry.sampling import sample_surface

SEQUENCE_FILE = "camera.json"
SEQUENCE_FORMAT = "neuralmorph.depth_sequence/1"
DEPTH_SUFFIXES = (".npy", ".png")
CLOUD_SUFFIXES = tuple(sorted(set(POINT_SUFFIXES) | set(MESH_SUFFIXES)))


@dataclass(frozen=True, eq=False)
class DepthFrame:
    """One depth image of the subject and the camera that took it.

    depth: (H, W) float32 millimetres, camera z of the first hit; 0 where nothing was hit.
    intrinsics: (3, 3) float64 pinhole matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] in pixels (no skew).
    camera_to_world: (4, 4) float64 rigid transform, OpenCV camera axes (x right, y down, z forward).
    name: what errors call this frame (its file name when read from disk).
    """

    depth: np.ndarray
    intrinsics: np.ndarray
    camera_to_world: np.ndarray = None  # type: ignore[assignment]  # None -> identity
    name: str = "depth frame"

    def __post_init__(self):
        d = np.array(self.depth, dtype=np.float32, copy=True)
        if d.ndim != 2 or d.size == 0:
            raise InputError(self.name, f"depth must be a non-empty (H, W) image, got shape {d.shape}")
        d[~np.isfinite(d)] = 0.0  # NaN / inf are "no hit" too (common in float depth exports)
        if (d < 0).any():
            raise InputError(self.name, "depth has negative values (use 0 for pixels without a hit)")
        k = np.asarray(self.intrinsics, dtype=np.float64)
        if k.shape != (3, 3) or not np.isfinite(k).all():
            raise InputError(self.name, f"intrinsics must be a finite 3x3 matrix, got shape {k.shape}")
        if not (k[0, 0] > 0 and k[1, 1] > 0) or abs(k[0, 1]) > 1e-9 or not np.allclose(k[2], [0, 0, 1]) \
                or abs(k[1, 0]) > 1e-9:
            raise InputError(self.name, "intrinsics must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0")
        pose = np.eye(4) if self.camera_to_world is None else np.asarray(self.camera_to_world, dtype=np.float64)
        if pose.shape != (4, 4) or not np.isfinite(pose).all():
            raise InputError(self.name, f"camera_to_world must be a finite 4x4 matrix, got shape {pose.shape}")
        r = pose[:3, :3]
        if not (np.allclose(r @ r.T, np.eye(3), atol=1e-5) and np.linalg.det(r) > 0 and np.allclose(pose[3], [0, 0, 0, 1])):
            raise InputError(self.name, "camera_to_world must be rigid (a rotation and a translation, last row 0 0 0 1)")
        d.setflags(write=False)
        object.__setattr__(self, "depth", d)
        object.__setattr__(self, "intrinsics", k)
        object.__setattr__(self, "camera_to_world", pose)

    @property
    def camera(self) -> Camera:
        """The frame's pinhole camera (world-to-camera is the inverse of `camera_to_world`)."""
        r, t = self.camera_to_world[:3, :3], self.camera_to_world[:3, 3]
        w2c = np.eye(4)
        w2c[:3, :3] = r.T
        w2c[:3, 3] = -r.T @ t
        k = self.intrinsics
        h, w = self.depth.shape
        return Camera(k[0, 0], k[1, 1], k[0, 2], k[1, 2], w, h, w2c)

    def points(self) -> np.ndarray:
        """(K, 3) float64 world points (mm) of the valid pixels, row-major pixel order."""
        pts, _ = backproject(np.where(self.depth > 0, self.depth, np.nan).astype(np.float64), self.camera)
        return pts


def depth_clouds(frames: Sequence[DepthFrame]) -> tuple[np.ndarray, ...]:
    """Each frame back-projected: (K_i, 3) float64 world points (mm); InputError naming a frame without
    a valid pixel."""
    clouds = []
    for fr in frames:
        pts = fr.points()
        if len(pts) == 0:
            raise InputError(fr.name, "no valid depth pixels (every value is 0 or NaN)")
        check_magnitude(fr.name, float(np.abs(pts).max()))
        clouds.append(pts)
    return tuple(clouds)


@dataclass(frozen=True, eq=False)
class Observation:
    """What a fit starts from: observations of one subject, millimetres, in the observer's coordinates.

    kind: "registered" (one mesh in a model's topology: `clouds[0]` are its vertices (N, 3)), "points"
    (independent observations, e.g. one scan per expression) or "depth" (an ordered sequence of depth
    frames, back-projected into `clouds`). names: (n,) observation names (file names). clouds: n arrays
    (P_i, 3) float64 mm. frames: the depth frames for kind "depth", else empty. landmarks: (L, 3) float64
    mm in the model's landmark order, when known (mesh families align with them).
    """

    kind: Literal["registered", "points", "depth"]
    names: tuple[str, ...]
    clouds: tuple[np.ndarray, ...]
    frames: tuple[DepthFrame, ...] = ()
    landmarks: np.ndarray | None = None


def load_cloud(path: str | Path, units: str = "mm", mesh_points: int = 10_000, seed: int = 0) -> np.ndarray:
    """Read one observation: (P, 3) float64 mm.

    A point cloud is used as given; a file with faces (a mesh) contributes `mesh_points` area-uniform
    samples of its surface instead of its vertices, which would over-weight densely meshed regions.
    """
    path = Path(path)
    mesh = load_mesh(path, units=units, allow_points=True)
    if mesh.is_point_cloud:
        return check_cloud(path, mesh.vertices)
    if mesh_points < 1:
        raise InputError("mesh_points", f"must be >= 1, got {mesh_points}")
    if not mesh.area > 0:
        raise InputError(path, "the mesh has zero area; nothing to sample")
    pts, _, _ = sample_surface(mesh.vertices, mesh.faces, mesh_points, seed)
    return check_cloud(path, pts, "surface samples")


def _read_depth(path: Path) -> np.ndarray:
    """A depth image file -> (H, W) float64 stored values (not yet scaled)."""
    if not path.is_file():
        raise InputError(path, "depth file not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(path, f"cannot read as .npy ({exc.__class__.__name__}: {exc})") from None
        if arr.dtype.kind not in "fiu":
            raise InputError(path, f"depth must be numeric, got dtype {arr.dtype}")
        return np.asarray(arr, np.float64)
    if suffix == ".png":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                mode = img.mode
                arr = np.array(img)
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(path, f"cannot read as PNG ({exc.__class__.__name__})") from None
        # 8-bit PNGs are nearly always visualisations (0-255 grey), not depth in usable units
        if arr.dtype not in (np.uint16, np.int32) or mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise InputError(path, f"depth PNGs must be 16-bit single-channel, got mode {mode!r}")
        return arr.astype(np.float64)
    raise InputError(path, f"unsupported depth file type {suffix!r}; expected one of {', '.join(DEPTH_SUFFIXES)}")


def _matrix(value, shape: tuple[int, int], where: str, what: str) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(where, f"{what} must be a {shape[0]}x{shape[1]} list of numbers") from None
    if m.shape != shape:
        raise InputError(where, f"{what} must be {shape[0]}x{shape[1]}, got shape {m.shape}")
    return m


def load_depth_sequence(folder: str | Path) -> list[DepthFrame]:
    """Read a depth-sequence folder (`camera.json` + depth images) into frames in millimetres."""
    folder = Path(folder)
    spec_path = folder / SEQUENCE_FILE
    if not spec_path.is_file():
        raise InputError(folder, f"not a depth sequence (no {SEQUENCE_FILE})")
    spec = read_json(spec_path)
    if not isinstance(spec, dict):
        raise InputError(spec_path, "must hold a JSON object")
    if spec.get("format", SEQUENCE_FORMAT) != SEQUENCE_FORMAT:
        raise InputError(spec_path, f"format {spec.get('format')!r} is not {SEQUENCE_FORMAT!r}")
    units = spec.get("units", "mm")
    if units not in UNITS_MM:
        raise InputError(spec_path, f"units {units!r} is not one of {sorted(UNITS_MM)}")
    to_mm = UNITS_MM[units]
    scale = spec.get("depth_scale", 1.0)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not (np.isfinite(scale) and scale > 0):
        raise InputError(spec_path, f"depth_scale must be a positive number, got {scale!r}")
    frames_spec = spec.get("frames")
    if not isinstance(frames_spec, list) or not frames_spec:
        raise InputError(spec_path, "needs a non-empty 'frames' list")
    shared_k = spec.get("intrinsics")
    frames = []
    for i, fs in enumerate(frames_spec):
        where = f"{spec_path} frame {i}"
        if not isinstance(fs, dict) or not isinstance(fs.get("depth"), str):
            raise InputError(where, "each frame needs a 'depth' file name")
        k_value = fs.get("intrinsics", shared_k)
        if k_value is None:
            raise InputError(where, "no intrinsics (give them at the top level or per frame)")
        k = _matrix(k_value, (3, 3), where, "intrinsics")
        pose = None
        if "camera_to_world" in fs:
            pose = _matrix(fs["camera_to_world"], (4, 4), where, "camera_to_world").copy()
            pose[:3, 3] *= to_mm
        path = folder / fs["depth"]
        depth = _read_depth(path) * (scale * to_mm)
        frames.append(DepthFrame(depth.astype(np.float32), k, pose, name=str(path)))
    return frames


def write_depth_sequence(folder: str | Path, frames: Sequence[DepthFrame], png: bool = False) -> None:
    """Write frames as a depth-sequence folder in millimetres (`camera.json` + depth_000.npy ...).

    png: store 16-bit PNGs in whole millimetres (depth_scale 1) instead of float32 .npy.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, fr in enumerate(frames):
        name = f"depth_{i:03d}.{'png' if png else 'npy'}"
        with atomic_file(folder / name) as tmp:
            if png:
                from PIL import Image

                if fr.depth.max() > 65535:
                    raise InputError(fr.name, "depth beyond 65535 mm does not fit a 16-bit PNG; write .npy")
                Image.fromarray(np.round(fr.depth).astype(np.uint16)).save(tmp, format="PNG")
            else:
                with open(tmp, "wb") as fh:
                    np.save(fh, fr.depth.astype(np.float32))
        entries.append({"depth": name, "intrinsics": fr.intrinsics.tolist(), "camera_to_world": fr.camera_to_world.tolist()})
    write_json(folder / SEQUENCE_FILE, {"format": SEQUENCE_FORMAT, "units": "mm", "depth_scale": 1.0, "frames": entries})


def load_target(path: str | Path, units: str = "mm", mesh_points: int = 10_000, seed: int = 0) -> Observation:
    """Read a fitting target: a point-cloud/mesh file, a folder of them, or a depth-sequence folder.

    units: of point-cloud and mesh files (depth sequences declare their own in camera.json).
    mesh_points: surface samples drawn from a file that is a mesh (see `load_cloud`).
    """
    path = Path(path)
    if path.is_dir():
        if (path / SEQUENCE_FILE).exists():
            frames = load_depth_sequence(path)
            return Observation("depth", tuple(Path(f.name).name for f in frames), depth_clouds(frames), tuple(frames))
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in CLOUD_SUFFIXES
                       and not p.name.startswith("."))
        if not files:
            raise InputError(path, f"holds no point clouds ({', '.join(CLOUD_SUFFIXES)}) and no {SEQUENCE_FILE}")
        clouds = tuple(load_cloud(f, units, mesh_points, seed + i) for i, f in enumerate(files))
        return Observation("points", tuple(f.name for f in files), clouds)
    if not path.exists():
        raise InputError(path, "target not found")
    return Observation("points", (path.name,), (load_cloud(path, units, mesh_points, seed),))
