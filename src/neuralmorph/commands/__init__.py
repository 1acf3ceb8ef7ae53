"""The `neuralmorph` commands: every verb's typed config (its fields are the flags, its docstrings the
help) and the runner that hands it to the library, one module per verb group.

`COMMANDS` is the one registry, verb -> (config class, runner); nested dicts are verb groups, whose help
lines are in `GROUP_HELP`. `neuralmorph.cli` builds the command line from it. Library modules never
import from here.
"""

from __future__ import annotations

from neuralmorph.commands.bench import (AppearanceBenchConfig, ExtractionBenchConfig, FidelityConfig, PriorBenchConfig,
                                       RasterizerBenchConfig, run_appearance_bench, run_extraction_bench, run_fidelity,
                                       run_prior_bench, run_rasterizer_bench)
from neuralmorph.commands.data import (FetchConfig, InfoConfig, IngestConfig, SynthConfig, run_fetch, run_info,
                                      run_ingest, run_synth)
from neuralmorph.commands.demo import DemoConfig, run_demo
from neuralmorph.commands.edit import EditConfig, run_edit
from neuralmorph.commands.evaluate import (AlignConfig, EvaluateConfig, EvaluateModelConfig, RealEvalConfig, run_align,
                                          run_evaluate, run_evaluate_model, run_real_eval)
from neuralmorph.commands.fit import FitCommand, run_fit
from neuralmorph.commands.generate import (ExportConfig, InterpolateConfig, SampleConfig, TransferConfig, run_export,
                                          run_interpolate, run_sample, run_transfer)
from neuralmorph.commands.observe import ObserveConfig, run_observe
from neuralmorph.commands.prior import TrainPriorConfig, run_train_prior
from neuralmorph.commands.render import RenderConfig, run_render
from neuralmorph.commands.train import train_commands

# One registry: verb -> (config class, runner). Nested dicts are verb groups.
COMMANDS: dict[str, object] = {
    "data": {
        "synth": (SynthConfig, run_synth),
        "ingest": (IngestConfig, run_ingest),
        "info": (InfoConfig, run_info),
        "fetch": (FetchConfig, run_fetch),
        "observe": (ObserveConfig, run_observe),
    },
    "train": {**train_commands(), "prior": (TrainPriorConfig, run_train_prior)},
    "fit": (FitCommand, run_fit),
    "sample": (SampleConfig, run_sample),
    "interpolate": (InterpolateConfig, run_interpolate),
    "transfer": (TransferConfig, run_transfer),
    "edit": (EditConfig, run_edit),
    "export": (ExportConfig, run_export),
    "align": (AlignConfig, run_align),
    "evaluate": (EvaluateConfig, run_evaluate),
    "evaluate-model": (EvaluateModelConfig, run_evaluate_model),
    "evaluate-real": (RealEvalConfig, run_real_eval),
    "render": (RenderConfig, run_render),
    "bench": {
        "fidelity": (FidelityConfig, run_fidelity),
        "extraction": (ExtractionBenchConfig, run_extraction_bench),
        "rasterizer": (RasterizerBenchConfig, run_rasterizer_bench),
        "appearance": (AppearanceBenchConfig, run_appearance_bench),
        "prior": (PriorBenchConfig, run_prior_bench),
    },
    "demo": (DemoConfig, run_demo),
}

GROUP_HELP = {"data": "Make, import and inspect datasets.",
              "train": "Train a model of one family on a dataset, or a diffusion prior over a model's latents.",
              "bench": "Measure families side by side, the Gaussian rasterizer, single-image appearance fits and "
                       "latent priors."}
"""Help line of each verb group."""
