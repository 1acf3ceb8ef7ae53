"""`neuralmorph data observe`: single-view observations of any mesh, written as what `neuralmorph fit
--target DIR` reads: a folder of partial point clouds (cloud_000.ply, ...) or a depth sequence
(camera.json + depth_000.npy, ...), plus views.json recording every camera. The drawing is
`neuralmorph.data.observe`'s (NPHM's single-view protocol); the depth format is `data.observations`'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from neuralmorph.errors import InputError
from neuralmorph.outputs import Verb

VIEWS_FILE = "views.json"
VIEWS_FORMAT = "neuralmorph.views/1"
DEFAULT_N_POINTS = 2500
"""Points per cloud when --n-points is not given: NPHM's single-view test protocol."""


@dataclass(frozen=True)
class ObserveConfig(Verb):
    """Make single-view observations of a mesh: partial point clouds or a depth sequence for `fit --target`."""

    out_kind = "observations"

    mesh: Path
    """Mesh to observe (.ply/.obj/.off/.stl, with faces wound outward). Random views assume the canonical
    orientation (+y up, +z where the face looks); give --camera-direction for meshes in other frames."""
    out: Path
    """Output folder: cloud_000.ply ... (--kind points) or camera.json + depth_000.npy ... (--kind depth),
    plus views.json with every camera."""
    kind: Literal["points", "depth"] = "points"
    """points: one partial point cloud per view (a folder `fit` reads as observations of one subject);
    depth: one depth image per view (a depth sequence, for families that fit depth)."""
    views: int | None = None
    """Number of views; default one per --camera-direction, else 1."""
    n_points: int | None = None
    """Points drawn per cloud, with replacement, from what the view sees (--kind points only; default 2500)."""
    seed: int = 0
    """Random seed: the random directions and the drawn points; the same seed gives the same files."""
    camera_direction: tuple[float, ...] = ()
    """Directions from the head toward the cameras, as x y z triples (e.g. 0 0 1 for frontal): one triple for
    every view, or one per view. Default: random near-frontal directions, all different up to 20 views."""
    distance_mm: float = 650.0
    """Camera distance from the mesh's bounding-box centre, in mm."""
    image_size: int = 320
    """Width and height of each view in pixels (focal length 1.5 x this: NPHM's field of view)."""
    depth_format: Literal["npy", "png"] = "npy"
    """--kind depth: float32 .npy (exact), or 16-bit PNG in whole millimetres."""
    units: Literal["mm", "cm", "dm", "m"] = "mm"
    """Units of the mesh file (outputs are in mm)."""

    def __post_init__(self):
        if self.views is not None and not 1 <= self.views <= 1000:
            raise InputError("--views", f"must be between 1 and 1000, got {self.views}")
        if self.n_points is not None:
            if self.kind != "points":
                raise InputError("--n-points", "applies to --kind points; a depth image keeps every pixel that sees "
                                               "the head (set its resolution with --image-size)")
            if not 1 <= self.n_points <= 10_000_000:
                raise InputError("--n-points", f"must be between 1 and 10000000, got {self.n_points}")
        if self.depth_format != "npy" and self.kind != "depth":
            raise InputError("--depth-format", "applies to --kind depth only")
        dirs = self.camera_direction
        if len(dirs) % 3:
            raise InputError("--camera-direction", f"needs x y z triples, got {len(dirs)} numbers")
        d = np.asarray(dirs, np.float64).reshape(-1, 3)
        if not np.isfinite(d).all() or (len(d) and not (np.linalg.norm(d, axis=1) > 0).all()):
            raise InputError("--camera-direction", "every direction must be finite and non-zero")
        if self.views is not None and len(d) not in (0, 1, self.views):
            raise InputError("--camera-direction", f"gives {len(d)} directions for --views {self.views}; give one "
                                                   "(used for every view) or one per view")
        if not (np.isfinite(self.distance_mm) and self.distance_mm > 0):
            raise InputError("--distance-mm", f"must be positive, got {self.distance_mm}")
        if not 16 <= self.image_size <= 4096:
            raise InputError("--image-size", f"must be between 16 and 4096 pixels, got {self.image_size}")

    def directions(self, rng: np.random.Generator) -> np.ndarray:
        """(V, 3) float64 directions of the views: the given ones (repeated when one is given for several
        views), else random near-frontal ones drawn from `rng`."""
        from neuralmorph.data.observe import random_near_frontal

        given = np.asarray(self.camera_direction, np.float64).reshape(-1, 3)
        n = self.views if self.views is not None else max(len(given), 1)
        if len(given) == 0:
            return random_near_frontal(n, rng)
        return np.repeat(given, n, axis=0) if len(given) == 1 else given


def run_observe(cfg: ObserveConfig) -> list[Path]:
    """`neuralmorph data observe`: load the mesh, cast the views, write the clouds or the depth sequence
    and views.json atomically (the CLI has checked --out before: `outputs.claim`). Returns the observation
    files written (in the final folder)."""
    from neuralmorph.atomic import atomic_dir, write_json
    from neuralmorph.data.observations import write_depth_sequence
    from neuralmorph.data.observe import observe_depth, observe_points
    from neuralmorph.geometry.mesh import Mesh, load_mesh, save_mesh

    mesh = load_mesh(cfg.mesh, units=cfg.units)
    if not mesh.area > 0:
        raise InputError(cfg.mesh, "every triangle has zero area; there is no surface to observe")
    rng = np.random.default_rng(cfg.seed)
    directions = cfg.directions(rng)
    n_points = cfg.n_points if cfg.n_points is not None else DEFAULT_N_POINTS
    if cfg.kind == "points":
        observed = observe_points(mesh.vertices, mesh.faces, directions, rng, n_points, cfg.distance_mm,
                                  cfg.image_size, where=str(cfg.mesh))
        names = [f"cloud_{i:03d}.ply" for i in range(len(observed))]
    else:
        observed = observe_depth(mesh.vertices, mesh.faces, directions, cfg.distance_mm, cfg.image_size,
                                 where=str(cfg.mesh))
        names = [f"depth_{i:03d}.{cfg.depth_format}" for i in range(len(observed))]
    views = [{"name": name, **view.as_dict()} for name, (_, view) in zip(names, observed)]
    record = {"format": VIEWS_FORMAT, "mesh": str(cfg.mesh), "kind": cfg.kind, "units": "mm", "seed": cfg.seed,
              "distance_mm": cfg.distance_mm, "image_size": cfg.image_size,
              "n_points": n_points if cfg.kind == "points" else None, "views": views}
    with atomic_dir(cfg.out, cfg.out_kind, overwrite=cfg.overwrite) as tmp:
        if cfg.kind == "points":
            for name, (points, _) in zip(names, observed):
                save_mesh(tmp / name, Mesh(points, np.zeros((0, 3), np.int64)))
        else:
            write_depth_sequence(tmp, [frame for frame, _ in observed], png=cfg.depth_format == "png")
        write_json(tmp / VIEWS_FILE, record)
    seen = ", ".join(str(v["visible_pixels"]) for v in views)
    what = f"{n_points} points each" if cfg.kind == "points" else f"{cfg.image_size}x{cfg.image_size} depth images"
    print(f"observed {cfg.mesh} from {len(views)} view(s) ({cfg.kind}, {what}; front-facing pixels seen: {seen}) "
          f"-> {cfg.out}")
    return [cfg.out / name for name in names]
