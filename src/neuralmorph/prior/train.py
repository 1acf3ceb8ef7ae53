"""Training a diffusion prior beside a model: the shared trainer over the model's latents of a dataset.

    model ── dataset_latents(dataset, split) (or its own training codes) ── (N, D) rows ── `train` ──
    out/ (checkpoints, metrics.csv, run_config.json) ── out/prior (config.json + weights.safetensors)

Checkpoints, bit-identical `resume` and torchrun/DDP are the trainer's (`neuralmorph.training`).
"""

from __future__ import annotations

from pathlib import Path

from neuralmorph.errors import InputError
from neuralmorph.models.base import Latents, MorphableModel
from neuralmorph.prior.diffusion import DiffusionConfig, DiffusionPrior
from neuralmorph.prior.latent import PRIOR_FOLDER, new_diffusion_prior, prior_training_latents
from neuralmorph.training import TrainerConfig, is_main_process
from neuralmorph.training.trainer import train

def prior_trainer_defaults() -> TrainerConfig:
    """What `train prior` starts from: latents are small, so big batches and many cheap steps."""
    return TrainerConfig(max_steps=4000, batch_size=256, lr=1e-3, warmup_steps=100, weight_decay=0.0,
                         checkpoint_every=1000, val_every=0)


def training_latents_for(model: MorphableModel, dataset=None, split: str = "train") -> tuple[Latents, dict]:
    """The latents a prior learns from and where they came from: the dataset's heads (`dataset_latents`) or,
    without a dataset, the codes an auto-decoder holds for its own training heads."""
    if dataset is not None:
        return prior_training_latents(model, dataset, split), {"data": str(dataset.where), "split": split}
    own = model.training_latents()
    if own is None:
        raise InputError("--data", f"a {model.family!r} model holds no codes of its training heads: give the dataset "
                                   "to learn the prior from")
    return {n: z.detach().float().cpu() for n, z in own.items()}, {"data": "the model's training codes", "split": None}


def train_prior(model: MorphableModel, latents: Latents, source: dict, config: DiffusionConfig, out: str | Path,
                trainer: TrainerConfig | None = None, resume: bool = False, progress: bool = True,
                overwrite: bool = False, run_info: dict | None = None) -> DiffusionPrior:
    """Train a diffusion prior over `model`'s `latents` (space -> (N, K)); saved to out/prior (main process)."""
    trainer = trainer if trainer is not None else prior_trainer_defaults()
    prior, rows = new_diffusion_prior(model, latents, config, source)
    run = {"kind": "diffusion prior", "prior": config.to_dict(), "family": model.family, **source, **(run_info or {})}
    prior = train(prior, rows, trainer, out, resume=resume, run_config=run, progress=progress, overwrite=overwrite)
    if is_main_process():
        prior.eval().save(Path(out) / PRIOR_FOLDER, overwrite=True)  # inside the run folder this run holds
    return prior
