"""`neuralmorph bench appearance`: single-image fits of held-out identities, scored on views they never saw.

Protocol. A synthetic population (`data synth --images --lighting studio`: one fixed portrait light, so
appearance is what differs between people) of `train_subjects` + `test_subjects` identities × 2
expressions × `views` random views (yaw within ±90° of the face, pitch within ±20°). A PCA model is
built on the training heads, the appearance model trained on the training identities' images. Each test
identity's neutral head is fitted from **one** image — its most frontal view — with that view's camera
and 2D landmarks (the registered head's landmarks projected by the camera: what a landmark detector would
give, without its noise), then rendered from its other views and scored there (PSNR over the whole image
and within the mask, SSIM), next to two baselines on the same fitted mesh:

- `identity_field`: geometry latents + appearance code (stage 1), then a short colour refinement (stage 2);
- `mean_appearance`: the same fitted geometry with the prior's mean appearance code, nothing fitted;
- `free_gaussians`: from the mean appearance, every per-Gaussian attribute freed and optimised on the one
  image (3DGS-style, no identity field).

`real_scan`: the public real textured scan (`james`, after `neuralmorph data fetch james`) scored the same
way. It is brought into the model's frame by a rigid landmark alignment (its iBUG points to the mean
head's, Umeyama without scale; jaw contour left out), rendered by the same ray tracer under the same
studio light from `views` random cameras framing the model's mean head (so its hair and shoulders show
where the model has none), and fitted from its most frontal view with its own landmarks projected. Absent
when james is not fetched (the entry says so).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neuralmorph.atomic import output_files, work_folder, write_json
from neuralmorph.evaluation.bench_run import TrainingBench, machine_info

AIMS = {"psnr_heldout_db": 26.0, "over_mean_db": 3.0, "fit_seconds_256": 60.0}
"""Held-out-view PSNR of the identity field at least; its margin over the mean appearance at least; the
single-image fit at 256² at most (2 cores)."""
METHODS = ("identity_field", "mean_appearance", "free_gaussians")


@dataclass(frozen=True)
class AppearanceBenchConfig(TrainingBench):
    """Train the appearance family on synthetic identities, fit held-out ones from one image, score unseen views."""

    out: Path = Path("appearance.json")
    """Where to write {"methods": {...}, "real_scan": {...}, "protocol": ..., "machine": ...} (JSON)."""
    quick: bool = False
    """The quick run: 128² images, 10,000 Gaussians, 24 + 4 identities, 1,500 training steps (about 10 min on
    2 cores); the full run: 256², 20,000 Gaussians, 96 + 12 identities, 4,000 steps."""
    seed: int = 0
    """Seed of the population and the training."""

    def settings(self) -> dict:
        if self.quick:
            return {"image_size": 128, "gaussians": 10_000, "train_subjects": 24, "test_subjects": 4, "views": 8,
                    "steps": 1500}
        return {"image_size": 256, "gaussians": 20_000, "train_subjects": 96, "test_subjects": 12, "views": 8,
                "steps": 4000}


def _yaw(camera, centre: np.ndarray) -> float:
    d = camera.position - centre
    return float(abs(np.arctan2(d[0], d[2])))


def _frontal_first(views: list, centre: np.ndarray) -> list:
    return sorted(views, key=lambda v: _yaw(v.camera, centre))


def synthetic_views(data, head, landmark_ids: np.ndarray) -> list:
    """The posed images of `head` (a row of `data.heads`) as `fitting.image.View`s, most frontal first,
    with masks and the registered head's landmarks (`landmark_ids` (L,)) projected."""
    from neuralmorph.data.images import load_image, load_mask
    from neuralmorph.fitting.image import View

    truth = data.vertices[head.registered]
    frames = [f for f in data.images if f.registered == head.registered]
    views = [View(load_image(f.image_path(data.folder)), f.camera, load_mask(f.mask_path(data.folder)),
                  f.camera.project(truth[landmark_ids])[0]) for f in frames]
    return _frontal_first(views, truth.mean(axis=0))


def james_views(model, views: int, size: int, seed: int = 0, cache=None) -> list:
    """james (see the module) as `views` `View`s in `model`'s frame, most frontal first: sRGB images as 8-bit
    PNGs hold them, coverage masks, and its iBUG landmarks projected (NaN rows: points it lacks and
    the jaw contour). InputError when james is not fetched."""
    from neuralmorph.data.fetch import load_james
    from neuralmorph.data.synth import IMAGE_SUPERSAMPLE, MAX_PITCH_DEG, MAX_YAW_DEG
    from neuralmorph.data.textured_render import (Lighting, TexturedMesh, TexturedRenderer, load_james_textured,
                                                  orbit_camera, srgb_encode)
    from neuralmorph.evaluation.real import shared_landmarks
    from neuralmorph.fitting import initial_pose
    from neuralmorph.fitting.image import View

    scan = load_james_textured(cache)
    _, lms = load_james(cache)
    rows, model_ids, _ = shared_landmarks(model, np.arange(68))
    to_scan = initial_pose(model, landmarks=lms[rows], landmark_ids=model_ids, with_scale=False)
    back = to_scan.inverse()
    renderer = TexturedRenderer(TexturedMesh(back.apply(scan.vertices), scan.faces, scan.face_uvs, scan.texture))
    landmarks = np.full((len(model.landmark_ids), 3), np.nan)
    landmarks[rows] = back.apply(lms[rows])  # model landmark i is iBUG point i (shared_landmarks checked 68)
    with torch.no_grad():
        mean = model.decode(model.zero_latents(1))[0].double().cpu().numpy()
    centre = 0.5 * (mean.min(axis=0) + mean.max(axis=0))
    radius = float(np.linalg.norm(mean - centre, axis=1).max())
    rng = np.random.default_rng([seed, 68])
    out = []
    for _ in range(views):
        yaw, pitch = rng.uniform(-MAX_YAW_DEG, MAX_YAW_DEG), rng.uniform(-MAX_PITCH_DEG, MAX_PITCH_DEG)
        cam = orbit_camera(centre, radius, yaw, pitch, size)
        r = renderer.render(cam, Lighting.studio(), IMAGE_SUPERSAMPLE)
        image = srgb_encode(r.rgb).astype(np.float32) / 255.0  # 8-bit sRGB, as synth's PNGs
        out.append(View(image, cam, r.mask, cam.project(landmarks)[0]))
    return _frontal_first(out, centre)


def _score(model, fit, views) -> dict:
    from neuralmorph.evaluation.image_metrics import psnr, ssim
    from neuralmorph.fitting.image import render_fit

    images = render_fit(model, fit, [v.camera for v in views])
    return {"psnr_heldout_db": statistics.fmean(float(psnr(a, v.image)) for a, v in zip(images, views)),
            "psnr_heldout_masked_db": statistics.fmean(float(psnr(a, v.image, mask=v.mask)) for a, v in zip(images, views)),
            "ssim_heldout": statistics.fmean(float(ssim(a, v.image)) for a, v in zip(images, views))}


FREE_FIT = dict(steps=0, refine="all", refine_steps=300)
"""The free per-Gaussian baseline's `ImageFitConfig` changes: no latents, every attribute refined."""


def single_image(model, views: list, fit_cfg, methods=METHODS) -> tuple[dict[str, dict], object]:
    """Fit `model` from `views[0]` alone and score every view after it, for each of `methods`; returns
    method -> {psnr_heldout_db, psnr_heldout_masked_db, ssim_heldout, psnr_input_db, fit_seconds} and the
    identity field's `ImageFit` (geometry fitted once, by it, for every method)."""
    from neuralmorph.fitting.image import fit_image

    given, held = views[0], views[1:]
    idf = fit_image(model, [given], fit_cfg, progress=False)
    rows = {"identity_field": {**_score(model, idf, held), "psnr_input_db": idf.psnr_input_db[0],
                               "fit_seconds": idf.seconds}}
    mean_latents = {**idf.latents, "appearance": model.prior["appearance"].mean[None].clone()}
    if "mean_appearance" in methods:
        mean = dataclasses.replace(idf, latents=mean_latents, residuals={})
        rows["mean_appearance"] = {**_score(model, mean, held), "psnr_input_db": _score(model, mean, [given])["psnr_heldout_db"],
                                   "fit_seconds": 0.0}
    if "free_gaussians" in methods:
        free = fit_image(model, [given], dataclasses.replace(fit_cfg, **FREE_FIT), start=mean_latents, progress=False)
        rows["free_gaussians"] = {**_score(model, free, held), "psnr_input_db": free.psnr_input_db[0],
                                  "fit_seconds": free.seconds}
    return {m: rows[m] for m in methods}, idf


def bench_appearance(cfg: AppearanceBenchConfig, log=print) -> dict:
    """Run the benchmark (see the module), write `cfg.out`, return the report."""
    from neuralmorph.data.fetch import is_fetched
    from neuralmorph.data.synth import SynthConfig, synthesize
    from neuralmorph.fitting.image import ImageFitConfig
    from neuralmorph.models.appearance.model import AppearanceConfig, AppearanceModel
    from neuralmorph.models.pca import PCAConfig, PCAModel
    from neuralmorph.models.train import train_model

    s = cfg.settings()
    start = time.perf_counter()
    work = work_folder(cfg._work(), "benchmark work folder")
    total = s["train_subjects"] + s["test_subjects"]
    log(f"synth: {total} identities x 2 expressions x {s['views']} views at {s['image_size']}²")
    data = synthesize(SynthConfig(out=work / "data", subjects=total, expressions=2, seed=cfg.seed, scans=False,
                                  test_fraction=s["test_subjects"] / total, val_fraction=0.0, images=True,
                                  views=s["views"], image_size=s["image_size"], lighting="studio", overwrite=True))
    PCAModel.build(data, PCAConfig()).save(work / "pca", overwrite=True)
    config = AppearanceConfig(geometry=str(work / "pca"), gaussians=s["gaussians"])
    trainer = dataclasses.replace(AppearanceModel.trainer_defaults(), max_steps=s["steps"], seed=cfg.seed,
                                  device=cfg.device, tensorboard=False)
    t = time.perf_counter()
    model = train_model(AppearanceModel, data, config, work / "run", trainer=trainer, overwrite=True).model.eval()
    train_s = time.perf_counter() - t
    fit_cfg = ImageFitConfig()
    rows = {m: [] for m in METHODS}
    ids = model.landmark_ids.cpu().numpy()
    for head in [h for h in data.heads if h.split == "test" and h.expression == "neutral"]:
        scores, fit = single_image(model, synthetic_views(data, head, ids), fit_cfg)
        for m in METHODS:
            rows[m].append(scores[m])
        log(f"  {head.subject}: held-out PSNR identity field {scores['identity_field']['psnr_heldout_db']:.2f} dB, "
            f"mean {scores['mean_appearance']['psnr_heldout_db']:.2f}, free {scores['free_gaussians']['psnr_heldout_db']:.2f}"
            f" (fit {fit.seconds:.1f} s)")
    methods = {m: {k: statistics.fmean(r[k] for r in rs) for k in rs[0]} | {"per_subject": rs}
               for m, rs in rows.items()}
    if is_fetched("james"):
        real, _ = single_image(model, james_views(model, s["views"], s["image_size"], cfg.seed), fit_cfg)
        log("  james: held-out PSNR " + ", ".join(f"{m} {r['psnr_heldout_db']:.2f} dB" for m, r in real.items()))
        real_scan = {"name": "james", "methods": real}
    else:  # the synthetic numbers stand alone
        real_scan = {"skipped": "james is not fetched (run `neuralmorph data fetch james`)"}
    report = {
        "methods": methods,
        "real_scan": real_scan,
        "aims": AIMS,
        "protocol": {**s, "expressions": 2, "lighting": "studio", "input_view": "the most frontal view",
                     "heldout_views": s["views"] - 1, "landmarks": "projected registered landmarks",
                     "fit": fit_cfg.to_dict(), "free_fit": dataclasses.replace(fit_cfg, **FREE_FIT).to_dict(), "trainer": trainer.to_dict(),
                     "model": config.to_dict(), "seed": cfg.seed},
        "train_seconds": train_s,
        "seconds": time.perf_counter() - start,
        "machine": machine_info(),
        "command": "neuralmorph bench appearance" + (" --quick" if cfg.quick else ""),
    }
    with output_files(cfg.out, overwrite=cfg.overwrite) as (path,):
        write_json(path, report)
    return report
