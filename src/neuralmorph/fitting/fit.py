"""`fit_observation`: any family, any observation it accepts, one result type.

The observation's kind picks the method (a registered mesh: `fit_registered`), the family's declared
`geometry` picks the loop (mesh families: `loop.fit` with point and landmark terms; signed-distance
families: `implicit.fit_point_clouds`). Every method starts from the same initial alignment
(`align.py`); what a family cannot be fitted to is refused by `model.require_fit`.
"""

from __future__ import annotations

import numpy as np
import torch

from neuralmorph.data.observations import Observation
from neuralmorph.errors import InputError
from neuralmorph.fitting.implicit import ImplicitFitConfig, fit_point_clouds
from neuralmorph.fitting.loop import FitConfig, fit, fit_registered
from neuralmorph.fitting.align import initial_pose
from neuralmorph.fitting.result import FitResult
from neuralmorph.fitting.terms import LandmarkTerm, PointToSurfaceTerm
from neuralmorph.models.base import MorphableModel


def _fit_mesh(model: MorphableModel, observation: Observation, config: FitConfig, implicit: ImplicitFitConfig,
              landmark_weight: float, progress: bool, prior) -> FitResult:
    if len(observation.clouds) != 1:
        raise InputError("target", f"a {model.family!r} model fits one observation at a time, got {len(observation.clouds)}")
    points = observation.clouds[0]
    landmarks = observation.landmarks
    pose = initial_pose(model, landmarks=landmarks, points=None if landmarks is not None else points)
    terms = [PointToSurfaceTerm(torch.tensor(points, dtype=torch.float32, device=model.device), model.faces)]
    if landmarks is not None:
        terms.append(LandmarkTerm(model.landmark_ids, torch.as_tensor(landmarks, dtype=torch.float32, device=model.device),
                                  weight=landmark_weight))
    return fit(model, terms, config, init_pose=pose, progress=progress, prior=prior)


def _fit_sdf(model: MorphableModel, observation: Observation, config: FitConfig, implicit: ImplicitFitConfig,
             landmark_weight: float, progress: bool, prior) -> FitResult:
    if observation.landmarks is not None:
        raise InputError("--landmarks", f"a {model.family!r} model has no landmarks; it aligns by the points "
                                        "(--implicit.align)")
    # the model's own code regularisers are its Gaussian prior; a diffusion prior's energy joins them
    return fit_point_clouds(model, list(observation.clouds), implicit, progress=progress,
                            sequence=observation.kind == "depth", diffusion=None if prior.kind == "gaussian" else prior)


LOOPS = {"mesh": _fit_mesh, "sdf": _fit_sdf}
"""model.geometry -> the loop that fits point clouds and depth sequences to it."""


def fit_observation(model: MorphableModel, observation: Observation, config: FitConfig = FitConfig(),
                    implicit: ImplicitFitConfig = ImplicitFitConfig(), landmark_weight: float = 0.1,
                    progress: bool = False, prior=None) -> FitResult:
    """Fit `model` to `observation` (mm). config: the mesh loop's weights and schedule (its `steps` also
    refine registered fits of families without a closed form); implicit: the signed-distance fit's;
    prior: a `prior.latent.LatentPrior` (None: the model's Gaussians)."""
    from neuralmorph.prior.latent import GaussianLatentPrior

    model.require_fit(observation.kind)
    prior = prior if prior is not None else GaussianLatentPrior(model)
    if observation.kind == "registered":
        return fit_registered(model, np.asarray(observation.clouds[0], np.float64), steps=config.steps)
    return LOOPS[model.geometry](model, observation, config, implicit, landmark_weight, progress, prior)
