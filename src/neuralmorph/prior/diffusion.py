"""A denoising-diffusion prior over a head model's latents, flattened to one vector per head.

Re-derived from the maths of DDPM (Ho et al. 2020), DDIM (Song et al. 2021), the cosine schedule of
Nichol & Dhariwal (2021), v-prediction (Salimans & Ho 2022) and the score-distillation prior term of
DPHMs (Tang et al. 2024), not from their code:

    z (B, D) raw latents: the model's named spaces concatenated in `spaces` order
    x0 = (z - mean) / std                           per coordinate, statistics of the training latents
    x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps        eps ~ N(0, I), t = 0 .. T-1, ab_t the cosine schedule
    Denoiser(x_t, t) -> eps (prediction "eps") or v = sqrt(ab_t) eps - sqrt(1 - ab_t) x0 (prediction "v")

`sample` runs DDIM (deterministic for eta = 0) and can hold some coordinates fixed (inpainting by
replacement); `ancestral_sample` is DDPM's full chain, the reference DDIM is tested against;
`denoising_energy` lets a fit pull latents towards where the prior puts mass. Random draws of sampling
and of the energy come from CPU generators, so a seed gives the same latents on every device.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from neuralmorph.atomic import atomic_dir, read_json
from neuralmorph.config import Config
from neuralmorph.errors import InputError
from neuralmorph.tensorfile import load_arrays, save_arrays
from neuralmorph.training.trainer import Trainable

PRIOR_FORMAT = "neuralmorph.prior/1"
PRIOR_KIND = "diffusion"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
MIN_STD = 1e-6
"""Normalising spreads are clamped below at this: a constant latent coordinate must not divide by zero."""
X0_LIMIT = 20.0
"""eps-prediction clamps its clean estimate to +-this many training standard deviations."""


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class DiffusionConfig(Config):
    """Network size, noise schedule and sampler of a `DiffusionPrior`."""

    hidden: int = 256
    """Width of the denoiser's residual stream."""
    blocks: int = 4
    """Residual MLP blocks."""
    time_embedding: int = 64
    """Sinusoidal features of the timestep (even)."""
    timesteps: int = 1000
    """Diffusion steps T of training and of ancestral sampling."""
    prediction: Literal["eps", "v"] = "v"
    """What the network predicts: the noise, or v (well conditioned at both ends of the schedule)."""
    sample_steps: int = 50
    """DDIM steps of `sample` when none are given (1 .. timesteps)."""
    eta: float = 0.0
    """DDIM stochasticity: 0 deterministic, 1 the DDPM posterior's variance."""

    def __post_init__(self):
        def need(ok: bool, flag: str, problem: str) -> None:
            if not ok:
                raise InputError(f"--prior.{flag}", problem)

        for name, low in (("hidden", 1), ("blocks", 1), ("timesteps", 2), ("sample_steps", 1)):
            v = getattr(self, name)
            need(_is_int(v) and v >= low, name.replace("_", "-"), f"must be an integer >= {low}, got {v!r}")
        te = self.time_embedding
        need(_is_int(te) and te >= 2 and te % 2 == 0, "time-embedding", f"must be an even integer >= 2, got {te!r}")
        need(self.prediction in ("eps", "v"), "prediction", f"must be 'eps' or 'v', got {self.prediction!r}")
        need(self.sample_steps <= self.timesteps, "sample-steps",
             f"must be at most --prior.timesteps ({self.timesteps}), got {self.sample_steps}")
        need(isinstance(self.eta, (int, float)) and not isinstance(self.eta, bool) and 0 <= self.eta <= 1,
             "eta", f"must be a number in [0, 1], got {self.eta!r}")

    @classmethod
    def from_dict(cls, d: dict, where: str = "prior config") -> "DiffusionConfig":
        return super().from_dict(d, where)


def cosine_alpha_bar(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """(timesteps,) float64: ab_t of step t = 0 .. T-1 (continuous time (t+1)/T), Nichol & Dhariwal's
    cos²(((t/T) + s)/(1 + s)·π/2) / cos²(s/(1 + s)·π/2). It reaches 0 at t = T, a last beta of 1 that erases
    x0 entirely; the betas are clipped at 0.999 and ab rebuilt from them, so that every sampler coefficient
    agrees with the chain actually trained."""
    u = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0)


def _flatten(spaces: dict[str, int], latents: dict[str, torch.Tensor]) -> torch.Tensor:
    """space -> (B, K) float32, exactly the spaces of `spaces` -> (B, D) float32 in `spaces` order."""
    unknown = sorted(set(latents) - set(spaces))
    if unknown:
        raise InputError("latents", f"unknown latent space(s) {unknown} (the prior models {list(spaces)})")
    parts = []
    for name, k in spaces.items():
        if name not in latents:
            raise InputError("latents", f"lacks latent space {name!r} (the prior models {list(spaces)})")
        v = torch.as_tensor(latents[name])
        if v.ndim != 2 or v.shape[1] != k or (parts and len(v) != len(parts[0])):
            raise InputError("latents", f"space {name!r} must be (B, {k}) with one B for all, got {tuple(v.shape)}")
        parts.append(v.to(torch.float32))
    return torch.cat(parts, dim=1)


class _Block(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.norm, self.fc1 = nn.LayerNorm(hidden), nn.Linear(hidden, hidden)
        self.time, self.fc2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.silu(self.fc1(F.silu(self.norm(h))) + self.time(temb)))


class Denoiser(nn.Module):
    """Residual MLP: x (B, D) float32, t (B,) int64 -> (B, D) float32 (eps or v)."""

    def __init__(self, dim: int, hidden: int, blocks: int, time_embedding: int):
        super().__init__()
        self.time_embedding = time_embedding
        self.input = nn.Linear(dim, hidden)
        self.time_mlp = nn.Sequential(nn.Linear(time_embedding, hidden), nn.SiLU())
        self.blocks = nn.ModuleList(_Block(hidden) for _ in range(blocks))
        self.output = nn.Linear(hidden, dim)
        # zero output: the untrained prior predicts eps = 0 (or v = 0), a harmless start that lets every
        # block begin as the identity of the residual stream
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        half = self.time_embedding // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
        angles = t.to(torch.float32)[:, None] * freqs[None]
        temb = self.time_mlp(torch.cat([angles.sin(), angles.cos()], dim=1))
        h = self.input(x)
        for block in self.blocks:
            h = block(h, temb)
        return self.output(h)


class LatentSet(Dataset):
    """latents (N, D) float32 raw flat latents as trainer items {"latents": (D,) float32}."""

    def __init__(self, latents: torch.Tensor):
        if latents.ndim != 2 or len(latents) < 1:
            raise InputError("latents", f"must be a non-empty (N, D) tensor, got shape {tuple(latents.shape)}")
        self.latents = latents.detach().to(torch.float32).cpu()

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"latents": self.latents[i]}


class DiffusionPrior(nn.Module, Trainable):
    """p(z) over flat latents z (B, D) float32; `spaces`: space name -> size, in concatenation order.

    mean, std: (D,) float32 buffers normalising the latents (saved with the weights). `meta`: a free
    JSON-able dict the caller sets (e.g. the model family), saved and loaded with the prior."""

    def __init__(self, config: DiffusionConfig, spaces: dict[str, int], mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        if not spaces or not all(isinstance(k, str) and _is_int(v) and v >= 1 for k, v in spaces.items()):
            raise InputError("spaces", f"must map latent space names to sizes >= 1, got {spaces!r}")
        self.config, self.spaces, self.meta = config, dict(spaces), {}
        d = sum(self.spaces.values())
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean.shape != (d,) or std.shape != (d,):
            raise InputError("mean/std", f"must both be ({d},), got {tuple(mean.shape)} and {tuple(std.shape)}")
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clamp(min=MIN_STD))
        # the schedule follows from the config, so it is not saved: float64 on the CPU for the samplers'
        # per-step scalars, float32 buffers on the device for the batched training draws
        self._alpha_bar = cosine_alpha_bar(config.timesteps)
        self.register_buffer("sqrt_ab", self._alpha_bar.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_1mab", (1 - self._alpha_bar).sqrt().float(), persistent=False)
        self.net = Denoiser(d, config.hidden, config.blocks, config.time_embedding)

    @classmethod
    def for_latents(cls, config: DiffusionConfig, latents: dict[str, torch.Tensor]) -> "DiffusionPrior":
        """An untrained prior normalised by training latents: space -> (N, K) float32, N >= 1."""
        if not latents or not all(torch.as_tensor(v).ndim == 2 for v in latents.values()):
            raise InputError("latents", "must map one or more latent spaces to (N, K) tensors")
        spaces = {name: int(torch.as_tensor(v).shape[1]) for name, v in latents.items()}
        z = _flatten(spaces, latents).double()
        if len(z) < 1:
            raise InputError("latents", "holds no heads (N = 0)")
        return cls(config, spaces, z.mean(0).float(), z.std(0, correction=0).clamp(min=MIN_STD).float())

    @property
    def dim(self) -> int:
        return len(self.mean)

    # --- latents <-> flat vectors ------------------------------------------------------------------

    def flatten(self, latents: dict[str, torch.Tensor]) -> torch.Tensor:
        """space -> (B, K) float32, every space of the prior and no other -> (B, D) float32."""
        return _flatten(self.spaces, latents)

    def unflatten(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, D) float32 -> space -> (B, K) float32, in `spaces` order."""
        return dict(zip(self.spaces, torch.split(z, list(self.spaces.values()), dim=1)))

    def condition_mask(self, names) -> torch.Tensor:
        """(D,) bool: True on the coordinates of the named spaces (for `sample`'s known_mask)."""
        names = [names] if isinstance(names, str) else list(names)
        mask, start = torch.zeros(self.dim, dtype=torch.bool, device=self.mean.device), 0
        for name in names:
            if name not in self.spaces:
                raise InputError("condition", f"unknown latent space {name!r} (the prior models {list(self.spaces)})")
        for name, k in self.spaces.items():
            mask[start:start + k] = name in names
            start += k
        return mask

    # --- training -----------------------------------------------------------------------------------

    def training_loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict]:
        """batch {"latents": (B, D) float32 raw}: MSE of the network against eps or v at uniform t."""
        x0 = (batch["latents"] - self.mean) / self.std
        t = torch.randint(0, self.config.timesteps, (len(x0),), device=x0.device)
        eps = torch.randn_like(x0)
        a, s = self.sqrt_ab[t, None], self.sqrt_1mab[t, None]
        target = eps if self.config.prediction == "eps" else a * eps - s * x0
        mse = (self.net(a * x0 + s * eps, t) - target).square().mean()
        return mse, {"mse": mse.detach()}

    # --- sampling -----------------------------------------------------------------------------------

    def _denoise(self, x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x_i (B, D) normalised -> (x0 estimate, eps estimate), both (B, D) float32."""
        ab = float(self._alpha_bar[i])
        a, s = math.sqrt(ab), math.sqrt(1 - ab)
        out = self.net(x, torch.full((len(x),), i, dtype=torch.int64, device=x.device))
        if self.config.prediction == "eps":
            # near t = T-1, sqrt(ab) ~ 5e-5 turns any error of eps into a huge x0: clamp x0 to a range no
            # normalised latent reaches, and take eps back from it so the DDIM step stays consistent
            x0 = ((x - s * out) / a).clamp(-X0_LIMIT, X0_LIMIT)
            return x0, (x - a * x0) / s
        return a * x - s * out, s * x + a * out  # x_t and v are a rotation of (x0, eps): invert it

    @torch.no_grad()
    def sample(self, n: int, steps: int | None = None, temperature: float = 1.0, seed: int = 0,
               known: torch.Tensor | None = None, known_mask: torch.Tensor | None = None,
               resample: int = 1) -> torch.Tensor:
        """(n, D) float32 raw latents by DDIM over `steps` (default config.sample_steps, eta from the config)
        from x_T ~ N(0, temperature² I); temperature also scales the fresh noise of eta > 0.

        known (n, D) float32 raw latents with known_mask (D,) bool: inpainting by replacement. At every step
        the known coordinates of x_t become `known` noised to that step's level, q(x_t | x0 = known), and
        the output holds `known` there exactly. Replacement alone lets the unknown coordinates commit
        before the known ones say much (at high noise), so they follow p(z) more than p(z | known);
        `resample` > 1 repeats each step that many times, noising its result back to the step's level in
        between (RePaint), which lets the two agree at the cost of `resample` times the network calls."""
        steps = self.config.sample_steps if steps is None else steps
        T, d, dev = self.config.timesteps, self.dim, self.mean.device
        if not (_is_int(n) and n >= 1 and _is_int(steps) and 1 <= steps <= T and _is_int(resample) and resample >= 1):
            raise InputError("sample", f"needs n >= 1, 1 <= steps <= {T} and resample >= 1, got n={n!r}, "
                                       f"steps={steps!r}, resample={resample!r}")
        if not (math.isfinite(temperature) and temperature >= 0):
            raise InputError("--temperature", f"must be a finite number >= 0, got {temperature!r}")
        if (known is None) != (known_mask is None):
            raise InputError("known", "known and known_mask go together")
        if known is not None:
            if known.shape != (n, d) or known_mask.shape != (d,) or known_mask.dtype != torch.bool:
                raise InputError("known", f"needs known ({n}, {d}) and known_mask ({d},) bool, got "
                                          f"{tuple(known.shape)} and {tuple(known_mask.shape)} {known_mask.dtype}")
            known, known_mask = known.to(dev, torch.float32), known_mask.to(dev)
            k0 = (known - self.mean) / self.std
        gen = torch.Generator().manual_seed(seed)

        def noise() -> torch.Tensor:
            return torch.randn(n, d, generator=gen).to(dev)

        # trailing spacing: the first step is always T-1 (the chain's true start), the last one step 0
        taus = [(j + 1) * T // steps - 1 for j in range(steps)]
        x = temperature * noise()
        for j in reversed(range(steps)):
            ab = float(self._alpha_bar[taus[j]])
            ab_prev = float(self._alpha_bar[taus[j - 1]]) if j > 0 else 1.0
            sigma = self.config.eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
            for r in range(resample if known is not None and j > 0 else 1):
                if r:  # back up to this step's level: q(x_t | x_prev) = N(sqrt(ab/ab_prev) x_prev, 1 - ab/ab_prev)
                    x = math.sqrt(ab / ab_prev) * x + math.sqrt(1 - ab / ab_prev) * noise()
                if known is not None:
                    x = torch.where(known_mask, math.sqrt(ab) * k0 + math.sqrt(1 - ab) * noise(), x)
                x0, eps = self._denoise(x, taus[j])
                x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma ** 2, 0.0)) * eps
                if sigma > 0:
                    x = x + temperature * sigma * noise()
        z = x * self.std + self.mean
        return z if known is None else torch.where(known_mask, known, z)

    @torch.no_grad()
    def ancestral_sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """(n, D) float32 raw latents by DDPM's ancestral chain over all T steps: x_{t-1} drawn from the
        posterior q(x_{t-1} | x_t, x0) at the network's x0 estimate (variance beta~_t)."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(n, self.dim, generator=gen).to(self.mean.device)
        for i in reversed(range(self.config.timesteps)):
            x0, _ = self._denoise(x, i)
            ab, ab_prev = float(self._alpha_bar[i]), float(self._alpha_bar[i - 1]) if i > 0 else 1.0
            beta = 1 - ab / ab_prev
            x = (math.sqrt(ab_prev) * beta * x0 + math.sqrt(1 - beta) * (1 - ab_prev) * x) / (1 - ab)
            if i > 0:
                x = x + math.sqrt(beta * (1 - ab_prev) / (1 - ab)) * torch.randn(
                    n, self.dim, generator=gen).to(self.mean.device)
        return x * self.std + self.mean

    # --- fitting --------------------------------------------------------------------------------------

    def denoising_energy(self, z: torch.Tensor, generator: torch.Generator | None,
                         t_range: tuple[float, float] = (0.02, 0.5)) -> torch.Tensor:
        """Score-distillation prior term for fits: z (B, D) float32 raw latents (with grad) -> (B,) float32.

        Only its gradient matters: d/dz = (eps_hat(x_t, t) - eps) / std, where x = (z - mean) / std,
        x_t = sqrt(ab_t) x + sqrt(1 - ab_t) eps, t uniform in t_range·T and eps ~ N(0, I), both drawn from
        `generator` (a CPU one; None: torch's global RNG). Derivation: d/dz |eps_hat(x_t) - eps|² / 2 =
        J^T (eps_hat - eps) sqrt(ab_t) / std with J the network's Jacobian; score distillation (DreamFusion,
        DPHMs) drops J, and the weight 1/sqrt(ab_t) leaves (eps_hat - eps) / std. As eps_hat ≈ -sqrt(1 - ab_t)
        ∇ log p_t(x_t), descending it climbs the noise-smoothed log density; the -eps term has mean zero and
        only lowers the variance. The network runs under no_grad: nothing is backpropagated through it."""
        lo, hi = t_range
        if not (0 <= lo <= hi <= 1):
            raise InputError("t_range", f"must satisfy 0 <= low <= high <= 1, got {t_range!r}")
        T = self.config.timesteps
        i_lo = min(int(lo * T), T - 1)
        t = torch.randint(i_lo, max(min(int(hi * T), T - 1), i_lo) + 1, (len(z),), generator=generator).to(z.device)
        eps = torch.randn(z.shape, generator=generator).to(z.device)
        x = (z - self.mean) / self.std
        a, s = self.sqrt_ab[t, None], self.sqrt_1mab[t, None]
        with torch.no_grad():
            xt = a * x + s * eps
            out = self.net(xt, t)
            eps_hat = out if self.config.prediction == "eps" else s * xt + a * out
        return ((eps_hat - eps) * x).sum(dim=-1)

    # --- saving -----------------------------------------------------------------------------------------

    def save(self, folder: str | Path, overwrite: bool = False) -> None:
        """Write config.json + weights.safetensors into `folder`, atomically (an earlier prior there is
        replaced only with `overwrite`)."""
        spec = {"format": PRIOR_FORMAT, "kind": PRIOR_KIND, "config": self.config.to_dict(),
                "spaces": self.spaces, "meta": self.meta}
        text = json.dumps(spec, indent=2, sort_keys=True) + "\n"  # before the folder: bad meta writes nothing
        arrays = {k: v.detach().cpu().contiguous().numpy() for k, v in self.state_dict().items()}
        with atomic_dir(folder, "prior", overwrite) as tmp:
            (tmp / CONFIG_FILE).write_text(text)
            save_arrays(tmp / WEIGHTS_FILE, arrays, {"kind": PRIOR_KIND})

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "DiffusionPrior":
        """The prior `save` wrote into `folder`, in eval mode on `device`; InputError naming the file for
        anything missing, foreign or damaged."""
        folder = Path(folder)
        cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.is_file():
            raise InputError(folder, f"not a neuralmorph prior folder (no {CONFIG_FILE})")
        spec = read_json(cfg_path)
        if not isinstance(spec, dict) or spec.get("format") != PRIOR_FORMAT:
            found = spec.get("format") if isinstance(spec, dict) else type(spec).__name__
            raise InputError(cfg_path, f"format {found!r} is not {PRIOR_FORMAT!r}: not a prior neuralmorph wrote")
        if spec.get("kind") != PRIOR_KIND:
            raise InputError(cfg_path, f"holds a {spec.get('kind')!r} prior, not a {PRIOR_KIND!r} one")
        for key, kind in (("config", dict), ("spaces", dict), ("meta", dict)):
            if not isinstance(spec.get(key), kind):
                raise InputError(cfg_path, f"{key!r} must be an object, got {type(spec.get(key)).__name__}")
        config = DiffusionConfig.from_dict(spec["config"], str(cfg_path))
        spaces = spec["spaces"]
        if not spaces or not all(_is_int(k) and k >= 1 for k in spaces.values()):
            raise InputError(cfg_path, f"'spaces' must map latent spaces to sizes >= 1, got {spaces!r}")
        arrays, _ = load_arrays(weights)
        for name, a in arrays.items():
            if a.dtype.kind in "fc" and not np.isfinite(a).all():
                raise InputError(weights, f"tensor {name!r} holds NaN or infinite values: the prior is damaged")
        d = sum(spaces.values())
        prior = cls(config, spaces, torch.zeros(d), torch.ones(d))
        expected = prior.state_dict()
        missing, extra = [k for k in expected if k not in arrays], sorted(set(arrays) - set(expected))
        if missing or extra:
            raise InputError(weights, f"does not match {CONFIG_FILE}: lacks {missing}, holds unexpected {extra}")
        for k, t in expected.items():
            if tuple(arrays[k].shape) != tuple(t.shape):
                raise InputError(weights, f"tensor {k!r} has shape {tuple(arrays[k].shape)}, {CONFIG_FILE} "
                                          f"expects {tuple(t.shape)}")
        if not (arrays["std"] > 0).all():
            raise InputError(weights, "tensor 'std' holds spreads <= 0: the prior is damaged")
        prior.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, strict=True)
        prior.meta = spec["meta"]
        return prior.to(device).eval()
