"""The family contract: what every head-model family provides, and the one registry of families.

A family is one module (or folder) under `neuralmorph.models` whose model class subclasses
`MorphableModel` (or `RegisteredModel`, for families with a fixed registered topology) and carries the
`@register` decorator; `neuralmorph/models/__init__.py` imports it, and from then on the CLI, the
trainer, fitting, sampling, evaluation and the benchmarks reach it only through this contract:

- named latent spaces (`latent_sizes`) and a fitted `GaussianPrior` per space (`sample`, `zero_latents`);
- `meshes(latents)`: heads in millimetres (registered families: `decode` to their topology);
- `save(dir)` / `load(dir)`: safetensors weights plus a JSON config, never pickled modules;
- building from a dataset and a typed config: `training_set` (what the trainer draws from), `build`
  (an untrained model, or a finished one for closed-form families: `trainable = False`), the trainer's
  `Trainable` protocol (`training_loss`, ...), then `fit_prior`;
- what it can be fitted to: `fits` (observation kinds) and `geometry` (which fitting loop serves it);
- abilities some families lack (local edits, truncation, starting from a trained model) are methods
  whose base version raises an `InputError` saying so; callers never probe with `hasattr`.

The model works in the canonical frame internally; at its boundary everything is millimetres, like the
datasets and the metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch

from neuralmorph.atomic import atomic_dir, read_json
from neuralmorph.config import Config
from neuralmorph.errors import InputError
from neuralmorph.frame import Frame, Similarity
from neuralmorph.geometry.mesh import Mesh
from neuralmorph.tensorfile import load_arrays, save_arrays
from neuralmorph.training.trainer import Trainable, TrainerConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"

if TYPE_CHECKING:
    from neuralmorph.data.dataset import HeadDataset

Latents = dict[str, torch.Tensor]  # space name -> (B, K_space) float32

MODELS: dict[str, type["MorphableModel"]] = {}
"""family name -> model class, filled by `@register` when `neuralmorph.models` is imported."""

ObservationKind = Literal["registered", "points", "depth"]
"""What a fit can start from: a mesh in the model's topology, a point cloud (or a mesh's surface), or a
sequence of depth maps with cameras."""


def register(cls: type["MorphableModel"]) -> type["MorphableModel"]:
    """Class decorator: make a family known to `load`, `train FAMILY`, the benchmarks and the tests."""
    if not cls.family:
        raise TypeError(f"{cls.__name__} sets no family name")
    MODELS[cls.family] = cls
    return cls


def registered_families() -> tuple[str, ...]:
    """Every registered family's name, in registration order."""
    import neuralmorph.models  # noqa: F401  (registers every family)

    return tuple(MODELS)


def family_class(name: str, where: str = "family") -> type["MorphableModel"]:
    """The registered class of family `name`; InputError naming the known ones otherwise."""
    import neuralmorph.models  # noqa: F401  (registers every family)

    if name not in MODELS:
        raise InputError(where, f"unknown model family {name!r} (known: {', '.join(sorted(MODELS))})")
    return MODELS[name]


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

    def unwhiten(self, w: torch.Tensor) -> torch.Tensor:
        """(B, K) standard-normal coordinates -> (B, K) codes: z = mean + w Lᵀ, the inverse of `whiten`.
        Fits optimise w: every direction then has the same scale, so one learning rate suits all."""
        return self.mean + w @ self.scale_tril.T

    def diagonal(self) -> "GaussianPrior":
        """The same per-dimension spreads without the correlations: N(mean, diag(L Lᵀ))."""
        out = GaussianPrior(len(self.mean)).to(self.mean.device)
        out.mean.copy_(self.mean)
        out.scale_tril.copy_(torch.diag(self.scale_tril.square().sum(dim=1).sqrt()))  # sqrt of diag(L Lᵀ)
        return out


@dataclass(frozen=True)
class ModelConfig(Config):
    """Base of every family's config: plain typed fields, saved as JSON next to the weights."""


class MorphableModel(torch.nn.Module, Trainable):
    """Base of every family. A subclass sets the class attributes below, builds its buffers and
    parameters in `__init__`, and implements `meshes`, `build`, `from_saved` (and, when trainable, the
    trainer's `training_loss`). Everything else has a shared or a refusing default."""

    family: ClassVar[str] = ""
    """The family's name: the `train FAMILY` verb, the `family` field of saved models and latents."""
    summary: ClassVar[str] = ""
    """What the family is, in one line (the help of `train FAMILY`)."""
    Config: ClassVar[type[ModelConfig]] = ModelConfig
    """Sizes, losses and schedules: `--model.*` flags of `train FAMILY`, saved as config.json."""
    Samples: ClassVar[type[Config] | None] = None
    """How training items are drawn from a dataset (`--samples.*` flags); None: one item per head."""
    trainable: ClassVar[bool] = True
    """Trained by the shared trainer (`neuralmorph.training`); False: `build` solves it in closed form."""
    geometry: ClassVar[Literal["mesh", "sdf"]] = "mesh"
    """What `meshes` comes from, and so which fitting loop serves the family: a registered mesh, or a
    signed-distance field."""
    fits: ClassVar[frozenset[ObservationKind]] = frozenset()
    """The observation kinds `neuralmorph.fitting.fit_observation` accepts for this family."""
    truncatable: ClassVar[bool] = False
    """Whether `truncated(k, k)` cuts the model to its first k components per space (model-quality curves)."""
    cli_model_prefix: ClassVar[bool] = True
    """`train FAMILY` spells the config's flags `--model.NAME` (False: plain `--NAME`)."""

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

    def meshes(self, latents: Latents, resolution: int = 128) -> list[Mesh]:
        """latents: space -> (B, K) float32 -> B meshes in millimetres: what every verb that writes heads
        (sample, interpolate, transfer, export) and every fit calls. `resolution`: grid cells per axis
        for families that extract a surface (unused by registered ones)."""
        raise NotImplementedError

    @classmethod
    def build(cls, dataset: "HeadDataset", config: ModelConfig, training_set: Any = None, split: str = "train",
              seed: int = 0) -> "MorphableModel":
        """A model of this family for `dataset`: untrained (ready for the trainer, drawing from
        `training_set`), or finished when the family is solved in closed form (`trainable = False`), from
        the heads of `split`; random initialisation seeded by `seed`."""
        raise NotImplementedError

    @classmethod
    def from_saved(cls, config: ModelConfig, spec: dict, arrays: dict[str, np.ndarray]) -> "MorphableModel":
        """Build an empty model of the saved shapes (weights are loaded right after)."""
        raise NotImplementedError

    # --- building and training: shared defaults --------------------------------------------------

    @classmethod
    def training_set(cls, dataset: "HeadDataset", config: ModelConfig, split: str = "train",
                     samples: Config | None = None, seed: int = 0) -> Any:
        """What the trainer draws batches from (a torch Dataset of dicts of tensors); None for closed-form
        families. `samples`: a `Samples` config for families that draw items on the fly."""
        return None

    @classmethod
    def validation_set(cls, dataset: "HeadDataset", config: ModelConfig, samples: Config | None = None) -> Any:
        """Held-out items the trainer scores with `validation_metrics` (None: no validation)."""
        return None

    @classmethod
    def trainer_defaults(cls) -> TrainerConfig:
        """The trainer settings `train FAMILY` starts from (flags override them)."""
        return TrainerConfig()

    def fit_prior(self, dataset: "HeadDataset", training_set: Any = None) -> "MorphableModel":
        """Fit the priors to the trained model (after training). Closed-form families fit them in `build`."""
        return self

    def continue_with(self, config: ModelConfig) -> "MorphableModel":
        """This trained model under another run's config, to train further from it (`--init`)."""
        raise InputError("--init", f"a {self.family!r} model cannot be trained further from a saved one")

    @classmethod
    def for_benchmark(cls, latent_size: int) -> tuple[ModelConfig, TrainerConfig | None]:
        """The config (and trainer settings) `bench fidelity` trains: mesh families at the benchmark's one
        total `latent_size`, others at a comparable size. Default: the family's own defaults."""
        return cls.Config(), (cls.trainer_defaults() if cls.trainable else None)

    @classmethod
    def smoke_config(cls) -> tuple[ModelConfig, Config | None]:
        """The smallest sensible config (and `Samples` config): what the contract tests and smoke runs
        train in seconds. Default: the family's defaults."""
        return cls.Config(), (cls.Samples() if cls.Samples is not None else None)

    def parameter_count(self) -> int:
        """Parameters of the model itself (codebooks of training codes, if any, not counted)."""
        return sum(p.numel() for p in self.parameters())

    def parameter_counts(self) -> dict[str, int]:
        """Parameters by part (families with parts, like field and deformation, name them)."""
        return {"model": self.parameter_count()}

    def training_latents(self) -> Latents | None:
        """The trained codes of every training head, for families that learn them (auto-decoders): what a
        fit may start from. None for the others."""
        return None

    def training_summary(self, training_set: Any = None) -> str:
        """One line about the trained model for the `train` verb's report (sizes, training error...)."""
        return f"latent sizes {self.latent_sizes}"

    # --- abilities some families have ------------------------------------------------------------

    def require_fit(self, kind: ObservationKind, where: str = "target") -> None:
        """InputError unless this family can be fitted to an observation of `kind`."""
        if kind not in self.fits:
            can = ", ".join(sorted(self.fits)) or "nothing"
            raise InputError(where, f"a {self.family!r} model cannot be fitted to a {kind} observation (it takes: {can})")

    def truncated(self, k_identity: int, k_expression: int) -> "MorphableModel":
        """The model cut to its first components per space (`truncatable` families)."""
        raise InputError(self.family, "this family cannot be cut to fewer components")

    def variance_spectrum(self, space: str) -> torch.Tensor:
        """(K,) variances along the principal directions of a latent space, largest first: the prior's own
        (families with a data spectrum, like PCA, override it with the training data's)."""
        tril = self.prior[space].scale_tril
        return torch.linalg.eigvalsh(tril @ tril.T).flip(0)

    @property
    def control_vertices(self) -> dict[str, np.ndarray]:
        """Region name -> its control vertex ids (int64), for families with local control (else empty)."""
        return {}

    def check_editable(self, where: str = "model") -> None:
        """InputError (naming `where`) unless this model can make local edits (`edit`, `resample_region`)."""
        raise InputError(where, f"holds a {self.family!r} model, which has no local control; editing needs a family "
                                "that has (e.g. regional)")

    def edit(self, vertices: torch.Tensor | np.ndarray, control: dict[str, torch.Tensor | np.ndarray],
             **options) -> torch.Tensor:
        """A head (N, 3) mm with control-vertex displacements name -> (C_r, 3) mm applied region by region;
        with no displacements, the model's own reconstruction of the head."""
        self.check_editable()
        raise NotImplementedError

    def resample_region(self, vertices: torch.Tensor | np.ndarray, region: str, seed: int = 0,
                        temperature: float = 1.0) -> torch.Tensor:
        """A head (N, 3) mm with one region redrawn from the family's regional prior."""
        self.check_editable()
        raise NotImplementedError

    # --- shared behaviour ------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.faces.device

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
        with atomic_dir(folder, "model") as tmp:
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            save_arrays(tmp / WEIGHTS_FILE, arrays, {"family": self.family})

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "MorphableModel":
        """Load any registered family from a folder written by `save` (call on the base class or the family)."""
        folder = Path(folder)
        cfg_path = folder / CONFIG_FILE
        if not cfg_path.is_file():
            raise InputError(folder, f"not a neuralmorph model folder (no {CONFIG_FILE})")
        spec = read_json(cfg_path)
        family = spec.get("family")
        klass = family_class(family, str(cfg_path))
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


class RegisteredModel(MorphableModel):
    """Families whose heads are one registered topology (the shared `faces`): they `decode` latents to
    vertices, their meshes are `decode` plus `faces`, and they fit registered meshes by `project`."""

    geometry = "mesh"
    fits = frozenset({"registered", "points"})
    projection: ClassVar[str] = ""
    """How `project` finds latents, in words, for result files (e.g. "exact projection")."""

    def decode(self, latents: Latents) -> torch.Tensor:
        """latents: space -> (B, K) float32 -> vertices (B, N, 3) float32 millimetres."""
        raise NotImplementedError

    def project(self, vertices: torch.Tensor, steps: int = 100, prior_weight: float | None = None) -> Latents:
        """Latents whose decode best matches registered heads already in the model's frame.

        vertices: (B, N, 3) float32 mm. steps: optimiser steps for families without a closed form;
        prior_weight: pull towards the prior mean (None: the family's default). Returns space -> (B, K).
        """
        raise NotImplementedError

    def project_rigid(self, vertices: np.ndarray, prior_weight: float | None = None) -> tuple[Latents | None, Similarity | None]:
        """For one head (N, 3) mm in the model's frame, latents and a small rigid motion δ of the head
        solved together so that decode(z) ≈ δ(vertices); `fitting.fit_registered` iterates it. (None,
        None) for families without a joint solve: the fit keeps its Umeyama start."""
        return None, None

    @property
    def n_vertices(self) -> int:
        """Vertices of the model's registered topology."""
        return int(self.faces.max()) + 1 if len(self.faces) else 0

    @torch.no_grad()
    def meshes(self, latents: Latents, resolution: int = 128) -> list[Mesh]:
        verts = self.decode(latents).double().cpu().numpy()
        faces = self.faces.cpu().numpy()
        return [Mesh(v, faces) for v in verts]
