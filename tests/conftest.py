import os
from pathlib import Path

import pytest
import torch

from neuralmorph.data.synth import SynthConfig, synthesize

# Threads: torch starts one per core, which on a shared machine oversubscribes the cores every other job
# needs. Unless the caller chose (OMP_NUM_THREADS), the tests use at most 2 threads, and so do the CLI
# processes they start (which read OMP_NUM_THREADS when torch loads).
if "OMP_NUM_THREADS" not in os.environ:
    _threads = min(2, os.cpu_count() or 1)
    torch.set_num_threads(_threads)
    os.environ["OMP_NUM_THREADS"] = str(_threads)


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory) -> Path:
    """A small synthetic dataset (3 subjects x 3 expressions, with raw scans and two 32² images of each
    head), made once per test run."""
    out = tmp_path_factory.mktemp("synth") / "data"
    synthesize(SynthConfig(out=out, subjects=3, expressions=3, seed=7, images=True, views=2, image_size=32),
               progress=False)
    return out


@pytest.fixture(scope="session")
def pca_data(tmp_path_factory) -> Path:
    """Registered heads only (no scans): 12 subjects x 4 expressions, a quarter of the subjects held out."""
    out = tmp_path_factory.mktemp("pca") / "data"
    synthesize(SynthConfig(out=out, subjects=12, expressions=4, seed=3, scans=False, test_fraction=0.25), progress=False)
    return out
