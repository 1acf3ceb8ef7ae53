"""`neuralmorph fit`: fit a trained model to a file — a registered mesh, a raw scan or a point cloud.

Mesh families (pca, regional) fit one head through the loop in `loop.py`. Implicit families fit one
subject's observations — a point cloud or mesh, a folder of them, or a depth-sequence folder — with
`neuralmorph.fitting.implicit` (one identity, one expression per observation) and write one mesh per
observation.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
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
from neuralmorph.fitting.implicit import ImplicitFitConfig, fit_depth_sequence, fit_point_clouds, observed_to_mesh_mm
from neuralmorph.data.observations import load_target
from neuralmorph.models.base import MorphableModel
from neuralmorph.models.latents import save_latents


@dataclass(frozen=True)
class FitCommand:
    """Fit a trained model to a registered mesh, a raw scan or a (partial) point cloud."""

    model: Path
    """Model folder (from `neuralmorph train`)."""
    target: Path
    """Mesh or point cloud to fit (.ply/.obj/.off/.stl, .xyz/.npy). Implicit models also take a folder of
    them (observations of one subject) or a depth-sequence folder (camera.json + depth images)."""
    out: Path
    """Output folder: fit.ply (in the target's coordinates), latents.json, metrics.json; implicit models
    write fit_000.ply ... (one per observation) and fit_000.latents.json ... instead of fit.ply."""
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
    """The fitting loop's weights and schedule (mesh families)."""
    implicit: ImplicitFitConfig = field(default_factory=ImplicitFitConfig)
    """Implicit families: code-fitting weights, schedules, alignment and meshing (docs/implicit_fitting.md)."""


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


def is_implicit(model: MorphableModel) -> bool:
    """Whether `model` is a signed-distance family (fitted by `neuralmorph.fitting.implicit`)."""
    return model.family.startswith("implicit")


def run_implicit_fit(cfg: FitCommand, model: MorphableModel) -> dict:
    """`fit` for implicit families: every observation of the target, one mesh each. Returns metrics.json's content."""
    start = time.perf_counter()
    if cfg.kind == "registered":
        raise InputError("--kind", "implicit models have no registered topology; use --kind points or auto")
    if cfg.landmarks is not None:
        raise InputError("--landmarks", "implicit models are aligned by ICP; use --implicit.align instead")
    target = load_target(cfg.target, cfg.units, mesh_points=cfg.n_points, seed=cfg.implicit.seed)
    if target.kind == "depth":
        result = fit_depth_sequence(model, target.frames, cfg.implicit, progress=True)
    else:
        result = fit_point_clouds(model, target.clouds, cfg.implicit, progress=True)
    observations = []
    for i, (name, cloud, mesh) in enumerate(zip(target.names, target.clouds, result.meshes)):
        d = observed_to_mesh_mm(cloud, mesh)
        observations.append({
            "name": name, "mesh": f"fit_{i:03d}.ply", "points": len(cloud),
            "observed_to_fit_mm": {"mean": float(d.mean()), "median": float(np.median(d)),
                                   "p95": float(np.percentile(d, 95)), "rms": float(np.sqrt((d**2).mean()))},
            "converged_fraction": result.converged_per_observation[i],
        })
    identity = result.latents["identity"]
    expressions = result.latents["expression"]
    pose = result.pose.as_dict()
    metrics = {
        "observations": observations,
        "fit": {"kind": f"implicit-{target.kind}", "family": model.family, "observations": len(observations),
                "seconds": time.perf_counter() - start, "fit_seconds": result.fit_seconds,
                "mesh_seconds": result.mesh_seconds, "converged_fraction": result.converged_fraction,
                "final_loss": result.history[-1] if result.history else None, "pose": pose,
                "config": asdict(cfg.implicit)},
    }
    with atomic_dir(cfg.out) as tmp:
        for i, mesh in enumerate(result.meshes):
            save_mesh(tmp / f"fit_{i:03d}.ply", mesh)
            # each observation's own pose: its head pose (config.head_pose) on top of the shared one
            save_latents(tmp / f"fit_{i:03d}.latents.json", model,
                         {"identity": identity, "expression": expressions[i:i + 1]},
                         pose=result.observation_poses[i].as_dict(), observation=target.names[i])
        # latents.json: the first observation as a standard latents file (what `sample`/`transfer` read),
        # plus every observation's expression code
        save_latents(tmp / "latents.json", model, {"identity": identity, "expression": expressions[:1]}, pose=pose,
                     fit_kind=f"implicit-{target.kind}",
                     observations=[{"name": n, "expression": e.tolist()}
                                   for n, e in zip(target.names, expressions.cpu())])
        write_json(tmp / "metrics.json", metrics)
    dists = [o["observed_to_fit_mm"]["mean"] for o in observations]
    print(f"fitted {len(observations)} observation(s) of {cfg.target} ({target.kind}): observed->fit mean "
          f"{np.mean(dists):.3f} mm, root finding converged {result.converged_fraction:.1%}, "
          f"in {time.perf_counter() - start:.1f} s -> {cfg.out}")
    return metrics


def run_fit(cfg: FitCommand) -> None:
    start = time.perf_counter()
    model = MorphableModel.load(cfg.model, device=cfg.device)
    if is_implicit(model):
        run_implicit_fit(cfg, model)
        return
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
