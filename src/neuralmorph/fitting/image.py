"""Fitting a model with appearance to posed images: latents by photometric loss, then a short refinement.

The two-stage schedule of single-image head reconstruction (Identity Field Learning's, re-derived):

1. **latents**: the geometry latents and the appearance code, in the priors' whitened coordinates (one
   learning rate suits every direction), by (1 − w) L1 + w (1 − SSIM) against each image, an L1 between
   rendered alpha and the mask, 2D landmarks when given (the model's landmarks projected by the camera),
   and the prior energy;
2. **refinement** (optional): per-Gaussian residuals on top of the fitted code — colour only by default
   (`refine` = "color"), kept small by an L2 pull — for the detail the code cannot reach. "all" frees every
   local attribute (offset, rotation, scale, opacity, colour) with no pull: the free per-Gaussian fit
   that `bench appearance` compares the identity field against.

Cameras are given (`geometry.camera.Camera`, the model's millimetres); see `geometry.pnp` for a camera from
2D landmarks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from neuralmorph.config import Config
from neuralmorph.errors import InputError
from neuralmorph.evaluation.image_metrics import psnr
from neuralmorph.geometry.camera import Camera
from neuralmorph.models.base import Latents, MorphableModel
from neuralmorph.splat.optimize import photometric_loss


@dataclass(frozen=True)
class ImageFitConfig(Config):
    """Steps, weights and learning rates of an image fit."""

    steps: int = 200
    """Stage 1: optimiser steps over the latents."""
    lr: float = 0.05
    """Stage 1: Adam learning rate of the whitened latents."""
    fit_geometry: bool = True
    """Stage 1 also fits the geometry latents (False: the mesh family's mean head, or the given start)."""
    refine: Literal["none", "color", "all"] = "color"
    """Stage 2: per-Gaussian residuals of the colour, of every attribute (the free fit), or none."""
    refine_steps: int = 60
    """Stage 2: optimiser steps."""
    refine_lr: float = 0.005
    """Stage 2: Adam learning rate of the residuals."""
    refine_weight: float = 1.0
    """Stage 2 ("color"): L2 pull of the colour residuals towards zero (mean squared, per coefficient)."""
    ssim_weight: float = 0.2
    """Weight of (1 - SSIM); the rest of the photometric loss is L1."""
    mask_weight: float = 0.1
    """Weight of the L1 between rendered alpha and the mask (when a mask is given)."""
    landmark_weight: float = 1.0
    """Weight of the 2D landmark term: mean squared distance in units of the image's diagonal, x 1000."""
    prior_weight: float = 3e-3
    """Weight of the priors' energy (mean squared whitened latent)."""

    def __post_init__(self):
        for name in ("steps", "refine_steps"):
            if getattr(self, name) < 0:
                raise InputError(f"--image-fit.{name.replace('_', '-')}", f"must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "refine_lr"):
            if not getattr(self, name) > 0:
                raise InputError(f"--image-fit.{name.replace('_', '-')}", f"must be > 0, got {getattr(self, name)}")
        for name in ("refine_weight", "mask_weight", "landmark_weight", "prior_weight"):
            if not getattr(self, name) >= 0:
                raise InputError(f"--image-fit.{name.replace('_', '-')}", f"must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.ssim_weight <= 1:
            raise InputError("--image-fit.ssim-weight", f"must be in [0, 1], got {self.ssim_weight}")


@dataclass
class View:
    """One posed image to fit: image (H, W, 3) float32 in [0, 1], its camera, an optional mask (H, W) and
    optional 2D landmarks (L, 2) pixels (rows matching the model's landmarks; NaN rows are ignored)."""

    image: np.ndarray
    camera: Camera
    mask: np.ndarray | None = None
    landmarks: np.ndarray | None = None

    def __post_init__(self):
        im = np.asarray(self.image)
        c = self.camera
        if im.ndim != 3 or im.shape[2] != 3:
            raise InputError("image", f"need an RGB image (H, W, 3), got shape {im.shape}")
        if im.shape[:2] != (c.height, c.width):
            raise InputError("image", f"is {im.shape[1]}x{im.shape[0]} pixels, its camera {c.width}x{c.height}")
        if not np.isfinite(im).all():
            raise InputError("image", "holds NaN or infinite values")
        if self.mask is not None and np.asarray(self.mask).shape != im.shape[:2]:
            raise InputError("mask", f"is {np.asarray(self.mask).shape[::-1]} pixels, the image {im.shape[1::-1]}")
        if self.landmarks is not None and (np.asarray(self.landmarks).ndim != 2 or np.asarray(self.landmarks).shape[1] != 2):
            raise InputError("landmarks", f"need (L, 2) pixel coordinates, got shape {np.asarray(self.landmarks).shape}")


@dataclass
class ImageFit:
    """What an image fit found."""

    latents: Latents                      # space -> (1, K)
    residuals: dict[str, torch.Tensor]    # stage 2's per-Gaussian residuals (local attributes), empty without
    seconds: float
    psnr_input_db: list[float]            # per view, after the fit (whole image)
    history: list[dict] = field(default_factory=list)

    def gaussians(self, model: MorphableModel):
        """The fitted head's Gaussians (residuals applied)."""
        return _gaussians(model, self.latents, self.residuals)


def _gaussians(model, latents: Latents, residuals: dict[str, torch.Tensor]):
    attributes = list(model.local_attributes(latents["appearance"]))
    for i, name in enumerate(("offset", "quat", "log_scale", "opacity", "sh")):
        if name in residuals:
            attributes[i] = attributes[i] + residuals[name]
    return model.bound(tuple(attributes), model.decode(latents))


def _intrinsics(camera: Camera, device) -> torch.Tensor:
    return torch.as_tensor(camera.intrinsics, dtype=torch.float32, device=device)


class _Views:
    """The views as tensors on the model's device, and the loss of a head's Gaussians against them."""

    def __init__(self, model, views: list[View], config: ImageFitConfig):
        d = model.device
        self.model, self.config, self.views = model, config, views
        self.images = [torch.as_tensor(np.asarray(v.image, np.float32), device=d) for v in views]
        self.masks = [None if v.mask is None else torch.as_tensor(np.asarray(v.mask, np.float32), device=d)
                      for v in views]
        self.viewmats = [torch.as_tensor(np.array(v.camera.world_to_camera), dtype=torch.float32, device=d) for v in views]
        self.Ks = [_intrinsics(v.camera, d) for v in views]
        self.landmarks = [None if v.landmarks is None else torch.as_tensor(np.asarray(v.landmarks, np.float32), device=d)
                          for v in views]
        lm = len(model.landmark_ids)
        for v in self.landmarks:
            if v is not None and len(v) != lm:
                raise InputError("landmarks", f"holds {len(v)} points, the model has {lm} landmarks")

    def render(self, gaussians, i: int) -> dict:
        v = self.views[i].camera
        return self.model.render(gaussians, 0, self.viewmats[i], self.Ks[i], v.width, v.height)

    def photometric(self, gaussians, i: int) -> torch.Tensor:
        c = self.config
        out = self.render(gaussians, i)
        return photometric_loss(out["rgb"], self.images[i], c.ssim_weight, out["alpha"], self.masks[i], c.mask_weight)

    def landmark(self, vertices: torch.Tensor, i: int) -> torch.Tensor:
        """Mean squared distance (units of the image diagonal, x 1000) of the projected model landmarks."""
        target = self.landmarks[i]
        if target is None:
            return vertices.new_zeros(())
        cam = self.views[i].camera
        p = vertices[0, self.model.landmark_ids] @ self.viewmats[i][:3, :3].T + self.viewmats[i][:3, 3]
        uv = (p @ self.Ks[i].T)[:, :2] / p[:, 2:3].clamp_min(1e-6)
        ok = torch.isfinite(target).all(dim=1)
        diag2 = float(cam.width ** 2 + cam.height ** 2)
        return 1000 * ((uv[ok] - target[ok]) ** 2).sum(dim=1).mean() / diag2


def fit_image(model: MorphableModel, views: list[View], config: ImageFitConfig = ImageFitConfig(),
              start: Latents | None = None, progress: bool = True) -> ImageFit:
    """Fit `model` (a family with appearance) to posed images `views`; see the module for the schedule.

    start: latents (space -> (1, K)) to begin from (default: the priors' means)."""
    if not model.has_appearance:
        raise InputError("--model", f"a {model.family!r} model has no appearance to fit to images")
    if not views:
        raise InputError("--target", "no images to fit")
    c = config
    data = _Views(model, views, c)
    begin = time.perf_counter()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:  # the model is fixed; only the latents and residuals learn
        p.requires_grad_(False)
    try:
        return _fit(model, views, data, c, start, begin, progress)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _fit(model, views, data: _Views, c: ImageFitConfig, start: Latents | None, begin: float,
         progress: bool) -> ImageFit:
    """The two stages of `fit_image` on a model whose own parameters are frozen."""
    from tqdm import tqdm

    start = model.zero_latents(1) if start is None else {k: v.detach().clone() for k, v in start.items()}
    free = [n for n in model.latent_sizes if n == "appearance" or c.fit_geometry]
    white = {n: model.prior[n].whiten(start[n]).detach().requires_grad_(n in free) for n in model.latent_sizes}

    def latents() -> Latents:
        return {n: model.prior[n].unwhiten(w) for n, w in white.items()}

    history = []
    opt = torch.optim.Adam([white[n] for n in free], lr=c.lr)
    for step in tqdm(range(c.steps), desc="fit latents", unit="step", disable=not progress):
        z = latents()
        vertices = model.decode(z)
        g = model.bound(model.local_attributes(z["appearance"]), vertices)
        i = step % len(views)
        photo = data.photometric(g, i)
        lm = c.landmark_weight * data.landmark(vertices, i)
        prior = c.prior_weight * torch.stack([white[n].square().mean() for n in free]).sum()
        loss = photo + lm + prior
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == c.steps - 1:
            history.append({"stage": "latents", "step": step, "photometric": float(photo.detach()), "landmarks": float(lm.detach())})
    fitted = {n: v.detach() for n, v in latents().items()}

    residuals: dict[str, torch.Tensor] = {}
    if c.refine != "none" and c.refine_steps:
        with torch.no_grad():
            base = model.local_attributes(fitted["appearance"])
            vertices = model.decode(fitted)
        names = ("sh",) if c.refine == "color" else ("offset", "quat", "log_scale", "opacity", "sh")
        index = {"offset": 0, "quat": 1, "log_scale": 2, "opacity": 3, "sh": 4}
        residuals = {n: torch.zeros_like(base[index[n]]).requires_grad_(True) for n in names}
        opt = torch.optim.Adam(list(residuals.values()), lr=c.refine_lr)
        for step in tqdm(range(c.refine_steps), desc="refine", unit="step", disable=not progress):
            attributes = list(base)
            for n, r in residuals.items():
                attributes[index[n]] = attributes[index[n]] + r
            g = model.bound(tuple(attributes), vertices)
            i = step % len(views)
            photo = data.photometric(g, i)
            pull = c.refine_weight * residuals["sh"].square().mean() if c.refine == "color" else photo.new_zeros(())
            loss = photo + pull
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 25 == 0 or step == c.refine_steps - 1:
                history.append({"stage": "refine", "step": step, "photometric": float(photo.detach())})
        residuals = {n: r.detach() for n, r in residuals.items()}
    seconds = time.perf_counter() - begin
    with torch.no_grad():
        g = _gaussians(model, fitted, residuals)
        scores = [float(psnr(data.render(g, i)["rgb"].clamp(0, 1), data.images[i])) for i in range(len(views))]
    return ImageFit(fitted, residuals, seconds, scores, history)


def render_fit(model: MorphableModel, fit: ImageFit, cameras: list[Camera], background=(0.0, 0.0, 0.0)) -> list[np.ndarray]:
    """Images (H, W, 3) float32 in [0, 1] of a fitted head (residuals included) from `cameras`."""
    with torch.no_grad():
        g = fit.gaussians(model)
    return model.render_cameras(g, cameras, background)
