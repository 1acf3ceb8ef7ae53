"""Posed images as data: `ImageFrame` (an image, an optional mask, a pinhole camera, labels) and the
nerfstudio `transforms.json` file that stores them.

This is the one place that knows the camera conventions of image data; everything that renders, fits or
trains from images (the Gaussian rasterizer, textured heads, `data synth --images`, `data ingest
--transforms`) reads and writes frames through this API:

    ImageFrame(image, camera, subject="", expression="", registered=-1, mask=None)
    read_transforms(path, units=None, check_files=True) -> list[ImageFrame]
    write_transforms(folder, frames) -> Path                  # folder/transforms.json, signed, atomic
    load_image(path) -> (H, W, 3) float32 in [0, 1]
    load_mask(path) -> (H, W) float32 in [0, 1]
    camera_from_nerfstudio(transform_matrix, fl_x, fl_y, cx, cy, w, h, mm_per_unit=1.0) -> Camera
    parse_camera(path, where, frame, meta, scale) -> Camera   # one JSON camera, checked (frames, --camera files)
    nerfstudio_from_camera(camera) -> dict                    # transform_matrix, fl_x, fl_y, cx, cy, w, h
    camera_to_world(camera) -> (4, 4) float64                 # OpenCV axes, mm

Conventions (ours, for every `ImageFrame.camera`): `neuralmorph.geometry.camera.Camera`, a pinhole camera
with OpenCV axes (x right, y down, z forward, into the scene), a world-to-camera rigid (4, 4) pose in the
dataset's frame in millimetres (the frame of `heads.safetensors`), intrinsics in pixels with the centre
of pixel (row i, column j) at image coordinates (u, v) = (j, i), so a centred principal point is
((W - 1) / 2, (H - 1) / 2).

The file (nerfstudio's, which instant-ngp's resembles): per frame `file_path` and `transform_matrix`, a
camera-to-world (4, 4) in OpenGL axes (x right, y up, z backward: the camera looks down -z); intrinsics
`fl_x, fl_y, cx, cy, w, h` at the top level when every frame shares them, else per frame; an optional
`mask_path` (0 = ignore the pixel). nerfstudio's image coordinates put the centre of pixel (i, j) at
(j + 0.5, i + 0.5) (its ray generator's `pixel_offset = 0.5`, COLMAP's convention too), so

    Camera.cx = cx - 0.5,  Camera.cy = cy - 0.5
    world_to_camera = inverse(transform_matrix @ diag(1, -1, -1, 1)), translations times mm per unit

Both steps are exact in floating point (a sign flip, a shift by one half); the inverse of a rigid
transform is not, so the camera-to-world read from a file is remembered with its Camera and written back
unchanged: a file read and written again keeps every number. Our own keys: top-level `"units"` (the
file's length unit; we always write `"mm"`), `"format"`, and per frame `subject`, `expression`,
`registered` (row of the frame's registered head in heads.safetensors, or -1). nerfstudio ignores them.
Lens distortion is refused (undistort first: ns-process-data and COLMAP's image_undistorter do); keys we
do not use are ignored with one warning line naming them.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

import numpy as np

from neuralmorph.atomic import is_signed, read_json, write_json
from neuralmorph.errors import InputError
from neuralmorph.geometry.camera import Camera
from neuralmorph.geometry.mesh import MAX_COORDINATE_MM, UNITS_MM

TRANSFORMS_FILE = "transforms.json"
"""A dataset's posed images: `DIR/transforms.json`, its image paths relative to DIR."""
IMAGES_DIR = "images"
"""Where a dataset keeps its image and mask files (`DIR/images/`)."""
FORMAT = "neuralmorph.images/1"
"""The `format` key of the transforms.json files we write."""

OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
"""Right-multiplying a camera-to-world by this swaps OpenCV camera axes for OpenGL ones (and back)."""
PIXEL_OFFSET = 0.5
"""nerfstudio's principal point minus ours: its pixel centres sit at +0.5, ours at integers."""
ROTATION_TOLERANCE = 1e-4
"""Largest |R R^T - I| entry accepted in a file's transform_matrix (text files round their numbers)."""

INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE", "OPENCV", "SIMPLE_RADIAL", "RADIAL")
"""`camera_model` values read as plain pinholes (the radial ones only with every distortion term zero)."""
TOP_KEYS = frozenset({"frames", "camera_model", "units", "format", "written_by", *INTRINSIC_KEYS, *DISTORTION_KEYS})
FRAME_KEYS = frozenset({"file_path", "transform_matrix", "mask_path", "subject", "expression", "registered",
                        *INTRINSIC_KEYS, *DISTORTION_KEYS})


@dataclass(frozen=True, eq=False)
class ImageFrame:
    """One posed image: what a camera saw of one head.

    image: the image file, relative to the dataset folder (or to the transforms.json's folder; absolute
        paths are allowed in files we read, never in a dataset); posix separators.
    camera: pinhole intrinsics and the world-to-camera pose, OpenCV axes, millimetres, dataset frame.
    subject, expression: labels ("" when unknown); a dataset's subjects match its manifest's.
    registered: row of this head's registered mesh in heads.safetensors, or -1.
    mask: the mask file (same size as the image; 0 = background, ignored), relative like `image`, or None.

    Frames compare equal when every field is equal (the camera's numbers exactly).
    """

    image: str
    camera: Camera
    subject: str = ""
    expression: str = ""
    registered: int = -1
    mask: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.camera, Camera):
            raise TypeError(f"ImageFrame.camera must be a neuralmorph Camera, got {type(self.camera).__name__}")
        object.__setattr__(self, "image", str(self.image))
        object.__setattr__(self, "mask", None if self.mask is None else str(self.mask))
        object.__setattr__(self, "registered", int(self.registered))

    def image_path(self, folder: str | Path) -> Path:
        """The image file of a frame whose paths are relative to `folder`."""
        return Path(folder) / self.image

    def mask_path(self, folder: str | Path) -> Path | None:
        """The mask file of a frame whose paths are relative to `folder`, or None."""
        return None if self.mask is None else Path(folder) / self.mask

    def __eq__(self, other) -> bool:
        if not isinstance(other, ImageFrame):
            return NotImplemented
        a, b = self.camera, other.camera
        return ((self.image, self.mask, self.subject, self.expression, self.registered)
                == (other.image, other.mask, other.subject, other.expression, other.registered)
                and (a.fx, a.fy, a.cx, a.cy, a.width, a.height) == (b.fx, b.fy, b.cx, b.cy, b.width, b.height)
                and np.array_equal(a.world_to_camera, b.world_to_camera))

    __hash__ = None  # equality compares arrays: frames are not dict keys


# --- camera conversions ---------------------------------------------------------------------------


def camera_to_world(camera: Camera) -> np.ndarray:
    """(4, 4) float64 camera-to-world of `camera`, OpenCV axes, mm: the inverse of its rigid world-to-camera
    (a file read and written back keeps its matrices to about 1e-15 relative)."""
    r, t = camera.rotation, camera.world_to_camera[:3, 3]
    m = np.eye(4)
    m[:3, :3] = r.T
    m[:3, 3] = -r.T @ t
    return m


def camera_from_nerfstudio(transform_matrix, fl_x: float, fl_y: float, cx: float, cy: float, w: int, h: int,
                           mm_per_unit: float = 1.0) -> Camera:
    """Our Camera from nerfstudio's numbers: an OpenGL-axes camera-to-world (4, 4) whose translation is in
    units of `mm_per_unit` millimetres, and intrinsics with pixel centres at +0.5. The matrix must be rigid
    (see `rigid_problem`); ValueError otherwise (read_transforms checks first and names the file)."""
    m = np.array(transform_matrix, dtype=np.float64)
    c2w = m @ OPENGL_FROM_OPENCV  # negates columns 1 and 2: exact
    c2w[:3, 3] *= mm_per_unit
    problem = rigid_problem(c2w)
    if problem:
        raise ValueError(f"transform_matrix is not rigid: {problem}")
    exact = _orthonormal_within(c2w[:3, :3], 1e-6)  # what Camera itself accepts
    if not exact:
        u, _, vt = np.linalg.svd(c2w[:3, :3])
        c2w[:3, :3] = u @ vt  # the nearest rotation (det > 0 was checked)
    w2c = np.eye(4)
    w2c[:3, :3] = c2w[:3, :3].T
    w2c[:3, 3] = -c2w[:3, :3].T @ c2w[:3, 3]
    return Camera(float(fl_x), float(fl_y), float(cx) - PIXEL_OFFSET, float(cy) - PIXEL_OFFSET, int(w), int(h), w2c)


def nerfstudio_from_camera(camera: Camera) -> dict:
    """nerfstudio's numbers for `camera`: `transform_matrix` (OpenGL camera-to-world, mm, nested lists),
    `fl_x, fl_y, cx, cy` (pixel centres at +0.5) and `w, h`."""
    gl = camera_to_world(camera) @ OPENGL_FROM_OPENCV
    return {"transform_matrix": [[float(x) for x in row] for row in gl],
            "fl_x": float(camera.fx), "fl_y": float(camera.fy),
            "cx": float(camera.cx) + PIXEL_OFFSET, "cy": float(camera.cy) + PIXEL_OFFSET,
            "w": int(camera.width), "h": int(camera.height)}


def rigid_problem(m: np.ndarray, tolerance: float = ROTATION_TOLERANCE) -> str:
    """What keeps (4, 4) `m` from being a rigid transform (rotation orthonormal within `tolerance`,
    determinant +1, last row 0 0 0 1, finite), or "" when it is one."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (4, 4):
        return f"must be 4x4, got shape {m.shape}"
    if not np.isfinite(m).all():
        return "holds NaN or infinite numbers"
    if not np.array_equal(m[3], [0.0, 0.0, 0.0, 1.0]):
        return f"last row must be 0 0 0 1, got {' '.join(f'{x:g}' for x in m[3])}"
    r = m[:3, :3]
    err = float(np.abs(r @ r.T - np.eye(3)).max())
    if err > tolerance:
        return f"its 3x3 rotation is not orthonormal (off by {err:.3g}, tolerance {tolerance:g}; scaled or sheared?)"
    if np.linalg.det(r) < 0:
        return "its 3x3 part is a reflection (determinant -1), not a rotation"
    return ""


def _orthonormal_within(r: np.ndarray, atol: float) -> bool:
    return bool(np.allclose(r @ r.T, np.eye(3), atol=atol) and np.isclose(np.linalg.det(r), 1.0, atol=atol))


# --- reading --------------------------------------------------------------------------------------


def read_transforms(path: str | Path, units: str | None = None, check_files: bool = True) -> list[ImageFrame]:
    """The frames of a transforms.json (or of a folder holding one), cameras converted to our convention
    and millimetres; image and mask paths stay relative to the file's folder.

    units: the length unit of the file's translations when the file has no top-level "units" key (one
        of mm, cm, dm, m); a file that has one and disagrees is refused. None: the file must say.
    check_files: also check that every image and mask exists, is readable (header only) and has the
        frame's w x h.

    Every problem is an InputError naming the file and the frame (`frames[i]`); keys we do not use are
    ignored with one warning line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TRANSFORMS_FILE
    meta = read_json(path, missing="transforms file not found")
    if not isinstance(meta, dict):
        raise InputError(path, "must hold a JSON object with a 'frames' list")
    folder = path.parent
    scale = _file_scale(path, meta, units)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputError(path, "needs a non-empty 'frames' list")
    model = meta.get("camera_model")
    if model is not None and model not in PINHOLE_MODELS:
        raise InputError(path, f"camera_model {model!r} is not a pinhole camera; neuralmorph reads "
                               f"{', '.join(PINHOLE_MODELS)} (undistorted)")
    _no_distortion(path, "top level", meta)
    unknown_top = sorted(set(map(str, meta)) - TOP_KEYS)
    unknown_frame: set[str] = set()
    out = []
    for i, frame in enumerate(frames):
        where = f"frames[{i}]"
        if not isinstance(frame, dict):
            raise InputError(path, f"{where} must be a JSON object")
        unknown_frame |= set(map(str, frame)) - FRAME_KEYS
        out.append(_read_frame(path, folder, where, frame, meta, scale, check_files))
    if unknown_top or unknown_frame:
        parts = ([", ".join(unknown_top)] if unknown_top else []) + (
            [f"per frame {', '.join(sorted(unknown_frame))}"] if unknown_frame else [])
        print(f"neuralmorph: warning: {path}: ignoring key(s) {'; '.join(parts)} (not used by neuralmorph)",
              file=sys.stderr)
    return out


def _file_scale(path: Path, meta: dict, units: str | None) -> float:
    """Millimetres per unit of the file's translations, from its "units" key and/or `units`."""
    if units is not None and units not in UNITS_MM:
        raise InputError("--units", f"unknown unit {units!r}; use one of {', '.join(UNITS_MM)}")
    stated = meta.get("units")
    if stated is not None and stated not in UNITS_MM:
        raise InputError(path, f"'units' is {stated!r}; use one of {', '.join(UNITS_MM)}")
    if stated is not None and units is not None and stated != units:
        raise InputError(path, f"says its units are {stated!r} but {units!r} was given (--units); drop one")
    chosen = stated or units
    if chosen is None:
        raise InputError(path, "has no 'units' key: say what length unit its camera positions are in with --units "
                               "mm|cm|dm|m (nerfstudio captures are in arbitrary units: scale them to metric first)")
    return UNITS_MM[chosen]


def _no_distortion(path: Path, where: str, d: dict) -> None:
    for key in DISTORTION_KEYS:
        if key in d:
            v = _number(path, where, key, d[key])
            if v != 0.0:
                raise InputError(path, f"{where}: lens distortion {key}={v:g} is not supported; undistort the images "
                                       "first (ns-process-data or COLMAP's image_undistorter)")


def _number(path: Path, where: str, key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(path, f"{where}: {key} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise InputError(path, f"{where}: {key} must be finite, got {value!r}")
    return v


def _intrinsic(path: Path, where: str, key: str, frame: dict, meta: dict) -> float:
    if key in frame:
        return _number(path, where, key, frame[key])
    if key in meta:
        return _number(path, "top level", key, meta[key])
    raise InputError(path, f"{where}: no {key!r}, neither in the frame nor at the top level")


def _relative(path: Path, where: str, key: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(path, f"{where}: {key} must be a non-empty path string, got {value!r}")
    return value


def parse_camera(path: Path, where: str, frame: dict, meta: dict, scale: float) -> Camera:
    """Our Camera from one JSON object in nerfstudio's keys: intrinsics (fl_x, fl_y, cx, cy, w, h) from
    `frame`, else from `meta` (a transforms.json's top level; {} for none), no lens distortion, and an
    OpenGL camera-to-world `transform_matrix` whose translation is in units of `scale` mm. Every problem
    is an InputError naming `path` and `where` (e.g. "frames[3]")."""
    _no_distortion(path, where, frame)
    fx, fy, cx, cy, w, h = (_intrinsic(path, where, k, frame, meta) for k in INTRINSIC_KEYS)
    for key, v in (("w", w), ("h", h)):
        if v != int(v) or v < 1:
            raise InputError(path, f"{where}: {key} must be a whole number of pixels >= 1, got {v:g}")
    w, h = int(w), int(h)
    for key, v in (("fl_x", fx), ("fl_y", fy)):
        if not v > 0:
            raise InputError(path, f"{where}: focal length {key} must be positive, got {v:g}")
    if not (0.0 <= cx <= w and 0.0 <= cy <= h):
        raise InputError(path, f"{where}: principal point ({cx:g}, {cy:g}) lies outside the {w}x{h} image")

    if "transform_matrix" not in frame:
        raise InputError(path, f"{where}: no 'transform_matrix'")
    try:
        m = np.array(frame["transform_matrix"], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(path, f"{where}: transform_matrix must be a 4x4 list of numbers") from None
    if m.shape != (4, 4):
        raise InputError(path, f"{where}: transform_matrix must be a 4x4 list of numbers, got shape {m.shape}")
    if any(isinstance(x, bool) for row in frame["transform_matrix"] for x in row):
        raise InputError(path, f"{where}: transform_matrix must hold numbers, not true/false")
    problem = rigid_problem(m)
    if problem:
        raise InputError(path, f"{where}: transform_matrix is not a rigid camera-to-world: {problem}")
    far = float(np.abs(m[:3, 3]).max()) * scale
    if not far <= MAX_COORDINATE_MM:
        raise InputError(path, f"{where}: the camera sits {far:.3g} mm from the origin, beyond any head's scale "
                               f"(at most {MAX_COORDINATE_MM:g} mm): wrong units?")
    return camera_from_nerfstudio(m, fx, fy, cx, cy, w, h, mm_per_unit=scale)


def _read_frame(path: Path, folder: Path, where: str, frame: dict, meta: dict, scale: float,
                check_files: bool) -> ImageFrame:
    if "file_path" not in frame:
        raise InputError(path, f"{where}: no 'file_path'")
    image = _relative(path, where, "file_path", frame["file_path"])
    where = f"{where} ({image})"
    mask = _relative(path, where, "mask_path", frame["mask_path"]) if "mask_path" in frame else None
    camera = parse_camera(path, where, frame, meta, scale)

    labels = {}
    for key in ("subject", "expression"):
        if key in frame:
            if not isinstance(frame[key], str):
                raise InputError(path, f"{where}: {key} must be a string, got {frame[key]!r}")
            labels[key] = frame[key].strip()
    if "registered" in frame:
        r = frame["registered"]
        if isinstance(r, bool) or not isinstance(r, int) or r < -1:
            raise InputError(path, f"{where}: registered must be a row index >= 0, or -1, got {r!r}")
        labels["registered"] = r

    if check_files:
        size = (camera.width, camera.height)
        _check_image_file(path, where, folder / image, size, "image")
        if mask is not None:
            _check_image_file(path, where, folder / mask, size, "mask")
    return ImageFrame(image, camera, mask=mask, **labels)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, from its header only; InputError naming the file when it is
    missing or not an image PIL can read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise InputError(path, "image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(path, f"not a readable image ({type(exc).__name__}: {' '.join(str(exc).split())})") from None


def _check_image_file(path: Path, where: str, file: Path, size: tuple[int, int], what: str) -> None:
    if not file.is_file():
        raise InputError(path, f"{where}: {what} file {file} not found")
    try:
        got = image_size(file)
    except InputError as exc:
        raise InputError(path, f"{where}: {what} {exc.where}: {exc.problem}") from None
    if got != size:
        raise InputError(path, f"{where}: {what} {file} is {got[0]}x{got[1]} pixels but the camera says "
                               f"w x h = {size[0]}x{size[1]}")


# --- writing --------------------------------------------------------------------------------------


def write_transforms(folder: str | Path, frames: Iterable[ImageFrame]) -> Path:
    """Write `frames` as `folder/transforms.json` (nerfstudio's layout plus our keys, units mm, signed),
    atomically; returns the file. Intrinsics go to the top level when every frame shares them.

    Refuses to replace a transforms.json that neuralmorph did not write. Image files are the caller's to
    write (before or after); `read_transforms` checks them.
    """
    frames = list(frames)
    target = Path(folder) / TRANSFORMS_FILE
    if not frames:
        raise InputError(target, "no frames to write")
    if target.exists() and not is_signed(target):
        raise InputError(target, "exists and is not an output of neuralmorph; choose another folder")
    entries = []
    for f in frames:
        if not isinstance(f, ImageFrame):
            raise TypeError(f"write_transforms takes ImageFrames, got {type(f).__name__}")
        entry = {"file_path": PurePosixPath(f.image).as_posix(), **nerfstudio_from_camera(f.camera)}
        if f.mask is not None:
            entry["mask_path"] = PurePosixPath(f.mask).as_posix()
        entry.update(subject=f.subject, expression=f.expression, registered=f.registered)
        entries.append(entry)
    shared = {k: entries[0][k] for k in INTRINSIC_KEYS if all(e[k] == entries[0][k] for e in entries)}
    if len(shared) < len(INTRINSIC_KEYS):
        shared = {}  # all or nothing: a frame's camera stays in one place
    for e in entries:
        for k in shared:
            del e[k]
    data = {"format": FORMAT, "units": "mm", "camera_model": "OPENCV", **shared, "frames": entries}
    write_json(target, data)
    return target


# --- pixels ---------------------------------------------------------------------------------------


def _open(path: str | Path):
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
        im.load()
        return im
    except FileNotFoundError:
        raise InputError(path, "image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(path, f"not a readable image ({type(exc).__name__}: {' '.join(str(exc).split())})") from None


def _unit(im) -> np.ndarray:
    """A PIL image's pixels as float32 in [0, 1] (8-bit / 255, 16-bit / 65535)."""
    a = np.asarray(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        if im.mode == "I" and (a.min() < 0 or a.max() > 65535):
            raise InputError(getattr(im, "filename", "image"), "32-bit integer pixels are not supported (8 or 16 bits)")
        return (a.astype(np.float64) / 65535.0).astype(np.float32)
    if im.mode == "1":
        return a.astype(np.float32)
    return (a.astype(np.float64) / 255.0).astype(np.float32)


def load_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1]. Greyscale is repeated over the channels, palettes expanded, an
    alpha channel dropped (masks live in their own files: `load_mask`); 16-bit greyscale keeps its depth."""
    im = _open(path)
    with im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "L", "1"):
            g = _unit(im)
            return np.repeat(g[:, :, None], 3, axis=2)
        if im.mode == "F":
            raise InputError(path, "floating-point images are not supported (8 or 16 bits per channel)")
        if im.mode != "RGB":
            im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
        return np.ascontiguousarray(_unit(im)[:, :, :3])


def load_mask(path: str | Path) -> np.ndarray:
    """(H, W) float32 in [0, 1]: 0 = background (ignored), 1 = the subject; grey levels are soft weights.
    A mask is a single-channel image (1-bit, 8-bit or 16-bit), or an RGB(A) image whose colour channels
    are equal; anything else is refused."""
    im = _open(path)
    with im:
        if im.mode == "P":
            im = im.convert("RGB")
        if im.mode in ("RGB", "RGBA"):
            a = _unit(im)
            if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
                raise InputError(path, "a mask must be greyscale (one channel, or equal R, G and B), got colours")
            return np.ascontiguousarray(a[..., 0])
        if im.mode == "LA":
            im = im.convert("L")
        if im.mode not in ("1", "L", "I;16", "I;16B", "I;16L", "I"):
            raise InputError(path, f"a mask must be a greyscale image, got PIL mode {im.mode}")
        return _unit(im)
