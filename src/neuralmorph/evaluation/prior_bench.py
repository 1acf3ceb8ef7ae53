"""`neuralmorph bench prior`: the Gaussian and the diffusion prior of one model, side by side.

Protocol. The default synthetic population (`data synth`: 5 heads per identity, the first neutral, local
detail at the generator's default `local_fraction`), a fifth of the identities held out (test), a tenth
for validation. Per mesh family (`pca`, closed form; `regional`, trained): the model is built on the
training heads, a diffusion prior trained on its latents of those heads (`MorphableModel.dataset_latents`,
the same codes its Gaussians were fitted to), then

- **generative metrics** (`evaluation.generative`, PointFlow / LION: chamfer-L1 on 2,048 points per head,
  mm): `samples` heads drawn from each prior against as many held-out heads — one random head (any
  expression) of each of `samples` test identities, so the references are independent draws like the
  samples (five heads of one person would be each other's nearest neighbours and inflate 1-NNA for any
  prior) — MMD, COV, 1-NNA (0.5 ideal), and specificity against as many training heads;
  `sample_seconds_100`: drawing 100 latents (median of 3; the diffusion prior with its default DDIM steps);
- **fits**: single-view 2,500-point clouds of held-out heads (`data.observe.single_view_points`, a random
  near-frontal view) fitted by the mesh loop with each prior's energy, scored on the face region against
  the true head (chamfer-L1, F@1mm; points protocol). The diffusion energy's weight
  (`FitConfig.diffusion_weight`) is chosen among `DIFFUSION_WEIGHTS` on validation heads, never on test.

The data model: {"families": {family: {"gaussian": {...}, "diffusion": {...}}}, "fits": {family:
{"gaussian": {...}, "diffusion": {...}}}, "protocol": ..., "machine": ...}.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuralmorph.atomic import output_files, work_folder, write_json
from neuralmorph.evaluation.bench_run import TrainingBench, machine_info

AIMS = {"nna_closer_points": 5.0, "sample_seconds_100": 1.0}
"""The diffusion prior's 1-NNA at least this many points closer to 50% than the Gaussian's (COV no lower);
sampling 100 latents at most this long (CPU)."""
FAMILIES = ("pca", "regional")
PRIORS = ("gaussian", "diffusion")
DIFFUSION_WEIGHTS = (2.0, 8.0, 20.0)
"""Candidate weights of the diffusion energy in fits, chosen per family on the validation heads."""
VALIDATION_FITS = 6
"""Validation heads each candidate weight is scored on."""


@dataclass(frozen=True)
class PriorBenchConfig(TrainingBench):
    """Compare a diffusion prior with the Gaussian on the same models: generative metrics and fits."""

    out: Path = Path("prior.json")
    """Where to write {"families": {...}, "fits": {...}, "protocol": ..., "machine": ...} (JSON)."""
    quick: bool = False
    """The quick run: 500 identities (100 held out), 100 samples against 100 held-out heads, regional 1,500
    steps, prior 4,000 steps, 10 fits (about 15 min on 2 cores); the full run: 1,000 identities, 200 samples
    against 200 held-out heads, regional 6,000 steps, prior 10,000 steps, 30 fits."""
    seed: int = 0
    """Seed of the population, the training runs, the samples and the fits."""

    def settings(self) -> dict:
        if self.quick:
            return {"subjects": 500, "samples": 100, "regional_steps": 1500, "prior_steps": 4000, "fits": 10}
        return {"subjects": 1000, "samples": 200, "regional_steps": 6000, "prior_steps": 10_000, "fits": 30}


def _model(family: str, data, s: dict, cfg: PriorBenchConfig, work: Path):
    """`family` built (pca) or trained (regional, at `bench fidelity`'s settings) on the training heads."""
    from neuralmorph.models.base import family_class
    from neuralmorph.models.train import train_model

    klass = family_class(family)
    config, trainer = klass.for_benchmark(32)
    if trainer is not None:
        trainer = dataclasses.replace(trainer, max_steps=s["regional_steps"], checkpoint_every=0, val_every=0,
                                      seed=cfg.seed, device=cfg.device, tensorboard=False)
    return train_model(klass, data, config, work / family, trainer=trainer, progress=False, overwrite=True).model.eval()


def _priors(model, data, s: dict, cfg: PriorBenchConfig, work: Path) -> dict:
    """{"gaussian": the model's own, "diffusion": one trained on its training latents} (`LatentPrior`s)."""
    from neuralmorph.prior.diffusion import DiffusionConfig
    from neuralmorph.prior.latent import DiffusionLatentPrior, GaussianLatentPrior
    from neuralmorph.prior.train import prior_trainer_defaults, train_prior, training_latents_for

    latents, source = training_latents_for(model, data, "train")
    trainer = dataclasses.replace(prior_trainer_defaults(), max_steps=s["prior_steps"], checkpoint_every=0,
                                  seed=cfg.seed, device=cfg.device, tensorboard=False)
    diffusion = train_prior(model, latents, source, DiffusionConfig(), work / f"{model.family}_prior", trainer,
                            progress=False, overwrite=True)
    return {"gaussian": GaussianLatentPrior(model), "diffusion": DiffusionLatentPrior(model, diffusion.to("cpu"))}


def _sample_seconds(prior, n: int = 100, repeats: int = 3) -> float:
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        prior.sample(n, seed=r)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _generative(model, prior, references: np.ndarray, training: np.ndarray, n: int, seed: int) -> dict:
    from neuralmorph.evaluation.generative import prior_metrics

    return {**prior_metrics(model, prior, references, n, seed, training), "sample_seconds_100": _sample_seconds(prior)}


def _fit_scores(model, prior, config, data, heads: list[int], seed: int) -> dict:
    """Mean face chamfer-L1, F@1mm and vertex error (and the median fit time) of single-view fits of the
    heads (rows of `data`) with `prior`'s energy."""
    from neuralmorph.data.head_model import HeadModel
    from neuralmorph.data.observations import Observation
    from neuralmorph.data.observe import single_view_points
    from neuralmorph.evaluation.protocol import Protocol, evaluate
    from neuralmorph.fitting import fit_observation
    from neuralmorph.geometry.mesh import Mesh

    faces = data.faces
    regions = {"face": HeadModel.load().regions["face"]}
    rng = np.random.default_rng(seed)  # the same clouds for every prior and weight
    rows, seconds = [], []
    for i in heads:
        cloud = single_view_points(data.vertices[i], faces, rng)[0]
        t = time.perf_counter()
        result = fit_observation(model, Observation("points", (str(i),), (cloud,)), config, prior=prior)
        seconds.append(time.perf_counter() - t)
        m = evaluate(result.meshes[0], Mesh(data.vertices[i].astype(np.float64), faces),
                     Protocol(n_points=50_000, seed=seed), regions=regions)["metrics"]
        rows.append({"chamfer_l1_face_mm": m["face/chamfer_l1_mm"], "f_score_1mm_face": m["face/fscore@1mm"],
                     "vertex_error_mm": m["vertex_error_mm"]})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} | {"fit_seconds": statistics.median(seconds),
                                                                         "heads": len(rows)}


def _fits(model, priors: dict, data, heads: list[int], val_heads: list[int], seed: int) -> dict:
    """Each prior's `_fit_scores` on the held-out `heads`; the diffusion energy's weight first chosen among
    DIFFUSION_WEIGHTS by the face chamfer-L1 of fits of `val_heads` (recorded with its candidates)."""
    from neuralmorph.fitting import FitConfig

    tried = {w: _fit_scores(model, priors["diffusion"], FitConfig(diffusion_weight=w), data, val_heads, seed)
             ["chamfer_l1_face_mm"] for w in DIFFUSION_WEIGHTS}
    best = min(tried, key=tried.get)
    out = {"gaussian": _fit_scores(model, priors["gaussian"], FitConfig(), data, heads, seed),
           "diffusion": _fit_scores(model, priors["diffusion"], FitConfig(diffusion_weight=best), data, heads, seed)}
    out["diffusion"] |= {"diffusion_weight": best, "validation_chamfer_l1_face_mm": {str(w): v for w, v in tried.items()}}
    return out


def bench_prior(cfg: PriorBenchConfig, log=print) -> dict:
    """Run the benchmark (see the module), write `cfg.out`, return the report."""
    from neuralmorph.data.synth import SynthConfig, synthesize
    from neuralmorph.evaluation.generative import one_head_per_identity

    s = cfg.settings()
    start = time.perf_counter()
    work = work_folder(cfg._work(), "benchmark work folder")
    log(f"synth: {s['subjects']} identities x 5 expressions")
    data = synthesize(SynthConfig(out=work / "data", subjects=s["subjects"], seed=cfg.seed, scans=False,
                                  overwrite=True))
    rng = np.random.default_rng([cfg.seed, 17])
    references = data.vertices[one_head_per_identity(data, "test", s["samples"], rng)]
    training = data.vertices[one_head_per_identity(data, "train", s["samples"], rng)]
    fit_heads = sorted(one_head_per_identity(data, "test", s["fits"], rng))
    val_heads = sorted(one_head_per_identity(data, "val", VALIDATION_FITS, rng))
    families, fits, extra = {}, {}, {}
    for family in FAMILIES:
        t = time.perf_counter()
        model = _model(family, data, s, cfg, work)
        priors = _priors(model, data, s, cfg, work)
        extra[family] = {"latent_sizes": model.latent_sizes, "train_seconds": time.perf_counter() - t}
        families[family] = {kind: _generative(model, p, references, training, s["samples"], cfg.seed)
                            for kind, p in priors.items()}
        for kind, row in families[family].items():
            log(f"  {family} {kind}: MMD {row['mmd_cd_mm']:.3f} mm, COV {row['cov']:.2f}, 1-NNA {row['nna_1']:.3f}, "
                f"100 samples in {row['sample_seconds_100']:.3f} s")
        fits[family] = _fits(model, priors, data, fit_heads, val_heads, cfg.seed)
        for kind, row in fits[family].items():
            log(f"  {family} {kind} fits: face chamfer-L1 {row['chamfer_l1_face_mm']:.3f} mm, "
                f"F@1mm {row['f_score_1mm_face']:.3f}")
    report = {
        "families": families,
        "fits": fits,
        "models": extra,
        "aims": AIMS,
        "protocol": {**s, "expressions": 5, "local_fraction": SynthConfig.local_fraction, "references": len(references),
                     "reference_heads": "one random head of each of as many test identities",
                     "training_heads_for_specificity": len(training), "fit_heads": fit_heads, "val_heads": val_heads,
                     "diffusion_weights": DIFFUSION_WEIGHTS,
                     "fit": "single-view 2,500-point clouds, mesh loop (FitConfig defaults), face region, points "
                            "protocol 50,000", "seed": cfg.seed},
        "seconds": time.perf_counter() - start,
        "machine": machine_info(),
        "command": "neuralmorph bench prior" + (" --quick" if cfg.quick else ""),
    }
    with output_files(cfg.out, overwrite=cfg.overwrite) as (path,):
        write_json(path, report)
    return report
