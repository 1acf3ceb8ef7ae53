"""`neuralmorph render`: a mesh, a point cloud or a model's head from several views into one PNG (or JPEG),
optionally an animated GIF of the same views.

What is drawn: a mesh or point cloud file (`--mesh`), or the head of a latents file decoded by a model
(`--model`, `--latents`; unset latents: the model's average head). A model whose family has appearance
(`has_appearance`) is drawn as its 3D Gaussians on black; any other shape as a shaded mesh (or splatted
points) on white, optionally coloured by its error against a ground truth: per vertex for meshes in
correspondence, else each vertex's distance to the ground truth's surface (any mesh, scan or point cloud).

Where from: the named `--views`; or the cameras of a nerfstudio transforms.json (`--cameras`, each at its
own image size); or a turntable of `--turntable N` cameras around the head (a turntable of
`DEFAULT_TURNTABLE` when only `--gif` is given). The drawing is `neuralmorph.render`'s; the Gaussians'
the model's own (`render_views`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from neuralmorph.atomic import output_files, read_json
from neuralmorph.errors import InputError
from neuralmorph.geometry.camera import Camera
from neuralmorph.outputs import Output, Verb
from neuralmorph.render import (IMAGE_SUFFIXES, VIEWS, MeshRenderer, bounding_box, check_renderable, colorbar,
                                error_colors, heatmap_errors, hstack_images, render_points, render_views, save_gif,
                                save_image, to_uint8, turntable_cameras, view_camera)

DEFAULT_TURNTABLE = 8
"""Views of the turntable `--gif` shows when neither `--turntable` nor `--cameras` is given."""
MAX_TURNTABLE = 360
"""Most turntable views one render draws."""
MAX_CAMERA_PIXELS = 8192
"""Largest width or height of a `--cameras` frame (as `--size` for the other views)."""
GAUSSIAN_BACKGROUND = (0.0, 0.0, 0.0)
"""What is behind a model's Gaussians (black: what the appearance family trains against)."""


@dataclass(frozen=True, kw_only=True)
class RenderConfig(Verb):
    """Render a mesh, point cloud or model's head from several views into one PNG or JPEG (optionally an
    error heat-map, a turntable, the cameras of a transforms.json, an animated GIF)."""

    mesh: Path | None = None
    """Mesh (.ply/.obj/.off/.stl) or point cloud (.ply/.obj without faces) to render (or give --model)."""
    model: Path | None = None
    """Model folder whose head to render (instead of --mesh): its Gaussians when the model has appearance,
    else its mesh."""
    latents: Path | None = None
    """--model only: latents file of the head (from fit or sample); unset: the model's average head."""
    out: Path
    """Image to write, the views side by side: .png, or .jpg/.jpeg (lossy)."""
    views: tuple[str, ...] = ("front", "three_quarter", "side")
    """Views, from: front, three_quarter, side, back, top (unused with --turntable, --cameras or --gif)."""
    turntable: int | None = None
    """Render N views circling the head instead of --views: yaw -90 (the subject's right profile) to +90
    (the left), 5 degrees above."""
    cameras: Path | None = None
    """Render from the cameras of a nerfstudio transforms.json (or its folder) instead of --views, each
    at its frame's image size; the image files need not exist."""
    gif: Path | None = None
    """Also write the views as an animated GIF here (.gif); without --turntable or --cameras the views are
    a turntable of 8."""
    fps: float = 8.0
    """--gif only: frames per second."""
    size: int = 512
    """Width and height of each view in pixels (--cameras' frames keep their own sizes)."""
    units: Literal["mm", "cm", "dm", "m"] = "mm"
    """Units of the input files (and of --cameras' positions when its transforms.json has no "units" key)."""
    errors_against: Path | None = None
    """Ground truth (mesh, scan or point cloud): colour by the error against it (--error-kind), with a colour
    bar. Not for models with appearance (their Gaussians carry their own colours)."""
    error_kind: Literal["auto", "vertex", "surface"] = "auto"
    """vertex: per-vertex distance, for meshes in correspondence (same vertex count and order); surface: each
    vertex's distance to the ground truth's surface (to its nearest point for a point cloud); auto: vertex
    when the vertex counts match, surface otherwise."""
    vmax_mm: float = 5.0
    """Error (mm) at the top of the colour scale; larger errors are clipped to it."""
    device: str = "cpu"
    """--model only: torch device."""
    resolution: int = 128
    """--model only: grid cells per axis when the model is an implicit (SDF) family; unused by mesh families."""

    def __post_init__(self):
        if (self.mesh is None) == (self.model is None):
            raise InputError("--mesh/--model", "give one: a mesh or point cloud file (--mesh), or a model whose head "
                                               "to render (--model, with --latents)")
        if self.latents is not None and self.model is None:
            raise InputError("--latents", "needs --model (the model that decodes them)")
        bad = [v for v in self.views if v not in VIEWS]
        if not self.views or bad:
            raise InputError("--views", f"unknown view(s) {bad}; choose from {', '.join(VIEWS)}")
        if not 16 <= self.size <= 8192:
            raise InputError("--size", f"must be between 16 and 8192 pixels, got {self.size}")
        if self.turntable is not None and not 1 <= self.turntable <= MAX_TURNTABLE:
            raise InputError("--turntable", f"must be between 1 and {MAX_TURNTABLE} views, got {self.turntable}")
        if self.turntable is not None and self.cameras is not None:
            raise InputError("--turntable", "give --turntable or --cameras, not both")
        if not (self.vmax_mm > 0 and np.isfinite(self.vmax_mm)):
            raise InputError("--vmax-mm", f"must be positive, got {self.vmax_mm}")
        if Path(self.out).suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError("--out", f"{self.out}: cannot write {Path(self.out).suffix or 'a file without a suffix'}"
                                      f"; use one of {', '.join(IMAGE_SUFFIXES)}")
        if self.gif is not None and Path(self.gif).suffix.lower() != ".gif":
            raise InputError("--gif", f"{self.gif}: must end in .gif")
        if not (np.isfinite(self.fps) and 0 < self.fps <= 50):
            raise InputError("--fps", f"must be a number in (0, 50], got {self.fps}")
        if self.error_kind != "auto" and self.errors_against is None:
            raise InputError("--error-kind", "needs --errors-against (the ground truth to compare with)")
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or self.resolution < 2:
            raise InputError("--resolution", f"must be an integer >= 2, got {self.resolution!r}")

    def outputs(self) -> list[Output]:
        return [Output("--out", Path(self.out), None)] + ([Output("--gif", Path(self.gif), None)] if self.gif else [])


def gaussian_frames(model, latents, cameras: list[Camera]) -> list[np.ndarray]:
    """The first head of `latents` (space -> (B, K)) of a model with appearance, its Gaussians seen by each
    camera on black: (H, W, 3) uint8 images."""
    images = model.render_views(latents, cameras, background=GAUSSIAN_BACKGROUND)
    return [to_uint8(im) for im in images]


def gaussian_strip(frames: list[np.ndarray]) -> np.ndarray:
    """Gaussian renders side by side, no gap, on black."""
    return hstack_images(frames, pad=0, background=(0, 0, 0))


def read_cameras(path: Path, units: str) -> list[Camera]:
    """The cameras of a nerfstudio transforms.json (or its folder), mm; `units`: the positions' unit when
    the file does not say. InputError naming the file for anything wrong with it."""
    from neuralmorph.data.images import TRANSFORMS_FILE, read_transforms

    path = Path(path)
    file = path / TRANSFORMS_FILE if path.is_dir() else path
    meta = read_json(file, missing="transforms file not found")
    stated = isinstance(meta, dict) and meta.get("units") is not None
    frames = read_transforms(file, units=None if stated else units, check_files=False)
    for i, frame in enumerate(frames):
        cam = frame.camera
        if max(cam.width, cam.height) > MAX_CAMERA_PIXELS:
            raise InputError(file, f"frames[{i}] is {cam.width}x{cam.height} pixels; at most {MAX_CAMERA_PIXELS} "
                                   "a side are rendered")
    return [f.camera for f in frames]


def _cameras(cfg: RenderConfig, vertices: np.ndarray) -> list[Camera] | None:
    """The cameras of --cameras or of a turntable; None: the named --views."""
    if cfg.cameras is not None:
        return read_cameras(cfg.cameras, cfg.units)
    n = cfg.turntable if cfg.turntable is not None else (DEFAULT_TURNTABLE if cfg.gif is not None else None)
    return None if n is None else turntable_cameras(vertices, n, cfg.size)


def run_render(cfg: RenderConfig) -> None:
    """`neuralmorph render`: load (or decode), (optionally) colour by error against the ground truth,
    render, save the image (and the GIF) together."""
    from neuralmorph.geometry.mesh import load_mesh

    model = latents = None
    if cfg.model is not None:
        from neuralmorph.models.base import MorphableModel
        from neuralmorph.models.latents import load_latents

        model = MorphableModel.load(cfg.model, device=cfg.device)
        latents = load_latents(cfg.latents, model) if cfg.latents is not None else model.zero_latents(1)
        if model.has_appearance and cfg.errors_against is not None:
            raise InputError("--errors-against", f"{cfg.model} is a model with appearance: its Gaussians are drawn "
                                                 "in their own colours, not as an error heat-map")
        mesh = model.meshes(latents, resolution=cfg.resolution)[0]
        source = f"{cfg.latents if cfg.latents is not None else 'the average head'} of {cfg.model}"
        check_renderable(mesh.vertices, mesh.faces, cfg.latents if cfg.latents is not None else cfg.model)
    else:
        mesh = load_mesh(cfg.mesh, units=cfg.units, allow_points=True)
        source = str(cfg.mesh)
        check_renderable(mesh.vertices, mesh.faces, cfg.mesh)
    cameras = _cameras(cfg, mesh.vertices)
    what = (f"{len(cameras)} camera(s) of {cfg.cameras}" if cfg.cameras is not None else
            f"a turntable of {len(cameras)}" if cameras is not None else ", ".join(cfg.views))
    err, kind, gt = None, None, None
    if model is not None and model.has_appearance:
        if cameras is None:
            box = bounding_box(mesh.vertices)
            cameras = [view_camera(v, box, (cfg.size, cfg.size)) for v in cfg.views]
        frames = gaussian_frames(model, latents, cameras)
        image = gaussian_strip(frames)
        what += ", Gaussians"
    else:
        colors, box = None, None
        if cfg.errors_against is not None:
            gt = load_mesh(cfg.errors_against, units=cfg.units, allow_points=True)
            err, kind = heatmap_errors(mesh.vertices, gt.vertices, gt.faces, cfg.error_kind, cfg.errors_against)
            colors = error_colors(err, cfg.vmax_mm)
            box = bounding_box(mesh.vertices, gt.vertices)  # both shapes fit, whichever is larger
        if cameras is None:
            frames = None
            image = render_views(mesh.vertices, mesh.faces, cfg.views, cfg.size, colors, box)
        else:
            frames = _mesh_frames(mesh.vertices, mesh.faces, cameras, colors)
            image = hstack_images(frames, pad=8)
        if err is not None:
            bar = colorbar(cfg.vmax_mm, height=max(64, int(image.shape[0] * 0.7)))
            image = hstack_images([image, bar], pad=8)
            if frames is not None:
                frames = [hstack_images([f, bar], pad=8) for f in frames]
    paths = (cfg.out,) + ((cfg.gif,) if cfg.gif is not None else ())
    with output_files(*paths, overwrite=cfg.overwrite) as tmps:
        save_image(tmps[0], image)
        if cfg.gif is not None:
            save_gif(tmps[1], frames, cfg.fps)
    extra = ""
    if err is not None:
        what_err = ("per vertex, meshes in correspondence" if kind == "vertex" else
                    "each vertex to the ground truth's surface" if len(gt.faces) else
                    "each vertex to the nearest ground-truth point")
        extra = f", error kind {kind} ({what_err}): mean {err.mean():.3f} mm, max {err.max():.3f} mm"
    gif = f" and {cfg.gif} ({len(frames)} frames)" if cfg.gif is not None else ""
    print(f"rendered {source} ({what}) -> {cfg.out}{gif}{extra}")


def _mesh_frames(vertices: np.ndarray, faces: np.ndarray, cameras: list[Camera],
                 colors: np.ndarray | None) -> list[np.ndarray]:
    """A mesh ((F, 3) faces) or point cloud ((0, 3) faces) seen by each camera, at its own size."""
    f = np.asarray(faces).reshape(-1, 3)
    if len(f):
        renderer = MeshRenderer(vertices, f)
        return [renderer.render(cam, (cam.width, cam.height), colors) for cam in cameras]
    return [render_points(vertices, cam, (cam.width, cam.height), colors) for cam in cameras]
