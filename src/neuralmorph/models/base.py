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
import math
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
SHIPPED_PREFIX = "shipped:"
SHIPPED_MODELS = {"appearance": "assets/appearance"}
"""Models that ship inside the package, loadable as `shipped:<name>` wherever a model folder is asked for
(`load`, every verb's --model): name -> folder under the package."""


def model_folder(folder: str | Path) -> Path:
    """The folder a --model value names: a path, or `shipped:<name>` for a model in SHIPPED_MODELS."""
    text = str(folder)
    if not text.startswith(SHIPPED_PREFIX):
        return Path(folder)
    name = text[len(SHIPPED_PREFIX):]
    if name not in SHIPPED_MODELS:
        raise InputError("--model", f"no shipped model {name!r}; shipped: "
                                    f"{', '.join(SHIPPED_PREFIX + n for n in SHIPPED_MODELS)}")
    from importlib import resources

    return Path(str(resources.files("neuralmorph").joinpath(SHIPPED_MODELS[name])))

if TYPE_CHECKING:
    from neuralmorph.data.dataset import HeadDataset

Latents = dict[str, torch.Tensor]  # space name -> (B, K_space) float32

LATENT_SIGMA_LIMIT = 1e4
"""Latents farther than this many prior standard deviations from the prior mean (in any whitened
coordinate) are refused by `check_latents`: no head lies there, and decoding them overflows to heads of
1e31 mm or infinities."""

MAX_TEMPERATURE = LATENT_SIGMA_LIMIT / 10
"""The largest sampling temperature the verbs accept: its draws stay well inside `LATENT_SIGMA_LIMIT`, so
every sample written can be read back."""

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


def standalone_families() -> tuple[str, ...]:
    """The families built from a dataset alone (`standalone`), in registration order: what benchmarks that
    train every family from data run."""
    return tuple(name for name in registered_families() if MODELS[name].standalone)


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
    identity_spaces: ClassVar[tuple[str, ...]] = ("identity",)
    """The latent spaces that belong to the person (what `transfer` takes from the identity head)."""
    standalone: ClassVar[bool] = True
    """Built from a dataset alone; False: builds on another trained model that its config names (the
    appearance family on a mesh family), so benchmarks that train every family from data skip it."""
    has_appearance: ClassVar[bool] = False
    """Whether the family's heads have appearance (`gaussians_of`, `render_views`), not only geometry."""
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
        # How the model was made, saved with it (config.json "training") for `training_concerns`:
        # {"split": the split trained on, "steps": optimiser steps (None: closed form), "warmup_steps": the
        # trainer's warm-up (None: closed form), "held_out": `held_out_error`'s result (None: nothing held
        # out)}. Set by `models.train.train_model`; None for a model made any other way.
        self.training_record: dict | None = None

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
        """Items of the dataset's `val` split the trainer scores with `validation_metrics` during training,
        logged as `val/<name>` (None: no validation, e.g. no `val` split, or a family that cannot score
        unseen heads without fitting them)."""
        return None

    @classmethod
    def test_set(cls, dataset: "HeadDataset", config: ModelConfig, samples: Config | None = None) -> Any:
        """Items of the dataset's `test` split the trainer scores with `validation_metrics` once, after the
        last step, logged as `test/<name>` (None: no test score). Never seen during training, so the test
        split never steers a run."""
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

    @classmethod
    def smoke_setup(cls, dataset: "HeadDataset", workdir: Path) -> tuple[ModelConfig, Config | None]:
        """`smoke_config` made ready for `dataset`: families that build on another model (`standalone` False)
        make a tiny one of it in `workdir` and name it. Default: `smoke_config()`."""
        return cls.smoke_config()

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

    def dataset_latents(self, dataset: "HeadDataset", split: str = "train") -> Latents:
        """The latents of every head of `split` (space -> (N, K) float32, rows in the dataset's head order):
        what a latent prior (`neuralmorph.prior`) learns the joint distribution of. Each family gives the
        codes its own Gaussian priors were fitted to, per head, so both priors learn from the same data.
        Base version: refuses."""
        raise InputError("--model", f"a {self.family!r} model cannot give latents for a dataset's heads")

    def held_out_error(self, dataset: "HeadDataset", split: str = "train", training_set: Any = None) -> dict | None:
        """How well the trained model explains data it was not trained on, next to the same error of its
        mean head (the trivial model that predicts one average head for everything), for the training
        record. `split`: the split it was trained on; `training_set`: what it was trained on.

        Returns {"metric": what is measured (mm), "value": the model's error, "mean_head": the mean head's
        error, "items": how many items were scored, "data": which data, in words}, or None when there is
        nothing held out to measure (the base version: families without a held-out measure)."""
        return None

    def training_concerns(self) -> list[str]:
        """Why the saved model may never have learned, read from its `training_record` (empty: none).

        The criterion, the same for every family:
        - no record, or one whose numbers are not what a training run writes (missing, negative or
          non-finite): the model cannot be vouched for;
        - trainable families: fewer optimiser steps than the trainer's learning-rate warm-up — the run
          stopped before it ever trained at its learning rate (with `--warmup-steps 0` only the next check
          applies);
        - the held-out error is no better than the mean head's (value >= mean_head): the model explains
          unseen data no better than predicting one average head for all of it.
        A record without a held-out measure (a dataset with no heads outside the trained split) is only
        checked for its steps."""
        rec = self.training_record
        if rec is None:
            return ["it records no training history (made before models recorded one, or not by `train`), so "
                    "whether it learned cannot be checked"]
        if not isinstance(rec, dict):
            return [f"its training record is not a record ({type(rec).__name__})"]

        def number(x) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0

        out = []
        if self.trainable:
            steps, warmup = rec.get("steps"), rec.get("warmup_steps")
            if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1 and number(warmup)):
                out.append(f"its training record holds no usable step counts (steps {steps!r}, warm-up {warmup!r})")
            elif steps < warmup:
                out.append(f"it was trained for {steps} optimiser step(s), fewer than its {warmup} learning-rate "
                           "warm-up steps, so it never trained at its learning rate")
        held = rec.get("held_out")
        if held is not None:
            value = held.get("value") if isinstance(held, dict) else None
            mean = held.get("mean_head") if isinstance(held, dict) else None
            if not (number(value) and number(mean) and mean > 0):
                out.append(f"its held-out record is not usable (error {value!r}, mean head {mean!r})")
            elif value >= mean:
                what = f"{held.get('metric', 'error')} {value:.3f} on {held.get('data', 'held-out data')}"
                out.append(f"its held-out error ({what}) is no better than its mean head's ({mean:.3f})")
        return out

    def training_summary(self, training_set: Any = None) -> str:
        """One line about the trained model for the `train` verb's report (sizes, training error...)."""
        return f"latent sizes {self.latent_sizes}"

    # --- abilities some families have ------------------------------------------------------------

    def require_fit(self, kind: ObservationKind, where: str = "target") -> None:
        """InputError unless this family can be fitted to an observation of `kind`."""
        if kind not in self.fits:
            can = ", ".join(sorted(self.fits)) or "nothing"
            raise InputError(where, f"a {self.family!r} model cannot be fitted to a {kind} observation (it takes: {can})")

    def gaussians_of(self, latents: Latents):
        """The 3D Gaussians of heads with appearance (`has_appearance` families): see `models.appearance`."""
        raise InputError(self.family, "this family models geometry only; appearance needs the appearance family")

    def render_views(self, latents: Latents, cameras: list, background=(0.0, 0.0, 0.0)) -> list[np.ndarray]:
        """Images (H, W, 3) float32 in [0, 1] of the first head of `latents` from each `geometry.camera.Camera`
        (`has_appearance` families)."""
        raise InputError(self.family, "this family models geometry only; appearance needs the appearance family")

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
        """A head (N, 3) mm with control-vertex displacements name -> (C_r, 3) mm applied region by region
        to the given vertices: vertices outside the edited regions (and the blend band around them) keep their
        input coordinates exactly; with no displacements, the input head itself."""
        self.check_editable()
        raise NotImplementedError

    def sample_control(self, region: str, n: int = 1, temperature: float = 1.0, seed: int = 0) -> torch.Tensor:
        """(n, C_r, 3) mm control displacements of `region` drawn from the family's regional prior."""
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
            if z.numel():
                # in the prior's standard-normal coordinates (float64: a huge float32 code stays finite)
                prior = self.prior[name]
                w = torch.linalg.solve_triangular(prior.scale_tril.double(), (z.to(prior.mean.device).double()
                                                                               - prior.mean.double()).T, upper=False)
                far = float(w.abs().max())
                if not far <= LATENT_SIGMA_LIMIT:
                    raise InputError(where, f"latent {name!r} lies {far:.3g} prior standard deviations from the model's "
                                            f"mean (at most {LATENT_SIGMA_LIMIT:g} are accepted): not a head this model "
                                            "can decode")
        return latents

    def spec(self) -> dict:
        """What config.json holds: the family, its config, latent sizes, frame, region names, the training
        record, and whatever the family adds (`saved_spec`)."""
        return {
            "family": self.family,
            "config": self.config.to_dict(),
            "latent_sizes": self.latent_sizes,
            "frame": self.frame.as_dict(),
            "region_names": list(self.region_names),
            "training": self.training_record,
            **self.saved_spec(),
        }

    def saved_spec(self) -> dict:
        """Extra config.json keys a family needs to rebuild itself in `from_saved` (e.g. a nested model's
        spec). Default: none."""
        return {}

    def save(self, folder: str | Path, overwrite: bool = False) -> None:
        """Write config.json + weights.safetensors into `folder`, atomically (an earlier model there is
        replaced only with `overwrite`)."""
        arrays = {k: v.detach().cpu().contiguous().numpy() for k, v in self.state_dict().items()}
        with atomic_dir(folder, "model", overwrite) as tmp:
            (tmp / CONFIG_FILE).write_text(json.dumps(self.spec(), indent=2, sort_keys=True) + "\n")
            save_arrays(tmp / WEIGHTS_FILE, arrays, {"family": self.family})

    @classmethod
    def from_spec(cls, spec: dict, arrays: dict[str, np.ndarray], where: str | Path) -> "MorphableModel":
        """An empty model (weights not loaded) of the family and shapes a saved `spec` (a config.json's
        object) describes; InputError naming `where` when the spec is not one `save` writes. Families
        that nest another model build it with this."""
        spec, klass = _checked_spec(spec, Path(where))
        if cls is not MorphableModel and not issubclass(klass, cls):
            raise InputError(where, f"holds a {klass.family!r} model, not {cls.family!r}")
        config = klass.Config.from_dict(spec["config"], str(where))
        model = klass.from_saved(config, spec, arrays)
        model.training_record = spec.get("training")  # absent in models saved before it was recorded
        return model

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "MorphableModel":
        """Load any registered family from a folder written by `save` (call on the base class or the family),
        or a shipped model by name (`shipped:appearance`, see SHIPPED_MODELS)."""
        folder = model_folder(folder)
        cfg_path = folder / CONFIG_FILE
        if not cfg_path.is_file():
            raise InputError(folder, f"not a neuralmorph model folder (no {CONFIG_FILE})")
        spec = read_json(cfg_path)
        _checked_spec(spec, cfg_path)  # a damaged or foreign config.json is reported before the weights are read
        weights = folder / WEIGHTS_FILE
        arrays, _ = load_arrays(weights)
        for name, a in arrays.items():
            if a.dtype.kind in "fc" and not np.isfinite(a).all():
                raise InputError(weights, f"tensor {name!r} holds NaN or infinite values: the model is damaged "
                                          "(or its training diverged)")
        model = cls.from_spec(spec, _Required(arrays, weights, "tensor"), cfg_path)
        family = model.family
        expected = model.state_dict()
        missing = [k for k in expected if k not in arrays]
        extra = sorted(k for k in arrays if k not in expected)
        if missing or extra:
            raise InputError(weights, f"does not match the {family!r} model in {CONFIG_FILE}: "
                                      + "; ".join(([f"lacks tensor(s) {_names(missing)}"] if missing else [])
                                                  + ([f"holds unexpected tensor(s) {_names(extra)}"] if extra else [])))
        for k, t in expected.items():
            if tuple(arrays[k].shape) != tuple(t.shape):
                raise InputError(weights, f"tensor {k!r} has shape {tuple(arrays[k].shape)}, the {family!r} config in "
                                          f"{CONFIG_FILE} expects {tuple(t.shape)}")
        if len(model.region_weights) and model.region_weights.shape[1] != len(model.region_names):
            raise InputError(weights, f"region_weights has {model.region_weights.shape[1]} columns, {CONFIG_FILE} "
                                      f"names {len(model.region_names)} regions")
        state = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise InputError(weights, f"weights do not match the config: {str(exc).splitlines()[0]}") from None
        return model.to(device).eval()  # loaded models are for use; training puts them back in train mode


class _Required(dict):
    """A dict read from a user's file whose missing key is an InputError naming the file (`what`: what
    its entries are called), so `from_saved` reports a damaged file instead of a KeyError."""

    def __init__(self, data: dict, where: str | Path, what: str):
        super().__init__(data)
        self.where, self.what = where, what

    def __missing__(self, key):
        raise InputError(self.where, f"lacks {self.what} {key!r}")


def _names(keys: list[str], shown: int = 4) -> str:
    return ", ".join(repr(k) for k in keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def _checked_spec(spec: Any, path: Path) -> tuple[dict, type[MorphableModel]]:
    """A model's config.json object and its family's class, checked for the shape `save` writes: an object
    with a registered family's name, a config object, latent sizes (space -> integer >= 0), a frame and
    region names. Missing keys inside are InputErrors naming the file too (`_Required`)."""
    if not isinstance(spec, dict):
        raise InputError(path, f"must hold a JSON object (family, config, latent_sizes, frame), got {type(spec).__name__}")
    if "family" not in spec:
        raise InputError(path, "lacks 'family': not a config.json written by neuralmorph")
    if not isinstance(spec["family"], str):
        raise InputError(path, f"'family' must be a family name, got {spec['family']!r}")
    klass = family_class(spec["family"], str(path))
    for key in ("config", "latent_sizes", "frame"):
        if key not in spec:
            raise InputError(path, f"lacks {key!r}: not a config.json written by neuralmorph")
    if not isinstance(spec["config"], dict):
        raise InputError(path, f"'config' must be an object, got {type(spec['config']).__name__}")
    sizes = spec["latent_sizes"]
    if not isinstance(sizes, dict) or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0
                                              for k in sizes.values()):
        raise InputError(path, f"'latent_sizes' must map latent spaces to integers >= 0, got {sizes!r}")
    try:
        Frame.from_dict(spec["frame"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"'frame' must be an object with origin (3 numbers), axes (a 3x3 rotation) and "
                               f"mm_per_unit (> 0): {type(exc).__name__}: {exc}") from None
    names = spec.get("region_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(path, f"'region_names' must be a list of strings, got {names!r}")
    return _Required({**spec, "latent_sizes": _Required(sizes, path, "latent size of space")}, path, "field"), klass


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

    def held_out_error(self, dataset: "HeadDataset", split: str = "train", training_set: Any = None,
                       chunk: int = 64) -> dict | None:
        """Mean per-vertex distance (mm) between every registered head outside `split` (the heads it never
        saw) and the model's registered fit of it (`project`, then `decode`: what `fit` makes of a
        registered mesh), next to the distance to the mean of the `split` heads (the mean head). None when
        the dataset has no registered heads outside `split`."""
        if dataset.vertices is None:
            return None
        held = [h for h in dataset.heads if h.registered >= 0 and h.split != split]
        trained = dataset.registered_rows(split)
        if not held or len(trained) == 0:
            return None
        truth = torch.as_tensor(np.asarray(dataset.vertices[[h.registered for h in held]], np.float32))  # (H, N, 3)
        mean = truth.new_tensor(dataset.vertices[trained].astype(np.float64).mean(0))                      # (N, 3)
        errors = []
        for part in truth.split(chunk):
            latents = self.project(part.to(self.device))
            with torch.no_grad():
                errors.append((self.decode(latents).float().cpu() - part).norm(dim=-1).mean(dim=1))
        splits = sorted({h.split for h in held})
        return {"metric": "vertex_error_mm", "value": float(torch.cat(errors).mean()),
                "mean_head": float((truth - mean).norm(dim=-1).mean()), "items": len(held),
                "data": f"{len(held)} registered heads of the {' and '.join(splits)} split{'s' if len(splits) > 1 else ''}"}

    @property
    def n_vertices(self) -> int:
        """Vertices of the model's registered topology."""
        return int(self.faces.max()) + 1 if len(self.faces) else 0

    @torch.no_grad()
    def meshes(self, latents: Latents, resolution: int = 128) -> list[Mesh]:
        verts = self.decode(latents).double().cpu().numpy()
        faces = self.faces.cpu().numpy()
        return [Mesh(v, faces) for v in verts]
