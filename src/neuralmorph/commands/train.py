"""`neuralmorph train <family>`: fit a model to a dataset and save it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.errors import InputError
from neuralmorph.models.base import MorphableModel
from neuralmorph.models.pca import PCAConfig, PCAModel
from neuralmorph.models.regional.model import RegionalConfig, RegionalModel, RegionalTrainData
from neuralmorph.models.regional.prior import fit_control_prior
from neuralmorph.training import TrainerConfig, is_main_process, train


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
    model = PCAModel.from_dataset(dataset, PCAConfig(cfg.identity_dims, cfg.expression_dims, cfg.explained_variance), cfg.split)
    model.save(cfg.out)
    spec = model.identity_spectrum
    k = model.latent_sizes["identity"]
    kept = float(spec[:k].sum() / spec.sum()) if len(spec) else 0.0
    print(f"trained pca on the {cfg.split} split of {cfg.data}: identity {k} "
          f"({kept:.1%} of variance), expression {model.latent_sizes['expression']} components "
          f"in {time.perf_counter() - start:.1f} s -> {cfg.out}")
    return model


@dataclass(frozen=True)
class TrainRegionalConfig:
    """Train the regional model (LAMM family): stage 1 autoencodes, stage 2 learns control-vertex edits."""

    data: Path
    """Dataset folder (from `data synth` or `data ingest`)."""
    out: Path
    """Run folder: checkpoints/, metrics.csv, run_config.json, and the trained model in out/model."""
    model: RegionalConfig = field(default_factory=RegionalConfig)
    """Model sizes, losses and schedules (`--model.latent-size`, `--model.stage`, ...)."""
    trainer: Annotated[TrainerConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=TrainerConfig)
    """The trainer (`--max-steps`, `--checkpoint-every`, `--device`, ...)."""
    init: Path | None = None
    """A trained stage-1 model folder to start from (stage 2 needs one)."""
    resume: bool = False
    """Continue the run in --out from its latest checkpoint (same flags as the original run)."""


_SCHEDULE_FIELDS = ("stage", "loss", "deep_supervision", "deep_supervision_weight", "ae_weight", "manip_weight",
                    "locality_weight", "region_prob", "alpha_min", "alpha_max_start", "alpha_max_end",
                    "alpha_ramp_steps", "augment_noise_mm")


def run_train_regional(cfg: TrainRegionalConfig) -> MorphableModel:
    start = time.perf_counter()
    dataset = HeadDataset.load(cfg.data)
    if cfg.init is not None:
        model = MorphableModel.load(cfg.init)
        if not isinstance(model, RegionalModel):
            raise InputError(cfg.init, f"holds a {model.family!r} model, not a regional one")
        # The stage-1 model keeps its architecture; this run's losses and schedules come from the flags.
        model = model.with_config(**{k: v for k, v in cfg.model.to_dict().items() if k in _SCHEDULE_FIELDS})
    else:
        if cfg.model.stage == 2:
            raise InputError("--model.stage", "stage 2 starts from a trained stage-1 model: pass --init")
        model = RegionalModel.build(dataset, cfg.model, seed=cfg.trainer.seed)
    test = RegionalTrainData(dataset, "test") if len(dataset.registered_rows("test")) else None
    run = {"family": "regional", "model": cfg.model.to_dict(), "data": str(cfg.data),
           "init": None if cfg.init is None else str(cfg.init)}
    model = train(model, RegionalTrainData(dataset, "train"), cfg.trainer, cfg.out, val_set=test,
                  resume=cfg.resume, run_config=run)
    if is_main_process():
        model.eval()
        model.fit_prior(dataset)
        fit_control_prior(model, dataset)
        model.save(Path(cfg.out) / "model")
        print(f"trained regional (stage {model.config.stage}, latent {model.latent_sizes['global']}) in "
              f"{time.perf_counter() - start:.0f} s -> {Path(cfg.out) / 'model'}")
    return model
