"""Head-model families. Importing this package registers every family with `MorphableModel.load`."""

from neuralmorph.models.base import MODELS, GaussianPrior, Latents, ModelConfig, MorphableModel, register
from neuralmorph.models.pca import PCAConfig, PCAModel
from neuralmorph.models.regional.model import RegionalConfig, RegionalModel

__all__ = ["MODELS", "GaussianPrior", "Latents", "ModelConfig", "MorphableModel", "register", "PCAConfig", "PCAModel",
           "RegionalConfig", "RegionalModel"]
