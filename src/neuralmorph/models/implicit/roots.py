"""Pulling observed points back through a forward deformation: batched Broyden roots plus
implicit-function gradients.

A forward deformation D maps canonical points to posed ones. Fitting observes posed points y and needs
the canonical x with D(x) = y, differentiable with respect to y and to whatever D depends on (codes,
weights). Solving is done without autograd (Broyden's method, one 3x3 inverse-Jacobian estimate per
point, since points are independent); the gradient comes from the implicit function theorem instead of
back-propagating through the iterations: with F(x, θ) = D(x; θ) - y = 0,

    dx/dθ = -J⁻¹ ∂D/∂θ,   dx/dy = J⁻¹,   J = ∂D/∂x at the root,

which `invert_deformation` realises as x = x* - J⁻¹ (r - r.detach()), r = D(x*) - y built with autograd
and J⁻¹ detached: the value is exactly x*, the gradient exactly the one above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from neuralmorph.config import Config
from neuralmorph.errors import InputError

Residual = Callable[[torch.Tensor], torch.Tensor]
"""(..., 3) points -> (..., 3) residuals, every point independent of the others."""

DEFAULT_DIVERGE = 0.4
"""Residual norm (field units) past which a point is abandoned: about 50 mm at 120 mm per unit, the
threshold NPHM uses (0.2 of its 250 mm units), far beyond any expression displacement."""


@dataclass(frozen=True)
class RootFinding(Config):
    """Settings of the Broyden inversion (residual norms in the deformation's units)."""

    max_iter: int = 15
    """Broyden steps at most."""
    tol: float = 1e-6
    """A point has converged when its residual norm is below this."""
    diverge: float = DEFAULT_DIVERGE
    """A point whose residual norm exceeds this stops updating and is reported not converged."""

    def __post_init__(self):
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise InputError("max_iter", f"must be an integer >= 1, got {self.max_iter!r}")
        if not (isinstance(self.tol, (int, float)) and math.isfinite(self.tol) and self.tol > 0):
            raise InputError("tol", f"must be a positive number, got {self.tol!r}")
        if not (isinstance(self.diverge, (int, float)) and math.isfinite(self.diverge) and self.diverge > self.tol):
            raise InputError("diverge", f"must be a number above tol={self.tol}, got {self.diverge!r}")


def _check_points(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[-1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(name, f"must be a (..., P, 3) tensor, got {shape}")
    if not x.is_floating_point():
        raise InputError(name, f"must be floating point, got {x.dtype}")


def broyden_solve(fn: Residual, x0: torch.Tensor, max_iter: int = 15, tol: float = 1e-6,
                  diverge: float = DEFAULT_DIVERGE,
                  inv_jacobian: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Roots of fn, each point on its own, by Broyden's "good" method on 3x3 inverse Jacobians.

    fn: (..., P, 3) -> (..., P, 3) residuals of the same dtype and device, each point depending only on
    itself (called with the full batch shape of x0 every step, so per-batch codes may be closed over).
    x0: (..., P, 3) float starting points; any leading batch shape (P, 3) and (B, P, 3) included.
    inv_jacobian: optional (..., P, 3, 3) initial inverse Jacobians; default identity, right for a
    deformation near the identity.
    Runs without autograd. Converged points (residual norm < tol) and diverged ones (norm > diverge, or
    non-finite; checked at x0 too, so `diverge` must exceed the largest residual expected at the start,
    e.g. the largest displacement when x0 = y) are frozen; the others take up to max_iter steps.
    Returns roots (..., P, 3) (for each point the iterate with the smallest residual seen) and
    converged (..., P) bool, true exactly where that smallest residual norm is < tol.
    """
    cfg = RootFinding(max_iter, tol, diverge)
    _check_points(x0, "x0")
    shape = x0.shape
    with torch.no_grad():
        x = x0.detach().clone()
        if inv_jacobian is None:
            binv = torch.eye(3, dtype=x.dtype, device=x.device).expand(*shape[:-1], 3, 3).clone()
        else:
            if inv_jacobian.shape != (*shape, 3):
                raise InputError("inv_jacobian", f"must have shape {(*shape, 3)}, got {tuple(inv_jacobian.shape)}")
            binv = inv_jacobian.detach().to(device=x.device, dtype=x.dtype).clone()
        g = _residual(fn, x, shape)
        norm = _norm(g)
        best_x, best_norm = x.clone(), norm.clone()
        active = (norm >= cfg.tol) & (norm <= cfg.diverge)
        for _ in range(cfg.max_iter):
            if not active.any():
                break
            step = -(binv @ g.unsqueeze(-1)).squeeze(-1)
            step = torch.where(active.unsqueeze(-1), step, torch.zeros_like(step))
            x_new = x + step
            g_new = _residual(fn, x_new, shape)
            dg = g_new - g
            # good Broyden, inverse form (Sherman-Morrison): B⁻¹ += (s - B⁻¹Δg) sᵀB⁻¹ / (sᵀB⁻¹Δg);
            # skipped where the denominator is negligible so a stalled point cannot blow B⁻¹ up
            bdg = (binv @ dg.unsqueeze(-1)).squeeze(-1)
            den = (step * bdg).sum(-1)
            eps = torch.finfo(x.dtype).eps
            ok = active & torch.isfinite(den) & (den.abs() > eps * step.norm(dim=-1) * bdg.norm(dim=-1))
            st_binv = (step.unsqueeze(-2) @ binv).squeeze(-2)  # sᵀB⁻¹, (..., 3)
            safe = torch.where(ok, den, torch.ones_like(den))
            update = (step - bdg).unsqueeze(-1) * st_binv.unsqueeze(-2) / safe[..., None, None]
            binv = torch.where(ok[..., None, None], binv + update, binv)
            x = torch.where(active.unsqueeze(-1), x_new, x)
            g = torch.where(active.unsqueeze(-1), g_new, g)
            norm = torch.where(active, _norm(g_new), norm)
            better = active & (norm < best_norm)
            best_x = torch.where(better.unsqueeze(-1), x, best_x)
            best_norm = torch.where(better, norm, best_norm)
            active = active & (norm >= cfg.tol) & (norm <= cfg.diverge)
        return best_x, best_norm < cfg.tol


def _residual(fn: Residual, x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    g = fn(x)
    if not isinstance(g, torch.Tensor) or g.shape != shape:
        got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
        raise InputError("fn", f"must map {tuple(shape)} points to {tuple(shape)} residuals, got {got}")
    return g.detach().to(x.dtype)


def _norm(g: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (...) norms, +inf where non-finite so such points read as diverged."""
    n = g.norm(dim=-1)
    return torch.where(torch.isfinite(n), n, torch.full_like(n, math.inf))


def deformation_jacobian(deform: Residual, x: torch.Tensor) -> torch.Tensor:
    """∂deform/∂x per point, detached: x (..., P, 3) -> (..., P, 3, 3), row k = ∇ of output k.

    Three reverse passes through one forward: points are independent, so the gradient of the sum of
    output k over all points is, at each point, that point's row k. Works for any deform whose points do
    not interact, including ones closing over per-point codes (which vmap-based Jacobians reject).
    """
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        out = deform(xr)
        if out.shape != x.shape:
            raise InputError("deform", f"must map {tuple(x.shape)} points to {tuple(x.shape)}, got {tuple(out.shape)}")
        rows = [torch.autograd.grad(out[..., k].sum(), xr, retain_graph=k < 2, allow_unused=True)[0]
                for k in range(3)]
    rows = [torch.zeros_like(x) if r is None else r for r in rows]  # an output constant in x
    return torch.stack(rows, dim=-2).detach()


def invert_deformation(deform: Residual, y: torch.Tensor, x0: torch.Tensor | None = None, max_iter: int = 15,
                       tol: float = 1e-6, diverge: float = DEFAULT_DIVERGE, inv_jacobian: torch.Tensor | None = None,
                       return_inverse: bool = False):
    """Canonical points x with deform(x) = y, differentiable in y and in everything deform closes over.

    deform: (..., P, 3) -> (..., P, 3) forward deformation (canonical -> posed), points independent;
    may close over tensors that require grad. y: (..., P, 3) float observed points (may require grad).
    x0: (..., P, 3) starting points, default y (the deformation is near the identity).
    max_iter, tol, diverge: as in `broyden_solve` (see RootFinding); inv_jacobian (..., P, 3, 3): Broyden's
    initial inverse Jacobians (default identity).
    Returns x (..., P, 3), equal to the Broyden root, with the implicit-function gradient
    dx = J⁻¹ (dy - ∂deform/∂θ dθ); and converged (..., P) bool. Points not converged (or with a singular
    Jacobian) carry the root's value but no gradient: mask them out of any loss. return_inverse: also
    return J⁻¹ at the roots (..., P, 3, 3), detached (identity where unusable) — the right inv_jacobian
    for the next solve when the deformation changes a little (fitting), so Broyden starts like Newton.
    """
    RootFinding(max_iter, tol, diverge)
    _check_points(y, "y")
    if x0 is not None and x0.shape != y.shape:
        raise InputError("x0", f"must have the shape of y {tuple(y.shape)}, got {tuple(x0.shape)}")
    target = y.detach()
    start = target if x0 is None else x0.detach()
    x_star, converged = broyden_solve(lambda x: deform(x) - target, start, max_iter, tol, diverge, inv_jacobian)
    jac = deformation_jacobian(deform, x_star)
    jinv, info = torch.linalg.inv_ex(jac)
    usable = converged & (info == 0) & torch.isfinite(jinv).flatten(-2).all(-1)
    converged = converged & (info == 0)
    # no gradient through points whose root or Jacobian cannot be trusted
    jinv = torch.where(usable[..., None, None], jinv, torch.zeros_like(jinv)).detach()
    # under the caller's grad mode: inside no_grad this is just x*, and nothing is recorded
    r = deform(x_star) - y
    corr = (jinv @ r.unsqueeze(-1)).squeeze(-1)
    x = x_star - (corr - corr.detach())
    if not return_inverse:
        return x, converged
    eye = torch.eye(3, dtype=jinv.dtype, device=jinv.device).expand_as(jinv)
    return x, converged, torch.where(usable[..., None, None], jinv, eye)
