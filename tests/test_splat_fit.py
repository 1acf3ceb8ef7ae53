"""Free Gaussians fitted to ray-cast views of a textured head: the rasterizer's gradients optimise."""

from __future__ import annotations

import numpy as np
import pytest

from neuralmorph.errors import InputError
from neuralmorph.geometry.sampling import sample_surface
from neuralmorph.splat.optimize import GaussianFitConfig, fit_gaussians, initial_scene, view_psnr


@pytest.fixture(scope="module")
def views():
    from neuralmorph.data.appearance import generate_appearance
    from neuralmorph.data.head_model import HeadModel
    from neuralmorph.data.textured_render import Lighting, TexturedMesh, TexturedRenderer, orbit_camera

    head = HeadModel.load()
    mesh = TexturedMesh(head.vertices, head.faces, head.face_uvs, generate_appearance(0, size=128).texture)
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    centre, radius = (lo + hi) / 2, float(np.linalg.norm(hi - lo)) / 2
    cams = [orbit_camera(centre, radius, yaw, pitch, 48) for yaw, pitch in ((-40, 0), (0, 10), (40, 0), (20, 5))]
    renderer = TexturedRenderer(mesh)
    images = [renderer.render(c, Lighting.studio(), supersample=2).rgb for c in cams]
    return mesh, cams, images


def test_fitting_free_gaussians_reproduces_the_training_views_and_generalises(views):
    mesh, cams, images = views
    scene = initial_scene(sample_surface(mesh.vertices, mesh.faces, 1500, 0)[0], sh_degree=0)
    train_before = np.mean(view_psnr(scene, images[:3], cams[:3]))
    result = fit_gaussians(images[:3], cams[:3], scene, GaussianFitConfig(steps=120, sh_degree=0), progress=False)
    train_after = np.mean(view_psnr(scene, images[:3], cams[:3]))
    held_out = view_psnr(scene, images[3:], cams[3:])[0]
    assert train_after > train_before + 8, (train_before, train_after)
    assert held_out > train_before + 5, (train_before, held_out)
    assert result.history[-1]["loss"] < result.history[0]["loss"] / 2
    for p in scene.parameters():  # every parameter was driven by the images
        assert np.isfinite(p.detach().numpy()).all()
    assert not np.allclose(scene.quats.detach().numpy()[:, 0], 1.0)
    assert not np.allclose(scene.logit_opacities.detach().numpy(), scene.logit_opacities.detach().numpy()[0])


def test_the_fit_refuses_images_that_do_not_match_their_cameras(views):
    mesh, cams, images = views
    scene = initial_scene(sample_surface(mesh.vertices, mesh.faces, 100, 0)[0], sh_degree=0)
    with pytest.raises(InputError, match="one image per camera"):
        fit_gaussians(images[:2], cams[:3], scene, GaussianFitConfig(steps=1), progress=False)
    with pytest.raises(InputError, match="camera"):
        fit_gaussians([images[0][:10]], cams[:1], scene, GaussianFitConfig(steps=1), progress=False)


def test_a_fitted_scene_saved_as_3dgs_ply_renders_the_same_after_loading(views, tmp_path):
    import torch

    from neuralmorph.splat.optimize import GaussianScene
    from neuralmorph.splat.ply import load_gaussians_ply

    mesh, cams, images = views
    scene = initial_scene(sample_surface(mesh.vertices, mesh.faces, 300, 1)[0], sh_degree=1)
    fit_gaussians(images[:1], cams[:1], scene, GaussianFitConfig(steps=5), progress=False)
    scene.save_ply(tmp_path / "scene.ply")
    g = load_gaussians_ply(tmp_path / "scene.ply", activated=False)

    def param(a):
        return torch.as_tensor(np.asarray(a), dtype=torch.float32)

    loaded = GaussianScene(param(g.means), param(g.scales), param(g.quats), param(g.opacities).reshape(-1),
                           param(g.sh))
    bg = torch.zeros(3)
    with torch.no_grad():
        a, b = scene.render(cams[1], bg)["rgb"], loaded.render(cams[1], bg)["rgb"]
    assert float(a.abs().max()) > 0.05  # something is drawn
    assert torch.allclose(a, b, atol=1e-6)
