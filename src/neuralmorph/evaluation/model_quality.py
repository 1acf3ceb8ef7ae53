"""`neuralmorph evaluate-model`: the classic statistics of a shape model, in millimetres.

- compactness C(k): fraction of the training variance the first k components explain, per latent space;
- generalisation G(k): mean per-vertex error (mm) of the best fit to held-out heads (the test split:
  identities never seen in training) with k components per space;
- specificity S(k): mean per-vertex distance (mm) from heads sampled from the prior to their nearest
  training head — low means the model only makes heads that look like real ones.

Curves over k need a family that can be cut to its first k components (`truncated`, e.g. PCA); other
families (the regional autoencoder) are measured at their own size, generalisation through
encode-then-refine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from neuralmorph.atomic import atomic_dir, write_json
from neuralmorph.data.dataset import HeadDataset
from neuralmorph.errors import InputError
from neuralmorph.evaluation.plot import line_plot_svg
from neuralmorph.evaluation.report import Report
from neuralmorph.models.base import MorphableModel


@dataclass(frozen=True)
class EvaluateModelConfig:
    """Model quality: compactness, generalisation and specificity (mm) against a dataset, with plots."""

    model: Path
    """Model folder."""
    data: Path
    """Dataset folder: its test split measures generalisation, its train split specificity."""
    out: Path
    """Output folder: model_quality.json and model_quality.html (plots and table)."""
    sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    """Latent sizes k (per space) to measure at; capped at the model's own sizes."""
    samples: int = 100
    """Heads drawn from the prior for specificity."""
    seed: int = 0
    """Seed of the prior draws."""
    device: str = "cpu"
    """Torch device."""

    def __post_init__(self):
        if not self.sizes or min(self.sizes) < 1 or self.samples < 1:
            raise InputError("--sizes/--samples", "sizes must be positive integers and samples >= 1")


def compactness(model: MorphableModel) -> dict[str, list[float]]:
    """Space -> cumulative explained-variance fraction for k = 1..len(spectrum)."""
    out = {}
    for space in model.latent_sizes:
        spectrum = getattr(model, f"{space}_spectrum", None)
        if spectrum is None:  # no data spectrum: fall back to the prior's own variances
            spectrum = torch.linalg.eigvalsh(model.prior[space].scale_tril @ model.prior[space].scale_tril.T).flip(0)
        var = spectrum.double().cpu().numpy()
        out[space] = (np.cumsum(var) / var.sum()).tolist() if var.sum() > 0 else []
    return out


def generalisation_mm(model: MorphableModel, held_out: torch.Tensor) -> float:
    """Mean per-vertex error (mm) of the model's best fit to held-out heads (H, N, 3): the exact
    projection for linear families, encode-then-refine for autoencoders."""
    if hasattr(model, "project"):
        with torch.no_grad():
            fitted = model.decode(model.project(held_out))
    elif hasattr(model, "refine"):
        fitted = torch.cat([model.decode(model.refine(c)).detach() for c in held_out.split(64)])
    else:
        return float("nan")
    return float((fitted - held_out).norm(dim=-1).mean())


@torch.no_grad()
def specificity_mm(model: MorphableModel, training: torch.Tensor, n: int, seed: int, chunk: int = 16) -> float:
    """Mean over n prior samples of the per-vertex distance (mm) to the nearest training head (T, N, 3)."""
    samples = model.decode(model.sample(n, seed=seed))
    best = []
    for s in samples.split(chunk):
        d = (s[:, None] - training[None]).norm(dim=-1).mean(dim=-1)  # (chunk, T) mean per-vertex distances
        best.append(d.min(dim=1).values)
    return float(torch.cat(best).mean())


def model_quality(model: MorphableModel, dataset: HeadDataset, sizes: tuple[int, ...], samples: int = 100,
                  seed: int = 0, progress: bool = True) -> dict:
    """All three statistics; returns {"metrics": {...}, "curves": {...}, "protocol": {...}}."""
    if dataset.vertices is None:
        raise InputError("dataset", "needs registered heads")
    train_rows, test_rows = dataset.registered_rows("train"), dataset.registered_rows("test")
    if len(test_rows) == 0 or len(train_rows) == 0:
        raise InputError("dataset", "needs both a train and a test split")
    if dataset.n_vertices != model.n_vertices:
        raise InputError("dataset", f"has {dataset.n_vertices} vertices per head, the model {model.n_vertices}")
    as_tensor = lambda rows: torch.as_tensor(dataset.vertices[rows], device=model.device)  # noqa: E731
    training, held_out = as_tensor(train_rows), as_tensor(test_rows)
    cutable = hasattr(model, "truncated") and hasattr(model, "project")
    full = max(model.latent_sizes.values())
    ks = sorted({min(k, full) for k in sizes}) if cutable else [full]
    curves = {"k": [], "generalisation_mm": [], "specificity_mm": []}
    for k in tqdm(ks, desc="evaluate-model", unit="size", disable=not progress):
        sub = model.truncated(k, k) if cutable else model
        curves["k"].append(k)
        curves["generalisation_mm"].append(generalisation_mm(sub, held_out))
        curves["specificity_mm"].append(specificity_mm(sub, training, samples, seed))
    comp = compactness(model)
    metrics = {
        "generalisation_mm": curves["generalisation_mm"][-1],
        "specificity_mm": curves["specificity_mm"][-1],
        **{f"compactness/{space}@{model.latent_sizes[space]}": (c[model.latent_sizes[space] - 1] if c and model.latent_sizes[space] else 0.0)
           for space, c in comp.items()},
    }
    protocol = {"train_heads": int(len(train_rows)), "test_heads": int(len(test_rows)), "samples": samples,
                "seed": seed, "sizes": ks, "units": "mm", "latent_sizes": model.latent_sizes,
                "generalisation": ("exact projection" if hasattr(model, "project") else "encode, then refine the latents") +
                          " of every test-split head (no alignment: same frame)",
                "specificity": "mean per-vertex distance of each prior sample to its nearest training head"}
    return {"metrics": metrics, "curves": {**curves, "compactness": comp}, "protocol": protocol}


def quality_plots(result: dict) -> list[tuple[str, str]]:
    """(title, svg) for compactness, generalisation and specificity."""
    c = result["curves"]
    comp = {space: (list(range(1, len(v) + 1)), v) for space, v in c["compactness"].items() if v}
    return [
        ("Compactness", line_plot_svg(comp, "Compactness", "components k", "explained variance")),
        ("Generalisation", line_plot_svg({"held-out": (c["k"], c["generalisation_mm"])}, "Generalisation",
                                         "components k per space", "per-vertex error (mm)")),
        ("Specificity", line_plot_svg({"prior samples": (c["k"], c["specificity_mm"])}, "Specificity",
                                      "components k per space", "distance to nearest training head (mm)")),
    ]


def run_evaluate_model(cfg: EvaluateModelConfig) -> dict:
    start = time.perf_counter()
    model = MorphableModel.load(cfg.model, device=cfg.device)
    result = model_quality(model, HeadDataset.load(cfg.data), cfg.sizes, cfg.samples, cfg.seed)
    report = Report(f"Model quality: {cfg.model}")
    c = result["curves"]
    report.add_metrics_table("Per latent size", [{"k": k, "generalisation (mm)": g, "specificity (mm)": s}
                                                 for k, g, s in zip(c["k"], c["generalisation_mm"], c["specificity_mm"])])
    for title, svg in quality_plots(result):
        report.add_svg(title, svg)
    report.add_json("Protocol", result["protocol"])
    with atomic_dir(cfg.out) as tmp:
        write_json(tmp / "model_quality.json", result)
        report.write(tmp / "model_quality.html")
    m = result["metrics"]
    print(f"{cfg.model}: generalisation {m['generalisation_mm']:.3f} mm, specificity {m['specificity_mm']:.3f} mm "
          f"at k={c['k'][-1]} ({time.perf_counter() - start:.1f} s) -> {cfg.out}")
    return result
