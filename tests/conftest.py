from pathlib import Path

import pytest

from neuralmorph.data.synth import SynthConfig, synthesize


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory) -> Path:
    """A small synthetic dataset (3 subjects x 3 expressions, with raw scans), made once per test run."""
    out = tmp_path_factory.mktemp("synth") / "data"
    synthesize(SynthConfig(out=out, subjects=3, expressions=3, seed=7), progress=False)
    return out
