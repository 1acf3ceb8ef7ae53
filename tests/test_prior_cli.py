"""The latent-prior verbs: `train prior`, `sample --prior/--condition`, `fit --prior`, and the contract's
`dataset_latents` they learn from."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.data.observe import single_view_points
from neuralmorph.errors import InputError
from neuralmorph.models.pca import PCAConfig, PCAModel
from neuralmorph.prior.latent import GaussianLatentPrior, load_prior


def nm(*args):
    return subprocess.run([sys.executable, "-m", "neuralmorph", *map(str, args)], capture_output=True, text=True)


def test_pca_dataset_latents_are_the_codes_its_priors_were_fitted_to(pca_data):
    data = HeadDataset.load(pca_data)
    model = PCAModel.build(data, PCAConfig(6, 4))
    z = model.dataset_latents(data, "train")
    heads = [h for h in data.heads if h.split == "train" and h.registered >= 0]
    assert z["identity"].shape == (len(heads), 6) and z["expression"].shape == (len(heads), 4)
    neutral = [i for i, h in enumerate(heads) if h.expression == "neutral"]
    other = [i for i in range(len(heads)) if i not in neutral]
    # the Gaussians were fitted to these very codes: one identity per subject, one expression per residual
    assert torch.allclose(z["identity"][neutral].mean(0), model.prior["identity"].mean, atol=1e-5)
    assert torch.allclose(z["expression"][other].mean(0), model.prior["expression"].mean, atol=1e-5)
    assert float(z["expression"][neutral].abs().max()) == 0.0
    # and they decode to the heads (up to the truncation)
    truth = torch.as_tensor(data.vertices[[h.registered for h in heads]], dtype=torch.float32)
    err = float((model.decode(z) - truth).norm(dim=-1).mean())
    assert err < float((model.decode(model.zero_latents(len(heads))) - truth).norm(dim=-1).mean()) / 2


def test_gaussian_prior_keeps_a_condition_and_refuses_unknown_spaces(pca_data):
    data = HeadDataset.load(pca_data)
    prior = GaussianLatentPrior(PCAModel.build(data, PCAConfig(4, 3)))
    code = torch.randn(1, 4)
    z = prior.sample(5, seed=1, condition={"identity": code})
    assert torch.equal(z["identity"], code.expand(5, -1)) and z["expression"].std(0).min() > 0
    with pytest.raises(InputError, match="no latent space 'jaw'"):
        prior.sample(2, condition={"jaw": code})
    with pytest.raises(InputError, match="nothing is left"):
        prior.sample(2, condition={"identity": code, "expression": torch.zeros(1, 3)})


@pytest.fixture(scope="module")
def trained(pca_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("prior")
    assert nm("train", "pca", "--data", pca_data, "--out", root / "pca", "--identity-dims", 6,
              "--expression-dims", 4).returncode == 0
    res = nm("train", "prior", "--model", root / "pca", "--data", pca_data, "--out", root / "run", "--max-steps", 60,
             "--batch-size", 16, "--prior.hidden", 32, "--prior.blocks", 1, "--no-tensorboard")
    assert res.returncode == 0, res.stderr
    return root


def test_train_prior_writes_a_run_and_a_prior_that_sample_uses(trained, pca_data, tmp_path):
    root = trained
    assert (root / "run" / "prior" / "config.json").is_file() and (root / "run" / "checkpoints").is_dir()
    spec = json.loads((root / "run" / "prior" / "config.json").read_text())
    assert spec["meta"]["family"] == "pca"
    assert spec["meta"]["heads"] == len(HeadDataset.load(pca_data).registered_rows("train"))
    res = nm("sample", "--model", root / "pca", "--prior", root / "run", "--n", 3, "--out", tmp_path / "s", "--steps", 10)
    assert res.returncode == 0, res.stderr
    assert "diffusion prior" in res.stdout
    codes = [json.loads((tmp_path / "s" / f"sample_{i:03d}.json").read_text())["latents"] for i in range(3)]
    assert codes[0]["identity"] != codes[1]["identity"]
    # the identity of sample 0 fixed: it comes back exactly, the expressions vary
    res = nm("sample", "--model", root / "pca", "--prior", root / "run" / "prior", "--n", 3, "--out", tmp_path / "c",
             "--condition", f"identity={tmp_path / 's' / 'sample_000.json'}")
    assert res.returncode == 0, res.stderr
    given = [json.loads((tmp_path / "c" / f"sample_{i:03d}.json").read_text())["latents"] for i in range(3)]
    assert all(g["identity"] == codes[0]["identity"] for g in given)
    assert given[0]["expression"] != given[1]["expression"]


def test_prior_verbs_refuse_bad_input(trained, pca_data, tmp_path):
    root = trained
    other = tmp_path / "other"
    assert nm("train", "pca", "--data", pca_data, "--out", other, "--identity-dims", 3).returncode == 0
    for args, flag in [(("sample", "--model", other, "--prior", root / "run", "--out", tmp_path / "a"), "--prior"),
                       (("sample", "--model", root / "pca", "--prior", root / "run", "--out", tmp_path / "b",
                         "--condition", "identity"), "--condition"),
                       (("sample", "--model", root / "pca", "--prior", tmp_path, "--out", tmp_path / "c"), str(tmp_path)),
                       (("train", "prior", "--model", root / "pca", "--out", tmp_path / "d"), "--data")]:
        res = nm(*args)
        assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
        assert flag in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not (tmp_path / args[-1]).exists() or args[-1] == tmp_path


def test_fit_with_the_diffusion_prior(trained, pca_data, tmp_path):
    root = trained
    data = HeadDataset.load(pca_data)
    row = data.registered_rows("test")[0]
    np.save(tmp_path / "cloud.npy", single_view_points(data.vertices[row], data.faces, np.random.default_rng(0))[0])
    res = nm("fit", "--model", root / "pca", "--target", tmp_path / "cloud.npy", "--out", tmp_path / "f",
             "--prior", root / "run", "--fit.steps", 30)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "f" / "metrics.json").read_text())["fit"]["prior"] == "diffusion"
    res = nm("fit", "--model", root / "pca", "--target", tmp_path / "cloud.npy", "--out", tmp_path / "g",
             "--fit.prior", "diffusion")
    assert res.returncode != 0 and "--fit.prior" in res.stderr and not (tmp_path / "g").exists()


def test_load_prior_checks_the_model(trained, pca_data):
    model = PCAModel.build(HeadDataset.load(pca_data), PCAConfig(6, 4))
    assert load_prior(model, None).kind == "gaussian"
    assert load_prior(model, trained / "run").kind == "diffusion"
    with pytest.raises(InputError, match="--prior"):
        load_prior(PCAModel.build(HeadDataset.load(pca_data), PCAConfig(5, 4)), trained / "run")


def test_evaluate_model_reports_generative_metrics_of_each_prior(trained, pca_data, tmp_path):
    res = nm("evaluate-model", "--model", trained / "pca", "--data", pca_data, "--out", tmp_path / "q",
             "--prior", trained / "run", "--samples", 8, "--sizes", 2, 6)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "q" / "model_quality.json").read_text())
    assert set(report["generative"]) == {"gaussian", "diffusion"}
    for row in report["generative"].values():
        assert 0 <= row["nna_1"] <= 1 and 0 < row["cov"] <= 1 and row["mmd_cd_mm"] > 0
        assert row["protocol"]["n_points"] == 2048 and row["protocol"]["samples"] == 8
        assert row["protocol"]["references"] == 3  # one head of each of the 3 test identities
    assert "diffusion prior 1-NNA" in res.stdout
