"""Fit an implicit head model to observations of one subject: point clouds (NPHM's test protocol) or a
depth-map sequence (NPMs' tracking), by optimising latent codes against the signed-distance field.

One identity code is shared by every observation and each observation gets its own expression code; the
identity starts at the prior mean, each expression at whichever training expression code best explains its
points (multi-start). A step draws a few observations and a few of their points, brings the points
into canonical space and pulls the canonical SDF there to zero:

* forward models (deformation canonical -> posed) invert the deformation per point by Broyden root
  finding started at the point itself, made differentiable in the codes by the implicit-function theorem
  (`roots.invert_deformation`); points whose root finding did not converge are left out of the loss and
  counted;
* backward models (posed -> canonical) evaluate the deformation directly.

The data term is the truncated mean |SDF| (canonical units): residuals above a threshold are dropped,
and the threshold tightens on a schedule (NPHM: 25 mm, then 12.5 mm, then 1.9 mm) so that far outliers
(hair, shoulders, background) stop pulling once the fit is close. Codes are optimised in whitened
coordinates (z = μ + L w: the prior's mean, and its per-dimension spreads or its Cholesky factor), so one
learning rate suits every model whatever the spread of its training codes; the model's own regularisers (`code_regularizers`) are added
with weights that follow a piecewise-constant schedule. For sequences, consecutive frames are tied by a
temporal term on the codes and on the deformations. Every weight and schedule is in `ImplicitFitConfig`.

Depth frames are back-projected to point clouds and share the same machinery. Observations are in
millimetres in the target's coordinates; a given pose and/or an ICP against the model's average head
brings them into the model frame first, optionally refined jointly with the codes (one rigid motion for
all observations), optionally with a rigid head motion per observation on top (a turned head), and the
meshes come back in the target's coordinates. docs/implicit_fitting.md has
the formats, every config field and measured numbers.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from tqdm import tqdm

from neuralmorph.errors import InputError
from neuralmorph.fitting.align import align_points, average_head
from neuralmorph.fitting.result import FitResult
from neuralmorph.frame import Similarity
from neuralmorph.geometry.mesh import Mesh
from neuralmorph.geometry.rotation import rotvec_to_matrix_torch
from neuralmorph.data.observations import DepthFrame, depth_clouds
from neuralmorph.models.base import GaussianPrior, Latents
from neuralmorph.models.implicit.roots import RootFinding, invert_deformation


REG_SCALE = 0.1
"""The regularisers' weights as a fraction of NPHM's: our trained codes lie further from their prior
means than NPHM's, and NPHM's weights pull fits away from them (docs/benchmarks.md, "Defaults and why")."""


def _default_reg_weights() -> dict[str, tuple[float, ...]]:
    # NPHM's ratios (identity 0.25 → /3 → /10; expression 0.01 → /10; local 0.05 → /3 → /10; symmetry
    # 5 → /10 → off against surface 2.0), times REG_SCALE, on the phases of `reg_at`. One value = constant.
    nphm = {
        "identity_norm": (0.25, 0.25 / 3, 0.25 / 3, 0.025),
        "expression_norm": (0.01, 0.01, 0.01, 0.001),
        "local_norm": (0.05, 0.05, 0.05 / 3, 0.005),
        "symmetry": (5.0, 0.5, 0.0, 0.0),
    }
    # Rounded to 4 significant digits, so that --help shows 0.008333, not 0.008333333333333333 (a change
    # below 0.01 %, far finer than the weights were ever tuned).
    return {name: tuple(float(f"{REG_SCALE * w:.4g}") for w in sched) for name, sched in nphm.items()}


@dataclass(frozen=True)
class ImplicitFitConfig:
    """Weights and schedules of implicit-model fitting (none are hard-coded elsewhere).

    Schedules are piecewise constant over the run: an `*_at` tuple holds the fractions of `steps` at
    which each phase starts (the first is 0), and the matching values tuple one value per phase.
    """

    steps: int = 400
    """Optimiser steps."""
    lr_identity: float = 0.05
    """Adam learning rate of the identity code, in prior standard deviations per step (whitened code)."""
    lr_expression: float = 0.05
    """Adam learning rate of the expression codes, likewise."""
    lr_halve_at: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    """Fractions of `steps` at which both learning rates are multiplied by `lr_factor`."""
    lr_factor: float = 0.5
    """Learning-rate factor at each `lr_halve_at` milestone."""
    code_prior: Literal["full", "diagonal"] = "diagonal"
    """The Gaussian whose coordinates the codes are optimised in: "full", the model's prior (codes move
    mostly within the span of the training codes), or "diagonal", its per-dimension spreads only (every
    direction as free as the training codes' spread along it)."""
    expression_starts: int = 256
    """Multi-start: each observation's expression code starts at whichever of this many of the model's
    training expression codes (and the prior mean) best explains its points at the mean identity; 0: every
    code starts at the prior mean."""
    start_points: int = 200
    """Points per observation used to score the expression starts."""
    observations_per_step: int = 4
    """Observations drawn per step (all of them when there are fewer)."""
    points_per_step: int = 300
    """Points drawn per observation per step (with replacement only when the observation has fewer)."""
    surface_weight: float = 2.0
    """Weight of the truncated mean |SDF| data term (canonical units)."""
    truncation_mm: tuple[float, ...] = (25.0, 12.5, 1.9)
    """Residuals |SDF| above this many mm are dropped, one value per truncation_at phase."""
    truncation_at: tuple[float, ...] = (0.0, 0.25, 0.5)
    """Fractions of `steps` where each truncation phase starts."""
    reg_weights: dict[str, tuple[float, ...]] = field(default_factory=_default_reg_weights)
    """Weight schedule of each of the model's code regularisers (`model.code_regularizers`): one value per
    `reg_at` phase, or one value for a constant weight."""
    reg_default: tuple[float, ...] = (0.01 * REG_SCALE,)
    """Weight schedule of any regulariser whose name is not in `reg_weights`."""
    reg_at: tuple[float, ...] = (0.0, 0.2, 0.5, 0.6)
    """Fractions of `steps` where each regulariser phase starts."""
    diffusion_weight: float = 1e-3
    """With a diffusion prior (`fit --prior`): weight of its denoising energy on the drawn observations' codes
    (DPHMs' prior term), added to the model's own code regularisers."""
    temporal_code_weight: float = 0.0
    """Sequences: weight of the mean squared difference of consecutive frames' whitened expression codes."""
    temporal_deformation_weight: float = 30.0
    """Sequences: weight of the mean squared difference (canonical units²) of consecutive frames'
    deformations at the current frame's points."""
    temporal_points: int = 200
    """Sequences: points per drawn frame used by the deformation smoothness term."""
    root_finding: RootFinding = field(default_factory=RootFinding)
    """Broyden inversion of forward deformations (iterations, tolerance, divergence limit)."""
    align: bool = True
    """First align the observations (all together) to the model's average head (`fitting/align.py`, the
    same procedure as every other fit); off: they are already in the model's frame (the dataset's
    millimetre coordinates), or a pose is passed in."""
    align_rotation: bool = True
    """Let the alignment rotate the observations (rigid ICP); off: translation only (orientation known)."""
    align_scale: bool = False
    """Let the alignment estimate a scale too (observations in unknown units; needs align_rotation)."""
    align_resolution: int = 64
    """Grid resolution of the average-head mesh the alignment uses."""
    refine_pose: bool | None = None
    """Optimise one rigid motion of all the observations jointly with the codes, refining the alignment.
    None: on when `align` is, off when the pose is known."""
    lr_pose_deg: float = 0.1
    """Adam learning rate of the pose refinement's rotation (degrees per step; follows `lr_halve_at`)."""
    lr_pose_mm: float = 0.5
    """Adam learning rate of the pose refinement's translation (millimetres per step)."""
    head_pose: bool = False
    """Give each observation its own rigid head motion (a turned neck), optimised jointly with the codes
    on top of the shared pose. Off: head rotation must come from the expression code, which reaches only
    rotations like those in the training expressions."""
    lr_head_deg: float = 0.2
    """Adam learning rate of the per-observation head rotations (degrees per step; follows `lr_halve_at`)."""
    lr_head_mm: float = 0.5
    """Adam learning rate of the per-observation head translations (millimetres per step)."""
    head_pose_weight: float = 3e-5
    """Weight of the head motions' mean squared size (degrees² + millimetres²): keeps a head still where
    the data cannot tell its pose from its shape."""
    mesh_resolution: int = 128
    """Grid resolution of the fitted meshes (`model.meshes`)."""
    eval_points: int = 20_000
    """Points per observation for the final convergence count at the fitted codes (0: skip it)."""
    seed: int = 0
    """Seed of every random draw (observations, points)."""

    def __post_init__(self):
        where = "implicit fit config"
        if self.steps < 0:
            raise InputError(where, f"steps must be >= 0, got {self.steps}")
        for name in ("lr_identity", "lr_expression", "lr_pose_deg", "lr_pose_mm", "lr_head_deg", "lr_head_mm"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise InputError(where, f"{name} must be positive, got {v}")
        if not 0 < self.lr_factor <= 1:
            raise InputError(where, f"lr_factor must lie in (0, 1], got {self.lr_factor}")
        if any(not 0 <= a <= 1 for a in self.lr_halve_at) or list(self.lr_halve_at) != sorted(self.lr_halve_at):
            raise InputError(where, f"lr_halve_at must be increasing fractions in [0, 1], got {self.lr_halve_at}")
        if self.code_prior not in ("full", "diagonal"):
            raise InputError(where, f"code_prior must be 'full' or 'diagonal', got {self.code_prior!r}")
        if self.expression_starts < 0:
            raise InputError(where, f"expression_starts must be >= 0, got {self.expression_starts}")
        for name in ("observations_per_step", "points_per_step", "align_resolution", "mesh_resolution",
                     "start_points"):
            if getattr(self, name) < 1:
                raise InputError(where, f"{name} must be >= 1, got {getattr(self, name)}")
        if self.align_resolution < 8 or self.mesh_resolution < 8:
            raise InputError(where, "mesh resolutions must be >= 8")
        if self.align_scale and not self.align_rotation:
            raise InputError(where, "align_scale needs align_rotation (the similarity ICP estimates both)")
        if self.temporal_points < 0 or self.eval_points < 0:
            raise InputError(where, "temporal_points and eval_points must be >= 0")
        for name in ("surface_weight", "temporal_code_weight", "temporal_deformation_weight", "head_pose_weight"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise InputError(where, f"{name} must be >= 0, got {v}")
        _check_phases(where, "truncation_at", self.truncation_at)
        _check_phases(where, "reg_at", self.reg_at)
        if len(self.truncation_mm) != len(self.truncation_at) or any(not t > 0 for t in self.truncation_mm):
            raise InputError(where, f"truncation_mm needs one positive value per truncation_at phase "
                                    f"({len(self.truncation_at)}), got {self.truncation_mm}")
        for name, sched in [*self.reg_weights.items(), ("reg_default", self.reg_default)]:
            if not isinstance(name, str):
                raise InputError(where, f"regulariser names must be strings, got {name!r}")
            if len(sched) not in (1, len(self.reg_at)) or any(not (math.isfinite(w) and w >= 0) for w in sched):
                raise InputError(where, f"weights of {name!r} need 1 or {len(self.reg_at)} (one per reg_at "
                                        f"phase) values >= 0, got {tuple(sched)}")

    @property
    def pose_refined(self) -> bool:
        """Whether the shared pose is optimised with the codes (`refine_pose`, or by default `align`)."""
        return self.align if self.refine_pose is None else self.refine_pose

    def truncation_units(self, step: int, mm_per_unit: float) -> float:
        """The data term's truncation threshold at `step`, in canonical units."""
        return self.truncation_mm[_phase(self.truncation_at, step, self.steps)] / mm_per_unit

    def reg_weight(self, name: str, step: int) -> float:
        """The weight of regulariser `name` at `step`."""
        sched = self.reg_weights.get(name, self.reg_default)
        return float(sched[0] if len(sched) == 1 else sched[_phase(self.reg_at, step, self.steps)])

    def lr_scale(self, step: int) -> float:
        """Factor on both base learning rates at `step`."""
        return self.lr_factor ** sum(step >= a * self.steps for a in self.lr_halve_at)


def _check_phases(where: str, name: str, at: Sequence[float]) -> None:
    if not at or at[0] != 0 or any(b <= a for a, b in zip(at, at[1:])) or at[-1] > 1:
        raise InputError(where, f"{name} must start at 0 and increase strictly within [0, 1], got {tuple(at)}")


def _phase(at: Sequence[float], step: int, steps: int) -> int:
    """Index of the phase in effect at `step`: the last i with step >= at[i] * steps."""
    return max(i for i, a in enumerate(at) if step >= a * steps)


@dataclass
class ImplicitFitResult(FitResult):
    """`FitResult` plus the implicit fit's diagnostics. latents: identity (1, Ki), expression (n_obs, Ke);
    pose: shared by every observation; meshes: one per observation, in the target's coordinates."""

    head_poses: list[Similarity] = field(default_factory=list)  # (n_obs) model frame -> model frame (mm): each
                                           # head's own rigid motion (identity unless config.head_pose); mesh i = pose ∘ head i
    terms: dict[str, list[float]] = field(default_factory=dict)   # each loss term (unweighted) per step
    kept_fraction: list[float] = field(default_factory=list)      # per step: drawn points that converged and passed the truncation
    converged_fraction: float = 1.0        # of every root-finding query during the fit (1 for backward models)
    converged_per_observation: list[float] = field(default_factory=list)  # at the fitted codes (NaN when eval_points = 0)
    fit_seconds: float = 0.0
    mesh_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        return self.fit_seconds + self.mesh_seconds

    def diagnostics(self) -> dict:
        return {**super().diagnostics(), "fit_seconds": self.fit_seconds, "mesh_seconds": self.mesh_seconds,
                "converged_fraction": self.converged_fraction}

    def observation_diagnostics(self, i: int) -> dict:
        return {"converged_fraction": self.converged_per_observation[i]}

    @property
    def observation_poses(self) -> list[Similarity]:
        """(n_obs) model frame (mm) -> the target's coordinates, each observation's head pose included."""
        return [self.pose.compose(head) for head in self.head_poses]


@contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """The model's weights stay fixed during fitting: no gradients accumulate in them."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def canonical_points(model, posed: torch.Tensor, identity: torch.Tensor, expression: torch.Tensor,
                     root_finding: RootFinding = RootFinding(), start: torch.Tensor | None = None,
                     inv_jacobian: torch.Tensor | None = None, return_inverse: bool = False):
    """Bring posed points into the model's canonical space.

    posed: (B, P, 3) float32 canonical-frame units; identity: (B, Ki); expression: (B, Ke).
    Returns canonical points (B, P, 3) — (B, P, 3 + H) for backward models with H hyper-coordinates —
    differentiable in the codes, and converged (B, P) bool. Forward models invert the deformation by
    Broyden root finding started at the posed point (one batched solve for all B observations; a point
    that did not converge is returned at its posed position, without gradient, so downstream values stay
    finite); backward models evaluate it, and every point counts as converged. start: (B, P, 3) initial
    guesses for the root finding (default: the posed points), e.g. the previous step's solutions;
    inv_jacobian (B, P, 3, 3): the previous step's inverse Jacobians (forward models; see
    `invert_deformation`). return_inverse: also return this solve's (B, P, 3, 3) (None for backward models).
    """
    if model.deformation == "backward":
        out = (model.deform(posed, identity, expression),
               torch.ones(posed.shape[:2], dtype=torch.bool, device=posed.device))
        return (*out, None) if return_inverse else out
    x0 = posed if start is None else start.to(posed)
    x, converged, jinv = invert_deformation(lambda q: model.deform(q, identity, expression), posed, x0=x0,
                                            max_iter=root_finding.max_iter, tol=root_finding.tol,
                                            diverge=root_finding.diverge, inv_jacobian=inv_jacobian,
                                            return_inverse=True)
    converged = converged & torch.isfinite(x).all(dim=-1)
    x = torch.where(converged[..., None], x, posed.detach())
    return (x, converged, jinv) if return_inverse else (x, converged)


def _check_clouds(clouds: Sequence[np.ndarray]) -> list[np.ndarray]:
    arrays = []
    for i, c in enumerate(clouds):
        a = np.asarray(c, np.float64)
        if a.ndim != 2 or a.shape[1] != 3:
            raise InputError(f"observation {i}", f"points must have shape (P, 3), got {a.shape}")
        if len(a) == 0:
            raise InputError(f"observation {i}", "has no points")
        if not np.isfinite(a).all():
            raise InputError(f"observation {i}", "has NaN or infinite coordinates")
        arrays.append(a)
    if not arrays:
        raise InputError("observations", "nothing to fit: no observations given")
    return arrays


def _canonical(model, arrays: list[np.ndarray], to_model: list[Similarity]) -> list[torch.Tensor]:
    """Target-mm observations (each with its target -> model similarity) -> (P_i, 3) float32
    canonical-unit tensors on the model's device."""
    return [torch.as_tensor(model.frame.to_canonical(t.apply(a)), dtype=torch.float32, device=model.device)
            for a, t in zip(arrays, to_model)]


def _move(y: torch.Tensor, rot_deg: torch.Tensor, shift_mm: torch.Tensor, centre: torch.Tensor,
          mm_per_unit: float) -> torch.Tensor:
    """y (..., 3) canonical units -> R (y - c) + c + t: a rigid motion about `centre` (3,), with the
    rotation `rot_deg` (3,) axis-angle in degrees and the shift `shift_mm` (3,) in millimetres."""
    rot = rotvec_to_matrix_torch(rot_deg * (math.pi / 180))
    return (y - centre) @ rot.T + centre + shift_mm / mm_per_unit


def _as_similarity(frame, rot_deg: torch.Tensor, shift_mm: torch.Tensor, centre: torch.Tensor) -> Similarity:
    """`_move`'s parameters as the model-frame (mm) rigid motion it applies."""
    with torch.no_grad():
        rot = rotvec_to_matrix_torch(rot_deg * (math.pi / 180)).double().cpu().numpy()
        return _refinement_mm(frame, rot, (shift_mm / frame.mm_per_unit).double().cpu().numpy(),
                              centre.double().cpu().numpy())


def _refinement_mm(frame, rot: np.ndarray, shift: np.ndarray, centre: np.ndarray) -> Similarity:
    """The pose refinement y' = R (y - c) + c + t, applied in canonical units, as a model-frame (mm) rigid motion.

    With y = A (p - o) / s (frame axes A, origin o, s mm per unit): p' = AᵀRA (p - o) + s Aᵀ(c + t - R c) + o.
    rot: (3, 3); shift t, centre c: (3,) canonical units.
    """
    a, o, s = frame.axes, frame.origin, frame.mm_per_unit
    m = a.T @ rot @ a
    u, _, vt = np.linalg.svd(m)  # float32 products drift from a rotation by ~1e-7
    m = u @ vt
    return Similarity(1.0, m, -m @ o + s * a.T @ (centre + shift - rot @ centre) + o)


CodeSpaces = dict[str, GaussianPrior]
"""Per latent space, the Gaussian whose whitened coordinates a fit optimises (`ImplicitFitConfig.code_prior`)."""


def _code_spaces(model, kind: str) -> CodeSpaces:
    """The model's priors ("full"), or their per-dimension spreads without correlations ("diagonal")."""
    return {name: model.prior[name] if kind == "full" else model.prior[name].diagonal()
            for name in ("identity", "expression")}


@torch.no_grad()
def _expression_starts(model, ys: list[torch.Tensor], config: ImplicitFitConfig,
                       spaces: CodeSpaces) -> list[torch.Tensor]:
    """Per observation, the whitened (1, Ke) expression code the fit starts from.

    ys: n (P_i, 3) canonical-unit observations. Candidates are the prior mean and up to
    `config.expression_starts` training expression codes; each observation keeps the one whose truncated
    mean |SDF| over `config.start_points` of its points (mean identity; a point without a canonical
    pre-image counts as truncated) is lowest. One batched root finding per observation.
    """
    zero = torch.zeros(1, model.latent_sizes["expression"], device=model.device)
    trained = model.training_latents()
    if config.expression_starts == 0 or trained is None:
        return [zero.clone() for _ in ys]
    rng = np.random.default_rng(config.seed + 2)  # leaves the optimisation's draws as they were
    codes = trained["expression"].to(model.device)
    pick = rng.choice(len(codes), min(len(codes), config.expression_starts), replace=False)
    whitened = torch.cat([zero, spaces["expression"].whiten(codes[torch.as_tensor(pick, device=model.device)])])
    z_ex = spaces["expression"].unwhiten(whitened)
    z_id = model.prior["identity"].mean.expand(len(whitened), -1)
    cap = config.truncation_units(0, model.frame.mm_per_unit)
    starts = []
    for y in ys:
        idx = torch.as_tensor(rng.choice(len(y), min(len(y), config.start_points), replace=False), device=y.device)
        x, conv = canonical_points(model, y[idx].expand(len(whitened), -1, -1), z_id, z_ex, config.root_finding)
        score = torch.where(conv, model.sdf(x, z_id).abs().clamp(max=cap), torch.full_like(x[..., 0], cap))
        best = int(score.mean(dim=1).argmin())
        starts.append(whitened[best: best + 1].clone())
    return starts


def _optimise(model, ys: list[torch.Tensor], config: ImplicitFitConfig, temporal: bool,
              progress: bool, diffusion=None) -> tuple[Latents, dict]:
    dev = model.device
    noise = torch.Generator().manual_seed(config.seed)
    n = len(ys)
    k_id = model.latent_sizes["identity"]
    rng = np.random.default_rng(config.seed)
    mm_per_unit = model.frame.mm_per_unit
    w_id = torch.zeros(1, k_id, device=dev, requires_grad=True)
    # One tensor per observation: Adam leaves a code untouched in steps that did not draw it (no gradient),
    # instead of drifting it on stale momentum.
    spaces = _code_spaces(model, config.code_prior)
    w_ex = [w.requires_grad_() for w in _expression_starts(model, ys, config, spaces)]
    rot_deg = torch.zeros(3, device=dev, requires_grad=True)
    shift_mm = torch.zeros(3, device=dev, requires_grad=True)
    # the refinement rotates about the data's centroid, so rotation and translation barely interact
    centre = torch.cat(ys).mean(dim=0).detach()
    # per-observation head motions, each about its observation's centroid (one tensor each, as w_ex)
    head_rot = [torch.zeros(3, device=dev, requires_grad=True) for _ in range(n)]
    head_shift = [torch.zeros(3, device=dev, requires_grad=True) for _ in range(n)]
    head_centre = [y.mean(dim=0).detach() for y in ys]
    groups = [{"params": [w_id], "lr": config.lr_identity}, {"params": w_ex, "lr": config.lr_expression}]
    if config.pose_refined:
        groups += [{"params": [rot_deg], "lr": config.lr_pose_deg}, {"params": [shift_mm], "lr": config.lr_pose_mm}]
    if config.head_pose:
        groups += [{"params": head_rot, "lr": config.lr_head_deg}, {"params": head_shift, "lr": config.lr_head_mm}]
    opt = torch.optim.Adam(groups)
    base_lr = [g["lr"] for g in groups]
    history, kept_hist = [], []
    terms: dict[str, list[float]] = {}
    queried, converged = 0, 0
    n_draw = min(config.observations_per_step, n)
    # Each observed point's last canonical pre-image and the deformation's inverse Jacobian there: the
    # codes move little per step, so Broyden started from both needs a Newton step or two instead of
    # ~5 iterations from the previous root with an identity Jacobian (~8 from the posed point).
    starts = [y.detach().clone() for y in ys]
    inverses = [torch.eye(3, device=dev).expand(len(y), 3, 3).clone() for y in ys]
    bar = tqdm(range(config.steps), desc="fit", unit="step", disable=not progress, leave=False, mininterval=0.5)
    for step in bar:
        for group, lr in zip(opt.param_groups, base_lr):
            group["lr"] = lr * config.lr_scale(step)
        sel = np.sort(rng.choice(n, n_draw, replace=False))
        picks = [torch.as_tensor(rng.choice(len(ys[i]), config.points_per_step,
                                            replace=len(ys[i]) < config.points_per_step), device=dev) for i in sel]
        y = torch.stack([ys[i][j] for i, j in zip(sel, picks)])  # (B, P, 3)
        start = torch.stack([starts[i][j] for i, j in zip(sel, picks)])
        inv_start = torch.stack([inverses[i][j] for i, j in zip(sel, picks)])
        if config.pose_refined:
            y = _move(y, rot_deg, shift_mm, centre, mm_per_unit)
        if config.head_pose:
            y = torch.stack([_move(y[b], head_rot[i], head_shift[i], head_centre[i], mm_per_unit)
                             for b, i in enumerate(sel)])
        z_id = spaces["identity"].unwhiten(w_id).expand(len(sel), -1)
        z_ex_all = spaces["expression"].unwhiten(torch.cat(w_ex))  # (n, Ke)
        z_ex = z_ex_all[torch.as_tensor(sel, device=dev)]
        x, conv, jinv = canonical_points(model, y, z_id, z_ex, config.root_finding, start=start,
                                         inv_jacobian=inv_start, return_inverse=True)
        if model.deformation == "forward":
            for b, (i, j) in enumerate(zip(sel, picks)):
                starts[i][j[conv[b]]] = x[b][conv[b]].detach()
                inverses[i][j[conv[b]]] = jinv[b][conv[b]]
        resid = model.sdf(x, z_id).abs()  # (B, P)
        keep = conv & (resid.detach() < config.truncation_units(step, mm_per_unit))
        n_keep = int(keep.sum())
        data = torch.where(keep, resid, torch.zeros_like(resid)).sum() / max(n_keep, 1)
        parts = {"surface": data}
        weighted = config.surface_weight * data
        for name, value in model.code_regularizers(z_id, z_ex).items():
            parts[name] = value
            weighted = weighted + config.reg_weight(name, step) * value
        if diffusion is not None:
            parts["diffusion"] = diffusion.energy({"identity": z_id, "expression": z_ex}, noise).mean()
            weighted = weighted + config.diffusion_weight * parts["diffusion"]
        if config.head_pose:
            parts["head_pose"] = torch.stack([head_rot[i].square().sum() + head_shift[i].square().sum()
                                              for i in sel]).mean()
            weighted = weighted + config.head_pose_weight * parts["head_pose"]
        if temporal and n > 1:
            w_all = torch.cat(w_ex)
            parts["temporal_code"] = ((w_all[1:] - w_all[:-1]) ** 2).sum(dim=-1).mean()
            weighted = weighted + config.temporal_code_weight * parts["temporal_code"]
            pairs = [(j, int(i)) for j, i in enumerate(sel) if i + 1 < n]
            if config.temporal_deformation_weight > 0 and config.temporal_points > 0 and pairs:
                rows = torch.as_tensor([j for j, _ in pairs], device=dev)
                now = torch.as_tensor([i for _, i in pairs], device=dev)
                # The points where consecutive deformations are compared: the frame's canonical surface
                # points (forward) or its posed points (backward) — where the data says the head is.
                where = (x if model.deformation == "forward" else y).detach()[rows, : config.temporal_points]
                ident = z_id[: len(pairs)]
                flow = model.deform(where, ident, z_ex_all[now + 1]) - model.deform(where, ident, z_ex_all[now])
                parts["temporal_deformation"] = (flow**2).sum(dim=-1).mean()
                weighted = weighted + config.temporal_deformation_weight * parts["temporal_deformation"]
        opt.zero_grad()
        weighted.backward()
        opt.step()
        queried += conv.numel()
        converged += int(conv.sum())
        history.append(float(weighted.detach()))
        kept_hist.append(n_keep / keep.numel())
        for name in set(terms) | set(parts):  # a term missing this step (no pair drawn) is NaN
            terms.setdefault(name, [math.nan] * step).append(float(parts[name].detach()) if name in parts else math.nan)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{history[-1]:.4g}", kept=f"{kept_hist[-1]:.2f}", refresh=False)
    with torch.no_grad():
        latents = {"identity": spaces["identity"].unwhiten(w_id).detach(),
                   "expression": spaces["expression"].unwhiten(torch.cat(w_ex)).detach()}
    refinement = _as_similarity(model.frame, rot_deg, shift_mm, centre)
    heads = [_as_similarity(model.frame, r, t, c) for r, t, c in zip(head_rot, head_shift, head_centre)]
    stats = {"history": history, "terms": terms, "kept_fraction": kept_hist, "refinement": refinement, "heads": heads,
             "converged_fraction": converged / queried if queried else math.nan}
    return latents, stats


@torch.no_grad()
def _final_convergence(model, ys: list[torch.Tensor], latents: Latents, config: ImplicitFitConfig) -> list[float]:
    """Per observation: the fraction of (up to eval_points of) its points with a canonical pre-image."""
    if config.eval_points == 0:
        return [math.nan] * len(ys)
    if model.deformation == "backward":
        return [1.0] * len(ys)
    rng = np.random.default_rng(config.seed + 1)
    out = []
    for i, y in enumerate(ys):
        idx = rng.choice(len(y), min(len(y), config.eval_points), replace=False)
        pts = y[torch.as_tensor(np.sort(idx), device=y.device)][None]
        _, conv = canonical_points(model, pts, latents["identity"], latents["expression"][i: i + 1], config.root_finding)
        out.append(float(conv.float().mean()))
    return out


def _fit(model, clouds: Sequence[np.ndarray], config: ImplicitFitConfig, pose: Similarity | None, temporal: bool,
         progress: bool, diffusion=None) -> ImplicitFitResult:
    for name in ("identity", "expression"):
        if name not in model.latent_sizes:
            raise InputError(model.family, f"has no {name!r} latent space; cannot fit it as an implicit model")
    start = time.perf_counter()
    arrays = _check_clouds(clouds)
    to_model = pose.inverse() if pose is not None else Similarity()
    if config.align:
        to_model = align_points(average_head(model, config.align_resolution), arrays,
                                init=to_model if pose is not None else None, rotation=config.align_rotation,
                                scale=config.align_scale, seed=config.seed)
    with _frozen(model):
        latents, stats = _optimise(model, _canonical(model, arrays, [to_model] * len(arrays)), config, temporal,
                                   progress, diffusion)
        to_model = stats["refinement"].compose(to_model)
        # the head motions act after the shared pose (on the model-frame side)
        per_obs = [head.compose(to_model) for head in stats["heads"]]
        conv_obs = _final_convergence(model, _canonical(model, arrays, per_obs), latents, config)
    model_to_target = to_model.inverse()
    head_poses = [head.inverse() for head in stats["heads"]]
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    n = len(arrays)
    with torch.no_grad():
        raw = model.meshes({"identity": latents["identity"].expand(n, -1).contiguous(),
                            "expression": latents["expression"]}, resolution=config.mesh_resolution)
    meshes = [Mesh(model_to_target.compose(head).apply(m.vertices), m.faces) for m, head in zip(raw, head_poses)]
    return ImplicitFitResult(latents, model_to_target, meshes, stats["history"], head_poses=head_poses,
                             terms=stats["terms"], kept_fraction=stats["kept_fraction"],
                             converged_fraction=stats["converged_fraction"], converged_per_observation=conv_obs,
                             fit_seconds=fit_seconds, mesh_seconds=time.perf_counter() - start)


def fit_point_clouds(model, clouds: Sequence[np.ndarray], config: ImplicitFitConfig = ImplicitFitConfig(),
                     progress: bool = False, pose: Similarity | None = None,
                     sequence: bool = False, diffusion=None) -> ImplicitFitResult:
    """Fit one identity and one expression per observation to point clouds of one subject.

    model: an implicit model (`sdf`, `deform`, `deformation`, `prior`, `frame`, `code_regularizers`,
    `meshes`); clouds: n arrays (P_i, 3) float mm, each one observation (e.g. one single-view scan per
    expression), in the target's coordinates; pose: model frame -> target coordinates when known. With
    `config.align` (the default) the shared initial alignment (`align.py`) refines the pose, or finds it
    when none is given; without it the pose (default: none, the target is in the model's frame) is
    used as is. sequence: the clouds are consecutive frames, tie their expressions with the temporal terms.
    diffusion: a `prior.latent.DiffusionLatentPrior` whose energy joins the code regularisers.
    Returns latents identity (1, Ki) and expression (n, Ke), one mesh per observation in the target's
    coordinates, the loss history and the convergence counts.
    """
    return _fit(model, clouds, config, pose, sequence, progress, diffusion)


def fit_depth_sequence(model, frames: Sequence[DepthFrame | tuple], config: ImplicitFitConfig = ImplicitFitConfig(),
                       progress: bool = False, pose: Similarity | None = None) -> ImplicitFitResult:
    """Track a depth-map sequence of one subject: shared identity, one expression per frame, temporally smooth.

    frames: `DepthFrame`s or tuples (depth (H, W) float32 mm with 0 = no hit, intrinsics K (3, 3),
    camera-to-world (4, 4) float64, OpenCV camera axes). Each frame is back-projected to a world point cloud
    (mm) and fitted like `fit_point_clouds(..., sequence=True)`; `pose` maps the model frame to world.
    """
    frames = [fr if isinstance(fr, DepthFrame) else DepthFrame(*fr, name=f"frame {i}") for i, fr in enumerate(frames)]
    return _fit(model, list(depth_clouds(frames)), config, pose, True, progress)
