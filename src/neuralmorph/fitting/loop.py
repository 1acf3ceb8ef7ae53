"""The fitting loop: one optimiser over latents and a similarity pose, pluggable observation terms.

Model vertices are posed into the observation's coordinates, v_obs = s R v + t, so observations are
never resampled or moved. Latents are optimised in whitened coordinates (z = μ + L w, prior energy
‖w‖²), which gives every direction the same scale and makes one learning rate fit all. Every weight and
schedule comes from `FitConfig`. Registered meshes get the exact closed form instead when the model has
one (`project`); the loop is for everything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
from tqdm import tqdm

from neuralmorph.errors import InputError
from neuralmorph.fitting.align import average_head
from neuralmorph.fitting.result import FitResult
from neuralmorph.fitting.terms import robust
from neuralmorph.frame import Similarity, umeyama
from neuralmorph.geometry.mesh import Mesh
from neuralmorph.geometry.rotation import rotvec_to_matrix_torch
from neuralmorph.models.base import Latents, RegisteredModel


@dataclass(frozen=True)
class FitConfig:
    """Weights and schedules of the fitting loop (none are hard-coded elsewhere)."""

    steps: int = 200
    """Optimiser steps."""
    lr: float = 0.1
    """Adam learning rate on whitened latents (pose parameters use it scaled by their units)."""
    prior_weight: float = 0.05
    """Weight of the prior energy ‖w‖² (mm² per unit of whitened latent) at the first step."""
    prior_weight_end: float = 0.005
    """Weight of the prior energy at the last step, reached by geometric decay from prior_weight (coarse to
    fine)."""
    robust: Literal["l2", "huber", "geman"] = "huber"
    """Robust loss on residual distances."""
    robust_scale_mm: float = 2.0
    """Where the robust loss stops being quadratic."""
    optimize_pose: bool = True
    """Refine the initial alignment (rotation, translation) jointly with the latents."""
    optimize_scale: bool = False
    """Also refine a scale (observations in unknown units)."""
    pose_warmup: int = 20
    """Steps of pose-and-identity only before expression latents join."""
    prior: Literal["auto", "gaussian", "diffusion"] = "auto"
    """The prior energy: the model's Gaussians (‖w‖²), or a diffusion prior's denoising energy (given with
    `fit --prior`); auto: the diffusion prior when one is given."""
    diffusion_weight: float = 2.0
    """The diffusion energy's weight relative to prior_weight (its gradient is a noisy score, of another
    scale than ‖w‖²'s); follows the same schedule. 2: the best of 2, 8 and 20 in `bench prior`'s
    validation fits."""
    diffusion_draws: int = 8
    """Noise draws averaged per step in the diffusion energy (fewer: a noisier gradient)."""

    def __post_init__(self):
        if self.steps < 0 or self.lr <= 0:
            raise InputError("fit config", f"steps must be >= 0 and lr > 0, got {self.steps}, {self.lr}")
        if self.prior_weight < 0 or self.prior_weight_end < 0 or self.diffusion_weight < 0:
            raise InputError("fit config", "prior weights must not be negative")
        if self.diffusion_draws < 1:
            raise InputError("--fit.diffusion-draws", f"must be at least 1, got {self.diffusion_draws}")

    def latent_prior(self, model, diffusion=None):
        """The `LatentPrior` this config asks for, from the model and an optional loaded diffusion prior
        (`prior.latent.load_prior`'s); InputError when it asks for a diffusion prior and none is given."""
        from neuralmorph.prior.latent import GaussianLatentPrior

        if self.prior == "diffusion" and diffusion is None:
            raise InputError("--fit.prior", "diffusion needs a trained prior: give --prior FOLDER (`train prior`)")
        if self.prior == "gaussian" or diffusion is None:
            return GaussianLatentPrior(model)
        return diffusion


def fit(model: RegisteredModel, terms: Sequence, config: FitConfig = FitConfig(), init_pose: Similarity | None = None,
        init_latents: Latents | None = None, progress: bool = False, prior=None, seed: int = 0) -> FitResult:
    """Minimise Σ term.weight · mean robust(term.residuals(posed vertices)) + prior energy.

    prior: a `prior.latent.LatentPrior` (None: the model's Gaussians, ‖w‖²); a diffusion prior's energy is
    drawn at random noise levels (`seed`), `config.diffusion_draws` per step."""
    from neuralmorph.prior.latent import GaussianLatentPrior

    dev = model.device
    prior = prior if prior is not None else GaussianLatentPrior(model)
    noise = torch.Generator().manual_seed(seed)
    pose0 = init_pose or Similarity()
    whitened = {}
    for name, gaussian in model.prior.items():
        start = torch.zeros(1, len(gaussian.mean), device=dev)
        if init_latents is not None:
            start = gaussian.whiten(init_latents[name].to(dev))
        whitened[name] = start.clone().requires_grad_(True)
    rot0 = torch.as_tensor(pose0.rotation, dtype=torch.float32, device=dev)
    trans0 = torch.as_tensor(pose0.translation, dtype=torch.float32, device=dev)
    rotvec = torch.zeros(3, device=dev, requires_grad=True)
    trans = torch.zeros(3, device=dev, requires_grad=True)
    log_scale = torch.zeros(1, device=dev, requires_grad=True)
    # Pose parameters in natural units: a whitened latent of 1 moves the head by millimetres, a radian
    # of rotation by ~100 mm; scale the step sizes accordingly so one lr serves all.
    params = [{"params": list(whitened.values()), "lr": config.lr}]
    if config.optimize_pose:
        params += [{"params": [rotvec], "lr": config.lr * 0.02}, {"params": [trans], "lr": config.lr * 2.0}]
        if config.optimize_scale:
            params += [{"params": [log_scale], "lr": config.lr * 0.01}]
    opt = torch.optim.Adam(params)
    history = []

    def posed_vertices():
        latents = {n: model.prior[n].unwhiten(w) for n, w in whitened.items()}
        v = model.decode(latents)[0]
        rot = rotvec_to_matrix_torch(rotvec) @ rot0
        return latents, pose0.scale * torch.exp(log_scale) * v @ rot.T + trans0 + trans

    bar = tqdm(range(config.steps), desc="fit", unit="step", disable=not progress, leave=False, mininterval=0.5)
    for step in bar:
        frac = step / max(config.steps - 1, 1)
        prior_w = config.prior_weight * (config.prior_weight_end / config.prior_weight) ** frac if config.prior_weight > 0 else 0.0
        opt.zero_grad()
        latents, v = posed_vertices()
        data = sum(t.weight * robust(t.residuals(v), config.robust, config.robust_scale_mm).mean() for t in terms)
        loss = data + prior_w * prior.fit_energy(latents, whitened, config, noise)
        loss.backward()
        if step < config.pose_warmup and "expression" in whitened:
            whitened["expression"].grad = None  # identity and pose settle first
        opt.step()
        history.append(float(loss.detach()))
        if step % 20 == 0:
            bar.set_postfix(energy=f"{history[-1]:.3f}", refresh=False)
    with torch.no_grad():
        latents, v = posed_vertices()
        rot = (rotvec_to_matrix_torch(rotvec) @ rot0).double().cpu().numpy()
        # Re-orthonormalise: float32 products drift from a rotation by ~1e-7.
        u, _, vt = np.linalg.svd(rot)
        pose = Similarity(pose0.scale * float(torch.exp(log_scale)), u @ vt,
                          pose0.translation + trans.double().cpu().numpy())
    return FitResult({k: z.detach() for k, z in latents.items()}, pose,
                     [Mesh(v.double().cpu().numpy(), model.faces.cpu().numpy())], history)


def fit_registered(model: RegisteredModel, vertices: np.ndarray, prior_weight: float | None = None, align: bool = True,
                   iterations: int = 5, steps: int = 100) -> FitResult:
    """Fit a registered mesh in correspondence (N, 3) mm: the mesh itself is the alignment's answer.

    Without `align` it is one `project` (exact for closed-form families; `steps` of refinement for the
    others). With it, a rigid Umeyama start over every vertex is refined by the family's
    `project_rigid` where it has one: closed-form families solve latents and a small rigid motion
    together (alternating the two crawls, because a PCA of heads also holds some rigid motion).
    """
    target = np.asarray(vertices, np.float64)
    pose = Similarity()
    if align:
        pose = umeyama(average_head(model).vertices, target, with_scale=False)
        for _ in range(iterations):
            _, delta = model.project_rigid(pose.inverse().apply(target), prior_weight)
            if delta is None:  # no joint solve: the Umeyama start stands
                break
            pose = pose.compose(delta.inverse())  # target = pose(x), model ≈ δ(x)  =>  target ≈ pose(δ⁻¹(model))
    in_model = pose.inverse().apply(target)
    latents = model.project(torch.as_tensor(in_model[None], dtype=torch.float32, device=model.device), steps,
                            prior_weight)
    with torch.no_grad():
        fitted = model.decode(latents)[0].double().cpu().numpy()
    return FitResult(latents, pose, [Mesh(pose.apply(fitted), model.faces.cpu().numpy())], [])
