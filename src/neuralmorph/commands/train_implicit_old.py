"""`neuralmorph train implicit-global` and `train implicit-local`: train an implicit family on a dataset.

One joint stage through the shared trainer (checkpoints, bit-identical --resume, torchrun): the
training items are streamed from the dataset's scans and registered heads (`samples.py`), the codebooks
train with the networks, and at the end the priors are fitted to the codebooks and the model is saved
to out/model, like the regional runner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import tyro

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.models.implicit.model import (ImplicitGlobalConfig, ImplicitGlobalModel, ImplicitLocalConfig,
                                        ImplicitLocalModel, ImplicitModel)
from neuralmorph.models.implicit.samples import ImplicitSampleConfig, ImplicitSamples
from neuralmorph.training import TrainerConfig, is_main_process, train


def _trainer_defaults(lr: float = 2e-3) -> TrainerConfig:
    # Items are whole point sets (~1,400 points each), so a batch of 4 heads is already ~5,600 SDF queries
    # with second derivatives. lr: measured on 6 synthetic subjects, 1000 steps (docs/implicit.md) —
    # 2e-3 reached lower surface and deformation errors than NPHM's 5e-4 for these small networks.
    return TrainerConfig(max_steps=2000, batch_size=4, lr=lr, checkpoint_every=500)


@dataclass(frozen=True)
class TrainImplicitGlobalConfig:
    """Train the implicit-global family (NPMs / DeepSDF: one SDF MLP + a deformation MLP) from scans."""

    data: Path
    """Dataset folder (from `data synth` or `data ingest`), with registered heads; raw scans are used when present."""
    out: Path
    """Run folder: checkpoints/, metrics.csv, run_config.json, and the trained model in out/model."""
    model: ImplicitGlobalConfig = field(default_factory=ImplicitGlobalConfig)
    """Model sizes and loss weights (`--model.identity-size`, `--model.deformation`, ...)."""
    samples: ImplicitSampleConfig = field(default_factory=ImplicitSampleConfig)
    """What each streamed training item holds (`--samples.surface-points`, `--samples.near-sigma-mm`, ...)."""
    trainer: Annotated[TrainerConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=_trainer_defaults)
    """The trainer (`--max-steps`, `--batch-size`, `--lr`, `--device`, ...)."""
    split: Literal["train", "val", "test"] = "train"
    """Which split's heads to train on."""
    resume: bool = False
    """Continue the run in --out from its latest checkpoint (same flags as the original run)."""


@dataclass(frozen=True)
class TrainImplicitLocalConfig:
    """Train the implicit-local family (NPHM: anchored local SDF ensemble + a deformation MLP) from scans."""

    data: Path
    """Dataset folder (from `data synth` or `data ingest`), with registered heads; raw scans are used when present."""
    out: Path
    """Run folder: checkpoints/, metrics.csv, run_config.json, and the trained model in out/model."""
    model: ImplicitLocalConfig = field(default_factory=ImplicitLocalConfig)
    """Model sizes and loss weights (`--model.anchor-pairs`, `--model.neighbours`, ...)."""
    samples: ImplicitSampleConfig = field(default_factory=ImplicitSampleConfig)
    """What each streamed training item holds (`--samples.surface-points`, `--samples.near-sigma-mm`, ...)."""
    trainer: Annotated[TrainerConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=_trainer_defaults)
    """The trainer (`--max-steps`, `--batch-size`, `--lr`, `--device`, ...)."""
    split: Literal["train", "val", "test"] = "train"
    """Which split's heads to train on."""
    resume: bool = False
    """Continue the run in --out from its latest checkpoint (same flags as the original run)."""


@torch.no_grad()
def held_out_surface_error(model: ImplicitModel, samples: ImplicitSamples, points: int = 5000,
                           seed: int = 12345) -> dict[str, float]:
    """Mean and 90th percentile |SDF| in mm at fresh surface points (never in the training pools) of every
    training head's supervising surface (its subject's neutral scan for forward models, its own scan for
    backward ones), with the trained codes. Forward models are measured in canonical space, backward ones
    through the warp. Returns {"mean_mm", "p90_mm", "face_mean_mm"}."""
    was = model.training
    model.eval()
    lat = model.training_latents()
    errs, face = [], []
    heads = [k for k in range(len(samples.head_ids)) if model.deformation == "backward" or samples.is_neutral[k] > 0]
    for k in heads:
        p, _, is_face = samples.held_out_surface(k, points, seed)
        x = torch.as_tensor(p, device=model.device)[None]
        zi, ze = lat["identity"][k:k + 1].to(model.device), lat["expression"][k:k + 1].to(model.device)
        f = model.sdf(x, zi) if model.deformation == "forward" else model.sdf_posed(x, zi, ze)
        errs.append(f[0].abs().cpu().numpy() * model.frame.mm_per_unit)
        face.append(is_face)
    model.train(was)
    e, m = np.concatenate(errs), np.concatenate(face)
    return {"mean_mm": float(e.mean()), "p90_mm": float(np.percentile(e, 90)),
            "face_mean_mm": float(e[m].mean()) if m.any() else float("nan")}


def _run(cfg, family: type[ImplicitModel]) -> ImplicitModel:
    start = time.perf_counter()
    dataset = HeadDataset.load(cfg.data)
    model, samples = family.build(dataset, cfg.model, cfg.samples, root=cfg.data, split=cfg.split,
                                  seed=cfg.trainer.seed)
    run = {"family": family.family, "model": cfg.model.to_dict(), "samples": cfg.samples.to_dict(),
           "data": str(cfg.data), "split": cfg.split}
    model = train(model, samples, cfg.trainer, cfg.out, resume=cfg.resume, run_config=run)
    if is_main_process():
        model.eval()
        model.fit_prior()
        model.save(Path(cfg.out) / "model")
        err = held_out_surface_error(model, samples)
        counts = model.parameter_counts()
        print(f"trained {family.family} ({model.deformation} deformation; field {counts['field']:,}, deformation "
              f"{counts['deformation']:,} parameters; {len(samples.subjects)} subjects, {len(samples.head_ids)} heads) "
              f"in {time.perf_counter() - start:.0f} s; held-out scan surface |sdf| mean {err['mean_mm']:.2f} mm, "
              f"p90 {err['p90_mm']:.2f} mm -> {Path(cfg.out) / 'model'}")
    return model


def run_train_implicit_global(cfg: TrainImplicitGlobalConfig) -> ImplicitModel:
    return _run(cfg, ImplicitGlobalModel)


def run_train_implicit_local(cfg: TrainImplicitLocalConfig) -> ImplicitModel:
    return _run(cfg, ImplicitLocalModel)
