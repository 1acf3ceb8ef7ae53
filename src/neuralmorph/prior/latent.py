"""A model's latent prior, one interface over two kinds: the family's own Gaussians, or a diffusion prior.

    gaussian   the model's per-space `GaussianPrior`s (fitted when it was built or trained): independent
               spaces, each N(mean, L Lᵀ); what every verb used before priors could be chosen
    diffusion  a `DiffusionPrior` trained beside the model on the joint latents of a dataset's heads
               (`train_prior`), kept in its own folder and checked against the model when loaded

Both sample n heads' latents (optionally with some spaces fixed: `condition`) and give the energy a fit
adds to keep latents where the prior puts mass. `load_prior(model, None)` is the Gaussian, so a verb's
`--prior` flag defaults to what it always did.
"""

from __future__ import annotations

from pathlib import Path

import torch

from neuralmorph.errors import InputError
from neuralmorph.models.base import Latents, MorphableModel
from neuralmorph.prior.diffusion import DiffusionConfig, DiffusionPrior, LatentSet


CONDITION_RESAMPLE = 10
"""Conditional diffusion sampling repeats each step this many times (`DiffusionPrior.sample`'s `resample`):
replacement alone lets the free coordinates settle before the fixed ones say much (measured on a 2-D
mixture: 35-80% of draws at the conditioned mode, 89-100% with 20 repeats)."""


class LatentPrior:
    """What a latent prior gives a model's verbs (`GaussianLatentPrior`, `DiffusionLatentPrior`)."""

    kind: str = ""

    def __init__(self, model: MorphableModel):
        self.model = model

    def sample(self, n: int, temperature: float = 1.0, seed: int = 0, condition: Latents | None = None,
               steps: int | None = None) -> Latents:
        """n draws, space -> (n, K) float32, deterministic by seed on any device. `condition`: spaces fixed to
        the given codes ((1, K) or (n, K)); they come back exactly, the others are drawn given them.
        `steps`: sampling steps of an iterative prior (None: its default)."""
        raise NotImplementedError

    def energy(self, latents: Latents, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) the prior's penalty of latents (space -> (B, K)), differentiable w.r.t. them: what a fit
        minimises beside its data terms."""
        raise NotImplementedError

    def fit_energy(self, latents: Latents, whitened: Latents, config, generator: torch.Generator) -> torch.Tensor:
        """The scalar prior energy of one fit's latents (space -> (1, K)), given also in the Gaussians'
        whitened coordinates, with `config` (`fitting.loop.FitConfig`) weighting it: what the fitting loop
        adds (times its prior-weight schedule)."""
        raise NotImplementedError

    def _check_condition(self, condition: Latents | None, n: int) -> Latents:
        out = {}
        for name, code in (condition or {}).items():
            if name not in self.model.latent_sizes:
                raise InputError("--condition", f"the {self.model.family!r} model has no latent space {name!r} "
                                                f"(it has {', '.join(self.model.latent_sizes)})")
            code = torch.as_tensor(code, dtype=torch.float32, device=self.model.device)
            if code.ndim != 2 or code.shape[1] != self.model.latent_sizes[name] or len(code) not in (1, n):
                raise InputError("--condition", f"space {name!r} needs (1 or {n}, {self.model.latent_sizes[name]}) "
                                                f"codes, got shape {tuple(code.shape)}")
            out[name] = code.expand(n, -1).clone()
        if len(out) == len(self.model.latent_sizes):
            raise InputError("--condition", "fixes every latent space: nothing is left to sample")
        return out


class GaussianLatentPrior(LatentPrior):
    """The model's own Gaussians: spaces are independent, so a conditioned space is simply copied."""

    kind = "gaussian"

    def sample(self, n: int, temperature: float = 1.0, seed: int = 0, condition: Latents | None = None,
               steps: int | None = None) -> Latents:
        """`LatentPrior.sample` (exact draws: `steps` does not apply)."""
        fixed = self._check_condition(condition, n)
        return {**self.model.sample(n, temperature, seed), **fixed}

    def energy(self, latents: Latents, generator: torch.Generator | None = None) -> torch.Tensor:
        """Σ over spaces of ‖whitened z‖² (the fitting loop's prior energy)."""
        return sum(self.model.prior[n].whiten(z).square().sum(dim=1) for n, z in latents.items())

    def fit_energy(self, latents: Latents, whitened: Latents, config, generator: torch.Generator) -> torch.Tensor:
        return sum((w**2).sum() for w in whitened.values())


class DiffusionLatentPrior(LatentPrior):
    """A trained `DiffusionPrior` over the model's concatenated latents."""

    kind = "diffusion"

    def __init__(self, model: MorphableModel, diffusion: DiffusionPrior):
        super().__init__(model)
        self.diffusion = diffusion.to(model.device).eval()

    def sample(self, n: int, temperature: float = 1.0, seed: int = 0, condition: Latents | None = None,
               steps: int | None = None) -> Latents:
        """`LatentPrior.sample` by DDIM (`steps` None: the prior's `sample_steps`)."""
        fixed = self._check_condition(condition, n)
        d = self.diffusion
        known = mask = None
        if fixed:
            zeros = {name: torch.zeros(n, k, device=self.model.device) for name, k in d.spaces.items()}
            known = d.flatten({**zeros, **fixed})
            mask = d.condition_mask(list(fixed))
        with torch.no_grad():  # RePaint resampling lets the free spaces agree with the fixed ones
            flat = d.sample(n, steps=steps, temperature=temperature, seed=seed, known=known, known_mask=mask,
                            resample=CONDITION_RESAMPLE if fixed else 1)
        return d.unflatten(flat)

    def energy(self, latents: Latents, generator: torch.Generator | None = None) -> torch.Tensor:
        """The diffusion prior's denoising (score-distillation) energy at a random noise level."""
        return self.diffusion.denoising_energy(self.diffusion.flatten(latents), generator)

    def fit_energy(self, latents: Latents, whitened: Latents, config, generator: torch.Generator) -> torch.Tensor:
        """`config.diffusion_weight` × the mean denoising energy over `config.diffusion_draws` noise draws."""
        draws = {n: z.expand(config.diffusion_draws, -1) for n, z in latents.items()}
        return config.diffusion_weight * self.energy(draws, generator).mean()


PRIOR_FOLDER = "prior"
"""Where a prior training run saves the finished prior, inside its run folder."""


def load_prior(model: MorphableModel, folder: str | Path | None) -> LatentPrior:
    """The prior a verb uses: the model's Gaussians (`folder` None) or the diffusion prior saved in `folder`
    (or in a `train prior` run folder's `prior/`), checked to be one trained for this model's family and
    latent spaces."""
    if folder is None:
        return GaussianLatentPrior(model)
    folder = Path(folder)
    if (folder / PRIOR_FOLDER).is_dir():
        folder = folder / PRIOR_FOLDER
    diffusion = DiffusionPrior.load(folder, device=model.device)
    family = diffusion.meta.get("family")
    if family != model.family or dict(diffusion.spaces) != dict(model.latent_sizes):
        raise InputError("--prior", f"{folder} was trained for a {family!r} model with latent spaces "
                                    f"{dict(diffusion.spaces)}; this {model.family!r} model has {dict(model.latent_sizes)}")
    return DiffusionLatentPrior(model, diffusion)


def prior_training_latents(model: MorphableModel, dataset, split: str = "train") -> Latents:
    """The model's latents of every head of `split` (`MorphableModel.dataset_latents`), checked finite and
    numerous enough to learn from."""
    latents = model.dataset_latents(dataset, split)
    n = len(next(iter(latents.values())))
    if n < 2:
        raise InputError("--data", f"the {split!r} split gives {n} head(s); a prior needs at least 2")
    for name, z in latents.items():
        if not torch.isfinite(z).all():
            raise InputError("--model", f"its {name!r} latents of the {split!r} split are not finite")
    return {name: z.detach().float().cpu() for name, z in latents.items()}


def new_diffusion_prior(model: MorphableModel, latents: Latents, config: DiffusionConfig,
                        source: dict) -> tuple[DiffusionPrior, LatentSet]:
    """An untrained diffusion prior for `model`, normalised to `latents` (space -> (N, K) float32), and the
    trainer's dataset of them. `source`: where the latents came from (kept in the prior's meta)."""
    ordered = {name: latents[name] for name in model.latent_sizes}
    prior = DiffusionPrior.for_latents(config, ordered)
    rows = prior.flatten(ordered)
    prior.meta = {"family": model.family, "latent_sizes": dict(model.latent_sizes), "heads": len(rows), **source}
    return prior, LatentSet(rows)
