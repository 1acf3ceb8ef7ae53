"""`neuralmorph render`: a mesh or point cloud from several views into one PNG, optionally coloured by
its per-vertex error against a ground truth in correspondence. The drawing is `neuralmorph.render`'s."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from neuralmorph.errors import InputError
from neuralmorph.render import VIEWS, bounding_box, colorbar, error_colors, hstack_images, render_views, save_png


@dataclass(frozen=True)
class RenderConfig:
    """Render a mesh or point cloud from several views into one PNG (optionally an error heat-map)."""

    mesh: Path
    """Mesh (.ply/.obj/.off/.stl) or point cloud (.ply/.obj without faces) to render."""
    out: Path
    """PNG to write, the views side by side."""
    views: tuple[str, ...] = ("front", "three_quarter", "side")
    """Views, from: front, three_quarter, side, back, top."""
    size: int = 512
    """Width and height of each view in pixels."""
    units: Literal["mm", "cm", "dm", "m"] = "mm"
    """Units of the input files."""
    errors_against: Path | None = None
    """Ground-truth mesh in correspondence (same vertex count): colour by per-vertex error, with a colour bar."""
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


def run_render(cfg: RenderConfig) -> None:
    """`neuralmorph render`: load, (optionally) colour by error against the ground truth, render, save."""
    from neuralmorph.geometry.mesh import load_mesh

    mesh = load_mesh(cfg.mesh, units=cfg.units, allow_points=True)
    colors, box, err = None, None, None
    if cfg.errors_against is not None:
        gt = load_mesh(cfg.errors_against, units=cfg.units)
        if len(gt.vertices) != len(mesh.vertices):
            raise InputError(cfg.errors_against, f"has {len(gt.vertices)} vertices, {cfg.mesh} has "
                             f"{len(mesh.vertices)}: per-vertex errors need meshes in correspondence")
        err = np.linalg.norm(mesh.vertices - gt.vertices, axis=1)
        colors = error_colors(err, cfg.vmax_mm)
        box = bounding_box(mesh.vertices, gt.vertices)  # both shapes fit, whichever is larger
    image = render_views(mesh.vertices, mesh.faces, cfg.views, cfg.size, colors, box)
    if err is not None:
        bar = colorbar(cfg.vmax_mm, height=max(64, int(cfg.size * 0.7)))
        image = hstack_images([image, bar], pad=8)
    save_png(cfg.out, image)
    extra = f", per-vertex error mean {err.mean():.3f} mm, max {err.max():.3f} mm" if err is not None else ""
    print(f"rendered {cfg.mesh} ({', '.join(cfg.views)}) -> {cfg.out}{extra}")
