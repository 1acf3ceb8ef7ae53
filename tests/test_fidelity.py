"""`bench fidelity` end to end on a tiny population (the real run is minutes; see docs/benchmarks.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuralmorph.errors import InputError
from neuralmorph.commands.bench import run_fidelity
from neuralmorph.evaluation.fidelity import FidelityConfig


def test_fidelity_writes_every_family_with_protocol_metric_names(tmp_path, capsys):
    out = tmp_path / "F.json"
    report = run_fidelity(FidelityConfig(out=out, quick=True, subjects=5, expressions=2, train_steps=3,
                                         protocol_heads=2, latent_size=8, refine_steps=5, families=("pca", "regional")))
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


def test_fidelity_implicit_families_score_fitted_meshes_with_face_metrics(tmp_path):
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run_fidelity(FidelityConfig(
            out=tmp_path / "F.json", quick=True, subjects=5, expressions=2, families=("implicit-global", "implicit-local"),
            implicit_subjects=3, implicit_expressions=2, implicit_test_subjects=1, implicit_steps=2,
            implicit_fit_steps=2, implicit_mesh_resolution=24))
    finally:
        torch.set_num_threads(threads)
    for name in ("implicit-global", "implicit-local"):
        m = report["models"][name]
        for key in ("chamfer_l1_mm", "fscore@1mm", "chamfer_l1_mm_face", "fscore@1mm_face"):
            assert np.isfinite(m[key]), (name, key)
        info = report["protocol"]["families"][name]
        assert info["observations"] == 2 and info["train_steps"] == 2 and info["parameters"] > 0
    sizes = [report["protocol"]["families"][n]["parameter_counts"]["field"] for n in ("implicit-global", "implicit-local")]
    assert 0.8 < sizes[0] / sizes[1] < 1.25   # comparable parameter counts


@pytest.mark.parametrize("field, value", [("latent_size", 1), ("local_fraction", 1.5), ("train_steps", 0),
                                          ("implicit_local_fraction", -0.1),
                                          ("families", ("pca", "nope")), ("families", ())])
def test_fidelity_config_rejects_bad_values(tmp_path, field, value):
    with pytest.raises(InputError):
        FidelityConfig(out=tmp_path / "F.json", **{field: value})
