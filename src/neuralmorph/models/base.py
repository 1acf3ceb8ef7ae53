"""The interface every head-model family shares, and the one registry of families.

A model is a `torch.nn.Module` with named latent spaces (`latent_sizes`), a `decode` from latents to
registered vertices in millimetres, a fitted Gaussian prior per latent space to sample from, and
`save(dir)` / `load(dir)` as safetensors weights plus a JSON config (never pickled modules). The model
works in the canonical frame internally; at its boundary everything is millimetres, like the datasets
and the metrics.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from neuralmorph.atomic import atomic_dir
from neuralmorph.config import Config
from neuralmorph.errors import InputError
from neuralmorph.frame import Frame
from neuralmorph.geometry.mesh import Mesh
from neuralmorph.tensorfile import load_arrays, save_arrays

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"

Latents = dict[str, torch.Tensor]  # space name -> (B, K_space) float32

MODELS: dict[str, type["MorphableModel"]] = {}

# Families defined outside `neuralmorph.models`, imported on first load (importing them here would be
# circular: they subclass MorphableModel).
_FAMILY_MODULES = {"implicit-global": "neuralmorph.models.implicit.model", "implicit-local": "neuralmorph.models.implicit.model"}


def register(cls: type["MorphableModel"]) -> type["MorphableModel"]:
    """Class decorator: make a family loadable by its `family` name."""
    MODELS[cls.family] = cls
    return cls


class GaussianPrior(torch.nn.Module):
    """N(mean, L Lᵀ) over one latent space, fitted to training latents.

    mean: (K,) float32; scale_tril: (K, K) float32 lower-triangular Cholesky factor.
    """

    def __init__(self, size: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("scale_tril", torch.eye(size))

    @torch.no_grad()
    def fit(self, latents: torch.Tensor, jitter: float = 1e-6) -> "GaussianPrior":
        """latents: (S, K) training codes; a small jitter keeps the covariance positive definite."""
        x = latents.double()
        mean = x.mean(dim=0)
        xc = x - mean
        cov = xc.T @ xc / max(len(x) - 1, 1) + jitter * torch.eye(x.shape[1], dtype=torch.float64)
        self.mean.copy_(mean.float())
        self.scale_tril.copy_(torch.linalg.cholesky(cov).float())
        return self

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, K) draws; temperature scales the spread (0 gives the mean).

        Noise is drawn on the CPU from `generator`, so a seed gives the same heads on every device.
        """
        eps = torch.randn(n, len(self.mean), generator=generator).to(self.mean.device)
        return self.mean + temperature * eps @ self.scale_tril.T

    def whiten(self, z: torch.Tensor) -> torch.Tensor:
        """(B, K) codes -> (B, K) standard-normal coordinates, so ‖whiten(z)‖² is the prior's energy."""
        return torch.linalg.solve_triangular(self.scale_tril, (z - self.mean).T, upper=False).T


@dataclass(frozen=True)
class ModelConfig(Config):
    """Base of every family's config: plain typed fields, saved as JSON next to the weights."""


class MorphableModel(torch.nn.Module):
    """Base class: subclasses set `family` and `Config`, build buffers/parameters, implement `decode`."""

    family: ClassVar[str] = ""
    Config: ClassVar[type[ModelConfig]] = ModelConfig

    def __init__(self, config: ModelConfig, latent_sizes: dict[str, int], faces: np.ndarray, frame: Frame,
                 landmark_ids: np.ndarray | None = None, region_names: tuple[str, ...] = (),
                 region_weights: np.ndarray | None = None):
        super().__init__()
        self.config = config
        self.latent_sizes = dict(latent_sizes)
        self.frame = frame
        self.region_names = tuple(region_names)
        self.register_buffer("faces", torch.as_tensor(np.array(faces, np.int64)))
        self.register_buffer("landmark_ids", torch.as_tensor(np.zeros(0, np.int64) if landmark_ids is None
                                                             else np.array(landmark_ids, np.int64)))
        self.register_buffer("region_weights", torch.as_tensor(
            np.zeros((0, 0), np.float32) if region_weights is None else np.array(region_weights, np.float32)))
        self.prior = torch.nn.ModuleDict({name: GaussianPrior(k) for name, k in self.latent_sizes.items()})

    # --- what every family implements ------------------------------------------------------------

    def decode(self, latents: Latents) -> torch.Tensor:
        """latents: space -> (B, K) float32 -> vertices (B, N, 3) float32 millimetres."""
        raise NotImplementedError

    @torch.no_grad()
    def meshes(self, latents: Latents, resolution: int = 128) -> list[Mesh]:
        """latents: space -> (B, K) float32 -> B meshes in millimetres, what every verb that writes heads
        (sample, interpolate, transfer, export) calls. Registered families: `decode` plus the shared
        `faces` (`resolution` is unused); families without a registered topology (the implicit ones)
        override it (e.g. marching cubes at `resolution` cells per axis)."""
        verts = self.decode(latents).double().cpu().numpy()
        faces = self.faces.cpu().numpy()
        return [Mesh(v, faces) for v in verts]

    # --- shared behaviour ------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.faces.device

    @property
    def n_vertices(self) -> int:
        """Vertices of the model's registered topology."""
        return int(self.faces.max()) + 1 if len(self.faces) else 0

    @property
    def regions(self) -> dict[str, np.ndarray]:
        """Region name -> vertex ids (int64) with a non-zero weight."""
        w = self.region_weights.cpu().numpy()
        return {n: np.flatnonzero(w[:, i] > 0) for i, n in enumerate(self.region_names)}

    def zero_latents(self, batch: int = 1) -> Latents:
        """The prior means, repeated `batch` times: the model's average head."""
        return {n: p.mean.expand(batch, -1).clone() for n, p in self.prior.items()}

    def sample(self, n: int, temperature: float = 1.0, seed: int = 0) -> Latents:
        """n draws from the fitted prior, deterministic by seed."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        return {name: prior.sample(n, temperature, gen) for name, prior in self.prior.items()}

    def check_latents(self, latents: Latents, where: str = "latents") -> Latents:
        """Validate names and sizes; InputError naming what is off."""
        missing = set(self.latent_sizes) - set(latents)
        extra = set(latents) - set(self.latent_sizes)
        if missing or extra:
            raise InputError(where, f"expected latent spaces {sorted(self.latent_sizes)}, got {sorted(latents)}")
        for name, z in latents.items():
            if z.ndim != 2 or z.shape[1] != self.latent_sizes[name]:
                raise InputError(where, f"latent {name!r} must have shape (B, {self.latent_sizes[name]}), got {tuple(z.shape)}")
            if not torch.isfinite(z).all():
                raise InputError(where, f"latent {name!r} contains NaN or infinite values")
        return latents

    def save(self, folder: str | Path) -> None:
        """Write config.json + weights.safetensors into `folder`, atomically."""
        config = {
            "family": self.family,
            "config": self.config.to_dict(),
            "latent_sizes": self.latent_sizes,
            "frame": self.frame.as_dict(),
            "region_names": list(self.region_names),
        }
        arrays = {k: v.detach().cpu().contiguous().numpy() for k, v in self.state_dict().items()}
        with atomic_dir(folder) as tmp:
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            save_arrays(tmp / WEIGHTS_FILE, arrays, {"family": self.family})

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "MorphableModel":
        """Load any registered family from a folder written by `save` (call on the base class or the family)."""
        folder = Path(folder)
        cfg_path = folder / CONFIG_FILE
        if not cfg_path.is_file():
            raise InputError(folder, f"not a neuralmorph model folder (no {CONFIG_FILE})")
        try:
            spec = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(cfg_path, f"not valid JSON: {exc}") from None
        family = spec.get("family")
        if family not in MODELS and family in _FAMILY_MODULES:
            importlib.import_module(_FAMILY_MODULES[family])
        if family not in MODELS:
            raise InputError(cfg_path, f"unknown model family {family!r} (known: {', '.join(sorted(MODELS))})")
        klass = MODELS[family]
        if cls is not MorphableModel and not issubclass(klass, cls):
            raise InputError(cfg_path, f"holds a {family!r} model, not {cls.family!r}")
        arrays, _ = load_arrays(folder / WEIGHTS_FILE)
        model = klass.from_saved(klass.Config.from_dict(spec["config"], str(cfg_path)), spec, arrays)
        state = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise InputError(folder / WEIGHTS_FILE, f"weights do not match the config: {str(exc).splitlines()[0]}") from None
        return model.to(device).eval()  # loaded models are for use; training puts them back in train mode

    @classmethod
    def from_saved(cls, config: ModelConfig, spec: dict, arrays: dict[str, np.ndarray]) -> "MorphableModel":
        """Build an empty model of the saved shapes (weights are loaded right after)."""
        raise NotImplementedError
