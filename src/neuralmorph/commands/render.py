"""`neuralmorph render`: a mesh or point cloud from several views into one PNG (or JPEG), optionally
coloured by its error against a ground truth: per vertex for meshes in correspondence, else each vertex's
distance to the ground truth's surface (any mesh, scan or point cloud). The drawing is
`neuralmorph.render`'s."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from neuralmorph.atomic import output_files
from neuralmorph.errors import InputError
from neuralmorph.outputs import Verb
from neuralmorph.render import (IMAGE_SUFFIXES, VIEWS, bounding_box, check_renderable, colorbar, error_colors,
                                heatmap_errors, hstack_images, render_views, save_image)


@dataclass(frozen=True)
class RenderConfig(Verb):
    """Render a mesh or point cloud from several views into one PNG or JPEG (optionally an error heat-map)."""

    mesh: Path
    """Mesh (.ply/.obj/.off/.stl) or point cloud (.ply/.obj without faces) to render."""
    out: Path
    """Image to write, the views side by side: .png, or .jpg/.jpeg (lossy)."""
    views: tuple[str, ...] = ("front", "three_quarter", "side")
    """Views, from: front, three_quarter, side, back, top."""
    size: int = 512
    """Width and height of each view in pixels."""
    units: Literal["mm", "cm", "dm", "m"] = "mm"
    """Units of the input files."""
    errors_against: Path | None = None
    """Ground truth (mesh, scan or point cloud): colour by the error against it (--error-kind), with a colour bar."""
    error_kind: Literal["auto", "vertex", "surface"] = "auto"
    """vertex: per-vertex distance, for meshes in correspondence (same vertex count and order); surface: each
    vertex's distance to the ground truth's surface (to its nearest point for a point cloud); auto: vertex
    when the vertex counts match, surface otherwise."""
    vmax_mm: float = 5.0
    """Error (mm) at the top of the colour scale; larger errors are clipped to it."""

    def __post_init__(self):
        bad = [v for v in self.views if v not in VIEWS]
        if not self.views or bad:
            raise InputError("--views", f"unknown view(s) {bad}; choose from {', '.join(VIEWS)}")
        if not 16 <= self.size <= 8192:
            raise InputError("--size", f"must be between 16 and 8192 pixels, got {self.size}")
        if not (self.vmax_mm > 0 and np.isfinite(self.vmax_mm)):
            raise InputError("--vmax-mm", f"must be positive, got {self.vmax_mm}")
        if Path(self.out).suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError("--out", f"{self.out}: cannot write {Path(self.out).suffix or 'a file without a suffix'}"
                                      f"; use one of {', '.join(IMAGE_SUFFIXES)}")
        if self.error_kind != "auto" and self.errors_against is None:
            raise InputError("--error-kind", "needs --errors-against (the ground truth to compare with)")


def run_render(cfg: RenderConfig) -> None:
    """`neuralmorph render`: load, (optionally) colour by error against the ground truth, render, save."""
    from neuralmorph.geometry.mesh import load_mesh

    mesh = load_mesh(cfg.mesh, units=cfg.units, allow_points=True)
    check_renderable(mesh.vertices, mesh.faces, cfg.mesh)
    colors, box, err, kind = None, None, None, None
    if cfg.errors_against is not None:
        gt = load_mesh(cfg.errors_against, units=cfg.units, allow_points=True)
        err, kind = heatmap_errors(mesh.vertices, gt.vertices, gt.faces, cfg.error_kind, cfg.errors_against)
        colors = error_colors(err, cfg.vmax_mm)
        box = bounding_box(mesh.vertices, gt.vertices)  # both shapes fit, whichever is larger
    image = render_views(mesh.vertices, mesh.faces, cfg.views, cfg.size, colors, box)
    if err is not None:
        bar = colorbar(cfg.vmax_mm, height=max(64, int(cfg.size * 0.7)))
        image = hstack_images([image, bar], pad=8)
    with output_files(cfg.out, overwrite=cfg.overwrite) as (tmp,):
        save_image(tmp, image)
    extra = ""
    if err is not None:
        what = ("per vertex, meshes in correspondence" if kind == "vertex" else
                "each vertex to the ground truth's surface" if len(gt.faces) else
                "each vertex to the nearest ground-truth point")
        extra = f", error kind {kind} ({what}): mean {err.mean():.3f} mm, max {err.max():.3f} mm"
    print(f"rendered {cfg.mesh} ({', '.join(cfg.views)}) -> {cfg.out}{extra}")
