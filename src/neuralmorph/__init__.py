"""neuralmorph: parametric 3D head models on one data model, one canonical frame and one evaluation protocol."""

__version__ = "0.1.0"
