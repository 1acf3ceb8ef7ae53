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

import numpy as np
import torch
from tqdm import tqdm

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.errors import InputError
from neuralmorph.evaluation.plot import line_plot_svg
from neuralmorph.models.base import MorphableModel, RegisteredModel


def compactness(model: MorphableModel) -> dict[str, list[float]]:
    """Space -> cumulative explained-variance fraction for k = 1..len(spectrum)."""
    out = {}
    for space in model.latent_sizes:
        var = model.variance_spectrum(space).double().cpu().numpy()
        out[space] = (np.cumsum(var) / var.sum()).tolist() if var.sum() > 0 else []
    return out


def generalisation_mm(model: RegisteredModel, held_out: torch.Tensor) -> float:
    """Mean per-vertex error (mm) of the model's best fit to held-out heads (H, N, 3): its `project`
    (the exact projection for linear families, encode-then-refine for autoencoders)."""
    latents = model.project(held_out)
    with torch.no_grad():
        fitted = model.decode(latents)
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
                  seed: int = 0, progress: bool = True, where: str = "model") -> dict:
    """All three statistics; returns {"metrics": {...}, "curves": {...}, "protocol": {...}}.
    `where`: what errors about the model call it (the CLI passes its folder)."""
    # the statistics compare registered vertices: a mesh family that projects registered heads
    if model.geometry != "mesh":
        raise InputError(where, f"holds a {model.family!r} model, a signed-distance ({model.geometry}) family without "
                                "registered vertices; model-quality statistics need a mesh family (e.g. pca, regional)")
    model.require_fit("registered", where)
    data = dataset.where
    if dataset.vertices is None:
        raise InputError(data, "needs registered heads")
    train_rows, test_rows = dataset.registered_rows("train"), dataset.registered_rows("test")
    if len(test_rows) == 0 or len(train_rows) == 0:
        raise InputError(data, "needs both a train and a test split")
    if dataset.n_vertices != model.n_vertices:
        raise InputError(data, f"has {dataset.n_vertices} vertices per head, the model {model.n_vertices}")
    as_tensor = lambda rows: torch.as_tensor(dataset.vertices[rows], device=model.device)  # noqa: E731
    training, held_out = as_tensor(train_rows), as_tensor(test_rows)
    cutable = model.truncatable
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
                "generalisation": f"{model.projection} of every test-split head (no alignment: same frame)",
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
