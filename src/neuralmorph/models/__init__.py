"""Head-model families. Importing this package registers every family: adding one is one line below."""

from neuralmorph.models.base import (MODELS, GaussianPrior, Latents, ModelConfig, MorphableModel, RegisteredModel,
                                     family_class, register)

# --- the families (each module registers its classes with @register) ---
from neuralmorph.models.pca import PCAConfig, PCAModel
from neuralmorph.models.regional.model import RegionalConfig, RegionalModel
from neuralmorph.models.implicit.model import ImplicitGlobalModel, ImplicitLocalModel
from neuralmorph.models.appearance.model import AppearanceConfig, AppearanceModel

__all__ = ["MODELS", "GaussianPrior", "Latents", "ModelConfig", "MorphableModel", "RegisteredModel", "family_class",
           "register", "PCAConfig", "PCAModel", "RegionalConfig", "RegionalModel", "ImplicitGlobalModel",
           "ImplicitLocalModel", "AppearanceConfig", "AppearanceModel"]
