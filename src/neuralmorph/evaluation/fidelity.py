"""`neuralmorph bench fidelity`: every family reconstructs the same kind of held-out heads.

Data: the embedded generator's split (held-out identities with expressions).

Mesh families (pca, regional) are trained on the train split at one latent size and reconstruct every
test-split head from its registered mesh (PCA: the exact projection; autoencoders: encode, then refine).
Scores are the evaluation protocol's, in mm: mean per-vertex error over all heads, and the points
protocol (chamfer, F-scores, normal consistency) on a fixed subset.

Implicit families (implicit-global, implicit-local) are trained on a smaller population with raw scans
and fitted, NPHM's test protocol, to single-view 2,500-point clouds of held-out subjects (one identity
and one expression per observation); their meshes are scored with the render protocol against the
registered ground truth, full head and face region (`<metric>_face`).

Families register a `Contender`; each returns its reconstructions (or its own scores) and what it cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from neuralmorph.atomic import write_json
from neuralmorph.data.dataset import HeadDataset
from neuralmorph.data.synth import SynthConfig, synthesize
from neuralmorph.errors import InputError
from neuralmorph.evaluation.protocol import Protocol, evaluate
from neuralmorph.geometry.mesh import Mesh
from neuralmorph.models.pca import PCAConfig, PCAModel


@dataclass(frozen=True)
class FidelityConfig:
    """Train every mesh family at one latent size and score its reconstructions of held-out heads (mm)."""

    out: Path = Path("fidelity.json")
    """Where to write {"models": {family: {metric: value}}, "protocol": {...}}."""
    families: tuple[str, ...] = ("pca", "regional", "implicit-global", "implicit-local")
    """Which families to run."""
    quick: bool = False
    """Short training (the ≤ 15 min setting on 2 CPU cores); off: the full run."""
    latent_size: int = 32
    """Total latent size every family gets (PCA splits it evenly between identity and expression)."""
    subjects: int = 150
    """Synthetic identities (a fifth held out)."""
    expressions: int = 6
    """Heads per identity."""
    local_fraction: float = 0.0
    """The generator's share of independent local shape modifiers per identity. 0 (the default here)
    keeps identity variation low-dimensional and non-linear (phenotype blending) with non-linear
    expressions (jaw and neck skinning); the generator's own default (0.3) adds ~150 independent sparse
    linear bumps that no 32-d model can compress (measured in docs/benchmarks.md), which would measure
    the data's rank rather than the families."""
    train_steps: int | None = None
    """Optimiser steps of every trained family (default: 1,500 with --quick, 6,000 otherwise)."""
    implicit_subjects: int | None = None
    """Implicit families: identities of their scan population (default: 12 with --quick, 40 otherwise)."""
    implicit_local_fraction: float = 0.0
    """Implicit families: the generator's `local_fraction` of their scan population. 0: every identity is
    a blend of five phenotype sliders, a single global code's ideal case; 0.3 (the generator's default)
    adds detail that varies region by region, NPHM's case for a local ensemble (docs/benchmarks.md has both)."""
    implicit_expressions: int = 3
    """Implicit families: heads per identity (the first neutral); each test head is one observation."""
    implicit_test_subjects: int | None = None
    """Implicit families: held-out subjects fitted and scored (default: 2 with --quick, 6 otherwise)."""
    implicit_steps: int | None = None
    """Implicit families: training steps (default: 600 with --quick, 4,000 otherwise)."""
    implicit_fit_steps: int = 300
    """Implicit families: fitting steps per test subject."""
    implicit_mesh_resolution: int = 128
    """Implicit families: marching-cubes cells per axis of the fitted meshes."""
    refine_steps: int = 100
    """Autoencoders: latent-refinement steps after encoding each held-out head (0: encode only)."""
    protocol_heads: int = 12
    """Held-out heads also scored with the points protocol."""
    seed: int = 0
    """Seed of the data and of every training run."""
    device: str = "cpu"
    """Torch device for training."""
    work_dir: Path | None = None
    """Keep the data and trained models here (default: next to --out)."""

    def __post_init__(self):
        unknown = [f for f in self.families if f not in CONTENDERS]
        if unknown or not self.families:
            raise InputError("--families", f"unknown or no families {unknown} (known: {', '.join(CONTENDERS)})")
        if self.latent_size < 2:
            raise InputError("--latent-size", f"must be at least 2 (PCA splits it in two), got {self.latent_size}")
        if not 0.0 <= self.local_fraction <= 1.0:
            raise InputError("--local-fraction", f"must be in [0, 1], got {self.local_fraction}")
        if not 0.0 <= self.implicit_local_fraction <= 1.0:
            raise InputError("--implicit-local-fraction", f"must be in [0, 1], got {self.implicit_local_fraction}")
        if self.refine_steps < 0:
            raise InputError("--refine-steps", f"must be ≥ 0, got {self.refine_steps}")
        for flag, value in (("--implicit-subjects", self.implicit_subjects), ("--implicit-steps", self.implicit_steps),
                            ("--implicit-test-subjects", self.implicit_test_subjects),
                            ("--implicit-fit-steps", self.implicit_fit_steps), ("--implicit-expressions", self.implicit_expressions)):
            if value is not None and value < 1:
                raise InputError(flag, f"must be positive, got {value}")
        if self.train_steps is not None and self.train_steps < 1:
            raise InputError("--train-steps", f"must be positive, got {self.train_steps}")

    @property
    def steps(self) -> int:
        return self.train_steps or (1500 if self.quick else 6000)

    def implicit(self, name: str) -> int:
        """The implicit families' sizes, with their quick / full defaults."""
        given = {"subjects": self.implicit_subjects, "test_subjects": self.implicit_test_subjects,
                 "steps": self.implicit_steps}[name]
        quick, full = {"subjects": (12, 40), "test_subjects": (2, 6), "steps": (600, 4000)}[name]
        return given if given is not None else (quick if self.quick else full)


@dataclass(frozen=True)
class Reconstruction:
    vertices: np.ndarray | None   # (H, N, 3) float64 mm, one per test head (registered families)
    info: dict                    # what it took: latent sizes, parameters, seconds
    metrics: dict | None = None   # families that reconstruct surfaces, not vertices, score themselves


Contender = Callable[[HeadDataset, FidelityConfig, Path], Reconstruction]
CONTENDERS: dict[str, Contender] = {}


def contender(name: str):
    """Decorator: add a family to the benchmark."""
    def wrap(fn: Contender) -> Contender:
        CONTENDERS[name] = fn
        return fn
    return wrap


def _test_vertices(data: HeadDataset) -> torch.Tensor:
    return torch.as_tensor(data.vertices[data.registered_rows("test")])


@contender("pca")
def _pca(data: HeadDataset, cfg: FidelityConfig, work: Path) -> Reconstruction:
    start = time.perf_counter()
    half = cfg.latent_size // 2
    model = PCAModel.from_dataset(data, PCAConfig(half, cfg.latent_size - half))
    model.save(work / "pca")
    with torch.no_grad():
        test = _test_vertices(data)
        recon = model.decode(model.project(test)).double().numpy()
    return Reconstruction(recon, {"latent_sizes": model.latent_sizes, "parameters": 0,
                                  "seconds": time.perf_counter() - start})


@contender("regional")
def _regional(data: HeadDataset, cfg: FidelityConfig, work: Path) -> Reconstruction:
    from neuralmorph.models.regional.model import RegionalConfig, RegionalModel, RegionalTrainData
    from neuralmorph.training import TrainerConfig, train

    start = time.perf_counter()
    model = RegionalModel.build(data, RegionalConfig(latent_size=cfg.latent_size), seed=cfg.seed)
    steps = cfg.steps
    # lr 3e-4: the embeddings start from a per-region PCA, which a larger step size throws away (measured:
    # 1e-3 climbs from 0.53 to 1.55 mm in the first 250 steps and has not recovered by step 500).
    trainer = TrainerConfig(max_steps=steps, batch_size=32, lr=3e-4, weight_decay=0.01, checkpoint_every=0, val_every=0,
                            seed=cfg.seed, device=cfg.device, tensorboard=False)
    run = work / "regional_run"
    if run.exists():  # a fresh run each time: the trainer refuses to overwrite checkpoints
        import shutil

        shutil.rmtree(run)
    model = train(model, RegionalTrainData(data, "train"), trainer, run, progress=False).eval()
    model.fit_prior(data)
    model.save(run / "model")  # what the numbers came from, for `neuralmorph evaluate` / the benchmarks
    trained_s = time.perf_counter() - start
    test = _test_vertices(data)
    chunks = test.split(64)  # heads are refined together, a chunk at a time
    recon = np.concatenate([model.decode(model.refine(c, steps=cfg.refine_steps)).detach().double().cpu().numpy()
                            for c in tqdm(chunks, desc="regional: encode + refine", unit="chunk", leave=False)])
    params = sum(p.numel() for p in model.parameters())
    return Reconstruction(recon, {"latent_sizes": model.latent_sizes, "parameters": int(params),
                                  "train_steps": steps, "train_seconds": trained_s,
                                  "reconstruction": f"encode, then {cfg.refine_steps} steps of latent refinement (mean vertex distance)",
                                  "seconds": time.perf_counter() - start})


def _implicit_data(cfg: FidelityConfig, work: Path) -> HeadDataset:
    """The implicit families' population: fewer identities, with raw scans (shared by both families)."""
    folder = work / "implicit_data"
    spec = {"subjects": cfg.implicit("subjects"), "expressions": cfg.implicit_expressions, "seed": cfg.seed,
            "local_fraction": cfg.implicit_local_fraction}
    stamp = folder / "fidelity_spec.json"
    if stamp.is_file() and stamp.read_text() == str(spec):
        return HeadDataset.load(folder)
    data = synthesize(SynthConfig(out=folder, scans=True, **spec), progress=False)
    stamp.write_text(str(spec))
    return data


def _implicit(family: str, data: HeadDataset, cfg: FidelityConfig, work: Path) -> Reconstruction:
    """Train an implicit family on scans, fit single-view clouds of held-out subjects, score the meshes."""
    import shutil

    from neuralmorph.data.head_model import HeadModel
    from neuralmorph.data.observe import single_view_points
    from neuralmorph.fitting.implicit import ImplicitFitConfig, fit_point_clouds
    from neuralmorph.models.implicit.model import (ImplicitGlobalConfig, ImplicitGlobalModel, ImplicitLocalConfig,
                                            ImplicitLocalModel)
    from neuralmorph.training import TrainerConfig, train

    start = time.perf_counter()
    scans = _implicit_data(cfg, work)
    if family == "implicit-local":
        klass, config = ImplicitLocalModel, ImplicitLocalConfig()
    else:
        # widened so its SDF network has about as many parameters as the local ensemble (comparable size)
        klass, config = ImplicitGlobalModel, ImplicitGlobalConfig(sdf_hidden=IMPLICIT_GLOBAL_HIDDEN)
    model, samples = klass.build(scans, config, root=work / "implicit_data", split="train", seed=cfg.seed)
    run = work / f"{family}_run"
    if run.exists():  # a fresh run each time: the trainer refuses to overwrite checkpoints
        shutil.rmtree(run)
    trainer = TrainerConfig(max_steps=cfg.implicit("steps"), batch_size=4, lr=2e-3, checkpoint_every=0, val_every=0,
                            seed=cfg.seed, device=cfg.device, tensorboard=False)
    model = train(model, samples, trainer, run, progress=False).eval()
    model.fit_prior()
    model.save(run / "model")  # what the numbers came from, for `bench extraction` and benchmarks/
    trained_s = time.perf_counter() - start

    faces = scans.faces
    regions = {"face": HeadModel.load().regions["face"]}
    # head_pose: a test head may have turned on its neck further than any training expression did
    fit_cfg = ImplicitFitConfig(steps=cfg.implicit_fit_steps, mesh_resolution=cfg.implicit_mesh_resolution,
                                seed=cfg.seed, eval_points=0, head_pose=True)
    test_subjects = sorted({h.subject for h in scans.heads if h.split == "test"})[:cfg.implicit("test_subjects")]
    rows, fit_s = [], []
    rng = np.random.default_rng(cfg.seed)
    for subject in tqdm(test_subjects, desc=f"{family}: fit", unit="subject", leave=False):
        idx = [h.registered for h in scans.heads if h.subject == subject and h.registered >= 0]
        clouds = [single_view_points(scans.vertices[i], faces, rng)[0] for i in idx]
        result = fit_point_clouds(model, clouds, fit_cfg)
        fit_s.append(result.seconds)
        for i, mesh in zip(idx, result.meshes):
            m = evaluate(mesh, Mesh(scans.vertices[i].astype(np.float64), faces), IMPLICIT_PROTOCOL,
                         regions=regions)["metrics"]
            rows.append({k.replace("face/", "") + ("_face" if k.startswith("face/") else ""): v for k, v in m.items()})
    metrics = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
    counts = model.parameter_counts()
    info = {"latent_sizes": model.latent_sizes, "parameters": counts["field"] + counts["deformation"],
            "parameter_counts": counts, "train_steps": trainer.max_steps, "train_seconds": trained_s,
            "train_subjects": len(samples.subjects), "local_fraction": cfg.implicit_local_fraction,
            "test_subjects": test_subjects, "observations": len(rows),
            "fit_seconds_per_subject": float(np.median(fit_s)),
            "reconstruction": f"single-view 2,500-point clouds, {cfg.implicit_fit_steps} fitting steps per subject "
                              "(a head pose per observation), "
                              f"meshes at {cfg.implicit_mesh_resolution}³, render protocol with a 20 mm neck cut",
            "protocol": IMPLICIT_PROTOCOL.as_dict(),
            "seconds": time.perf_counter() - start}
    return Reconstruction(None, info, metrics)


IMPLICIT_PROTOCOL = Protocol(kind="render", neck_cut_mm=20.0)
"""NPHM's render protocol with its neck cut: the registered ground truth is an open tube at the neck and
an SDF must close it somewhere; points less than 20 mm above the ground truth's lowest vertex are not scored."""

IMPLICIT_GLOBAL_HIDDEN = 240
"""SDF width of the global family in this benchmark: 5 × 240 has about the local ensemble's field size."""


@contender("implicit-global")
def _implicit_global(data: HeadDataset, cfg: FidelityConfig, work: Path) -> Reconstruction:
    return _implicit("implicit-global", data, cfg, work)


@contender("implicit-local")
def _implicit_local(data: HeadDataset, cfg: FidelityConfig, work: Path) -> Reconstruction:
    return _implicit("implicit-local", data, cfg, work)


def score(recon: np.ndarray, truth: np.ndarray, faces: np.ndarray, protocol_rows: np.ndarray,
          regions: dict[str, np.ndarray], seed: int) -> dict[str, float]:
    """Mean per-vertex error over all heads, plus the mean points-protocol metrics over `protocol_rows`."""
    metrics = {"vertex_error_mm": float(np.linalg.norm(recon - truth, axis=-1).mean())}
    for name, ids in regions.items():
        metrics[f"{name}/vertex_error_mm"] = float(np.linalg.norm(recon[:, ids] - truth[:, ids], axis=-1).mean())
    rows = [evaluate(Mesh(recon[i], faces), Mesh(truth[i], faces), Protocol(n_points=100_000, seed=seed),
                     regions=regions)["metrics"] for i in protocol_rows]
    for key in rows[0]:
        if key not in metrics:
            metrics[key] = float(np.nanmean([r[key] for r in rows]))
    return metrics


def run_fidelity(cfg: FidelityConfig) -> dict:
    from neuralmorph.data.head_model import HeadModel

    out = Path(cfg.out)
    work = Path(cfg.work_dir) if cfg.work_dir else out.parent / f"{out.stem}_work"
    data = synthesize(SynthConfig(out=work / "data", subjects=cfg.subjects, expressions=cfg.expressions,
                                  seed=cfg.seed, scans=False, local_fraction=cfg.local_fraction),
                      progress=False)
    truth = _test_vertices(data).double().numpy()
    protocol_rows = np.linspace(0, len(truth) - 1, min(cfg.protocol_heads, len(truth))).round().astype(int)
    regions = {"face": HeadModel.load().regions["face"]}
    results, infos = {}, {}
    for name in tqdm(cfg.families, desc="fidelity", unit="family"):
        fn = CONTENDERS[name]
        recon = fn(data, cfg, work)
        results[name] = (recon.metrics if recon.metrics is not None
                         else score(recon.vertices, truth, data.faces, protocol_rows, regions, cfg.seed))
        infos[name] = recon.info
    report = {
        "models": results,
        "protocol": {"latent_size": cfg.latent_size, "quick": cfg.quick, "subjects": cfg.subjects,
                     "local_fraction": cfg.local_fraction, "train_steps": cfg.steps,
                     "expressions": cfg.expressions, "seed": cfg.seed, "test_heads": int(len(truth)),
                     "protocol_heads": int(len(protocol_rows)), "points_protocol": Protocol(n_points=100_000, seed=cfg.seed).as_dict(),
                     "task": "reconstruct held-out registered heads (unseen identities, with expressions)",
                     "families": infos, "units": "mm"},
    }
    write_json(out, report)
    keys = ("vertex_error_mm", "face/vertex_error_mm", "chamfer_l1_mm", "fscore@1mm", "chamfer_l1_mm_face",
            "fscore@1mm_face")
    print(f"{'family':16s}" + "".join(f"{k:>21s}" for k in keys))
    for name, m in results.items():
        print(f"{name:16s}" + "".join(f"{m[k]:21.3f}" if k in m else f"{'-':>21s}" for k in keys))
    print(f"-> {out}")
    return report
