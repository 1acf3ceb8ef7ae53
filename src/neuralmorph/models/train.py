"""`neuralmorph train <family>`: fit a model to a dataset and save it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.models.pca import PCAConfig, PCAModel


@dataclass(frozen=True)
class TrainPCAConfig:
    """Train the linear 3DMM: identity PCA on neutral heads, expression PCA on residuals."""

    data: Path
    """Dataset folder (from `data synth` or `data ingest`)."""
    out: Path
    """Model folder to write (config.json + weights.safetensors)."""
    identity_dims: int | None = None
    """Identity components (default: by explained variance)."""
    expression_dims: int | None = None
    """Expression components (default: by explained variance)."""
    explained_variance: float = 0.98
    """Variance fraction kept when a size is not given."""
    split: Literal["train", "val", "test"] = "train"
    """Which split to train on."""


def run_train_pca(cfg: TrainPCAConfig) -> PCAModel:
    start = time.perf_counter()
    dataset = HeadDataset.load(cfg.data)
    model = PCAModel.train(dataset, PCAConfig(cfg.identity_dims, cfg.expression_dims, cfg.explained_variance), cfg.split)
    model.save(cfg.out)
    spec = model.identity_spectrum
    k = model.latent_sizes["identity"]
    kept = float(spec[:k].sum() / spec.sum()) if len(spec) else 0.0
    print(f"trained pca on the {cfg.split} split of {cfg.data}: identity {k} "
          f"({kept:.1%} of variance), expression {model.latent_sizes['expression']} components "
          f"in {time.perf_counter() - start:.1f} s -> {cfg.out}")
    return model
