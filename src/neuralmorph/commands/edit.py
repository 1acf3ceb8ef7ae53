"""`neuralmorph edit`: local edits of a registered head, with a family that has local control (regional).

Either move a region's control vertices (a JSON file of millimetre displacements, one per control
vertex: `{"nose": [[0, 0, 4], ...]}`) or redraw one region from its fitted displacement prior
(`--resample-region nose`). The model's change is applied to the given head and faded to zero over a
blend band of `--blend-rings` rings of mesh edges around the edited region (soft region weight > 0), so
the edit leaves no crease at the region border; vertices outside region and band are written with the
target's coordinates exactly. An edit that moves nothing (a model whose control pathway, stage 2, is
untrained or too short) is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neuralmorph.atomic import output_files, read_json, write_json
from neuralmorph.errors import InputError
from neuralmorph.geometry.adjacency import k_ring, vertex_adjacency
from neuralmorph.geometry.mesh import Mesh, check_mesh_suffix, load_mesh, save_mesh
from neuralmorph.models.base import MorphableModel
from neuralmorph.models.regional.regions import BLEND_RINGS, check_blend_rings
from neuralmorph.outputs import Output, Verb

NO_EFFECT_MM = 1e-3
"""A region whose vertices move by at most this (mm) under a non-zero request was not edited at all ..."""
NO_EFFECT_FRACTION = 0.01
"""... nor one whose largest movement is at most this fraction of the largest displacement asked of it:
the control pathway has no effect (an untrained or barely trained stage 2), so the edit is refused."""


@dataclass(frozen=True)
class EditConfig(Verb):
    """Edit one region of a registered head: move its control vertices, or resample it from the prior."""

    model: Path
    """A regional model folder."""
    target: Path
    """The head to edit, a mesh in the model's topology (mm)."""
    out: Path
    """The edited mesh (.ply or .obj); the edit's record (displacements asked, movement per region) goes next to it as .json."""
    control: Path | None = None
    """JSON {region: [[dx, dy, dz], ...]} in mm, one row per control vertex of that region."""
    resample_region: str | None = None
    """Redraw this region from its displacement prior instead."""
    temperature: float = 1.0
    """Spread of the resampled displacements (finite, >= 0; 0: the prior's mean)."""
    seed: int = 0
    """Seed of the resampling."""
    blend_rings: int = BLEND_RINGS
    """Width, in rings of mesh edges, of the band around the edited region over which the edit fades to
    zero (0: the region only, which leaves a crease at the border of one-hot regions)."""
    device: str = "cpu"
    """Torch device."""

    def __post_init__(self):
        if (self.control is None) == (self.resample_region is None):
            raise InputError("--control/--resample-region", "give exactly one of them")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise InputError("--temperature", f"must be a finite number >= 0, got {self.temperature}")
        check_blend_rings(self.blend_rings, "--blend-rings")
        check_mesh_suffix("--out", self.out)

    def outputs(self) -> list[Output]:
        return [Output("--out", self.out, None), Output("--out (its record)", self.out.with_suffix(".json"), None)]


def _read_control(path: Path, model: MorphableModel) -> dict[str, torch.Tensor]:
    from neuralmorph.geometry.mesh import MAX_COORDINATE_MM

    def shape_of(value) -> str:  # what a value that should have been rows of 3 numbers is instead
        if not isinstance(value, list):
            return f"a {type(value).__name__}"
        bad = next((row for row in value if not isinstance(row, list) or len(row) != 3), None)
        if bad is not None:
            return f"a row {bad!r:.40}" if not isinstance(bad, list) else f"a row of {len(bad)} values"
        return "a value that is not a number"

    data = read_json(path)
    controls = model.control_vertices
    if not isinstance(data, dict) or not data:
        raise InputError(path, "expected {region: [[dx, dy, dz], ...]}")
    out = {}
    for region, rows in data.items():
        if region not in controls:
            raise InputError(path, f"unknown region {region!r}; regions with control vertices: {', '.join(controls)}")
        need = f"region {region!r} needs {len(controls[region])} rows of 3 finite numbers (mm)"
        # JSON numbers only: numpy would read "1.5" or true as numbers, and a ragged list as objects
        if not isinstance(rows, list) or not all(
                isinstance(row, list) and len(row) == 3
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in row) for row in rows):
            raise InputError(path, f"{need}, got {shape_of(rows)}")
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
        if len(arr) != len(controls[region]) or not np.isfinite(arr).all() \
                or np.abs(arr).max(initial=0.0) > MAX_COORDINATE_MM:
            big = np.isfinite(arr).all() and np.abs(arr).max(initial=0.0) > MAX_COORDINATE_MM
            raise InputError(path, f"{need}, got {len(arr)} rows" + ("" if np.isfinite(arr).all() else " with NaN or infinity")
                             + (f" reaching {np.abs(arr).max():.3g} mm" if big else ""))
        out[region] = torch.as_tensor(arr, dtype=torch.float32, device=model.device)
    return out


def _region_report(model: MorphableModel, target: np.ndarray, edited: np.ndarray,
                   control: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per edited region: the requested control displacements' size and how far its vertices (weight > 0)
    and its control vertices actually moved, in mm."""
    moved = np.linalg.norm(edited - target, axis=1)
    report = {}
    for name, delta in control.items():
        asked = np.linalg.norm(delta.detach().cpu().double().numpy(), axis=1)
        ids = model.regions[name]
        report[name] = {"requested_max_mm": float(asked.max()), "requested_mean_mm": float(asked.mean()),
                        "moved_max_mm": float(moved[ids].max()), "moved_mean_mm": float(moved[ids].mean()),
                        "moved_at_control_vertices_mean_mm": float(moved[model.control_vertices[name]].mean()),
                        "vertices": len(ids)}
    return report


def run_edit(cfg: EditConfig) -> None:
    model = MorphableModel.load(cfg.model, device=cfg.device)
    model.check_editable(str(cfg.model))
    target = load_mesh(cfg.target)
    if len(target.vertices) != model.n_vertices:
        raise InputError(cfg.target, f"has {len(target.vertices)} vertices, the model's topology {model.n_vertices}")
    if cfg.resample_region is not None:
        if cfg.resample_region not in model.control_vertices:
            raise InputError("--resample-region", f"unknown region {cfg.resample_region!r}; regions with control "
                                                  f"vertices: {', '.join(model.control_vertices)}")
        control = {cfg.resample_region: model.sample_control(cfg.resample_region, 1, cfg.temperature, cfg.seed)[0]}
        what, asked_where = f"resampled region {cfg.resample_region!r}", "--resample-region"
    else:
        control = _read_control(cfg.control, model)
        what, asked_where = f"moved control vertices from {cfg.control}", str(cfg.control)
    edited = model.edit(target.vertices, control, blend_rings=cfg.blend_rings).numpy()
    # the edit's promise, checked on the result: outside the edited regions (weight > 0) grown by the
    # blend band of --blend-rings rings of mesh edges, every vertex is the target's, bit for bit
    allowed = np.zeros(model.n_vertices, bool)
    allowed[np.concatenate([model.regions[name] for name in control])] = True
    allowed = k_ring(vertex_adjacency(model.faces.cpu().numpy(), model.n_vertices), allowed, cfg.blend_rings)
    if not np.array_equal(edited[~allowed], target.vertices[~allowed]):
        raise RuntimeError(f"{model.family} edit moved vertices outside the edited regions {sorted(control)} "
                           f"and their {cfg.blend_rings}-ring blend band")
    regions = _region_report(model, target.vertices, edited, control)
    if all(r["requested_max_mm"] == 0 for r in regions.values()):
        raise InputError(asked_where, "every requested control displacement is zero: the edit would change nothing")
    dead = {name: r for name, r in regions.items()
            if r["requested_max_mm"] > 0 and r["moved_max_mm"] <= max(NO_EFFECT_MM, NO_EFFECT_FRACTION * r["requested_max_mm"])}
    if dead:
        said = "; ".join(f"moving {name!r} by up to {r['requested_max_mm']:.3g} mm moves its vertices by at most "
                         f"{r['moved_max_mm']:.2g} mm" for name, r in dead.items())
        raise InputError(cfg.model, f"its control pathway has no effect ({said}): its stage 2 is untrained or too "
                                    f"short; train stage 2 from it for longer, e.g. neuralmorph train regional --data DATA "
                                    f"--out RUN --init {cfg.model} --model.stage 2 --max-steps 300 (or more), then edit with RUN/model")
    moved = np.linalg.norm(edited - target.vertices, axis=1)
    sidecar = {
        "edit": what, "model": str(cfg.model), "target": str(cfg.target),
        "resample": None if cfg.resample_region is None else
        {"region": cfg.resample_region, "seed": cfg.seed, "temperature": cfg.temperature},
        "control_vertices": {k: v.tolist() for k, v in model.control_vertices.items()},
        "requested_displacements_mm": {k: d.detach().cpu().double().numpy().tolist() for k, d in control.items()},
        "regions": regions,
        "blend_rings": cfg.blend_rings,
        "allowed_vertices": int(allowed.sum()),
        "allowed": f"vertices with a soft weight > 0 in an edited region, plus every vertex within {cfg.blend_rings} "
                   "mesh edges of one (the blend band, where the edit fades to zero); every other vertex equals "
                   "the target's exactly",
        "moved_vertices": int((moved > 0).sum()),
        "max_movement_mm": float(moved.max()),
    }
    with output_files(cfg.out, cfg.out.with_suffix(".json"), overwrite=cfg.overwrite) as (mesh_tmp, json_tmp):
        save_mesh(mesh_tmp, Mesh(edited, model.faces.cpu().numpy()))
        write_json(json_tmp, sidecar)
    said = ", ".join(f"{name} up to {r['moved_max_mm']:.2f} mm (mean {r['moved_mean_mm']:.2f} mm; asked up to "
                     f"{r['requested_max_mm']:.2f} mm)" for name, r in regions.items())
    print(f"{what}: {said}; {sidecar['moved_vertices']} of {sidecar['allowed_vertices']} movable vertices (with the "
          f"{cfg.blend_rings}-ring blend band) moved, the other {model.n_vertices - sidecar['allowed_vertices']} "
          f"are the target's exactly -> {cfg.out}")
