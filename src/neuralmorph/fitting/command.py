"""`neuralmorph fit`: fit a trained model to a file — a registered mesh, a raw scan or a point cloud."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from neuralmorph.atomic import atomic_dir, write_json
from neuralmorph.errors import InputError
from neuralmorph.evaluation.protocol import Protocol, evaluate
from neuralmorph.fitting.loop import FitConfig, FitResult, fit, fit_registered, initial_pose
from neuralmorph.fitting.terms import LandmarkTerm, PointToSurfaceTerm
from neuralmorph.frame import Similarity
from neuralmorph.geometry.mesh import Mesh, load_mesh, load_points, save_mesh
from neuralmorph.geometry.sampling import sample_surface
from neuralmorph.models.base import MorphableModel
from neuralmorph.models.latents import save_latents


@dataclass(frozen=True)
class FitCommand:
    """Fit a trained model to a registered mesh, a raw scan or a (partial) point cloud."""

    model: Path
    """Model folder (from `neuralmorph train`)."""
    target: Path
    """Mesh or point cloud to fit (.ply/.obj/.off/.stl, .xyz/.npy)."""
    out: Path
    """Output folder: fit.ply (in the target's coordinates), latents.json, metrics.json."""
    kind: Literal["auto", "registered", "points"] = "auto"
    """registered: the target shares the model's topology (exact closed form); points: fit the surface
    to the target's points; auto: registered when vertex count and triangles match."""
    landmarks: Path | None = None
    """Target landmarks (L rows of x y z, in the model's landmark order) for the initial alignment."""
    units: Literal["mm", "cm", "dm", "m"] = "mm"
    """Units of the target file."""
    n_points: int = 10_000
    """Points drawn from a target mesh's surface for a points fit (point clouds are used as given)."""
    landmark_weight: float = 0.1
    """Weight of the landmark term in a points fit (when --landmarks is given)."""
    device: str = "cpu"
    """Torch device, e.g. cuda."""
    fit: FitConfig = field(default_factory=FitConfig)
    """The fitting loop's weights and schedule."""


def fit_target(model: MorphableModel, target: Mesh, kind: str = "auto", landmarks: np.ndarray | None = None,
               n_points: int = 10_000, landmark_weight: float = 0.1, config: FitConfig = FitConfig(),
               seed: int = 0, progress: bool = False) -> tuple[FitResult, str]:
    """Fit `model` to `target` (mm); returns the result and the kind of fit that ran."""
    registered = (not target.is_point_cloud and len(target.vertices) == model.n_vertices
                  and np.array_equal(target.faces, model.faces.cpu().numpy()))
    if kind == "registered" and not registered:
        raise InputError("target", f"is not in the model's topology ({len(target.vertices)} vertices); use --kind points")
    if kind == "registered" or (kind == "auto" and registered):
        if hasattr(model, "project_rigid"):  # linear families: exact closed form
            return fit_registered(model, target.vertices), "registered"
        # autoencoders: encode, then refine the latents against every vertex
        latents = model.refine(target.vertices, steps=config.steps, lr=config.lr)
        with torch.no_grad():
            fitted = model.decode(latents)[0].double().cpu().numpy()
        return FitResult(latents, Similarity(), fitted, []), "registered"
    if target.is_point_cloud:
        points = target.vertices
    else:
        points, _, _ = sample_surface(target.vertices, target.faces, n_points, seed)
    pose = initial_pose(model, landmarks=landmarks, points=None if landmarks is not None else points)
    terms = [PointToSurfaceTerm(torch.tensor(points, dtype=torch.float32, device=model.device), model.faces)]
    if landmarks is not None:
        terms.append(LandmarkTerm(model.landmark_ids, torch.as_tensor(landmarks, dtype=torch.float32, device=model.device),
                                  weight=landmark_weight))
    return fit(model, terms, config, init_pose=pose, progress=progress), "points"


def run_fit(cfg: FitCommand) -> None:
    start = time.perf_counter()
    model = MorphableModel.load(cfg.model, device=cfg.device)
    target = load_mesh(cfg.target, units=cfg.units, allow_points=True)
    landmarks = load_points(cfg.landmarks, cfg.units)[0] if cfg.landmarks else None
    result, kind = fit_target(model, target, cfg.kind, landmarks, cfg.n_points, cfg.landmark_weight, cfg.fit,
                              progress=True)
    fitted = Mesh(result.vertices, model.faces.cpu().numpy())
    metrics = evaluate(fitted, target, Protocol(kind="points", n_points=100_000))
    with atomic_dir(cfg.out) as tmp:
        save_mesh(tmp / "fit.ply", fitted)
        save_latents(tmp / "latents.json", model, result.latents, pose=result.pose.as_dict(), fit_kind=kind)
        write_json(tmp / "metrics.json", {**metrics, "fit": {"kind": kind, "seconds": time.perf_counter() - start,
                                                              "config": cfg.fit.__dict__}})
    m = metrics["metrics"]
    extra = f", vertex error {m['vertex_error_mm']:.3f} mm" if "vertex_error_mm" in m else ""
    print(f"fitted {cfg.target} ({kind}): target->fit {m['completeness_mm']:.3f} mm{extra} "
          f"in {time.perf_counter() - start:.1f} s -> {cfg.out}")
