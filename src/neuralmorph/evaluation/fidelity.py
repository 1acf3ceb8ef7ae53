"""`neuralmorph bench fidelity`: every family reconstructs the same held-out heads at the same latent size.

Data: the embedded generator's split (held-out identities with expressions). Each family is trained on
the train split and reconstructs every test-split head from its registered mesh (PCA: the exact
projection; autoencoders: encode then decode). Scores are the evaluation protocol's, in mm: mean
per-vertex error over all heads, and the points protocol (chamfer, F-scores, normal consistency) on a
fixed subset. Families register a `Contender`; each returns its reconstructions and what it cost.
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
        if self.latent_size < 2:
            raise InputError("--latent-size", f"must be at least 2 (PCA splits it in two), got {self.latent_size}")
        if not 0.0 <= self.local_fraction <= 1.0:
            raise InputError("--local-fraction", f"must be in [0, 1], got {self.local_fraction}")
        if self.refine_steps < 0:
            raise InputError("--refine-steps", f"must be ≥ 0, got {self.refine_steps}")
        if self.train_steps is not None and self.train_steps < 1:
            raise InputError("--train-steps", f"must be positive, got {self.train_steps}")

    @property
    def steps(self) -> int:
        return self.train_steps or (1500 if self.quick else 6000)


@dataclass(frozen=True)
class Reconstruction:
    vertices: np.ndarray   # (H, N, 3) float64 mm, one per test head
    info: dict             # what it took: latent sizes, parameters, seconds


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
    from neuralmorph.models.regional import RegionalConfig, RegionalModel, RegionalTrainData
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
    for name, fn in tqdm(CONTENDERS.items(), desc="fidelity", unit="family"):
        recon = fn(data, cfg, work)
        results[name] = score(recon.vertices, truth, data.faces, protocol_rows, regions, cfg.seed)
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
    keys = ("vertex_error_mm", "face/vertex_error_mm", "chamfer_l1_mm", "fscore@1mm")
    print(f"{'family':12s}" + "".join(f"{k:>22s}" for k in keys))
    for name, m in results.items():
        print(f"{name:12s}" + "".join(f"{m[k]:22.3f}" for k in keys))
    print(f"-> {out}")
    return report
