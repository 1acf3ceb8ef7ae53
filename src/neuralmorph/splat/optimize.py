"""Fit free 3D Gaussians to posed images: the end-to-end check that the rasterizer optimises.

A scene is N Gaussians with unconstrained parameters (means, log scales, quaternions, opacity logits,
colours as spherical-harmonics coefficients); `fit_gaussians` starts them on points of the surface (what
an appearance model bound to a head mesh starts from), then runs Adam on the 3DGS photometric loss,
(1 - w) * L1 + w * (1 - SSIM), one randomly chosen training view per step. No densification: the point
of this loop is to show that the rasterizer's gradients drive every parameter to the images, not to
grow a scene. The learning rates are 3DGS's, the position rate scaled by the scene's extent.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from neuralmorph.config import Config
from neuralmorph.errors import InputError
from neuralmorph.evaluation.image_metrics import psnr, ssim
from neuralmorph.geometry.camera import Camera
from neuralmorph.splat.rasterize import rasterize
from neuralmorph.splat.sh import C0 as SH_C0


@dataclass(frozen=True)
class GaussianFitConfig(Config):
    """The free-Gaussian fit's schedule and weights."""

    steps: int = 1500
    """Optimiser steps (one training view each)."""
    sh_degree: int = 1
    """Spherical-harmonics degree of the colours (0: one colour per Gaussian)."""
    ssim_weight: float = 0.2
    """Weight of the (1 - SSIM) term; the rest is L1."""
    lr_means: float = 1.6e-4
    """Position learning rate, as a fraction of the scene's extent (3DGS)."""
    lr_scales: float = 5e-3
    """Learning rate of the log scales."""
    lr_quats: float = 1e-3
    """Learning rate of the quaternions."""
    lr_opacities: float = 5e-2
    """Learning rate of the opacity logits."""
    lr_colors: float = 2.5e-3
    """Learning rate of the band-0 colour coefficients (the higher bands: a twentieth of it)."""
    init_opacity: float = 0.5
    """Opacity of every Gaussian at the start."""
    seed: int = 0
    """Seed of the view order."""

    def __post_init__(self):
        if self.steps < 1 or not 0 <= self.sh_degree <= 3:
            raise InputError("--steps/--sh-degree", f"need steps >= 1 and 0 <= sh_degree <= 3, got {self.steps}, "
                                                    f"{self.sh_degree}")
        if not 0 <= self.ssim_weight <= 1 or not 0 < self.init_opacity < 1:
            raise InputError("--ssim-weight/--init-opacity", "need ssim_weight in [0, 1] and init_opacity in (0, 1)")


@dataclass
class GaussianScene:
    """Unconstrained parameters of N Gaussians (all float32, one device)."""

    means: torch.Tensor        # (N, 3) world (mm)
    log_scales: torch.Tensor   # (N, 3)
    quats: torch.Tensor        # (N, 4) w, x, y, z (any norm)
    logit_opacities: torch.Tensor  # (N,)
    sh: torch.Tensor           # (N, K, 3) SH coefficients, K = (degree + 1)^2

    def parameters(self) -> list[torch.Tensor]:
        return [self.means, self.log_scales, self.quats, self.logit_opacities, self.sh]

    def save_ply(self, path, overwrite: bool = False) -> None:
        """Write the scene as a standard 3DGS PLY (`splat.ply`), openable in common splat viewers."""
        from neuralmorph.splat.ply import save_gaussians_ply

        with torch.no_grad():
            save_gaussians_ply(path, self.means, self.log_scales, self.quats, self.logit_opacities, self.sh,
                               activated=False, overwrite=overwrite)

    def render(self, camera: Camera, background: torch.Tensor, sh_degree: int | None = None) -> dict:
        """One view (see `splat.rasterize`); rgb (H, W, 3)."""
        t = self.means
        return rasterize(t, self.quats, self.log_scales.exp(), torch.sigmoid(self.logit_opacities), self.sh,
                         torch.tensor(camera.world_to_camera, dtype=t.dtype, device=t.device),
                         torch.as_tensor(camera.intrinsics, dtype=t.dtype, device=t.device),
                         camera.width, camera.height, background=background, sh_degree=sh_degree)


@dataclass
class GaussianFitResult:
    scene: GaussianScene
    seconds: float
    history: list[dict] = field(default_factory=list)  # {"step", "loss"} every 50 steps


def photometric_loss(rgb: torch.Tensor, target: torch.Tensor, ssim_weight: float, alpha: torch.Tensor | None = None,
                     mask: torch.Tensor | None = None, mask_weight: float = 0.0) -> torch.Tensor:
    """3DGS's image loss, (1 − w) L1 + w (1 − SSIM), of a render `rgb` against `target` (both (H, W, 3) float),
    plus `mask_weight` × L1 between the render's `alpha` and `mask` (both (H, W)) when a mask is given."""
    loss = (1 - ssim_weight) * (rgb - target).abs().mean() + ssim_weight * (1 - ssim(rgb, target))
    if mask is not None and mask_weight:
        loss = loss + mask_weight * (alpha - mask).abs().mean()
    return loss

def initial_scene(points: np.ndarray, colors: np.ndarray | None = None, sh_degree: int = 1,
                  init_opacity: float = 0.5, device: str | torch.device = "cpu") -> GaussianScene:
    """Gaussians on `points` (N, 3) mm: isotropic, as wide as the mean distance to the 3 nearest other
    points, with `colors` (N, 3) in [0, 1] (grey when None) as the band-0 coefficients."""
    from scipy.spatial import cKDTree

    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) < 4 or not np.isfinite(p).all():
        raise InputError("points", f"need (N >= 4, 3) finite points, got {p.shape}")
    d, _ = cKDTree(p).query(p, k=4)
    spacing = np.maximum(d[:, 1:].mean(axis=1), 1e-6)
    c = np.full((len(p), 3), 0.5) if colors is None else np.asarray(colors, dtype=np.float64)
    k = (sh_degree + 1) ** 2
    sh = np.zeros((len(p), k, 3))
    sh[:, 0] = (c - 0.5) / SH_C0
    quats = np.zeros((len(p), 4))
    quats[:, 0] = 1.0

    def param(a):
        return torch.tensor(a, dtype=torch.float32, device=device).requires_grad_(True)

    return GaussianScene(param(p), param(np.log(spacing)[:, None].repeat(3, axis=1)), param(quats),
                         param(np.full(len(p), math.log(init_opacity / (1 - init_opacity)))), param(sh))


def fit_gaussians(images: list[np.ndarray], cameras: list[Camera], scene: GaussianScene,
                  config: GaussianFitConfig = GaussianFitConfig(), background=(0.0, 0.0, 0.0),
                  progress: bool = True) -> GaussianFitResult:
    """Optimise `scene` (in place) so that it renders `images` ((H, W, 3) float in [0, 1], one per camera)."""
    from tqdm import tqdm

    if len(images) != len(cameras) or not images:
        raise InputError("images", f"need one image per camera, got {len(images)} images and {len(cameras)} cameras")
    device = scene.means.device
    targets = [torch.as_tensor(np.asarray(im, np.float32), device=device) for im in images]
    for im, cam in zip(targets, cameras):
        if tuple(im.shape) != (cam.height, cam.width, 3):
            raise InputError("images", f"an image of shape {tuple(im.shape)} for a {cam.width}x{cam.height} camera")
    extent = float((scene.means.detach().max(0).values - scene.means.detach().min(0).values).norm())
    sh = scene.sh
    groups = [{"params": [scene.means], "lr": config.lr_means * extent},
              {"params": [scene.log_scales], "lr": config.lr_scales},
              {"params": [scene.quats], "lr": config.lr_quats},
              {"params": [scene.logit_opacities], "lr": config.lr_opacities},
              {"params": [sh], "lr": config.lr_colors}]
    optimizer = torch.optim.Adam(groups, eps=1e-15)
    # the higher SH bands learn 20x slower (3DGS): scale their gradient rather than keep two tensors
    band_scale = torch.ones(sh.shape[1], 1, device=device)
    band_scale[1:] = 1 / 20
    sh.register_hook(lambda g: g * band_scale)
    bg = torch.tensor(background, dtype=torch.float32, device=device)
    rng = np.random.default_rng(config.seed)
    history = []
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc="gaussians", unit="step", disable=not progress)
    for step in bar:
        v = int(rng.integers(len(cameras)))
        out = scene.render(cameras[v], bg)["rgb"]
        target = targets[v]
        loss = photometric_loss(out, target, config.ssim_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == config.steps - 1:
            value = float(loss.detach())
            history.append({"step": step, "loss": value})
            bar.set_postfix(loss=f"{value:.4f}")
    return GaussianFitResult(scene, time.perf_counter() - start, history)


def view_psnr(scene: GaussianScene, images: list[np.ndarray], cameras: list[Camera], background=(0.0, 0.0, 0.0),
              masks: list[np.ndarray] | None = None) -> list[float]:
    """PSNR (dB) of the scene's render of each view against its image (within its mask when given)."""
    bg = torch.tensor(background, dtype=torch.float32, device=scene.means.device)
    out = []
    with torch.no_grad():
        for i, (im, cam) in enumerate(zip(images, cameras)):
            pred = scene.render(cam, bg)["rgb"]
            target = torch.as_tensor(np.asarray(im, np.float32), device=pred.device)
            mask = None if masks is None else torch.as_tensor(np.asarray(masks[i], np.float32), device=pred.device)
            out.append(float(psnr(pred, target, mask=mask)))
    return out
