"""`neuralmorph fit`: fit a trained model to a file — a registered mesh, a raw scan or a point cloud —
or to a folder of observations of one subject (clouds, or a depth sequence), through
`fitting.fit_observation`; an appearance model also to a photo or a transforms.json of posed photos
(`commands.fit_image`, which `run_fit` hands such targets to). One file gives fit.ply; a folder one
fit_NNN.ply per observation. The metrics are computed here: the evaluation protocol against a target
mesh, or the observed points' distance to their fitted mesh. The line it prints gives completeness
(target->fit), accuracy (fit->target) and their mean, the chamfer-L1, against a target mesh; against a
point cloud only the one-sided target->fit distance (the rest of the fitted head has nothing observed
to be near). Before fitting it warns (one stderr line) when the model's training record says it may never have learned
(`warn_if_untrained`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from neuralmorph.atomic import atomic_dir, write_json
from neuralmorph.commands.fit_image import is_image_target, refuse_image_flags, run_fit_image
from neuralmorph.data.observations import Observation, load_target
from neuralmorph.errors import InputError
from neuralmorph.evaluation.protocol import Protocol, evaluate
from neuralmorph.fitting import FitConfig, FitResult, fit_observation
from neuralmorph.fitting.image import ImageFitConfig
from neuralmorph.fitting.implicit import ImplicitFitConfig
from neuralmorph.geometry.distance import distance_to_mesh
from neuralmorph.geometry.mesh import Mesh, check_cloud, load_landmarks, load_mesh, save_mesh
from neuralmorph.geometry.sampling import sample_surface
from neuralmorph.models.base import MorphableModel
from neuralmorph.models.latents import save_latents
from neuralmorph.outputs import Verb
from neuralmorph.prior.latent import load_prior


@dataclass(frozen=True)
class FitCommand(Verb):
    """Fit a trained model to a registered mesh, a raw scan or a (partial) point cloud."""

    out_kind = "fit"

    model: Path
    """Model folder (from `neuralmorph train`)."""
    target: Path
    """Mesh or point cloud to fit (.ply/.obj/.off/.stl, .xyz/.npy). Implicit models also take a folder of
    them (observations of one subject) or a depth-sequence folder (camera.json + depth images). Appearance
    models also take a photo (.png/.jpg/...; with --camera or --landmarks2d) or a nerfstudio
    transforms.json (or its folder) of posed photos of one head, all its frames fitted together (cameras
    from the file, masks where its frames list mask_path). Greyscale photos are repeated over the channels;
    a photo with transparency (RGBA) is composited over black and its alpha is the mask unless --mask (or
    the frame's mask_path) gives one."""
    out: Path
    """Output folder: for one target file fit.ply (in the target's coordinates), latents.json and
    metrics.json; for a folder of observations or a depth sequence fit_000.ply, fit_000.latents.json, ...
    (one per observation), latents.json and metrics.json. For image targets: fit.ply (the fitted mesh, mm,
    model frame), gaussians.ply (3D Gaussian splats), latents.json (the codes; the refinement's
    per-Gaussian residuals are in gaussians.ply only), input_render.png (each input beside the fit seen by
    its camera), turntable.png (8 views, yaw -90..90 degrees) and metrics.json (PSNR and SSIM per input
    view, whole and inside the mask; seconds; the fit's config; where the camera came from)."""
    kind: Literal["auto", "registered", "points"] = "auto"
    """registered: the target shares the model's topology (exact closed form); points: fit the surface
    to the target's points; auto: registered when vertex count and triangles match."""
    landmarks: Path | None = None
    """Target landmarks (L rows of x y z, in the model's landmark order) for the initial alignment."""
    units: Literal["mm", "cm", "dm", "m"] = "mm"
    """Units of the target file (for --camera and a transforms.json: of their camera positions, unless the
    file has its own "units" key)."""
    n_points: int = 10_000
    """Points drawn from a target mesh's surface for a points fit (point clouds are used as given)."""
    landmark_weight: float = 0.1
    """Weight of the landmark term in a points fit (when --landmarks is given)."""
    device: str = "cpu"
    """Torch device to load the model on and fit with: cpu, cuda, cuda:1, mps."""
    fit: FitConfig = field(default_factory=FitConfig)
    """The fitting loop's weights and schedule (mesh families)."""
    implicit: ImplicitFitConfig = field(default_factory=ImplicitFitConfig)
    """Implicit families: code-fitting weights, schedules, alignment and meshing (docs/implicit_fitting.md)."""
    camera: Path | None = None
    """Image targets: the photo's camera, a JSON object in nerfstudio's keys: fl_x, fl_y (focal lengths,
    pixels), cx, cy (principal point, pixel centres at +0.5 as nerfstudio has them), w, h (the photo's size
    in pixels) and transform_matrix (4x4 camera-to-world, OpenGL axes: x right, y up, looking down -z), its
    translation in the model's millimetres, or in the unit of an optional "units" key (mm, cm, dm, m). Lens
    distortion must be zero. Without it --landmarks2d gives the camera."""
    mask: Path | None = None
    """Image targets: the photo's mask (a greyscale image of the same size; 0 = background, ignored)."""
    landmarks2d: Path | None = None
    """Image targets: the face's 2D landmarks, a text file of L rows `u v` (pixels, column then row, pixel
    centres at integers), in the model's landmark order (68 in iBUG order on the embedded head); `nan nan`
    for one not seen. Used as the fit's landmark term; without --camera the camera is solved from them
    (perspective-n-point against the model's mean head: unknown focal, centred principal point)."""
    image_fit: ImageFitConfig = field(default_factory=ImageFitConfig)
    """Image targets: the image fit's steps, weights and learning rates (`fitting.image`)."""
    prior: Path | None = None
    """A diffusion prior trained for this model (`train prior`: its run folder or out/prior), whose
    denoising energy replaces the Gaussian prior energy of a mesh fit (`--fit.prior`, `--fit.diffusion-weight`)."""


def load_observation(cfg: FitCommand, model: MorphableModel) -> tuple[Observation, Mesh | None]:
    """The fit's target as an observation of the kind the flags and the file call for, and the target
    file's mesh (or cloud) when the target is one file (None for a folder)."""
    landmarks = load_landmarks(cfg.landmarks, cfg.units) if cfg.landmarks else None
    path = Path(cfg.target)
    if path.is_dir():
        if cfg.kind == "registered":
            raise InputError("--kind", f"{cfg.target} is a folder; a registered fit takes one mesh")
        target = load_target(path, cfg.units, mesh_points=cfg.n_points, seed=cfg.implicit.seed)
        return Observation(target.kind, target.names, target.clouds, target.frames, landmarks), None
    mesh = load_mesh(path, units=cfg.units, allow_points=True)
    registered = (not mesh.is_point_cloud and "registered" in model.fits and len(mesh.vertices) == model.n_vertices
                  and np.array_equal(mesh.faces, model.faces.cpu().numpy()))
    if cfg.kind == "registered" and not registered:
        model.require_fit("registered", "--kind")
        raise InputError(path, f"is not in the model's topology ({len(mesh.vertices)} vertices); use --kind points")
    check_cloud(path, mesh.vertices, "vertices" if not mesh.is_point_cloud else "points")
    if cfg.kind == "registered" or (cfg.kind == "auto" and registered):
        return Observation("registered", (path.name,), (mesh.vertices,), landmarks=landmarks), mesh
    if not mesh.is_point_cloud and not mesh.area > 0:
        raise InputError(path, "the mesh has zero surface area; nothing to sample")
    points = mesh.vertices if mesh.is_point_cloud else \
        sample_surface(mesh.vertices, mesh.faces, cfg.n_points, cfg.implicit.seed)[0]
    return Observation("points", (path.name,), (points,), landmarks=landmarks), mesh


def observation_metrics(observation: Observation, result: FitResult, target: Mesh | None) -> dict:
    """The evaluation protocol's metrics of the fit against the target mesh (single observations), or
    per observation the one-sided distance of its points to its fitted mesh (mm)."""
    if target is not None:
        return evaluate(result.meshes[0], target, Protocol(kind="points", n_points=100_000),
                        names=("the fitted head", str(observation.names[0]), "regions"))
    rows = []
    for i, (name, cloud, mesh) in enumerate(zip(observation.names, observation.clouds, result.meshes)):
        d = distance_to_mesh(cloud, mesh.vertices, mesh.faces)
        rows.append({"name": name, "mesh": f"fit_{i:03d}.ply", "points": len(cloud),
                     "observed_to_fit_mm": {"mean": float(d.mean()), "median": float(np.median(d)),
                                            "p95": float(np.percentile(d, 95)), "rms": float(np.sqrt((d**2).mean()))},
                     **result.observation_diagnostics(i)})
    return {"observations": rows}


def warn_if_untrained(model: MorphableModel, where: Path) -> None:
    """One stderr line when the model's training record says it may never have learned: no record, an
    absurd one, a run that stopped inside its learning-rate warm-up, or a held-out error no better than
    the mean head's (the criterion: `MorphableModel.training_concerns`). A warning, not an error: the fit
    still runs, since a deliberately tiny model is a legitimate thing to fit."""
    concerns = model.training_concerns()
    if concerns:
        print(f"neuralmorph: warning: {where}: the model may not have learned: {'; '.join(concerns)}", file=sys.stderr)


def run_fit(cfg: FitCommand) -> dict:
    start = time.perf_counter()
    model = MorphableModel.load(cfg.model, device=cfg.device)
    if is_image_target(cfg.target):
        return run_fit_image(cfg, model, warn_if_untrained)
    refuse_image_flags(cfg)
    observation, target = load_observation(cfg, model)  # target: the file's mesh; None for a folder
    warn_if_untrained(model, cfg.model)
    prior = cfg.fit.latent_prior(model, load_prior(model, cfg.prior) if cfg.prior is not None else None)
    result = fit_observation(model, observation, cfg.fit, cfg.implicit, cfg.landmark_weight, progress=True, prior=prior)
    single = target is not None  # one file, one fitted head: fit.ply; a folder: one per observation
    metrics = observation_metrics(observation, result, target)
    fit_info = {"kind": observation.kind, "family": model.family, "observations": len(result.meshes), "prior": prior.kind,
                "seconds": time.perf_counter() - start, "pose": result.pose.as_dict(),
                "config": asdict(cfg.fit) if model.geometry == "mesh" else asdict(cfg.implicit),
                **result.diagnostics()}
    with atomic_dir(cfg.out, "fit", cfg.overwrite) as tmp:
        if single:
            save_mesh(tmp / "fit.ply", result.meshes[0])
            save_latents(tmp / "latents.json", model, result.latents, pose=result.pose.as_dict(), fit_kind=observation.kind)
        else:
            per_obs = [result.latents_of(i) for i in range(len(result.meshes))]
            for i, mesh in enumerate(result.meshes):
                save_mesh(tmp / f"fit_{i:03d}.ply", mesh)
                # each observation's own pose (its head pose, if fitted, on top of the shared one)
                save_latents(tmp / f"fit_{i:03d}.latents.json", model, per_obs[i],
                             pose=result.observation_poses[i].as_dict(), observation=observation.names[i])
            # latents.json: the first observation as a standard latents file (what `sample`/`transfer` read),
            # plus every observation's own codes
            save_latents(tmp / "latents.json", model, per_obs[0], pose=result.pose.as_dict(), fit_kind=observation.kind,
                         observations=[{"name": n, **{k: v[0].tolist() for k, v in lat.items()}}
                                       for n, lat in zip(observation.names, per_obs)])
        write_json(tmp / "metrics.json", {**metrics, "fit": fit_info})
    if target is not None:
        m = metrics["metrics"]
        extra = f", vertex error {m['vertex_error_mm']:.3f} mm" if "vertex_error_mm" in m else ""
        if target.is_point_cloud:  # a (partial) cloud: the fit's unobserved surface has nothing to be near
            scores = f"target->fit {m['completeness_mm']:.3f} mm"
        else:
            scores = (f"completeness (target->fit) {m['completeness_mm']:.3f} mm, accuracy (fit->target) "
                      f"{m['accuracy_mm']:.3f} mm, chamfer-L1 {m['chamfer_l1_mm']:.3f} mm")
        print(f"fitted {cfg.target} ({observation.kind}): {scores}{extra} "
              f"in {time.perf_counter() - start:.1f} s -> {cfg.out}")
    else:
        dists = [o["observed_to_fit_mm"]["mean"] for o in metrics["observations"]]
        print(f"fitted {len(dists)} observation(s) of {cfg.target} ({observation.kind}): observed->fit mean "
              f"{np.mean(dists):.3f} mm in {time.perf_counter() - start:.1f} s -> {cfg.out}")
    return metrics
