"""The differentiable Gaussian rasterizer (neuralmorph.splat): gradients, fast == reference, the projected
footprint, compositing order, early termination, spherical harmonics, and the benchmark's plumbing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from neuralmorph.splat import fast, rasterize
from neuralmorph.splat.reference import composite, depth_order, rasterize_reference
from neuralmorph.splat.sh import C0, C1, num_coeffs, sh_basis, sh_to_color

BACKENDS = ["reference", "fast"]
needs_numba = pytest.mark.skipif(not fast.AVAILABLE, reason="numba is not installed")


def _backend(name):
    return pytest.param(name, marks=needs_numba) if name == "fast" else name


ALL = [_backend(b) for b in BACKENDS]


def random_scene(n, width, height, seed=0, dtype=torch.float64, sh_degree=None):
    """n Gaussians in front of a camera with fx != fy, a skew-free off-centre principal point."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g, dtype=dtype)
    means = (r(n, 3) - 0.5) * torch.tensor([2.0, 1.6, 1.0], dtype=dtype) + torch.tensor([0.1, -0.05, 4.0], dtype=dtype)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = r(n, 3) * 0.15 + 0.04
    opacities = r(n) * 0.9 + 0.05
    if sh_degree is None:
        colors = r(n, 3)
    else:
        colors = torch.randn(n, num_coeffs(sh_degree), 3, generator=g, dtype=dtype) * 0.3
    viewmat = torch.eye(4, dtype=dtype)
    a = 0.2  # a small camera rotation about y and a translation
    viewmat[:3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]],
                                   dtype=dtype)
    viewmat[:3, 3] = torch.tensor([0.3, 0.1, 0.2], dtype=dtype)
    K = torch.tensor([[1.2 * width, 0.0, 0.45 * width], [0.0, 1.0 * width, 0.55 * height], [0, 0, 1]], dtype=dtype)
    return dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors, viewmat=viewmat, K=K,
                width=width, height=height)


DIFF = ("means", "quats", "scales", "opacities", "colors")


def render_with_grads(scene, backend, seed=1, **kw):
    """Render, back-propagate a fixed random weighting of rgb, alpha and depth; outputs and gradients."""
    inputs = {k: (v.clone().requires_grad_(k in DIFF) if isinstance(v, torch.Tensor) else v) for k, v in scene.items()}
    out = rasterize(**inputs, backend=backend, **kw)
    g = torch.Generator().manual_seed(seed)
    loss = sum((out[k] * torch.randn(out[k].shape, generator=g, dtype=torch.float64).to(out[k].dtype)).sum()
               for k in ("rgb", "alpha", "depth"))
    loss.backward()
    grads = {k: inputs[k].grad for k in DIFF}
    grads["means2d"] = out["means2d"].grad
    return out, grads


# ------------------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("name", DIFF + ("sh",))
def test_gradcheck_every_input(backend, name):
    """float64 finite differences agree with the backward pass for every differentiable input."""
    sh = name == "sh"
    scene = random_scene(24, 16, 16, seed=3, sh_degree=3 if sh else None)
    key = "colors" if sh else name
    kw = {k: v for k, v in scene.items() if k != key}

    def f(x):
        out = rasterize(**{key: x}, **kw, background=torch.tensor([0.2, 0.3, 0.1], dtype=torch.float64),
                        backend=backend)
        return out["rgb"], out["alpha"], out["depth"]

    assert rasterize(**scene, backend=backend)["radii"].gt(0).sum() >= 16  # most of them on screen
    assert torch.autograd.gradcheck(f, (scene[key].clone().requires_grad_(True),), eps=1e-6, atol=1e-6, rtol=1e-4,
                                    fast_mode=True)


@pytest.mark.parametrize("backend", ALL)
def test_gradcheck_compositor_full_jacobian(backend):
    """The compositor alone, full Jacobian (not fast mode): 2D means, conics, opacities, features."""
    scene = random_scene(10, 8, 8, seed=5)
    from neuralmorph.splat.project import project

    p = project(scene["means"], scene["quats"], scene["scales"], scene["viewmat"], scene["K"], 8, 8)
    order = depth_order(p.depths, p.visible)
    feats = torch.cat([scene["colors"], p.depths[:, None]], 1).detach()

    def f(m2, con, op, ft):
        if backend == "fast":
            return fast.rasterize_fast(m2, con, op, ft, order, p.boxes, 8, 8, tile_size=4)
        return rasterize_reference(m2, con, op, ft, p.depths, p.boxes, p.visible, 8, 8, tile_size=4)

    args = tuple(x.detach().clone().requires_grad_(True) for x in (p.means2d, p.conics, scene["opacities"], feats))
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------------- fast == reference


@needs_numba
@pytest.mark.parametrize("sh_degree", [None, 3])
def test_fast_matches_reference_float32(sh_degree):
    """Random scenes in float32: images within 1e-5, every gradient within 1e-4 of its largest entry."""
    scene = random_scene(400, 64, 48, seed=11, dtype=torch.float32, sh_degree=sh_degree)
    bg = torch.tensor([0.1, 0.5, 0.9])
    ref, g_ref = render_with_grads(scene, "reference", background=bg)
    for tile in (8, 5, 16):
        out, g = render_with_grads(scene, "fast", background=bg, tile_size=tile)
        for k in ("rgb", "alpha"):
            assert (out[k] - ref[k]).abs().max() <= 1e-5, (k, tile)
        assert torch.equal(out["radii"], ref["radii"])
        assert (out["depth"] - ref["depth"]).abs().max() <= 1e-5 * ref["depth"].abs().max()
        for k in g_ref:
            rel = (g[k] - g_ref[k]).abs().max() / g_ref[k].abs().max()
            assert rel <= 1e-4, (k, tile, float(rel))


@pytest.mark.parametrize("backend", ALL)
def test_image_does_not_depend_on_tile_size(backend):
    scene = random_scene(200, 40, 30, seed=2)
    a = rasterize(**scene, backend=backend, tile_size=40)
    for tile in (1, 3, 16):
        b = rasterize(**scene, backend=backend, tile_size=tile)
        for k in ("rgb", "alpha", "depth"):
            assert (a[k] - b[k]).abs().max() <= 1e-12, (k, tile)


def test_backends_resolve_device_agnostically():
    from neuralmorph.splat.rasterize import resolve_backend

    assert resolve_backend("reference", torch.device("cpu")) == "reference"
    assert resolve_backend("fast", torch.device("cuda")) == "reference"  # CUDA tensors: the torch path
    assert resolve_backend("auto", torch.device("meta")) == "reference"
    assert resolve_backend("auto", torch.device("cpu")) == ("fast" if fast.AVAILABLE else "reference")
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("gpu", torch.device("cpu"))


# ---------------------------------------------------------------------------- the projected footprint


def _expected_single(mean, quat, scale, opacity, color, bg, viewmat, K, width, height):
    """A single Gaussian's image from the EWA formula, independently (numpy, scipy's rotations)."""
    rot = Rotation.from_quat(quat / np.linalg.norm(quat), scalar_first=True).as_matrix()
    cov3 = rot @ np.diag(scale ** 2) @ rot.T
    w, t = viewmat[:3, :3], viewmat[:3, 3]
    x, y, z = w @ mean + t
    fx, s, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    u, v = (fx * x + s * y) / z + cx, fy * y / z + cy
    jac = np.array([[fx / z, s / z, -(fx * x + s * y) / z ** 2], [0.0, fy / z, -fy * y / z ** 2]])
    cov2 = jac @ w @ cov3 @ w.T @ jac.T + 0.3 * np.eye(2)
    inv = np.linalg.inv(cov2)
    jj, ii = np.meshgrid(np.arange(width), np.arange(height))
    d = np.stack([jj - u, ii - v], -1)
    m2 = np.einsum("hwi,ij,hwj->hw", d, inv, d)
    a = np.minimum(0.99, opacity * np.exp(-0.5 * m2))
    a = np.where((m2 <= 9.0) & (a >= 1 / 255), a, 0.0)
    rgb = a[..., None] * color + (1 - a[..., None]) * bg
    radius = math.ceil(3 * math.sqrt(np.linalg.eigvalsh(cov2).max()))
    return rgb, a, (u, v), z, radius


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("skew", [0.0, 7.0])
def test_single_gaussian_matches_the_analytic_footprint(backend, skew):
    """fx != fy, an off-centre principal point (and a skew): the rendered image is the analytic 2D
    Gaussian of the projected covariance, cut at its 3-sigma ellipse, everywhere in the image."""
    width, height = 48, 40
    quat = np.array([0.8, 0.3, -0.4, 0.2])
    scale = np.array([0.25, 0.07, 0.12])
    color, bg = np.array([0.9, 0.4, 0.1]), np.array([0.05, 0.1, 0.2])
    viewmat = np.eye(4)
    viewmat[:3, :3] = Rotation.from_rotvec([0.1, 0.3, -0.2]).as_matrix()
    viewmat[:3, 3] = [0.05, -0.02, 0.3]
    mean = viewmat[:3, :3].T @ (np.array([0.04, 0.03, 2.8]) - viewmat[:3, 3])  # a little off the optical axis
    K = np.array([[70.0, skew, 21.3], [0.0, 55.0, 17.8], [0.0, 0.0, 1.0]])
    rgb, alpha, (u, v), z, radius = _expected_single(mean, quat, scale, 0.9, color, bg, viewmat, K, width, height)
    assert (alpha > 0).sum() > 80 and alpha[0].max() == 0 and alpha[:, 0].max() == 0  # footprint well inside
    t = lambda x: torch.tensor(np.asarray(x), dtype=torch.float64)
    out = rasterize(t(mean[None]), t(quat[None]), t(scale[None]), t([0.9]), t(color[None]), t(viewmat), t(K),
                    width, height, background=t(bg), backend=backend)
    np.testing.assert_allclose(out["alpha"].numpy(), alpha, atol=1e-10)
    np.testing.assert_allclose(out["rgb"].numpy(), rgb, atol=1e-10)
    np.testing.assert_allclose(out["means2d"].detach().numpy()[0], [u, v], atol=1e-10)
    np.testing.assert_allclose(out["depth"].numpy()[alpha > 0], z, atol=1e-10)
    assert out["radii"].tolist() == [radius]


@pytest.mark.parametrize("backend", ALL)
def test_culling_near_plane_and_off_screen(backend):
    scene = random_scene(3, 16, 16, seed=0)
    scene["means"] = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, -1.0], [40.0, 0.0, 3.0]], dtype=torch.float64)
    scene["viewmat"] = torch.eye(4, dtype=torch.float64)
    out, grads = render_with_grads(scene, backend)
    assert out["radii"][0] > 0 and out["radii"][1:].tolist() == [0, 0]  # behind the camera; far off to the side
    for k in ("means", "scales", "opacities", "colors"):
        assert grads[k][1:].abs().max() == 0, k
    near = dict(scene, means=torch.tensor([[0.0, 0.0, 0.005]], dtype=torch.float64),
                quats=scene["quats"][:1], scales=scene["scales"][:1], opacities=scene["opacities"][:1],
                colors=scene["colors"][:1])
    assert rasterize(**near, backend=backend)["radii"].tolist() == [0]  # z = 0.005 <= near = 0.01
    assert rasterize(**near, near=0.001, backend=backend)["radii"].tolist() != [0]


# ------------------------------------------------------------------------ compositing order and termination


def _stack(opacities, colors, depths, scale=0.05, width=9, height=9, dtype=torch.float64):
    """Round Gaussians stacked on the optical axis, centred on pixel (4, 4)."""
    n = len(opacities)
    means = torch.tensor([[0.0, 0.0, z] for z in depths], dtype=dtype)
    return dict(means=means, quats=torch.tensor([[1.0, 0, 0, 0]] * n, dtype=dtype),
                scales=torch.full((n, 3), scale, dtype=dtype), opacities=torch.tensor(opacities, dtype=dtype),
                colors=torch.tensor(colors, dtype=dtype), viewmat=torch.eye(4, dtype=dtype),
                K=torch.tensor([[40.0, 0, 4.0], [0, 40.0, 4.0], [0, 0, 1]], dtype=dtype), width=width, height=height)


@pytest.mark.parametrize("backend", ALL)
def test_the_nearer_gaussian_wins_whatever_the_input_order(backend):
    red, green = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    a = rasterize(**_stack([0.95, 0.95], [red, green], [2.0, 3.0]), backend=backend)
    b = rasterize(**_stack([0.95, 0.95], [green, red], [3.0, 2.0]), backend=backend)
    for k in ("rgb", "alpha", "depth"):
        assert torch.equal(a[k], b[k]), k
    centre = a["rgb"][4, 4]
    torch.testing.assert_close(centre, torch.tensor([0.95, 0.95 * 0.05, 0.0], dtype=torch.float64))
    assert a["depth"][4, 4] < 2.1
    # equal depths: the stable sort keeps the input order, the first given is in front
    c = rasterize(**_stack([0.95, 0.95], [green, red], [2.0, 2.0]), backend=backend)
    torch.testing.assert_close(c["rgb"][4, 4], torch.tensor([0.95 * 0.05, 0.95, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("backend", ALL)
def test_early_termination_gaussians_behind_contribute_nothing(backend):
    """Opacity 0.95 at the centre pixel: T = 0.05, 0.0025, 1.25e-4 after three; the fourth would take it
    below 1e-4, so it and everything behind it contribute exactly nothing there (value and gradient)."""
    cols = [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.3, 0.2, 0.1]]
    depths = [2.0, 2.5, 3.0, 3.5, 4.0, 4.5]
    scene = _stack([0.95] * 6, cols, depths, scale=0.1)
    inputs = {k: (v.clone().requires_grad_(k in DIFF) if isinstance(v, torch.Tensor) else v) for k, v in scene.items()}
    out = rasterize(**inputs, backend=backend)
    out["rgb"][4, 4].sum().backward()
    a = 0.95
    expected = torch.tensor([a, a * (1 - a), a * (1 - a) ** 2], dtype=torch.float64)
    torch.testing.assert_close(out["rgb"][4, 4], expected, rtol=0, atol=1e-15)
    assert abs(float(out["alpha"][4, 4].detach()) - (1 - (1 - a) ** 3)) < 1e-15
    for k in DIFF:
        assert inputs[k].grad[3:].abs().max() == 0, k  # the terminating one and those behind it
    for k in ("colors", "opacities"):  # (at their common peak the footprint's shape has no gradient)
        assert inputs[k].grad[:3].abs().min() > 0 if k == "opacities" else inputs[k].grad[:3].abs().max() > 0, k
    # changing them changes nothing at the centre
    behind = torch.rand(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    other = dict(scene, colors=torch.cat([scene["colors"][:3], behind]),
                 opacities=torch.tensor([0.95] * 3 + [0.5, 0.99, 0.7], dtype=torch.float64))
    again = rasterize(**other, backend=backend)
    assert torch.equal(again["rgb"][4, 4], out["rgb"][4, 4].detach())
    # without the fourth and beyond the centre is bit-identical as well
    three = {k: (v[:3] if isinstance(v, torch.Tensor) and v.shape[0] == 6 else v) for k, v in scene.items()}
    assert torch.equal(rasterize(**three, backend=backend)["rgb"][4, 4], out["rgb"][4, 4].detach())


def test_alpha_rules_of_the_compositor():
    """Alpha is clamped at 0.99; below 1/255 a Gaussian is skipped (it does not reduce transmittance)."""
    px = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    m = torch.zeros(2, 2, dtype=torch.float64)
    con = torch.tensor([[1.0, 0.0, 1.0]] * 2, dtype=torch.float64)
    f = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    out, t = composite(m, con, torch.tensor([1.0, 1.0], dtype=torch.float64), f, px)
    torch.testing.assert_close(out, torch.tensor([[0.99 + 2 * 0.99 * 0.01]], dtype=torch.float64))
    out, t = composite(m, con, torch.tensor([0.003, 0.5], dtype=torch.float64), f, px)  # 0.003 < 1/255: skipped
    torch.testing.assert_close(out, torch.tensor([[1.0]], dtype=torch.float64))
    torch.testing.assert_close(t, torch.tensor([0.5], dtype=torch.float64))


# --------------------------------------------------------------------------------- spherical harmonics


def test_sh_degree_one_at_the_axes():
    dirs = torch.eye(3, dtype=torch.float64)  # +x, +y, +z
    b = sh_basis(1, dirs)
    expected = torch.tensor([[C0, 0, 0, -C1], [C0, -C1, 0, 0], [C0, 0, C1, 0]], dtype=torch.float64)
    torch.testing.assert_close(b, expected, rtol=0, atol=1e-15)
    assert abs(C0 - 0.5 / math.sqrt(math.pi)) < 1e-15 and abs(C1 - math.sqrt(3 / (4 * math.pi))) < 1e-15


def test_sh_basis_is_orthonormal_on_the_sphere():
    """Gauss-Legendre in cos(theta) x uniform phi: exact for the degree-6 products of two bands <= 3."""
    ct, wt = np.polynomial.legendre.leggauss(12)
    phi = np.arange(24) * 2 * np.pi / 24
    c, p = np.meshgrid(ct, phi, indexing="ij")
    s = np.sqrt(1 - c ** 2)
    dirs = torch.tensor(np.stack([s * np.cos(p), s * np.sin(p), c], -1).reshape(-1, 3))
    w = torch.tensor((wt[:, None] * np.full(phi.shape, 2 * np.pi / 24)[None, :]).reshape(-1))
    b = sh_basis(3, dirs)  # (M, 16)
    gram = (b * w[:, None]).T @ b
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-12)


def test_sh_colour_convention_and_degree_selection():
    g = torch.Generator().manual_seed(0)
    sh = torch.randn(5, 16, 3, generator=g, dtype=torch.float64)
    dirs = torch.nn.functional.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=-1)
    c0 = sh_to_color(sh, dirs, 0)
    torch.testing.assert_close(c0, torch.clamp_min(C0 * sh[:, 0] + 0.5, 0.0))
    assert (c0 == 0).any()  # some clamped at 0 with these coefficients
    c1 = sh_to_color(sh, dirs, 1)
    torch.testing.assert_close(c1, sh_to_color(sh[:, :4], dirs, 1))  # higher bands ignored
    lin = C0 * sh[:, 0] - C1 * dirs[:, 1:2] * sh[:, 1] + C1 * dirs[:, 2:3] * sh[:, 2] - C1 * dirs[:, 0:1] * sh[:, 3]
    torch.testing.assert_close(c1, torch.clamp_min(lin + 0.5, 0.0))


@pytest.mark.parametrize("backend", ALL)
def test_sh_colour_follows_the_view_direction(backend):
    """One Gaussian with degree-1 SH: its colour is sh_to_color along camera centre -> mean, everywhere."""
    sh = torch.zeros(1, 4, 3, dtype=torch.float64)
    sh[0, 0] = torch.tensor([0.2, 0.4, 0.6])
    sh[0, 3] = torch.tensor([0.5, -0.5, 0.2])  # the -C1 x band
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, 3] = torch.tensor([0.1, 0.0, 0.0])  # camera centre at (-0.1, 0, 0)
    for mean in ([-0.1, 0.0, 3.0], [0.0, 0.0, 3.0]):  # straight ahead (the x band is 0), then to the right
        scene = _stack([0.9], [[0.0, 0.0, 0.0]], [3.0])
        scene.update(colors=sh, viewmat=viewmat, means=torch.tensor([mean], dtype=torch.float64))
        out = rasterize(**scene, backend=backend)
        assert out["alpha"].max() > 0.5
        d = torch.nn.functional.normalize(torch.tensor([mean], dtype=torch.float64) + torch.tensor([0.1, 0, 0]), dim=-1)
        expected = sh_to_color(sh, d, 1)[0] * out["alpha"][..., None]
        torch.testing.assert_close(out["rgb"], expected)
    assert sh_to_color(sh, d, 1)[0, 0] < sh_to_color(sh, torch.tensor([[0.0, 0, 1]], dtype=torch.float64), 1)[0, 0]
    with pytest.raises(ValueError, match="sh_degree"):
        rasterize(**scene, sh_degree=2)


# ------------------------------------------------------------------------------------------ the API


def test_means2d_gradient_is_retained_and_bad_input_is_refused():
    scene = random_scene(30, 20, 20, seed=4)
    out, grads = render_with_grads(scene, "reference")
    assert grads["means2d"].shape == (30, 2) and grads["means2d"].abs().max() > 0
    if fast.AVAILABLE:
        _, g2 = render_with_grads(scene, "fast")
        torch.testing.assert_close(g2["means2d"], grads["means2d"])
    with pytest.raises(ValueError, match="quats"):
        rasterize(**dict(scene, quats=scene["quats"][:, :3]))
    with pytest.raises(ValueError, match="float64"):
        rasterize(**dict(scene, scales=scene["scales"].float()))
    with pytest.raises(ValueError, match="colors"):
        rasterize(**dict(scene, colors=torch.zeros(30, 5, 3, dtype=torch.float64)))
    with pytest.raises(ValueError, match="background"):
        rasterize(**scene, background=torch.zeros(4, dtype=torch.float64))


# ------------------------------------------------------------------------------------------ the benchmark


def test_bench_rasterizer_writes_its_json(tmp_path, monkeypatch):
    from neuralmorph.commands.bench import run_rasterizer_bench
    from neuralmorph.errors import InputError
    from neuralmorph.evaluation import rasterizer_bench as rb

    monkeypatch.setitem(rb.CASES, "tiny", (32, 24, 300))
    cfg = rb.RasterizerBenchConfig(out=tmp_path / "R.json", cases=("tiny",), repeats=1, reference_repeats=1)
    run_rasterizer_bench(cfg)
    data = json.loads((tmp_path / "R.json").read_text())
    case = data["cases"]["tiny"]
    for key in ("fast_fwd_s", "fast_fwd_bwd_s", "reference_fwd_s", "reference_fwd_bwd_s", "speedup",
                "max_image_abs_diff", "max_grad_rel_diff"):
        assert isinstance(case[key], float), key
    assert case["max_image_abs_diff"] <= 1e-5 and case["max_grad_rel_diff"] <= 1e-4
    assert case["float64"]["max_image_abs_diff"] <= 1e-12 and case["float64"]["max_grad_rel_diff"] <= 1e-10
    for path in ("fast", "reference"):  # float32 against float64: rounding, not a factor of 2 (fresh leaves per run)
        assert case["float32_vs_float64_reference"][path]["max_grad_rel_diff"] < 0.1
    assert case["visible_gaussians"] > 100
    assert "machine" in data and "command" in data
    with pytest.raises(InputError, match="--cases"):
        rb.RasterizerBenchConfig(cases=("huge",))
    scene = rb.head_scene(500, 64, 64)
    out = rasterize(**scene)
    assert out["alpha"].max() > 0.9 and out["alpha"][0].max() == 0  # the head is in view, not touching the top
