"""`neuralmorph fit` on images: an appearance model fitted to one photo or to a transforms.json of posed
photos of one head (`fitting.image.fit_image`). `commands.fit` hands a target here when it is an image
file or a transforms.json (or a folder holding one).

One image needs its camera: `--camera CAM.json` (one camera in nerfstudio's keys), or `--landmarks2d
PTS.txt`, from which the camera is solved (`geometry.pnp.solve_pnp` against the model's mean head's
landmarks; unknown focal, centred principal point). A transforms.json brings a camera (and optionally a
mask) per frame, and all its frames are fitted together as one head.

Written together into `--out` (`atomic_dir`): fit.ply (the fitted mesh, mm, model frame), gaussians.ply
(3DGS PLY), latents.json, input_render.png (each input view beside the fit seen by its camera),
turntable.png (8 views, yaw -90..90 degrees) and metrics.json (PSNR / SSIM per input view, whole and
inside the mask; seconds; the fit's config; where the camera came from).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from neuralmorph.atomic import atomic_dir, read_json, write_json
from neuralmorph.data.images import (DISTORTION_KEYS, INTRINSIC_KEYS, TRANSFORMS_FILE, image_size, load_image,
                                     load_mask, nerfstudio_from_camera, parse_camera, read_transforms)
from neuralmorph.errors import InputError
from neuralmorph.evaluation.image_metrics import WINDOW, psnr, ssim
from neuralmorph.fitting.image import ImageFit, View, fit_image, render_fit
from neuralmorph.geometry.camera import Camera
from neuralmorph.geometry.mesh import MESH_SUFFIXES, POINT_SUFFIXES, UNITS_MM, save_mesh
from neuralmorph.geometry.pnp import solve_pnp
from neuralmorph.models.base import MorphableModel
from neuralmorph.models.latents import save_latents
from neuralmorph.render import bounding_box, hstack_images, save_png, to_uint8, turntable_cameras

if TYPE_CHECKING:
    from neuralmorph.commands.fit import FitCommand

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""Target files read as one photo."""
TURNTABLE_VIEWS = 8
"""Views of turntable.png, at yaws spread over -90..90 degrees (0: the face; positive: from the subject's left)."""
TURNTABLE_SIZE = 256
"""Side of each turntable view, pixels."""
MIN_SHOWN = 128
"""input_render.png enlarges small inputs (whole pixel repeats) until their shorter side reaches this."""
MAX_SHOWN_VIEWS = 12
"""input_render.png shows at most this many input views (evenly chosen); metrics.json scores them all."""
CAMERA_KEYS = frozenset({"transform_matrix", "units", "camera_model", "written_by", "format", "file_path",
                         "mask_path", *INTRINSIC_KEYS, *DISTORTION_KEYS})


def is_image_target(path: str | Path) -> bool:
    """Whether `path` is a photo (by suffix), a .json file (a transforms.json) or a folder holding a
    transforms.json: a target for the image fit."""
    p = Path(path)
    if p.is_dir():
        return (p / TRANSFORMS_FILE).is_file()
    suffix = p.suffix.lower()
    return suffix == ".json" or (suffix in IMAGE_SUFFIXES and suffix not in MESH_SUFFIXES + POINT_SUFFIXES)


def refuse_image_flags(cfg: FitCommand) -> None:
    """A mesh or point target: the image-only flags make no sense; one line naming the first given."""
    for flag, value in (("--camera", cfg.camera), ("--mask", cfg.mask), ("--landmarks2d", cfg.landmarks2d)):
        if value is not None:
            raise InputError(flag, f"is for image targets (a photo or a transforms.json); {cfg.target} is not one")


# --- reading -------------------------------------------------------------------------------------------


def _units(meta: dict, units: str) -> str | None:
    """The `units` to hand the reader: the file's own "units" key wins over the default --units mm; an
    explicit other --units that disagrees with the file is the reader's to refuse."""
    return None if isinstance(meta, dict) and "units" in meta and units == "mm" else units


def read_camera(path: str | Path, units: str = "mm") -> Camera:
    """One camera from a JSON object in nerfstudio's keys (fl_x, fl_y, cx, cy, w, h, transform_matrix: an
    OpenGL camera-to-world), its translation in the file's "units" (mm, cm, dm, m) or else `units`; every
    problem one InputError naming the file."""
    path = Path(path)
    d = read_json(path, missing="camera file not found")
    if not isinstance(d, dict):
        raise InputError(path, "must hold one JSON object with fl_x, fl_y, cx, cy, w, h and transform_matrix")
    if "frames" in d:
        raise InputError(path, "holds frames (a transforms.json): give it as --target to fit all its frames, or "
                               "give --camera one camera's keys")
    missing = [k for k in (*INTRINSIC_KEYS, "transform_matrix") if k not in d]
    if missing:
        raise InputError(path, f"lacks {', '.join(missing)} (a camera is nerfstudio's fl_x, fl_y, cx, cy, w, h, "
                               "transform_matrix)")
    stated = d.get("units")
    if stated is not None and (not isinstance(stated, str) or stated not in UNITS_MM):
        raise InputError(path, f"'units' is {stated!r}; use one of {', '.join(UNITS_MM)}")
    chosen = stated if _units(d, units) is None else units
    if chosen not in UNITS_MM:
        raise InputError("--units", f"unknown unit {chosen!r}; use one of {', '.join(UNITS_MM)}")
    if stated is not None and stated != chosen:
        raise InputError(path, f"says its units are {d['units']!r} but {chosen!r} was given (--units); drop one")
    camera = parse_camera(path, "camera", d, {}, UNITS_MM[chosen])  # the checks of a transforms.json frame
    unknown = sorted(set(map(str, d)) - CAMERA_KEYS)
    if unknown:
        print(f"neuralmorph: warning: {path}: ignoring key(s) {', '.join(unknown)} (not used by neuralmorph)",
              file=sys.stderr)
    return camera


def load_rgba(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) float32 RGB in [0, 1] and, for an image with transparency, its alpha (H, W) float32
    (else None). Greyscale is repeated over the channels (`load_image`)."""
    from PIL import Image

    rgb = load_image(path)  # refuses missing and unreadable files with one line
    with Image.open(path) as im:
        if "A" not in im.getbands() and "transparency" not in im.info:
            return rgb, None
        alpha = np.asarray(im.convert("RGBA"))[:, :, 3]
    return rgb, (alpha.astype(np.float64) / 255.0).astype(np.float32)


def _image_view(image_path: Path, camera: Camera, mask_path: Path | None, mask_flag: str) -> View:
    """A View of one photo: transparency composited over black, its alpha the mask unless a mask file
    is given; sizes checked against the camera and the mask."""
    image, alpha = load_rgba(image_path)
    h, w = image.shape[:2]
    if min(h, w) < WINDOW:
        raise InputError(image_path, f"is {w}x{h} pixels; the fit's SSIM needs at least {WINDOW} on a side")
    if (w, h) != (camera.width, camera.height):
        raise InputError(image_path, f"is {w}x{h} pixels but its camera says w x h = {camera.width}x{camera.height}")
    mask = None
    if mask_path is not None:
        if not Path(mask_path).is_file():
            raise InputError(mask_flag, f"{mask_path}: mask file not found")
        mask = load_mask(mask_path)
        if mask.shape != (h, w):
            raise InputError(mask_path, f"is a {mask.shape[1]}x{mask.shape[0]} mask but the image {image_path} is "
                                        f"{w}x{h} pixels")
    if alpha is not None:
        image = image * alpha[:, :, None]  # over black, the renders' background
        if mask is None:
            mask = alpha
    return View(image, camera, mask)


def read_landmarks2d(path: str | Path, n_landmarks: int) -> np.ndarray:
    """(L, 2) float64 pixel coordinates (u v per row; `nan nan` for a landmark not seen); L must be the
    model's landmark count. Blank lines and `#` comments are skipped; commas separate like spaces."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(path, "landmarks file not found") from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise InputError(path, "not a text file of landmark rows (u v)") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].replace(",", " ").split()
        if not line:
            continue
        try:
            row = [float(x) for x in line]
        except ValueError:
            raise InputError(path, f"line {i}: need two numbers (u v), got {' '.join(line)!r}") from None
        if len(row) != 2:
            raise InputError(path, f"line {i}: need two numbers (u v), got {len(row)}")
        if np.isinf(row).any() or np.isnan(row[0]) != np.isnan(row[1]):
            raise InputError(path, f"line {i}: a landmark is two finite numbers, or nan nan when not seen")
        rows.append(row)
    if n_landmarks == 0:
        raise InputError("--landmarks2d", "the model has no landmarks to match")
    if len(rows) != n_landmarks:
        raise InputError(path, f"holds {len(rows)} landmarks; the model has {n_landmarks} (in its landmark order)")
    return np.array(rows, dtype=np.float64)


def pnp_camera(model: MorphableModel, landmarks: np.ndarray, width: int, height: int, where: Path):
    """The camera that projects the mean head's landmarks onto `landmarks` (unknown focal, centred
    principal point): `solve_pnp`'s result."""
    with torch.no_grad():
        mean = model.decode(model.zero_latents(1))[0, model.landmark_ids].double().cpu().numpy()
    seen = np.isfinite(landmarks).all(axis=1)
    return solve_pnp(mean, np.where(seen[:, None], landmarks, 0.0), width, height, weights=seen.astype(np.float64),
                     where=str(where))


def check_distance(model: MorphableModel, cameras: list[tuple[Camera, str | Path]]) -> None:
    """Refuse a camera (each with the file it came from) inside the mean head's bounding sphere: positions
    in the wrong units (metres read as millimetres put a camera half a metre away half a millimetre from
    the origin)."""
    with torch.no_grad():
        box = bounding_box(model.decode(model.zero_latents(1))[0].cpu().numpy())
    centre, radius = box.mean(axis=0), 0.5 * float(np.linalg.norm(box[1] - box[0]))
    for camera, where in cameras:
        d = float(np.linalg.norm(camera.position - centre))
        if d < radius:
            raise InputError(where, f"puts the camera {d:.3g} mm from the head's centre, inside the head (radius "
                                    f"{radius:.0f} mm): are its positions in other units than millimetres? say "
                                    "which with a \"units\" key or --units")


@dataclass
class Views:
    views: list[View]
    names: list[str]
    camera: dict  # where the cameras came from


def load_views(cfg: FitCommand, model: MorphableModel) -> Views:
    """The posed images the flags describe, every input checked before any work."""
    target = Path(cfg.target)
    if cfg.landmarks is not None:
        raise InputError("--landmarks", "takes a mesh target's 3D landmarks; an image's go in --landmarks2d")
    if cfg.kind != "auto":
        raise InputError("--kind", f"is for mesh and point targets; {target} is an image target")
    if target.is_dir() or target.suffix.lower() == ".json":
        return _transforms_views(cfg, target, model)
    if not target.is_file():
        raise InputError(target, "image file not found")
    landmarks = camera = None
    if cfg.landmarks2d is not None:
        landmarks = read_landmarks2d(cfg.landmarks2d, len(model.landmark_ids))
    if cfg.camera is not None:
        camera = read_camera(cfg.camera, cfg.units)
        check_distance(model, [(camera, cfg.camera)])
        source = {"source": "given", "file": str(cfg.camera)}
    elif landmarks is None:
        raise InputError("--camera", f"{target} needs its camera: give --camera CAM.json (nerfstudio keys), or "
                                     "--landmarks2d PTS.txt to solve the camera from the face's landmarks")
    pnp = None
    if camera is None:
        w, h = image_size(target)
        pnp = pnp_camera(model, landmarks, w, h, cfg.landmarks2d)
        camera = pnp.camera
        source = {"source": "pnp", "file": str(cfg.landmarks2d), "rms_px": pnp.rms_px, "max_px": pnp.max_px,
                  "focal_px": camera.fx}
    view = _image_view(target, camera, cfg.mask, "--mask")
    view.landmarks = landmarks
    if pnp is not None:  # every input checked: say how well the camera fits
        print(f"camera from {int(np.isfinite(landmarks).all(axis=1).sum())} landmarks ({cfg.landmarks2d}) by PnP: "
              f"rms {pnp.rms_px:.2f} px (max {pnp.max_px:.2f}), focal {camera.fx:.1f} px")
    return Views([view], [target.name], {**source, **nerfstudio_from_camera(camera), "units": "mm"})


def _transforms_views(cfg: FitCommand, target: Path, model: MorphableModel) -> Views:
    """Every frame of a transforms.json (or of a folder holding one), one head."""
    for flag, value in (("--camera", cfg.camera), ("--mask", cfg.mask), ("--landmarks2d", cfg.landmarks2d)):
        if value is not None:
            raise InputError(flag, f"a transforms.json target ({target}) brings its own cameras and masks per "
                                   f"frame; drop {flag}")
    file = target / TRANSFORMS_FILE if target.is_dir() else target
    meta = read_json(file, missing="transforms file not found")
    frames = read_transforms(file, units=_units(meta, cfg.units))
    folder = file.parent
    check_distance(model, [(f.camera, f"{file}: frames[{i}] ({f.image})") for i, f in enumerate(frames)])
    subjects = sorted({f.subject for f in frames if f.subject})
    if len(subjects) > 1:
        print(f"neuralmorph: warning: {file}: its frames show {len(subjects)} subjects ({', '.join(subjects[:4])}"
              f"{', ...' if len(subjects) > 4 else ''}); they are fitted as one head", file=sys.stderr)
    views = [_image_view(f.image_path(folder), f.camera, f.mask_path(folder), str(file)) for f in frames]
    return Views(views, [f.image for f in frames], {"source": "transforms", "file": str(file)})


# --- outputs --------------------------------------------------------------------------------------------



def _enlarged(image: np.ndarray) -> np.ndarray:
    k = max(1, math.ceil(MIN_SHOWN / min(image.shape[:2])))
    return np.repeat(np.repeat(image, k, axis=0), k, axis=1)


def _vstack(rows: list[np.ndarray], pad: int = 8) -> np.ndarray:
    w = max(r.shape[1] for r in rows)
    out = np.full((sum(r.shape[0] for r in rows) + pad * (len(rows) - 1), w, 3), 255, np.uint8)
    y = 0
    for r in rows:
        out[y:y + r.shape[0], :r.shape[1]] = r
        y += r.shape[0] + pad
    return out


def view_metrics(name: str, render: np.ndarray, start: np.ndarray, view: View) -> dict:
    """PSNR and SSIM of the fit's render against the input, whole and (with a mask) inside it."""
    image = np.asarray(view.image, np.float64)
    row = {"image": name, "psnr_db": psnr(render, image), "ssim": ssim(render, image),
           "start_psnr_db": psnr(start, image)}
    if view.mask is not None:
        row.update(psnr_masked_db=psnr(render, image, view.mask), ssim_masked=ssim(render, image, view.mask))
    return row


def run_fit_image(cfg: FitCommand, model: MorphableModel, warn: Callable[[MorphableModel, Path], None]) -> dict:
    """Fit an appearance model to the image target of `cfg` and write the outputs (see the module)."""
    begin = time.perf_counter()
    if not model.has_appearance:
        raise InputError("--model", f"a {model.family!r} model has no appearance; the image target {cfg.target} needs "
                                    "an appearance model (`neuralmorph train appearance`)")
    if cfg.prior is not None:
        raise InputError("--prior", "serves mesh fits of points; an image fit uses the model's Gaussian priors")
    data = load_views(cfg, model)
    warn(model, cfg.model)
    fit: ImageFit = fit_image(model, data.views, cfg.image_fit, progress=True)
    cameras = [v.camera for v in data.views]
    renders = render_fit(model, fit, cameras)
    starts = model.render_views(model.zero_latents(1), cameras)
    rows = [view_metrics(n, r, s, v) for n, r, s, v in zip(data.names, renders, starts, data.views)]
    mesh = model.meshes(fit.latents)[0]
    turntable = render_fit(model, fit, turntable_cameras(mesh.vertices, TURNTABLE_VIEWS, TURNTABLE_SIZE, pitch_deg=0.0))
    shown = np.unique(np.linspace(0, len(renders) - 1, min(len(renders), MAX_SHOWN_VIEWS)).round().astype(int))
    comparison = _vstack([_enlarged(hstack_images([to_uint8(data.views[i].image), to_uint8(renders[i])], pad=4))
                          for i in shown])
    keys = dict.fromkeys(k for r in rows for k in r if k != "image")
    mean = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
    metrics = {"views": rows, "mean": mean,
               "fit": {"family": model.family, "views": len(rows), "seconds": fit.seconds,
                       "total_seconds": time.perf_counter() - begin, "camera": data.camera,
                       "config": asdict(cfg.image_fit), "refined": bool(fit.residuals),
                       "history": fit.history}}
    with atomic_dir(cfg.out, "fit", cfg.overwrite) as tmp:
        save_mesh(tmp / "fit.ply", mesh)
        with torch.no_grad():
            model.save_ply(fit.gaussians(model), 0, tmp / "gaussians.ply")
        # the codes only: stage 2's per-Gaussian residuals live in gaussians.ply
        save_latents(tmp / "latents.json", model, fit.latents, fit_kind="images", views=data.names)
        save_png(tmp / "input_render.png", comparison)
        save_png(tmp / "turntable.png", hstack_images([to_uint8(t) for t in turntable], pad=4))
        write_json(tmp / "metrics.json", metrics)
    print(f"fitted {cfg.target} ({len(rows)} view{'s' if len(rows) != 1 else ''}): PSNR {mean['psnr_db']:.2f} dB on "
          f"the input (mean head {mean['start_psnr_db']:.2f} dB), SSIM {mean['ssim']:.3f} in "
          f"{time.perf_counter() - begin:.1f} s -> {cfg.out}")
    return metrics
