"""Build → train → fit the prior → save: the one path from a dataset to a saved model of any family.

The `train FAMILY` verb, the benchmarks and the demo all call `train_model`; what differs between
families is decided by the family through the contract (`models/base.py`): whether it trains at all
(`trainable`), what it trains on (`training_set`) and is scored on (`validation_set`: the val split during
training; `test_set`: the test split after the last step), how it is built and how its prior is fitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuralmorph.atomic import check_output_dir
from neuralmorph.config import Config
from neuralmorph.data.dataset import HeadDataset
from neuralmorph.models.base import ModelConfig, MorphableModel
from neuralmorph.training import TrainerConfig, is_main_process, train

MODEL_FOLDER = "model"
"""A trainable family's run folder keeps the finished model here, beside checkpoints/ and the logs."""


@dataclass
class Trained:
    model: MorphableModel
    folder: Path            # where the model was saved
    training_set: Any       # what it was trained on (None for closed-form families)


def train_model(family: type[MorphableModel], dataset: HeadDataset, config: ModelConfig, out: str | Path, *,
                trainer: TrainerConfig | None = None, samples: Config | None = None, split: str = "train",
                init: str | Path | None = None, resume: bool = False, progress: bool = True,
                run_info: dict | None = None, overwrite: bool = False) -> Trained:
    """A model of `family` for `dataset`, saved.

    Closed-form families are built and saved to `out`. Trainable ones are built (or loaded from `init`,
    a saved model of the same family, and given this run's config through `continue_with`), trained by
    the shared trainer with `out` as the run folder (checkpoints, metrics, `resume`), their priors
    fitted, and saved to `out/model`. Every model is saved with its `training_record` (steps, and its
    `held_out_error` against the mean head's), which `fit` checks (`MorphableModel.training_concerns`).
    `run_info`: extra fields for the run's run_config.json. An earlier
    model or run in `out` is replaced only with `overwrite`. Under torchrun only the main process fits
    the prior and saves.
    """
    out = Path(out)
    if not family.trainable:
        check_output_dir(out, "model", overwrite)
        model = family.build(dataset, config, split=split)
        model.training_record = {"split": split, "steps": None, "warmup_steps": None,
                                 "held_out": model.held_out_error(dataset, split)}
        model.save(out, overwrite)
        return Trained(model, out, None)
    trainer = trainer if trainer is not None else family.trainer_defaults()
    data = family.training_set(dataset, config, split, samples, seed=trainer.seed)
    if init is not None:
        model = family.load(init).continue_with(config)
    else:
        model = family.build(dataset, config, data, split=split, seed=trainer.seed)
    run = {"family": family.family, "model": model.config.to_dict(), "split": split,
           "samples": None if samples is None else samples.to_dict(),
           "init": None if init is None else str(init), **(run_info or {})}
    # A split scores the run only when it is not the one trained on (`--split val` / `--split test`).
    val_set = family.validation_set(dataset, config, samples) if split != "val" else None
    test_set = family.test_set(dataset, config, samples) if split != "test" else None
    model = train(model, data, trainer, out, val_set=val_set, test_set=test_set,
                  resume=resume, run_config=run, progress=progress, overwrite=overwrite)
    folder = out / MODEL_FOLDER
    if is_main_process():
        model.eval()
        model.fit_prior(dataset, data)
        model.training_record = {"split": split, "steps": trainer.max_steps, "warmup_steps": trainer.warmup_steps,
                                 "held_out": model.held_out_error(dataset, split, data)}
        model.save(folder, overwrite=True)  # inside the run folder this run holds
    return Trained(model, folder, data)
