"""The family contract, run over every registered family (tiny instances from `smoke_config`).

A new family gets these tests by registering: save/load round trip, sampling, meshes, latent checks, a
fit on a tiny observation of each kind it declares, and `train FAMILY --max-steps 2` through the CLI.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.data.observations import Observation
from neuralmorph.errors import InputError
from neuralmorph.fitting import FitConfig, fit_observation
from neuralmorph.fitting.implicit import ImplicitFitConfig
from neuralmorph.geometry.sampling import sample_surface
from neuralmorph.models import MODELS, MorphableModel
from neuralmorph.models.train import train_model
from neuralmorph.training import TrainerConfig

FAMILIES = sorted(MODELS)
RESOLUTION = 24  # extraction grid of signed-distance families: coarse, but a closed surface
TRAINER = dict(max_steps=2, batch_size=2, checkpoint_every=0, val_every=0, tensorboard=False, log_every=1)


@pytest.fixture(scope="module")
def data(small_synth) -> HeadDataset:
    return HeadDataset.load(small_synth)


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request, data, tmp_path_factory):
    """(family class, a tiny trained model, its saved folder)."""
    family = MODELS[request.param]
    work = tmp_path_factory.mktemp(request.param)
    config, samples = family.smoke_setup(data, work)
    trainer = TrainerConfig(**TRAINER) if family.trainable else None
    out = work / "run"
    result = train_model(family, data, config, out, trainer=trainer, samples=samples, progress=False)
    return family, result.model, result.folder


def test_registered_by_import():
    assert {"pca", "regional", "implicit-global", "implicit-local"} <= set(MODELS)
    for name, family in MODELS.items():
        assert family.family == name and family.summary and family.fits
        assert family.geometry in ("mesh", "sdf")


def test_save_load_round_trip(trained):
    family, model, folder = trained
    loaded = MorphableModel.load(folder)
    assert type(loaded) is family and loaded.latent_sizes == model.latent_sizes
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k]) for k in a)
    z = loaded.sample(1, seed=3)
    (m1,), (m2,) = model.meshes(z, RESOLUTION), loaded.meshes(z, RESOLUTION)
    assert np.array_equal(m1.faces, m2.faces) and np.allclose(m1.vertices, m2.vertices, atol=1e-6)


def test_training_record_is_saved_and_checked(trained):
    """Every family's saved model carries its training record; the 2-step trainable runs here stop inside
    their learning-rate warm-up, which `training_concerns` reports, and closed-form ones record no steps."""
    family, model, folder = trained
    loaded = MorphableModel.load(folder)
    rec = loaded.training_record
    assert rec == model.training_record and rec["split"] == "train"
    held = rec["held_out"]
    if held is not None:  # small_synth holds test heads, but a family may have no held-out measure
        assert held["items"] >= 1 and held["value"] >= 0 and held["mean_head"] > 0
    concerns = " ".join(loaded.training_concerns())
    if family.trainable:
        assert rec["steps"] == TRAINER["max_steps"] and rec["warmup_steps"] == TrainerConfig().warmup_steps
        assert "warm-up" in concerns
    else:
        assert rec["steps"] is None and "warm-up" not in concerns


def test_sample_is_deterministic_and_sized(trained):
    _, model, _ = trained
    a, b, c = model.sample(3, seed=0), model.sample(3, seed=0), model.sample(3, seed=1)
    assert set(a) == set(model.latent_sizes)
    for name, k in model.latent_sizes.items():
        assert a[name].shape == (3, k) and torch.equal(a[name], b[name]) and not torch.equal(a[name], c[name])
    zero = model.sample(2, temperature=0.0)
    assert all(torch.allclose(zero[n], model.prior[n].mean.expand(2, -1)) for n in zero)


def test_meshes_are_heads_in_millimetres(trained):
    _, model, _ = trained
    meshes = model.meshes(model.sample(2, seed=0), RESOLUTION)
    assert len(meshes) == 2
    for mesh in meshes:
        assert len(mesh.faces) > 0 and np.isfinite(mesh.vertices).all()
        extent = mesh.vertices.max(axis=0) - mesh.vertices.min(axis=0)
        assert 50.0 < extent.max() < 1000.0  # a head-sized thing, in mm


def test_check_latents_names_what_is_off(trained):
    _, model, _ = trained
    good = model.zero_latents(2)
    assert model.check_latents(good) is good
    with pytest.raises(InputError, match="latent spaces"):
        model.check_latents({**good, "extra": torch.zeros(2, 1)})
    name = next(iter(good))
    with pytest.raises(InputError, match="shape"):
        model.check_latents({**good, name: torch.zeros(2, model.latent_sizes[name] + 1)})
    with pytest.raises(InputError, match="NaN"):
        model.check_latents({**good, name: torch.full_like(good[name], float("nan"))})


def _observation(kind: str, data: HeadDataset) -> Observation:
    row = data.registered_rows("train")[0]
    vertices = data.vertices[row].astype(np.float64)
    if kind == "registered":
        return Observation("registered", ("head",), (vertices,))
    points, _, _ = sample_surface(vertices, data.faces, 1500, 0)
    return Observation(kind, ("head",), (points,))


@pytest.mark.parametrize("kind", ["registered", "points"])
def test_fit_a_tiny_observation(trained, data, kind):
    family, model, _ = trained
    observation = _observation(kind, data)
    if kind not in family.fits:
        with pytest.raises(InputError, match="cannot be fitted"):
            fit_observation(model, observation)
        return
    result = fit_observation(model, observation, FitConfig(steps=5, pose_warmup=2),
                             ImplicitFitConfig(steps=5, mesh_resolution=RESOLUTION, eval_points=0, expression_starts=0,
                                               align_resolution=16))
    assert len(result.meshes) == 1 and np.isfinite(result.meshes[0].vertices).all()
    model.check_latents({k: v for k, v in result.latents.items()}, "fit")
    assert np.isfinite(result.pose.matrix).all()


def _flags(family, config, samples) -> list[str]:
    """`train FAMILY` flags that set every field of the smoke configs that differs from the defaults."""
    out = []
    for prefix, cfg in (("model." if family.cli_model_prefix else "", config), ("samples.", samples)):
        if cfg is None:
            continue
        default = type(cfg)()
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if value != getattr(default, f.name):
                out += [f"--{prefix}{f.name.replace('_', '-')}", str(value)]
    return out


@pytest.mark.parametrize("name", FAMILIES)
def test_train_family_through_the_cli(name, small_synth, tmp_path, capsys):
    from neuralmorph.cli import main

    family = MODELS[name]
    config, samples = family.smoke_setup(HeadDataset.load(small_synth), tmp_path)
    args = ["train", name, "--data", str(small_synth), "--out", str(tmp_path / "run"), *_flags(family, config, samples)]
    if family.trainable:
        args += ["--max-steps", "2", "--batch-size", "2", "--checkpoint-every", "0", "--no-tensorboard"]
    main(args)
    assert f"trained {name}" in capsys.readouterr().out
    folder = tmp_path / "run" / "model" if family.trainable else tmp_path / "run"
    model = MorphableModel.load(folder)
    assert type(model) is family and model.config == config
    if family.trainable:
        run = json.loads((tmp_path / "run" / "run_config.json").read_text())
        assert run["run"]["family"] == name and run["trainer"]["max_steps"] == 2
