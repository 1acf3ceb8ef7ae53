"""`neuralmorph train prior`: a diffusion prior over a trained model's latents (`neuralmorph.prior`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.models.base import MorphableModel
from neuralmorph.outputs import Output, Verb
from neuralmorph.prior.diffusion import DiffusionConfig
from neuralmorph.prior.train import PRIOR_FOLDER, prior_trainer_defaults, train_prior, training_latents_for
from neuralmorph.training import TrainerConfig, is_main_process
from neuralmorph.training.run_folder import RUN_KIND, check_run_folder


@dataclass(frozen=True)
class TrainPriorConfig(Verb):
    """Train a diffusion prior over a model's latents: the joint distribution of the codes of a dataset's
    heads (or of an auto-decoder's own training heads), for `sample --prior` and `fit --prior`."""

    model: Path
    """Trained model folder (any family), or shipped:NAME."""
    out: Path
    """The run folder: checkpoints/, metrics.csv, run_config.json, and the trained prior in out/prior."""
    data: Path | None = None
    """Dataset whose heads' latents the prior learns (the model's `dataset_latents`); unset: the codes an
    auto-decoder (the implicit families) holds for its own training heads."""
    split: Literal["train", "val", "test"] = "train"
    """Which split of --data to learn from."""
    prior: DiffusionConfig = field(default_factory=DiffusionConfig)
    """The denoiser's size, noise schedule and default sampling steps."""
    trainer: Annotated[TrainerConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=prior_trainer_defaults)
    """The trainer (`--max-steps`, `--lr`, `--batch-size`, `--device`, ...)."""
    resume: bool = False
    """Continue the run in --out from its latest checkpoint (same flags as the original run)."""

    def outputs(self) -> list[Output]:
        return [Output("--out", self.out, RUN_KIND, check=lambda overwrite: check_run_folder(self.out, self.resume, overwrite))]


def run_train_prior(cfg: TrainPriorConfig) -> None:
    start = time.perf_counter()
    model = MorphableModel.load(cfg.model)  # latents are read on the CPU; the trainer moves the prior
    dataset = HeadDataset.load(cfg.data) if cfg.data is not None else None
    latents, source = training_latents_for(model, dataset, cfg.split)
    heads = len(next(iter(latents.values())))
    train_prior(model, latents, source, cfg.prior, cfg.out, cfg.trainer, resume=cfg.resume, overwrite=cfg.overwrite,
                run_info={"model": str(cfg.model)})
    if is_main_process():
        print(f"trained a diffusion prior over the {model.family} model's latents of {heads} heads "
              f"({sum(model.latent_sizes.values())} numbers each) in {time.perf_counter() - start:.1f} s "
              f"-> {cfg.out / PRIOR_FOLDER}")
