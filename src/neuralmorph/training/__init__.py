"""Training infrastructure every neural family shares: `train(model, dataset, TrainerConfig(...), out)`.

See docs/training.md for the config, the checkpoint layout, resume semantics and torchrun usage.
"""

from neuralmorph.training.distributed import DistInfo, init_distributed, is_main_process
from neuralmorph.training.trainer import (RUN_CONFIG_FILE, StepBatchSampler, Trainable, TrainerConfig,
                                          TrainingDiverged, global_batch_indices, load_run_config, lr_factor,
                                          seed_everything, train)
from neuralmorph.training.checkpoint import latest_checkpoint, load_checkpoint

__all__ = [
    "DistInfo", "RUN_CONFIG_FILE", "StepBatchSampler", "Trainable", "TrainerConfig", "TrainingDiverged",
    "global_batch_indices", "init_distributed", "is_main_process", "latest_checkpoint", "load_checkpoint",
    "load_run_config", "lr_factor", "seed_everything", "train",
]
