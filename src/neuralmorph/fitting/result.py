"""The one result every fit returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuralmorph.frame import Similarity
from neuralmorph.geometry.mesh import Mesh
from neuralmorph.models.base import Latents


@dataclass
class FitResult:
    """Fitted latents and heads. Loops with more to report (the implicit fit) extend it."""

    latents: Latents        # space -> (1, K), or (n_obs, K) for a space fitted per observation
    pose: Similarity        # model frame (mm) -> the observation's coordinates
    meshes: list[Mesh]      # (n_obs) fitted heads, mm, in the observation's coordinates
    history: list[float]    # total energy per step (empty for closed forms)

    @property
    def vertices(self) -> np.ndarray:
        """(N, 3) float64 mm: the first (for single-observation fits, the only) fitted head's vertices."""
        return self.meshes[0].vertices

    @property
    def observation_poses(self) -> list[Similarity]:
        """(n_obs) model frame (mm) -> the observation's coordinates, per observation."""
        return [self.pose] * len(self.meshes)

    def diagnostics(self) -> dict:
        """What the fit reports beside its result (for metrics.json): the final energy, and whatever a
        loop adds (times, convergence)."""
        return {"final_loss": self.history[-1] if self.history else None}

    def observation_diagnostics(self, i: int) -> dict:
        """The same for observation i."""
        return {}

    def latents_of(self, i: int) -> Latents:
        """Observation i's latents: space -> (1, K) (a space fitted once is shared by every observation)."""
        return {k: v[i:i + 1] if len(v) == len(self.meshes) else v[:1] for k, v in self.latents.items()}

    def to_dict(self) -> dict:
        return {"latents": {k: v[0].tolist() for k, v in self.latents.items()}, "pose": self.pose.as_dict()}
