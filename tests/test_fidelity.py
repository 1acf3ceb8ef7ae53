"""`bench fidelity` end to end on a tiny population (the real run is minutes; see docs/benchmarks.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuralmorph.errors import InputError
from neuralmorph.evaluation.fidelity import FidelityConfig, run_fidelity


def test_fidelity_writes_every_family_with_protocol_metric_names(tmp_path, capsys):
    out = tmp_path / "F.json"
    report = run_fidelity(FidelityConfig(out=out, quick=True, subjects=5, expressions=2, train_steps=3,
                                         protocol_heads=2, latent_size=8, refine_steps=5))
    saved = json.loads(out.read_text())
    assert saved["models"].keys() == report["models"].keys() >= {"pca", "regional"}
    for name, m in saved["models"].items():
        for key in ("vertex_error_mm", "face/vertex_error_mm", "chamfer_l1_mm", "fscore@1mm", "normal_consistency"):
            assert np.isfinite(m[key]), (name, key)
        assert 0 < m["vertex_error_mm"] < 20
    p = saved["protocol"]
    assert p["latent_size"] == 8 and p["train_steps"] == 3 and p["test_heads"] == 2 and p["units"] == "mm"
    assert sum(p["families"]["pca"]["latent_sizes"].values()) <= 8  # 4 training identities: ≤ 3 identity modes
    assert p["families"]["regional"]["latent_sizes"] == {"global": 8}
    assert "regional" in capsys.readouterr().out


@pytest.mark.parametrize("field, value", [("latent_size", 1), ("local_fraction", 1.5), ("train_steps", 0)])
def test_fidelity_config_rejects_bad_values(tmp_path, field, value):
    with pytest.raises(InputError):
        FidelityConfig(out=tmp_path / "F.json", **{field: value})
