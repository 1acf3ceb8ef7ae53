"""`neuralmorph edit`: local edits of a registered head, with a family that has local control (regional).

Either move a region's control vertices (a JSON file of millimetre displacements, one per control
vertex: `{"nose": [[0, 0, 4], ...]}`) or redraw one region from its fitted displacement prior
(`--resample-region nose`). Everything outside the edited region stays put.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neuralmorph.atomic import read_json, write_json
from neuralmorph.errors import InputError
from neuralmorph.geometry.mesh import Mesh, load_mesh, save_mesh
from neuralmorph.models.base import MorphableModel


@dataclass(frozen=True)
class EditConfig:
    """Edit one region of a registered head: move its control vertices, or resample it from the prior."""

    model: Path
    """A regional model folder."""
    target: Path
    """The head to edit, a mesh in the model's topology (mm)."""
    out: Path
    """The edited mesh (.ply or .obj); the control vertices used go next to it as .json."""
    control: Path | None = None
    """JSON {region: [[dx, dy, dz], ...]} in mm, one row per control vertex of that region."""
    resample_region: str | None = None
    """Redraw this region from its displacement prior instead."""
    temperature: float = 1.0
    """Spread of the resampled displacements."""
    seed: int = 0
    """Seed of the resampling."""
    device: str = "cpu"
    """Torch device."""

    def __post_init__(self):
        if (self.control is None) == (self.resample_region is None):
            raise InputError("--control/--resample-region", "give exactly one of them")


def _read_control(path: Path, model: MorphableModel) -> dict[str, torch.Tensor]:
    data = read_json(path)
    controls = model.control_vertices
    if not isinstance(data, dict) or not data:
        raise InputError(path, "expected {region: [[dx, dy, dz], ...]}")
    out = {}
    for region, rows in data.items():
        if region not in controls:
            raise InputError(path, f"unknown region {region!r}; regions with control vertices: {', '.join(controls)}")
        arr = np.asarray(rows, dtype=np.float64)
        if arr.shape != (len(controls[region]), 3) or not np.isfinite(arr).all():
            raise InputError(path, f"region {region!r} needs {len(controls[region])} rows of 3 finite numbers (mm)")
        out[region] = torch.as_tensor(arr, dtype=torch.float32, device=model.device)
    return out


def run_edit(cfg: EditConfig) -> None:
    model = MorphableModel.load(cfg.model, device=cfg.device)
    model.check_editable(str(cfg.model))
    target = load_mesh(cfg.target)
    if len(target.vertices) != model.n_vertices:
        raise InputError(cfg.target, f"has {len(target.vertices)} vertices, the model's topology {model.n_vertices}")
    with torch.no_grad():
        unedited = model.edit(target.vertices, {}).double().cpu().numpy()  # no displacements: the reconstruction
        if cfg.resample_region is not None:
            edited = model.resample_region(target.vertices, cfg.resample_region, seed=cfg.seed, temperature=cfg.temperature)
            what = f"resampled region {cfg.resample_region!r}"
        else:
            edited = model.edit(target.vertices, _read_control(cfg.control, model))
            what = f"moved control vertices from {cfg.control}"
    edited = torch.as_tensor(edited).double().cpu().numpy()
    save_mesh(cfg.out, Mesh(edited, model.faces.cpu().numpy()))
    write_json(Path(cfg.out).with_suffix(".json"),
               {"control_vertices": {k: v.tolist() for k, v in model.control_vertices.items()}, "edit": what})
    moved = np.linalg.norm(edited - unedited, axis=1)
    recon = np.linalg.norm(unedited - target.vertices, axis=1).mean()
    print(f"{what}: the edit moves vertices by up to {moved.max():.2f} mm (the model reproduces the unedited head "
          f"to {recon:.2f} mm on average) -> {cfg.out}")
