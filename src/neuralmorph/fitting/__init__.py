"""Fitting: one loop over latents and pose with pluggable observation terms, plus closed forms."""

from neuralmorph.fitting.loop import FitConfig, FitResult, fit, fit_registered, initial_pose
from neuralmorph.fitting.terms import LandmarkTerm, PointToSurfaceTerm, VertexTerm

__all__ = ["FitConfig", "FitResult", "fit", "fit_registered", "initial_pose", "LandmarkTerm",
           "PointToSurfaceTerm", "VertexTerm"]
