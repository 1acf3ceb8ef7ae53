"""The appearance family: it learns identities from posed images, and a single-image fit finds a code."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from neuralmorph.data.images import load_image, load_mask
from neuralmorph.data.synth import SynthConfig, synthesize
from neuralmorph.errors import InputError
from neuralmorph.evaluation.image_metrics import psnr
from neuralmorph.fitting.image import ImageFitConfig, View, fit_image
from neuralmorph.models import MorphableModel
from neuralmorph.models.appearance.model import AppearanceConfig, AppearanceModel
from neuralmorph.models.pca import PCAConfig, PCAModel
from neuralmorph.models.train import train_model
from neuralmorph.training import TrainerConfig

SIZE = 48


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """Two identities photographed from 5 random views at 48² under one studio light; one view of the
    first identity is held out of training. Returns (dataset, trained model, held-out frame)."""
    work = tmp_path_factory.mktemp("appearance")
    data = synthesize(SynthConfig(out=work / "data", subjects=2, expressions=1, seed=11, scans=False,
                                  test_fraction=0.0, val_fraction=0.0, images=True, views=5, image_size=SIZE,
                                  lighting="studio"), progress=False)
    PCAModel.build(data, PCAConfig(identity_dims=1, expression_dims=0)).save(work / "pca")
    # hold out the first identity's middle view by yaw: between views it was trained on, not a side unseen
    first = [f for f in data.images if f.subject == data.images[0].subject]
    yaw = [np.arctan2(*(f.camera.position - data.vertices[f.registered].mean(0))[[0, 2]]) for f in first]
    held = first[int(np.argsort(yaw)[len(first) // 2])]
    training = dataclasses.replace(data, images=[f for f in data.images if f is not held])
    config = AppearanceConfig(geometry=str(work / "pca"), gaussians=1500, latent_size=4, uv_resolution=16,
                              generator_channels=16, sh_degree=0)
    trainer = TrainerConfig(max_steps=250, batch_size=2, lr=5e-3, warmup_steps=10, checkpoint_every=0, val_every=0,
                            tensorboard=False, grad_clip=None)
    model = train_model(AppearanceModel, training, config, work / "run", trainer=trainer, progress=False).model
    return data, model.eval(), held


def _latents(model, subject_code: torch.Tensor) -> dict:
    z = model.zero_latents(1)
    z["appearance"] = subject_code[None]
    return z


def test_a_trained_identity_beats_the_mean_appearance_on_a_held_out_view(setting):
    data, model, held = setting
    target = load_image(held.image_path(data.folder))
    code = model.codes[model.subjects.index(held.subject)].detach()
    vertices = torch.as_tensor(data.vertices[held.registered][None], dtype=torch.float32)
    K = torch.tensor([[held.camera.fx, 0, held.camera.cx], [0, held.camera.fy, held.camera.cy], [0, 0, 1]],
                     dtype=torch.float32)
    viewmat = torch.as_tensor(np.array(held.camera.world_to_camera), dtype=torch.float32)

    def view_psnr(c):
        with torch.no_grad():
            g = model.gaussians(c[None], vertices)
            return float(psnr(model.render(g, 0, viewmat, K, SIZE, SIZE)["rgb"].clamp(0, 1), torch.as_tensor(target)))

    own, mean = view_psnr(code), view_psnr(model.prior["appearance"].mean)
    untrained = AppearanceModel.build(data, model.config)
    with torch.no_grad():
        g0 = untrained.gaussians(code[None], vertices)
        grey = float(psnr(untrained.render(g0, 0, viewmat, K, SIZE, SIZE)["rgb"].clamp(0, 1), torch.as_tensor(target)))
    assert own > mean + 0.5, (own, mean)
    assert own > grey + 5, (own, grey)
    assert own > 20, own


def test_saved_model_renders_the_same_after_loading(setting, tmp_path):
    data, model, held = setting
    model.save(tmp_path / "m")
    loaded = MorphableModel.load(tmp_path / "m")
    assert isinstance(loaded, AppearanceModel) and loaded.subjects == model.subjects
    z = model.sample(1, seed=2)
    a, b = model.render_views(z, [held.camera]), loaded.render_views(z, [held.camera])
    assert a[0].max() > 0.1 and np.array_equal(a[0], b[0])


def test_fitting_one_image_recovers_a_known_code(setting):
    """A head rendered from a known code (geometry known) is fitted from one view: the code comes back."""
    data, model, held = setting
    known = model.codes.detach().mean(0) + 0.8 * (model.codes[0].detach() - model.codes.detach().mean(0))
    truth = _latents(model, known)
    image = model.render_views(truth, [held.camera])[0]
    start = model.zero_latents(1)
    fit = fit_image(model, [View(image, held.camera)], ImageFitConfig(steps=150, lr=0.05, fit_geometry=False,
                                                                      refine="none", prior_weight=0.0), progress=False)
    found = fit.latents["appearance"][0]
    assert torch.norm(found - known) < 0.25 * torch.norm(start["appearance"][0] - known), (found, known)
    assert fit.psnr_input_db[0] > 30


def test_image_fit_inputs_are_checked(setting, tmp_path):
    data, model, held = setting
    image = load_image(held.image_path(data.folder))
    with pytest.raises(InputError, match="camera"):
        View(image[:-1], held.camera)
    with pytest.raises(InputError, match="NaN"):
        View(np.full_like(image, np.nan), held.camera)
    with pytest.raises(InputError, match="mask"):
        View(image, held.camera, mask=load_mask(held.mask_path(data.folder))[:-2])
    with pytest.raises(InputError, match="landmarks"):
        fit_image(model, [View(image, held.camera, landmarks=np.zeros((5, 2)))], ImageFitConfig(steps=1), progress=False)
    pca = PCAModel.load(model.config.geometry)
    with pytest.raises(InputError, match="no appearance"):
        fit_image(pca, [View(image, held.camera)], progress=False)
    with pytest.raises(InputError, match="geometry"):
        AppearanceModel.build(data, dataclasses.replace(model.config, geometry=""))


def test_transfer_keeps_the_look_with_the_identity(setting):
    from neuralmorph.commands.generate import transfer

    _, model, _ = setting
    a, b = model.sample(1, seed=1), model.sample(1, seed=2)
    out = transfer(a, b, model.identity_spaces)
    assert torch.equal(out["appearance"], a["appearance"]) and torch.equal(out["identity"], a["identity"])
    assert torch.equal(out["expression"], b["expression"])


def test_preview_shows_the_rendering_beside_the_target(setting):
    """The trainer's preview hook: the first item's render (its own subject's code) left, its image right."""
    from torch.utils.data import default_collate

    from neuralmorph.models.appearance.data import ImageTrainData

    data, model, _ = setting
    items = ImageTrainData(data, progress=False)
    second = int(np.flatnonzero(items.subject_ids == 1)[0])  # subject 1 first: the code must follow the item
    batch = default_collate([items[second], items[0]])
    with torch.no_grad():
        out = model.preview(batch)
        g = model.gaussians(model.codes[1][None], batch["vertices"][:1])
        direct = model.render(g, 0, batch["viewmat"][0], batch["K"][0], SIZE, SIZE)["rgb"].clamp(0, 1)
    assert list(out) == ["appearance/render_vs_target"]
    image = out["appearance/render_vs_target"]
    assert image.shape == (SIZE, 2 * SIZE, 3) and image.dtype == torch.float32
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    assert torch.equal(image[:, :SIZE], direct) and float(direct.max()) > 0.1
    assert torch.equal(image[:, SIZE:], batch["image"][0])
