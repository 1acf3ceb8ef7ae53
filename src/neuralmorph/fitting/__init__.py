"""Fitting: any family to any observation it accepts (`fit_observation`), one result type (`FitResult`).

`align.py` the initial alignment every fit starts from; `loop.py` the mesh families' optimisation loop
over latents and pose with pluggable observation terms (`terms.py`) and the registered closed form;
`implicit.py` the signed-distance families' fit (Broyden-inverted deformations); `fit.py` the dispatch.
"""

from neuralmorph.fitting.align import initial_pose
from neuralmorph.fitting.fit import fit_observation
from neuralmorph.fitting.loop import FitConfig, fit, fit_registered
from neuralmorph.fitting.result import FitResult
from neuralmorph.fitting.terms import LandmarkTerm, PointToSurfaceTerm, VertexTerm

__all__ = ["FitConfig", "FitResult", "fit", "fit_observation", "fit_registered", "initial_pose", "LandmarkTerm",
           "PointToSurfaceTerm", "VertexTerm"]
