"""Fit a trained model to public real data (SIMPOP faces, the james scan) and score it honestly.

Per target: (1) rigid landmark alignment, Umeyama without scale (the data are in mm), from the model's
landmark vertices on its mean head to the target's landmarks, on the iBUG points both have; (2) the
point-cloud fit of the fitting loop (point-to-surface on `n_points` points drawn from the target's
surface, plus a landmark term); (3) the evaluation protocol on the part of each surface the other one
covers.

The surfaces do not cover the same thing: the model is a whole head cut at the neck; SIMPOP is a face
mask; james is head, hair and shoulders. Scoring whole surfaces would measure the mismatch, not the fit,
so each surface is cropped to the other's extent before the protocol runs (`crop_to_extent`, `CROP_RULE`):

* the fit keeps a face when the closest point of the target to its centroid is not on the target's open
  boundary (the back of the head projects onto the rim of a face mask, so it goes); against a face mask
  it also keeps only the model's "face" region: the top of the skull lies along the forehead's normals,
  so the boundary test alone would keep it; against a head scan it keeps the head without the model's
  "neck" region (the model's neck and chest run on past the scan's ragged lower edge);
* the target then keeps a face when its closest point on that cropped fit is not on the cropped fit's
  boundary and it lies above the fit's neck plane (the plane of its neck-cut loop): the model has no
  surface below it. The same plane, on the landmark-aligned mean head, limits the points the fit sees,
  so shoulders never pull the neck.

Hair is not cropped: james's hair counts against the bald model, and `accuracy_mm` / precision there
say so. Every choice is written to the "protocol" block of the result.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from tqdm import tqdm

from neuralmorph.atomic import atomic_dir, check_output_dir, write_json
from neuralmorph.data.head_model import FACE_REGIONS
from neuralmorph.errors import InputError
from neuralmorph.evaluation.protocol import Protocol, evaluate
from neuralmorph.fitting import FitConfig, FitResult, fit, initial_pose
from neuralmorph.fitting.terms import LandmarkTerm, PointToSurfaceTerm
from neuralmorph.frame import umeyama
from neuralmorph.geometry.boundary import boundary_edges, neck_plane, on_boundary  # noqa: F401 (re-exported)
from neuralmorph.geometry.mesh import Mesh
from neuralmorph.geometry.sampling import sample_surface
from neuralmorph.models.base import MorphableModel

JAW_CONTOUR = tuple(i for i in range(17) if i != 8)
"""iBUG 0-16 less the chin: silhouette points of a 2D outline, with no fixed place on a 3D surface."""

LANDMARK_KEY = "landmark_error_mm"
WHOLE_KEY = "target_to_whole_fit_mm"


@dataclass(frozen=True)
class RealTarget:
    """One real surface to fit, in millimetres, with its iBUG landmarks."""

    name: str
    mesh: Mesh
    """The target surface (mm, its own pose)."""
    landmarks: np.ndarray
    """(L, 3) float64 landmark positions, mm."""
    landmark_index: np.ndarray
    """(L,) int64: which of the 68 iBUG points each landmark is."""
    kind: str = "scan"
    """What the surface covers, for the report ("face mask", "head scan")."""
    region: str | None = None
    """Model region the fit is cropped to before scoring ("face" for a face mask), None for the whole head."""


@dataclass(frozen=True)
class RealSettings:
    """Everything that decides the numbers, recorded in the output's protocol block."""

    n_points: int = 10_000
    """Points drawn from each target surface for the fit."""
    landmark_weight: float = 0.1
    """Weight of the landmark term in the fit."""
    exclude_jaw_contour: bool = True
    """Leave out iBUG 0-7 and 9-16 (2D silhouette points) from alignment, fit and landmark error."""
    fit: FitConfig = field(default_factory=FitConfig)
    """The fitting loop's weights and schedule."""
    protocol: Protocol = field(default_factory=lambda: Protocol(kind="render", n_points=100_000))
    """The evaluation protocol run on the cropped pair."""
    seed: int = 0
    """Seed of the fit's point draw."""

    def as_dict(self) -> dict:
        return {"n_points": self.n_points, "landmark_weight": self.landmark_weight,
                "exclude_jaw_contour": self.exclude_jaw_contour, "fit": asdict(self.fit),
                "evaluation": self.protocol.as_dict(), "seed": self.seed}


@dataclass
class TargetFit:
    """The outcome for one target: its record for metrics.json and what the report draws."""

    record: dict
    target: RealTarget
    result: FitResult
    model_faces: np.ndarray
    target_kept: np.ndarray
    """(F_target,) bool: target faces inside the evaluated crop."""
    fit_kept: np.ndarray
    """(F_model,) bool: fit faces inside the evaluated crop."""


# ------------------------------------------------------------------------------------------ geometry


def above_plane(points: np.ndarray, plane: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """(P,) bool: points on the head side of `plane` (all True without a plane)."""
    if plane is None:
        return np.ones(len(points), bool)
    return (np.asarray(points) - plane[0]) @ plane[1] >= 0.0


def crop_to_extent(mesh: Mesh, other: Mesh, plane: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(F,) bool: faces of `mesh` whose centroid lies within `other`'s extent (see the module docstring).

    A face is kept when the closest point of `other` to its centroid is not on `other`'s open boundary
    and, with a plane, the centroid is on the plane's positive side.
    """
    centroids = mesh.vertices[mesh.faces].mean(axis=1)
    rim, _ = on_boundary(centroids, other.vertices, other.faces)
    return ~rim & above_plane(centroids, plane)


def _submesh(mesh: Mesh, keep: np.ndarray, name: str) -> Mesh:
    if not keep.any():
        raise InputError(name, "nothing of the surface is left after cropping to the other surface's extent; "
                               "the alignment is probably wrong")
    faces = mesh.faces[keep]
    used, inverse = np.unique(faces, return_inverse=True)
    return Mesh(mesh.vertices[used], inverse.reshape(-1, 3))


def _area_fraction(mesh: Mesh, keep: np.ndarray) -> float:
    return float(mesh.face_areas[keep].sum() / max(mesh.area, 1e-300))


# ------------------------------------------------------------------------------------------ one target


def region_faces(model: MorphableModel, region: str) -> np.ndarray:
    """(F,) bool: model faces with all three vertices in `region` ("face": the model's face group, else
    the union of the embedded head's face regions: forehead, eyes, nose, mouth, cheeks, chin; "head":
    everything but the "neck" region)."""
    regions = model.regions
    if region == "head" and "neck" in regions and "head" not in regions:
        neck = np.zeros(model.n_vertices, bool)
        neck[regions["neck"]] = True
        return ~neck[model.faces.cpu().numpy()].any(axis=1)
    if region in regions:
        ids = regions[region]
    elif region == "face" and any(r in regions for r in FACE_REGIONS):
        ids = np.unique(np.concatenate([regions[r] for r in FACE_REGIONS if r in regions]))
    else:
        raise InputError("model", f"has no region {region!r} (regions: {', '.join(regions) or 'none'})")
    mask = np.zeros(model.n_vertices, bool)
    mask[ids] = True
    return mask[model.faces.cpu().numpy()].all(axis=1)


def shared_landmarks(model: MorphableModel, landmark_index: np.ndarray,
                     exclude_jaw_contour: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The iBUG points both the model and a target have.

    landmark_index: (L,) the target's iBUG numbers. Returns rows into the target's landmarks (K,),
    the model's vertex ids for them (K,) and their iBUG numbers (K,), all int64.
    """
    model_ids = model.landmark_ids.cpu().numpy()
    if len(model_ids) != 68:
        raise InputError("model", f"has {len(model_ids)} landmarks; real-data evaluation needs the 68 iBUG points")
    index = np.asarray(landmark_index, dtype=np.int64)
    rows = [r for r, i in enumerate(index) if 0 <= i < 68 and not (exclude_jaw_contour and i in JAW_CONTOUR)]
    if len(rows) < 3:
        raise InputError("landmarks", f"only {len(rows)} usable iBUG landmarks shared with the model; need >= 3")
    rows = np.asarray(rows, dtype=np.int64)
    return rows, model_ids[index[rows]], index[rows]


def fit_real_target(model: MorphableModel, target: RealTarget, settings: RealSettings = RealSettings(),
                    progress: bool = False) -> TargetFit:
    """Align, fit and score one target; the record holds the protocol's metrics and the landmark error."""
    start = time.perf_counter()
    rows, model_ids, ibug = shared_landmarks(model, target.landmark_index, settings.exclude_jaw_contour)
    lms = np.asarray(target.landmarks, dtype=np.float64)[rows]
    faces = model.faces.cpu().numpy()
    with torch.no_grad():
        mean = model.decode(model.zero_latents(1))[0].double().cpu().numpy()

    # 1. rigid landmark alignment of the mean head (scale off: both sides are millimetres)
    pose0 = initial_pose(model, landmarks=lms, landmark_ids=model_ids, with_scale=False)
    init_lm_error = float(np.linalg.norm(pose0.apply(mean[model_ids]) - lms, axis=1).mean())
    scale_hint = umeyama(mean[model_ids], lms, with_scale=True).scale

    # 2. the point-cloud fit, on target points the model can explain (above its neck plane)
    if target.mesh.is_point_cloud:
        points = target.mesh.vertices
    else:
        points, _, _ = sample_surface(target.mesh.vertices, target.mesh.faces, settings.n_points, settings.seed)
    plane0 = neck_plane(pose0.apply(mean), faces)
    fit_points = points[above_plane(points, plane0)]
    if len(fit_points) < 10:
        raise InputError(target.name, "fewer than 10 target points lie above the model's neck after landmark "
                                      "alignment; check the landmarks")
    dev = model.device
    terms = [PointToSurfaceTerm(torch.tensor(fit_points, dtype=torch.float32, device=dev), model.faces),
             LandmarkTerm(torch.as_tensor(model_ids, device=dev), torch.tensor(lms, dtype=torch.float32, device=dev),
                          weight=settings.landmark_weight)]
    result = fit(model, terms, settings.fit, init_pose=pose0, progress=progress)
    fit_seconds = time.perf_counter() - start

    # 3. crop each surface to the other's extent (the fit first to the target's region), then the protocol
    fitted = Mesh(result.vertices, faces)
    plane = neck_plane(result.vertices, faces)
    fit_kept = np.ones(len(faces), bool) if target.mesh.is_point_cloud else crop_to_extent(fitted, target.mesh)
    if target.region is not None:
        fit_kept &= region_faces(model, target.region)
    pred = _submesh(fitted, fit_kept, f"{target.name} (fit)")
    if target.mesh.is_point_cloud:
        target_kept, gt = np.zeros(0, bool), target.mesh
    else:
        target_kept = crop_to_extent(target.mesh, pred, plane)
        gt = _submesh(target.mesh, target_kept, f"{target.name} (target)")
    ev = evaluate(pred, gt, settings.protocol)
    metrics = dict(ev["metrics"])
    metrics[LANDMARK_KEY] = float(np.linalg.norm(result.vertices[model_ids] - lms, axis=1).mean())
    # NoW-style: every fit point of the target (below-neck ones dropped) to the whole fitted surface
    rim, d_all = on_boundary(fit_points, result.vertices, faces)
    metrics[WHOLE_KEY] = float(d_all[~rim & above_plane(fit_points, plane)].mean())

    angle = float(np.degrees(np.arccos(np.clip((np.trace(result.pose.rotation) - 1) / 2, -1, 1))))
    record = {
        "name": target.name,
        "kind": target.kind,
        "region": target.region,
        "metrics": metrics,
        "landmark_error_init_mm": init_lm_error,
        "landmarks_used": len(rows),
        "similarity_scale_hint": float(scale_hint),
        "fit_points": int(len(fit_points)),
        "fit_points_dropped_below_neck": int(len(points) - len(fit_points)),
        "target_area_kept": _area_fraction(target.mesh, target_kept) if len(target_kept) else 1.0,
        "fit_area_kept": _area_fraction(fitted, fit_kept),
        "pose": result.pose.as_dict(),
        "pose_rotation_deg": angle,
        "final_energy": float(result.history[-1]) if result.history else None,
        "fit_seconds": fit_seconds,
        "seconds": time.perf_counter() - start,
        "evaluation_counts": ev["protocol"].get("counts"),
    }
    return TargetFit(record, target, result, faces, target_kept, fit_kept)


# ------------------------------------------------------------------------------------------ data sets


def simpop_targets(cache: Path | None = None, max_faces: int = 45) -> list[RealTarget]:
    """The first `max_faces` SIMPOP faces as targets (InputError if SIMPOP was not fetched)."""
    from neuralmorph.data.fetch import load_simpop

    faces = load_simpop(cache)
    lms = faces.landmarks()
    return [RealTarget(faces.ids[i], Mesh(faces.vertices[i], faces.faces), lms[i], faces.landmark_index, "face mask",
                       region="face")
            for i in range(min(max_faces, len(faces.ids)))]


def james_targets(cache: Path | None = None) -> list[RealTarget]:
    """menpo3d's james scan as the one target (InputError if it was not fetched)."""
    from neuralmorph.data.fetch import load_james

    mesh, lms = load_james(cache)
    return [RealTarget("james", mesh, lms, np.arange(68, dtype=np.int64), "head-and-shoulders scan", region="head")]


CROP_RULE = ("each surface is cropped to the other's extent. The fit keeps the faces whose centroid's closest "
             "point on the target is not on the target's open boundary, and, for a face mask (SIMPOP), only "
             "faces with all vertices in the model's 'face' region (forehead, eyes, nose, mouth, cheeks, chin; "
             "without it the top of the skull, which lies along the forehead's normals, would count); for a "
             "head scan (james) only faces with no vertex in the model's 'neck' region (the head itself: the "
             "fitted neck and upper chest run past the scan's ragged lower edge). The "
             "target then keeps the faces whose centroid's closest point on that cropped fit is not on its "
             "open boundary and that lie above the fitted head's neck plane (least-squares plane of its "
             "neck-cut loop). The fit itself sees the target points above the neck plane of the "
             "landmark-aligned mean head.")

METRIC_NOTES = {
    "accuracy_mm": "mean distance from the (cropped) fit to the target: shape error plus anything the target "
                   "has that the model lacks within the crop (hair on james)",
    "completeness_mm": "mean distance from the (cropped) target to the fit: how well the fit explains the data",
    "chamfer_l1_mm": "mean of accuracy and completeness",
    "fscore@Tmm": "harmonic mean of the fractions of each set within T mm of the other",
    WHOLE_KEY: "NoW-style: mean exact distance from the target points the fit used to the whole fitted "
               "surface (no region crop; points projecting onto the neck cut or below the neck plane dropped)",
    LANDMARK_KEY: "mean distance between the fit's landmark vertices and the target's landmarks after the fit",
}


def fit_targets(model: MorphableModel, targets: Sequence[RealTarget], settings: RealSettings = RealSettings(),
                progress: bool = True, desc: str = "fit real targets") -> list[TargetFit]:
    """`fit_real_target` over targets, with a progress bar."""
    return [fit_real_target(model, t, settings) for t in tqdm(targets, desc=desc, unit="target", disable=not progress)]


def summarize(fits: Sequence[TargetFit], settings: RealSettings, dataset: str, model: MorphableModel) -> dict:
    """{"metrics": means over targets, "per_target": records, "protocol": how to reproduce them}."""
    keys = list(dict.fromkeys(k for f in fits for k in f.record["metrics"]))
    means = {k: float(np.nanmean([f.record["metrics"].get(k, np.nan) for f in fits])) for k in keys}
    lm_ibug = shared_landmarks(model, fits[0].target.landmark_index, settings.exclude_jaw_contour)[2] if fits else []
    protocol = {
        "dataset": dataset,
        "targets": [f.target.name for f in fits],
        "units": "mm",
        "alignment": "Umeyama rigid (no scale) from the model's mean-head landmark vertices to the target's "
                     "landmarks, on the shared iBUG points",
        "landmarks_ibug": [int(i) for i in lm_ibug],
        "crop_rule": CROP_RULE,
        "metric_notes": METRIC_NOTES,
        "model": {"family": model.family, "latent_sizes": model.latent_sizes, "n_vertices": model.n_vertices},
        **settings.as_dict(),
    }
    return {"metrics": means, "per_target": [f.record for f in fits], "protocol": protocol}


def evaluate_real(model: MorphableModel, dataset: Literal["simpop", "james"] | Sequence[RealTarget],
                  settings: RealSettings = RealSettings(), cache: Path | None = None, max_faces: int = 45,
                  progress: bool = True) -> dict:
    """Fit `model` to a real data set ("simpop" / "james", or targets you built) and score it.

    Returns {"metrics", "per_target", "protocol"} as written to metrics.json (see `summarize`).
    """
    targets, name = _targets(dataset, cache, max_faces)
    return summarize(fit_targets(model, targets, settings, progress), settings, name, model)


def _targets(dataset, cache, max_faces) -> tuple[list[RealTarget], str]:
    if isinstance(dataset, str):
        if dataset == "simpop":
            return simpop_targets(cache, max_faces), "simpop"
        if dataset == "james":
            return james_targets(cache), "james"
        raise InputError("--dataset", f"must be 'simpop' or 'james', got {dataset!r}")
    targets = list(dataset)
    if not targets:
        raise InputError("dataset", "no targets given")
    return targets, "custom"


# ------------------------------------------------------------------------------------------ report



def _kept_vertices(n: int, faces: np.ndarray, kept: np.ndarray) -> np.ndarray:
    out = np.zeros(n, bool)
    out[faces[kept].ravel()] = True
    return out


def target_strips(tf: TargetFit, vmax_mm: float = 10.0, size: int = 280) -> list[tuple[str, np.ndarray]]:
    """Per view (front, three-quarter), one strip in the model's frame: target, fit, the target coloured by
    its distance to the fit and the fit coloured by its distance to the target (grey: cropped), colour bar."""
    from neuralmorph.render import MeshRenderer, bounding_box, colorbar, error_colors, hstack_images

    inv = tf.result.pose.inverse()
    tmesh = tf.target.mesh
    tv, fv = inv.apply(tmesh.vertices), inv.apply(tf.result.vertices)
    _, d_t = on_boundary(tmesh.vertices, tf.result.vertices, tf.model_faces)
    _, d_f = on_boundary(tf.result.vertices, tmesh.vertices, tmesh.faces)
    t_in = _kept_vertices(len(tv), tmesh.faces, tf.target_kept)
    f_in = _kept_vertices(len(fv), tf.model_faces, tf.fit_kept)
    box = bounding_box(tv[t_in] if t_in.any() else tv)  # frame the evaluated part of the target
    t_r, f_r = MeshRenderer(tv, tmesh.faces), MeshRenderer(fv, tf.model_faces)
    t_col = error_colors(np.where(t_in, d_t, np.nan), vmax_mm)
    f_col = error_colors(np.where(f_in, d_f, np.nan), vmax_mm)
    bar = colorbar(vmax_mm, height=int(size * 0.8))
    strips = []
    for view in ("front", "three_quarter"):
        imgs = [t_r.render(view, (size, size), frame_bbox=box), f_r.render(view, (size, size), frame_bbox=box),
                t_r.render(view, (size, size), vertex_colors=t_col, frame_bbox=box),
                f_r.render(view, (size, size), vertex_colors=f_col, frame_bbox=box), bar]
        strips.append((f"{tf.target.name} ({view.replace('_', '-')}): target | fit | target→fit distance | "
                       f"fit→target distance (0–{vmax_mm:g} mm; grey: cropped, not scored)", hstack_images(imgs)))
    return strips


def write_report(path: Path, summary: dict, fits: Sequence[TargetFit], n_render: int = 3,
                 vmax_mm: float = 10.0, seconds: float | None = None) -> None:
    """report.html: what was measured, the mean and per-target metrics, renders of a few targets."""
    from neuralmorph.evaluation.report import Report

    p = summary["protocol"]
    report = Report(f"Real data: {p['dataset']} ({len(fits)} targets)")
    report.add_text(
        f"The {p['model']['family']} model fitted to **{p['dataset']}**: rigid landmark alignment "
        f"({len(p['landmarks_ibug'])} shared iBUG points, no scale), then the point-cloud fit "
        f"({p['n_points']:,} target points, landmark weight {p['landmark_weight']:g}, {p['fit']['steps']} steps), "
        f"then the `{p['evaluation']['kind']}` protocol ({p['evaluation']['n_points']:,} points per set).\n\n"
        f"**Crop:** {CROP_RULE}\n\n"
        "- **completeness** (target→fit): how well the fit explains the data; the main number.\n"
        "- **accuracy** (fit→target): includes what the data has and the model cannot (hair).\n"
        "- **target_to_whole_fit**: NoW-style, target points to the whole fitted surface, no region crop.\n"
        "- **landmark error**: the fit's landmark vertices against the data's landmarks after the fit; "
        "SIMPOP's landmarks are transferred template picks (±3 mm), james's are hand-placed."
        + (f"\n\nWall time {seconds:.0f} s." if seconds is not None else ""), title="What was measured")
    m = summary["metrics"]
    cols = ["completeness_mm", "accuracy_mm", "chamfer_l1_mm", "fscore@1mm", "fscore@2.5mm", "fscore@5mm",
            "fscore@10mm", "normal_consistency", LANDMARK_KEY, WHOLE_KEY]
    cols = [c for c in cols if c in m]
    report.add_metrics_table("Mean metrics", [{"set": p["dataset"], **{c: m[c] for c in cols}}], ["set"] + cols)
    rows = [{"target": r["name"], **{c: r["metrics"].get(c) for c in cols},
             "init lm mm": r["landmark_error_init_mm"], "target kept": r["target_area_kept"],
             "fit kept": r["fit_area_kept"], "scale hint": r["similarity_scale_hint"]} for r in summary["per_target"]]
    report.add_metrics_table("Per target", rows)
    images = [strip for tf in fits[:n_render] for strip in target_strips(tf, vmax_mm)]
    if images:
        report.add_images("Renders (model frame)", images)
    report.add_json("protocol", p)
    report.write(path)


def write_real_evaluation(model_dir: Path, dataset: Literal["simpop", "james"], out: Path,
                          settings: RealSettings = RealSettings(), cache: Path | None = None, max_faces: int = 45,
                          renders: int = 3, device: str = "cpu", progress: bool = True,
                          overwrite: bool = False) -> dict:
    """Load the model in `model_dir`, fit it to `dataset`, score it and write out/metrics.json and
    out/report.html (`renders` targets drawn); the folder appears complete or not at all (an earlier
    evaluation there is replaced only with `overwrite`).

    Returns the summary (see `summarize`), its protocol block with the wall time and the device. Stops
    with an InputError before any work when the data set was not fetched.
    """
    start = time.perf_counter()
    check_output_dir(out, "real-data evaluation", overwrite)
    targets, name = _targets(dataset, cache, max_faces)  # InputError before any work if not fetched
    model = MorphableModel.load(model_dir, device=device)
    fits = fit_targets(model, targets, settings, progress=progress, desc=f"fit {name}")
    summary = summarize(fits, settings, name, model)
    seconds = time.perf_counter() - start
    summary["protocol"]["wall_seconds"] = seconds
    summary["protocol"]["device"] = device
    with atomic_dir(Path(out), "real-data evaluation", overwrite) as tmp:  # the folder appears complete or not at all
        write_json(tmp / "metrics.json", summary)
        write_report(tmp / "report.html", summary, fits, n_render=renders, seconds=seconds)
    return summary
