"""`neuralmorph demo`: the whole loop on the embedded head model — data → model → fit → sample →
evaluate → report — with the linear 3DMM every neural family must beat.

1. synthesise a train/test split of registered heads (test identities are never seen in training; no
   val split: the closed-form PCA model validates on nothing);
2. train the PCA model;
3. fit every held-out head from its registered mesh (exact closed form), a subset from single-view
   partial point clouds (2,500 points, NPHM's test protocol), and a few from raw scans (re-meshed,
   noisy, holed, posed: landmark alignment, ICP, then the point-cloud fit);
4. sample new heads and measure the model's compactness, generalisation and specificity;
5. appearance (`demo_appearance`): the shipped appearance model fitted to one photo each of two people it
   never saw (and of the real james scan, when fetched), scored on the views it did not see;
6. evaluate everything with the evaluation protocol and write DIR/report.html and DIR/metrics.json.

Everything it makes stays to build on: DIR/data (the dataset), DIR/model, every fitted head as a mesh
with its latents file (DIR/fits/registered, DIR/fits/points with the input clouds, DIR/fits/scans with
the raw scans), every sampled head with its latents (DIR/samples) and the appearance fits (DIR/appearance),
in the layouts `fit` and `sample` write.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from neuralmorph.atomic import atomic_dir, write_json
from neuralmorph.commands.demo_appearance import AppearanceCase, appearance_cases
from neuralmorph.data.head_model import HeadModel
from neuralmorph.data.observations import Observation
from neuralmorph.data.observe import single_view_points
from neuralmorph.data.scan import ScanConfig, raw_scan
from neuralmorph.data.synth import SynthConfig, synthesize
from neuralmorph.errors import InputError
from neuralmorph.evaluation.model_quality import model_quality, quality_plots
from neuralmorph.evaluation.protocol import Protocol, evaluate
from neuralmorph.evaluation.report import Report
from neuralmorph.fitting import FitConfig, fit, fit_observation
from neuralmorph.fitting.result import FitResult
from neuralmorph.fitting.terms import PointToSurfaceTerm
from neuralmorph.frame import icp_similarity, umeyama
from neuralmorph.geometry.mesh import Mesh, save_mesh
from neuralmorph.models.latents import save_latents
from neuralmorph.models.pca import PCAConfig, PCAModel
from neuralmorph.models.train import train_model
from neuralmorph.outputs import Verb
from neuralmorph.render import bounding_box, colorbar, error_colors, hstack_images, render_mesh, render_points


@dataclass(frozen=True)
class DemoConfig(Verb):
    """Run the whole loop on the embedded head model; writes DIR/report.html and DIR/metrics.json."""

    out_kind = "demo"

    out: Path = Path("demo_out")
    """Output folder."""
    subjects: int = 50
    """Identities to synthesise (a fifth are held out as the test split)."""
    expressions: int = 6
    """Heads per identity, the first neutral."""
    identity_dims: int = 32
    """Identity components of the PCA model."""
    expression_dims: int = 32
    """Expression components of the PCA model."""
    point_fits: int = 12
    """Held-out heads fitted from single-view 2,500-point clouds."""
    scan_fits: int = 3
    """Held-out heads fitted from simulated raw scans."""
    samples: int = 8
    """Heads sampled from the prior for the report."""
    eval_points: int = 100_000
    """Points per surface in the evaluation protocol."""
    appearance: bool = True
    """Also fit the shipped appearance model to one photo each of two synthetic people it never saw (and of
    the james scan when fetched) and score the views it did not see (--no-appearance: geometry only)."""
    seed: int = 0
    """Random seed."""

    def __post_init__(self):
        if self.subjects < 5:
            raise InputError("--subjects", f"the demo needs at least 5 to hold some out, got {self.subjects}")
        if self.expressions < 2:
            raise InputError("--expressions", f"the expression model needs at least 2 per subject, got {self.expressions}")


MAX_THREADS = 8
"""Most torch threads the demo takes by itself: its work (a PCA of a few hundred heads, closed-form and
200-step fits of one head at a time) is small matrix work that stops speeding up after a few threads,
while every extra thread takes a core from whatever else the machine runs."""


def _set_threads() -> int:
    """Torch threads for the demo: as OMP_NUM_THREADS says when it is set (torch has already read it),
    otherwise the cores this process may run on, at most MAX_THREADS. Returns the count in use."""
    if "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, min(cores, MAX_THREADS)))
    return torch.get_num_threads()


def _mean(rows: list[dict], prefix: str) -> dict[str, float]:
    keys = rows[0].keys() if rows else []
    return {f"{prefix}/{k}": float(np.nanmean([r[k] for r in rows])) for k in keys}


def _heat(fitted: np.ndarray, truth: np.ndarray, faces: np.ndarray, bbox, vmax: float) -> np.ndarray:
    colours = error_colors(np.linalg.norm(fitted - truth, axis=1), vmax)
    return render_mesh(fitted, faces, "front", (320, 320), vertex_colors=colours, frame_bbox=bbox)


def run_demo(cfg: DemoConfig) -> dict:
    """The whole demo, written into a temporary folder that replaces `cfg.out` only when it finished."""
    with atomic_dir(cfg.out, "demo", cfg.overwrite) as tmp:
        result = _demo(cfg, tmp)
    print(f"  -> {Path(cfg.out) / 'report.html'}, {Path(cfg.out) / 'metrics.json'}")
    return result


def _demo(cfg: DemoConfig, out: Path) -> dict:
    start = time.perf_counter()
    threads = _set_threads()
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = time.perf_counter() - clock
        clock = time.perf_counter()

    # val_fraction 0: the PCA model is closed form and validates on nothing, so a val split would only
    # take identities from its training set (the headline numbers are on the same 4:1 train/test split)
    data = synthesize(SynthConfig(out=out / "data", subjects=cfg.subjects, expressions=cfg.expressions,
                                  seed=cfg.seed, scans=False, val_fraction=0.0))
    lap("synth_s")
    model = train_model(PCAModel, data, PCAConfig(cfg.identity_dims, cfg.expression_dims), out / "model").model
    lap("train_s")
    faces = data.faces
    face_region = {"face": HeadModel.load().regions["face"]}
    test = [h for h in data.heads if h.split == "test"]
    rng = np.random.default_rng(cfg.seed)
    bbox = bounding_box(data.vertices[data.registered_rows()].reshape(-1, 3))
    report = Report("neuralmorph demo: the linear 3DMM on the embedded head model")

    # -- registered fits: exact closed form, every held-out head -----------------------------------
    reg_rows = []
    for h in tqdm(test, desc="fit registered", unit="head"):
        truth = data.vertices[h.registered].astype(np.float64)
        res = fit_observation(model, Observation("registered", (h.subject,), (truth,)))
        _save_fit(out / "fits" / "registered", f"{h.subject}_{h.expression}", model, res, "registered")
        ev = evaluate(Mesh(res.vertices, faces), Mesh(truth, faces), Protocol(n_points=cfg.eval_points, seed=cfg.seed),
                      regions=face_region)
        reg_rows.append(ev["metrics"])
    lap("registered_fits_s")

    # -- single-view partial point clouds (NPHM's test protocol) -----------------------------------
    fit_cfg = FitConfig()
    pc_rows, pc_images = [], []
    picks = [test[i] for i in np.linspace(0, len(test) - 1, min(cfg.point_fits, len(test))).round().astype(int)]
    for i, h in enumerate(tqdm(picks, desc="fit 2,500-point views", unit="head")):
        truth = data.vertices[h.registered].astype(np.float64)
        points, _ = single_view_points(truth, faces, rng)
        res = fit_observation(model, Observation("points", (h.subject,), (points,)), fit_cfg)
        name = f"{h.subject}_{h.expression}"
        _save_fit(out / "fits" / "points", name, model, res, "points")
        save_mesh(out / "fits" / "points" / f"{name}.points.ply", Mesh(points, np.zeros((0, 3), np.int64)))
        ev = evaluate(Mesh(res.vertices, faces), Mesh(truth, faces),
                      Protocol(kind="render", n_points=cfg.eval_points, seed=cfg.seed), regions=face_region)
        pc_rows.append(ev["metrics"])
        if i < 4:
            strip = hstack_images([render_points(points, "front", (320, 320), frame_bbox=bbox),
                                   render_mesh(res.vertices, faces, "front", (320, 320), frame_bbox=bbox),
                                   _heat(res.vertices, truth, faces, bbox, 5.0),
                                   render_mesh(truth, faces, "front", (320, 320), frame_bbox=bbox), colorbar(5.0, 320)])
            pc_images.append((f"{h.subject}/{h.expression}: 2,500 input points · fit "
                              f"({ev['metrics']['vertex_error_mm']:.2f} mm) · error · ground truth", strip))
    lap("point_cloud_fits_s")

    # -- raw scans: align (landmarks, ICP), then fit the scan's surface ----------------------------
    scan_rows, scan_images = [], []
    mean_v, mean_f = _mean_mesh(model)
    for h in tqdm(picks[: cfg.scan_fits], desc="fit raw scans", unit="scan"):
        truth = data.vertices[h.registered].astype(np.float64)
        scan, true_pose = raw_scan(truth, faces, ScanConfig(), rng)
        lm = true_pose.apply(truth[data.landmark_ids])  # the scan's landmarks, as clicked on the scan
        init = umeyama(lm, mean_v[data.landmark_ids], with_scale=False)
        points = scan.vertices[rng.choice(len(scan.vertices), 5_000, replace=False)]
        to_model = icp_similarity(points, mean_v, mean_f, init=init, with_scale=False).transform
        res = fit(model, [PointToSurfaceTerm(torch.tensor(points, dtype=torch.float32), model.faces)], fit_cfg,
                  init_pose=to_model.inverse())
        # the fit in the scan's coordinates (its pose maps the model onto the scan), beside the scan itself
        name = f"{h.subject}_{h.expression}"
        _save_fit(out / "fits" / "scans", name, model, res, "points")
        save_mesh(out / "fits" / "scans" / f"{name}.scan.ply", scan)
        back = true_pose.inverse().apply(res.vertices)  # into the registration's frame to compare
        ev = evaluate(Mesh(back, faces), Mesh(truth, faces), Protocol(n_points=cfg.eval_points, seed=cfg.seed),
                      regions=face_region)
        scan_rows.append(ev["metrics"])
        strip = hstack_images([render_mesh(true_pose.inverse().apply(scan.vertices), scan.faces, "front", (320, 320),
                                           frame_bbox=bbox), _heat(back, truth, faces, bbox, 5.0), colorbar(5.0, 320)])
        scan_images.append((f"{h.subject}/{h.expression}: raw scan ({len(scan.vertices)} vertices, holes, noise) · "
                            f"fit error ({ev['metrics']['vertex_error_mm']:.2f} mm)", strip))
    lap("scan_fits_s")

    # -- samples and model quality ------------------------------------------------------------------
    sample_latents = model.sample(cfg.samples, seed=cfg.seed)
    with torch.no_grad():
        samples = model.decode(sample_latents).double().numpy()
    for i, v in enumerate(samples):   # as `neuralmorph sample` writes them: sample_000.ply + sample_000.json
        save_mesh(out / "samples" / f"sample_{i:03d}.ply", Mesh(v, faces))
        save_latents(out / "samples" / f"sample_{i:03d}.json", model, {k: z[i:i + 1] for k, z in sample_latents.items()})
    quality = model_quality(model, data, (1, 2, 4, 8, 16, 32, 64), samples=100, seed=cfg.seed)
    lap("samples_and_quality_s")

    appearance, appearance_protocol = appearance_cases(out, cfg.seed) if cfg.appearance else ([], None)
    if cfg.appearance:
        lap("appearance_s")

    metrics = {**_mean(reg_rows, "registered_fit"), **_mean(pc_rows, "point_cloud_fit"), **_mean(scan_rows, "scan_fit"),
               **{f"model/{k}": v for k, v in quality["metrics"].items()},
               **{f"appearance/{c.name}/{m}/{k}": v for c in appearance for m, row in c.scores.items()
                  for k, v in row.items()}}
    timings["total_s"] = time.perf_counter() - start
    result = {
        "metrics": metrics,
        "protocol": {
            "data": {"subjects": cfg.subjects, "expressions": cfg.expressions, "seed": cfg.seed,
                     "train_heads": int(len(data.registered_rows("train"))), "test_heads": len(test)},
            "model": {"family": model.family, "latent_sizes": model.latent_sizes},
            "registered_fit": {"heads": len(reg_rows), "method": "closed form with rigid Gauss-Newton alignment",
                               "evaluation": Protocol(n_points=cfg.eval_points, seed=cfg.seed).as_dict()},
            "point_cloud_fit": {"heads": len(pc_rows), "points": 2500, "view": "one near-frontal camera at 650 mm",
                                "fit": fit_cfg.__dict__,
                                "evaluation": Protocol(kind="render", n_points=cfg.eval_points, seed=cfg.seed).as_dict()},
            "scan_fit": {"heads": len(scan_rows), "scan": ScanConfig().__dict__, "points": 5_000,
                         "alignment": "landmark Umeyama, then point-to-plane ICP to the mean head"},
            "model_quality": quality["protocol"],
            "appearance": appearance_protocol,
            "regions": {"face": "forehead, eyes, nose, mouth, cheeks, chin of the embedded model"},
            "units": "mm",
            # the third decimal of some fits moves with the thread count (docs/benchmarks.md)
            "machine": {"cpus": os.cpu_count(), "torch_threads": threads},
        },
        "timings": timings,
    }
    write_json(out / "metrics.json", result)
    _write_report(report, result, quality, pc_images, scan_images, samples, faces, bbox, appearance, out)
    m = metrics
    print(f"\ndemo finished in {timings['total_s']:.0f} s: {len(test)} held-out heads; PCA {model.latent_sizes}")
    print(f"  registered fit:  vertex error {m['registered_fit/vertex_error_mm']:.3f} mm")
    print(f"  2,500-point fit: vertex error {m['point_cloud_fit/vertex_error_mm']:.3f} mm, "
          f"chamfer-L1 {m['point_cloud_fit/chamfer_l1_mm']:.3f} mm, F@2.5mm {m['point_cloud_fit/fscore@2.5mm']:.3f}")
    if scan_rows:
        print(f"  raw-scan fit:    vertex error {m['scan_fit/vertex_error_mm']:.3f} mm")
    print(f"  model: generalisation {m['model/generalisation_mm']:.3f} mm, specificity {m['model/specificity_mm']:.3f} mm")
    for c in appearance:
        r, floor = c.scores["identity_field"], c.scores["mean_appearance"]
        print(f"  one-photo fit ({c.name}): held-out views {r['psnr_heldout_db']:.2f} dB PSNR, SSIM {r['ssim_heldout']:.3f} "
              f"(mean appearance {floor['psnr_heldout_db']:.2f} dB), fit {r['fit_seconds']:.0f} s")
    return result


def _save_fit(folder: Path, name: str, model: PCAModel, res: FitResult, kind: str) -> None:
    """A fitted head as `neuralmorph fit` writes one: folder/name.ply (in the observation's coordinates)
    and folder/name.latents.json (latents, pose model -> observation, the observation kind), so every fit
    can be decoded, edited or refitted from later."""
    save_mesh(folder / f"{name}.ply", Mesh(res.vertices, model.faces.cpu().numpy()))
    save_latents(folder / f"{name}.latents.json", model, res.latents, pose=res.pose.as_dict(), fit_kind=kind)


def _mean_mesh(model: PCAModel) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        return model.decode(model.zero_latents(1))[0].double().numpy(), model.faces.numpy()


def _appearance_report(report: Report, cases: list[AppearanceCase], protocol: dict) -> None:
    report.add_text(
        f"The shipped appearance model (3D Gaussians bound to a PCA head, colours from an identity code) fitted to "
        f"one {protocol['size']}² photo — the most frontal of {protocol['views']} — of people it never saw, with "
        f"the camera and landmarks given: geometry and appearance code by photometric loss, then a short colour "
        f"refinement. Scored on the other {protocol['views'] - 1} views, beside the mean appearance on the same "
        f"fitted head. james: {protocol['james']}.", title="Appearance from one photo")
    rows = [{"case": c.name, "method": m.replace("_", " "), "held-out PSNR (dB)": r["psnr_heldout_db"],
             "held-out PSNR in mask (dB)": r["psnr_heldout_masked_db"], "held-out SSIM": r["ssim_heldout"],
             "input PSNR (dB)": r["psnr_input_db"], "fit (s)": r["fit_seconds"]}
            for c in cases for m, r in c.scores.items()]
    report.add_metrics_table("One-photo fits, scored on unseen views", rows)
    report.add_images("One-photo fits: ground truth (top), fit (bottom); the input view first",
                      [(c.name, c.strip) for c in cases])


def _write_report(report: Report, result: dict, quality: dict, pc_images, scan_images, samples, faces,
                  bbox, appearance: list[AppearanceCase], out: Path) -> None:
    m, p = result["metrics"], result["protocol"]
    report.add_text(
        f"{p['data']['subjects']} synthetic identities × {p['data']['expressions']} expressions from the embedded "
        f"CC0 head model; {p['data']['test_heads']} held-out heads of unseen identities. PCA model with "
        f"{p['model']['latent_sizes']['identity']} identity and {p['model']['latent_sizes']['expression']} expression "
        f"components. All distances in millimetres.")
    rows = []
    for name, label in (("registered_fit", "registered mesh (closed form)"),
                        ("point_cloud_fit", "single view, 2,500 points"), ("scan_fit", "raw scan")):
        if f"{name}/vertex_error_mm" in m:
            rows.append({"fit from": label, "heads": p[name]["heads"], "vertex error": m[f"{name}/vertex_error_mm"],
                         "face vertex error": m.get(f"{name}/face/vertex_error_mm", float("nan")),
                         "chamfer-L1": m[f"{name}/chamfer_l1_mm"], "F@1mm": m[f"{name}/fscore@1mm"],
                         "F@2.5mm": m[f"{name}/fscore@2.5mm"], "normal cons.": m[f"{name}/normal_consistency"]})
    report.add_metrics_table("Fitting held-out heads (mean over heads, mm)", rows)
    report.add_images("Single-view point-cloud fits", pc_images)
    report.add_images("Raw-scan fits", scan_images)
    report.add_images("Samples from the prior", [(f"sample {i}", render_mesh(v, faces, "three_quarter", (256, 256),
                                                                                frame_bbox=bbox))
                                                 for i, v in enumerate(samples)])
    report.add_metrics_table("Model quality", [{"k": k, "generalisation (mm)": g, "specificity (mm)": s}
                                               for k, g, s in zip(quality["curves"]["k"], quality["curves"]["generalisation_mm"],
                                                                  quality["curves"]["specificity_mm"])])
    for title, svg in quality_plots(quality):
        report.add_svg(title, svg)
    if appearance:
        _appearance_report(report, appearance, p["appearance"])
    report.add_json("Protocol and timings", {"protocol": p, "timings": result["timings"]})
    report.write(out / "report.html")
