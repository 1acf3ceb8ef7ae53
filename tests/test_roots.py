"""Broyden inversion of forward deformations and its implicit-function gradients."""

from __future__ import annotations

import pytest
import torch

from neuralmorph.errors import InputError
from neuralmorph.models.implicit.roots import (RootFinding, broyden_solve, deformation_jacobian,
                                        invert_deformation)


def _wave(dtype=torch.float64, seed=0, amplitude=0.15):
    """D(x) = x + a sin(B x + c): J = I + a diag(cos(Bx + c)) B, invertible wherever ‖a B‖₂ < 1."""
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(3, 3, generator=g, dtype=dtype)
    c = torch.randn(3, generator=g, dtype=dtype)
    a = torch.tensor(amplitude, dtype=dtype)
    assert torch.linalg.matrix_norm(a * B, 2) < 0.9  # so D is a bijection (a contraction away from x)
    return a, B, c


def _points(n, dtype=torch.float64, seed=1):
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_broyden_recovers_known_canonical_points(dtype):
    a, B, c = _wave(dtype)
    D = lambda x: x + a * torch.sin(x @ B.T + c)
    x = _points(2000, dtype)
    y = D(x)
    roots, converged = broyden_solve(lambda z: D(z) - y, y.clone())
    assert roots.dtype == dtype and roots.shape == x.shape
    assert converged.all()
    # residual < 1e-6 and ‖J⁻¹‖ <= 1 / (1 - ‖aB‖) < 10 bound the error by 1e-5
    assert (roots - x).norm(dim=-1).max() < 1e-5
    # the mask is truthful
    assert ((D(roots) - y).norm(dim=-1) < 1e-6).all()


def test_twist_and_leading_batch_shape():
    """A smooth twist about z, angle k·z, solved for a (B, P, 3) batch with a different twist per batch."""
    k = torch.tensor([0.3, -0.5], dtype=torch.float64)[:, None]  # (B, 1)

    def twist(x):  # (B, P, 3)
        t = k * x[..., 2]
        cos, sin = torch.cos(t), torch.sin(t)
        return torch.stack([cos * x[..., 0] - sin * x[..., 1], sin * x[..., 0] + cos * x[..., 1], x[..., 2]], -1)

    x = torch.stack([_points(300, seed=2), _points(300, seed=3)])
    y = twist(x)
    # displacements reach ~0.7 here, beyond the default diverge (checked at the start point too)
    roots, converged = broyden_solve(lambda z: twist(z) - y, y.clone(), diverge=2.0)
    assert converged.shape == (2, 300) and converged.all()
    assert (roots - x).norm(dim=-1).max() < 1e-5


def test_exact_inverse_jacobian_solves_a_linear_map_in_one_step():
    A = torch.tensor([[1.2, 0.3, 0.0], [-0.2, 0.9, 0.1], [0.05, 0.0, 1.1]], dtype=torch.float64)
    b = torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64)
    x = _points(50)
    y = x @ A.T + b
    fn = lambda z: z @ A.T + b - y
    _, identity_start = broyden_solve(fn, y.clone(), max_iter=1, diverge=10.0)
    assert not identity_start.any()  # one identity step is not enough here
    inv = torch.linalg.inv(A).expand(50, 3, 3)
    roots, exact = broyden_solve(fn, y.clone(), max_iter=1, diverge=10.0, inv_jacobian=inv)
    assert exact.all() and torch.allclose(roots, x, atol=1e-12)


def test_points_without_a_preimage_are_flagged_not_converged():
    """tanh maps R³ into the open cube (-1, 1)³: y outside it has no root; inside it does."""
    y = torch.tensor([[2.0, 0.0, 0.0], [0.0, -3.0, 0.5], [0.3, -0.2, 0.1]], dtype=torch.float64)
    roots, converged = broyden_solve(lambda z: torch.tanh(z) - y, y.clone(), max_iter=30)
    assert converged.tolist() == [False, False, True]
    # whatever came back for the unsolvable rows, its residual is honestly above tol
    res = (torch.tanh(roots) - y).norm(dim=-1)
    assert (res[:2] > 1e-6).all() and torch.isfinite(roots).all()
    assert torch.allclose(roots[2], torch.atanh(y[2]), atol=1e-6)


def test_diverged_start_is_frozen_and_reported():
    a, B, c = _wave()
    D = lambda x: x + a * torch.sin(x @ B.T + c)
    x = _points(10)
    y = D(x)
    start = y.clone()
    start[:3] += 5.0  # residual ≈ 8.7 > diverge
    roots, converged = broyden_solve(lambda z: D(z) - y, start, diverge=0.4)
    assert not converged[:3].any() and converged[3:].all()
    assert torch.equal(roots[:3], start[:3])  # never updated


def test_non_finite_residuals_are_not_converged():
    roots, converged = broyden_solve(lambda z: torch.log(z) - 0.5, -torch.ones(4, 3, dtype=torch.float64))
    assert not converged.any()


def test_config_validation():
    with pytest.raises(InputError, match="max_iter"):
        RootFinding(max_iter=0)
    with pytest.raises(InputError, match="tol"):
        RootFinding(tol=-1.0)
    with pytest.raises(InputError, match="diverge"):
        RootFinding(tol=1e-3, diverge=1e-4)
    with pytest.raises(InputError, match="x0"):
        broyden_solve(lambda z: z, torch.zeros(4, 2))
    with pytest.raises(InputError, match="fn"):
        broyden_solve(lambda z: z[:, :2], torch.zeros(4, 3))
    assert RootFinding.from_dict(RootFinding().to_dict()) == RootFinding()


def test_deformation_jacobian_matches_analytic():
    a, B, c = _wave()
    D = lambda x: x + a * torch.sin(x @ B.T + c)
    x = _points(7)
    expected = torch.eye(3, dtype=torch.float64) + a * torch.cos(x @ B.T + c)[:, :, None] * B
    assert torch.allclose(deformation_jacobian(D, x), expected, atol=1e-12)


def test_invert_deformation_value_and_mask():
    a, B, c = _wave()
    D = lambda x: x + a * torch.sin(x @ B.T + c)
    x = _points(500)
    xs, converged = invert_deformation(D, D(x))
    assert converged.all() and (xs - x).norm(dim=-1).max() < 1e-5
    with torch.no_grad():  # also usable without autograd
        xs2, _ = invert_deformation(D, D(x))
    assert torch.equal(xs, xs2) and xs2.grad_fn is None


def test_warm_inverse_jacobian_solves_a_nearby_problem_in_fewer_iterations():
    """Fitting re-solves for slightly moved codes: the previous roots and inverse Jacobians (return_inverse)
    make Broyden start like Newton — the same roots, reached with fewer deformation evaluations."""
    a, B, c = _wave()
    x = _points(500)
    D = lambda q: q + a * torch.sin(q @ B.T + c)
    y = D(x)
    x1, ok, jinv = invert_deformation(D, y, return_inverse=True)
    assert ok.all() and torch.allclose(jinv @ deformation_jacobian(D, x1), torch.eye(3, dtype=x.dtype).expand(500, 3, 3),
                                       atol=1e-9)
    D2 = lambda q: q + a * torch.sin(q @ B.T + c + 0.02)       # the deformation moves a little
    calls = {"cold": 0, "warm": 0}

    def counted(key):
        def f(q):
            calls[key] += 1
            return D2(q)
        return f

    cold, ok_cold = invert_deformation(counted("cold"), y, x0=x1)
    warm, ok_warm = invert_deformation(counted("warm"), y, x0=x1, inv_jacobian=jinv)
    assert ok_cold.all() and ok_warm.all() and (cold - warm).norm(dim=-1).max() < 1e-5
    assert calls["warm"] < calls["cold"]


def test_implicit_gradient_matches_finite_differences():
    """gradcheck compares the implicit-function gradient with central differences of the full solve
    (float64, tol 1e-12 so the solve's error, 1e-12 / eps 1e-6, is far below gradcheck's atol)."""
    _, B, c = _wave()
    y = (_points(6, seed=5) * 0.8).requires_grad_(True)
    a = torch.tensor(0.15, dtype=torch.float64, requires_grad=True)
    shift = torch.tensor([0.02, -0.01, 0.03], dtype=torch.float64, requires_grad=True)

    def solve(a, shift, y):
        D = lambda x: x + a * torch.sin(x @ B.T + c) + shift
        x, converged = invert_deformation(D, y, max_iter=60, tol=1e-12)
        assert converged.all()
        return x

    assert torch.autograd.gradcheck(solve, (a, shift, y), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_implicit_gradient_wrt_network_weights():
    """A small MLP offset (near identity): d(sum x)/dW by autograd equals a central difference in one weight."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
    with torch.no_grad():
        net[2].weight.mul_(0.05)
    D = lambda x: x + net(x)
    y = _points(40, seed=9)
    x, converged = invert_deformation(D, y, max_iter=40, tol=1e-12)
    assert converged.all()
    x.sum().backward()
    w = net[0].weight
    grad = w.grad[2, 1].item()
    h = 1e-6
    with torch.no_grad():
        w[2, 1] += h
        plus = invert_deformation(D, y, max_iter=40, tol=1e-12)[0].sum().item()
        w[2, 1] -= 2 * h
        minus = invert_deformation(D, y, max_iter=40, tol=1e-12)[0].sum().item()
        w[2, 1] += h
    assert grad == pytest.approx((plus - minus) / (2 * h), rel=1e-5, abs=1e-8)


def test_singular_jacobian_is_flagged_and_carries_no_gradient():
    """D squashes z to 0: every root has a singular Jacobian; the solve may succeed, the mask must not."""
    s = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    D = lambda x: torch.stack([s * x[:, 0], x[:, 1], 0 * x[:, 2]], -1)
    y = torch.tensor([[0.2, 0.1, 0.0]], dtype=torch.float64)
    x, converged = invert_deformation(D, y)
    assert not converged.any()
    x.sum().backward()
    assert s.grad is None or s.grad.abs().item() == 0.0
