from pathlib import Path

import pytest

from neuralmorph.data.synth import SynthConfig, synthesize


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory) -> Path:
    """A small synthetic dataset (3 subjects x 3 expressions, with raw scans), made once per test run."""
    out = tmp_path_factory.mktemp("synth") / "data"
    synthesize(SynthConfig(out=out, subjects=3, expressions=3, seed=7), progress=False)
    return out


@pytest.fixture(scope="session")
def pca_data(tmp_path_factory) -> Path:
    """Registered heads only (no scans): 12 subjects x 4 expressions, a quarter of the subjects held out."""
    out = tmp_path_factory.mktemp("pca") / "data"
    synthesize(SynthConfig(out=out, subjects=12, expressions=4, seed=3, scans=False, test_fraction=0.25), progress=False)
    return out
