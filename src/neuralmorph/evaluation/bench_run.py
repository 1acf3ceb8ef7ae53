"""What the benchmarks that train their own models share: a work folder, a device, the machine record."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from neuralmorph.outputs import Verb


@dataclass(frozen=True)
class TrainingBench(Verb):
    """Base of a benchmark config that makes data and trains models in a work folder beside its --out."""

    out: Path = Path("bench.json")
    """Where to write the report (JSON)."""
    work_dir: Path | None = None
    """Keep the data and models here (unset: a folder beside --out)."""
    device: str = "cpu"
    """Torch device of training (and fitting)."""

    def _work(self) -> Path:
        """The work folder: a folder of ours, reused between runs (`atomic.work_folder`)."""
        return self.work_dir if self.work_dir is not None else self.out.with_name(self.out.stem + "_work")


def machine_info() -> dict:
    """The processor, cores and thread settings a benchmark ran with."""
    return {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
