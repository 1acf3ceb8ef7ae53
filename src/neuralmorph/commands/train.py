"""`neuralmorph train FAMILY`: one verb per registered family, generated from the family's configs.

Every family gets `--data`, `--out` and `--split`; its `Config` becomes `--model.*` (plain `--NAME` when
the family says so, like `train pca --identity-dims K`), its `Samples` config `--samples.*`, and a
trainable family gets the trainer's flags (`--max-steps`, `--lr`, `--device`, ...) with its own
defaults, `--init` and `--resume`. The run itself is `models.train.train_model`.
"""

from __future__ import annotations

import time
from dataclasses import field, make_dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.models import MODELS, MorphableModel
from neuralmorph.models.train import train_model
from neuralmorph.outputs import Output, Verb
from neuralmorph.training import TrainerConfig, is_main_process
from neuralmorph.training.run_folder import RUN_KIND, check_run_folder


def train_command(family: type[MorphableModel]) -> type:
    """The typed config of `train FAMILY` (its fields are the flags)."""
    where = "the run folder: checkpoints/, metrics.csv, run_config.json, and the trained model in out/model" \
        if family.trainable else "the model folder to write (config.json + weights.safetensors)"
    fields: list[tuple] = [
        ("data", Annotated[Path, tyro.conf.arg(help="Dataset folder (from `data synth` or `data ingest`).")]),
        ("out", Annotated[Path, tyro.conf.arg(help=where[0].upper() + where[1:] + ".")]),
    ]
    model_type = family.Config if family.cli_model_prefix else Annotated[family.Config, tyro.conf.OmitArgPrefixes]
    fields.append(("model", Annotated[model_type, tyro.conf.arg(help="Model sizes, losses and schedules.")],
                   field(default_factory=family.Config)))
    if family.Samples is not None:
        fields.append(("samples", Annotated[family.Samples, tyro.conf.arg(help="What each streamed training item holds.")],
                       field(default_factory=family.Samples)))
    if family.trainable:
        fields += [
            ("trainer", Annotated[TrainerConfig, tyro.conf.OmitArgPrefixes,
                                  tyro.conf.arg(help="The trainer (`--max-steps`, `--lr`, `--device`, ...).")],
             field(default_factory=family.trainer_defaults)),
            ("init", Annotated[Path | None, tyro.conf.arg(
                help="A saved model of this family to train further from, where the family allows it "
                     "(e.g. regional stage 2 from stage 1).")], None),
            ("resume", Annotated[bool, tyro.conf.arg(
                help="Continue the run in --out from its latest checkpoint (same flags as the original run).")], False),
        ]
    fields.append(("split", Annotated[Literal["train", "val", "test"], tyro.conf.arg(help="Which split to train on.")],
                   "train"))
    name = "Train" + "".join(part.title() for part in family.family.split("-"))
    cls = make_dataclass(name, fields, bases=(Verb,), frozen=True,
                         namespace={"family": family, "outputs": _train_outputs})
    cls.__doc__ = f"Train a model of the {family.family} family. {family.summary}"
    return cls


def _train_outputs(cfg) -> list[Output]:
    """`--out`: a model folder (closed-form families) or a run folder (new, continued by `--resume`,
    replaced by `--overwrite`, never while another run writes it)."""
    if not cfg.family.trainable:
        return [Output("--out", cfg.out, "model")]
    return [Output("--out", cfg.out, RUN_KIND, check=lambda overwrite: check_run_folder(cfg.out, cfg.resume, overwrite))]


def run_train(cfg) -> MorphableModel:
    """Build, train, fit the prior and save a model of `cfg.family`, then say what was made."""
    start = time.perf_counter()
    family = cfg.family
    dataset = HeadDataset.load(cfg.data)
    trained = train_model(family, dataset, cfg.model, cfg.out, trainer=getattr(cfg, "trainer", None),
                          samples=getattr(cfg, "samples", None), split=cfg.split, init=getattr(cfg, "init", None),
                          resume=getattr(cfg, "resume", False), run_info={"data": str(cfg.data)},
                          overwrite=cfg.overwrite)
    if is_main_process():
        print(f"trained {family.family} on the {cfg.split} split of {cfg.data} "
              f"({trained.model.training_summary(trained.training_set)}) "
              f"in {time.perf_counter() - start:.1f} s -> {trained.folder}")
    return trained.model


def train_commands() -> dict[str, tuple[type, object]]:
    """`train` verb group: family name -> (config, runner), for every registered family."""
    return {name: (train_command(family), run_train) for name, family in MODELS.items()}
