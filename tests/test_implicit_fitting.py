"""Implicit-model fitting on an analytic stand-in with a known answer.

The stand-in has the implicit models' interface (sdf, deform, prior, frame, bounds, code_regularizers,
meshes) with closed forms: the identity code sets the log radii of an ellipsoid, the expression code the
amplitudes of two smooth bumps of a forward (or backward) deformation. Fits must recover the codes that
made the observations.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import trimesh

from neuralmorph.errors import InputError
from neuralmorph.frame import Frame, Similarity
from neuralmorph.geometry.camera import Camera, look_at
from neuralmorph.geometry.mesh import Mesh, save_mesh
from neuralmorph.geometry.raycast import render_depth
from neuralmorph.models.base import GaussianPrior

BASE_RADII = (0.75, 0.95, 0.85)
BUMP_CENTRES = ((0.0, 0.25, 0.8), (0.0, -0.45, 0.6))
BUMP_DIRS = ((0.0, 0.0, 1.0), (0.0, -1.0, 0.0))
BUMP_AMPLITUDE = 0.2
BUMP_WIDTH2 = 0.12
TRUE_ID = (0.12, -0.08, 0.10)
TRUE_EX = (0.9, -0.7)


class Ellipsoids(torch.nn.Module):
    """Analytic implicit model: ellipsoid radii R0·exp(identity), two Gaussian bumps scaled by expression.

    Canonical units are 100 mm around an origin at (0, 20, 0) mm.
    """

    family = "implicit-global"

    def __init__(self, deformation: str = "forward"):
        super().__init__()
        self.deformation = deformation
        self.latent_sizes = {"identity": 3, "expression": 2}
        self.frame = Frame(np.array([0.0, 20.0, 0.0]), np.eye(3), 100.0)
        self.prior = torch.nn.ModuleDict({"identity": GaussianPrior(3), "expression": GaussianPrior(2)})
        self.prior["identity"].scale_tril.copy_(0.15 * torch.eye(3))
        self.prior["expression"].scale_tril.copy_(0.5 * torch.eye(2))
        self.register_buffer("bounds", torch.tensor([[-1.5] * 3, [1.5] * 3]))
        self.register_buffer("r0", torch.tensor(BASE_RADII))
        self.register_buffer("centres", torch.tensor(BUMP_CENTRES))
        self.register_buffer("dirs", torch.tensor(BUMP_DIRS))
        self.sdf_calls = 0

    @property
    def device(self):
        return self.r0.device

    def zero_latents(self, b: int = 1):
        return {n: p.mean.expand(b, -1).clone() for n, p in self.prior.items()}

    def training_latents(self):
        return None  # no codebook of training codes: expressions start at the prior mean

    def sdf(self, x, identity):
        """x (B, P, 3), identity (B, 3) -> (B, P); the usual near-exact ellipsoid distance k0 (k0 - 1) / k1."""
        self.sdf_calls += 1
        r = (self.r0 * torch.exp(identity))[:, None, :]
        k0 = (x / r).norm(dim=-1)
        k1 = (x / r**2).norm(dim=-1).clamp_min(1e-9)
        return k0 * (k0 - 1) / k1

    def offset(self, x, expression):
        """(B, P, 3), (B, 2) -> (B, P, 3) displacement of the two bumps."""
        g = torch.exp(-((x[:, :, None, :] - self.centres) ** 2).sum(-1) / BUMP_WIDTH2)  # (B, P, 2)
        return BUMP_AMPLITUDE * ((expression[:, None, :] * g)[..., None] * self.dirs).sum(dim=2)

    def deform(self, x, identity, expression):
        if self.deformation == "forward":  # canonical -> posed
            return x + self.offset(x, expression)
        return x - self.offset(x, expression)  # posed -> canonical

    def code_regularizers(self, identity, expression):
        return {"identity_norm": (identity**2).sum(-1).mean(), "expression_norm": (expression**2).sum(-1).mean()}

    def meshes(self, latents, resolution: int = 128):
        sub = 3 if resolution <= 64 else 4
        sphere = trimesh.creation.icosphere(subdivisions=sub)
        u = torch.tensor(np.asarray(sphere.vertices), dtype=torch.float32, device=self.device)
        out = []
        with torch.no_grad():
            for ident, expr in zip(latents["identity"], latents["expression"]):
                v = (u * self.r0 * torch.exp(ident))[None]
                if self.deformation == "forward":
                    v = v + self.offset(v, expr[None])
                else:  # posed y with y - offset(y) = v: a contraction, fixed-point iterate
                    y = v.clone()
                    for _ in range(50):
                        y = v + self.offset(y, expr[None])
                    v = y
                out.append(Mesh(self.frame.to_mm(v[0].double().cpu().numpy()), np.asarray(sphere.faces)))
        return out


def true_mesh(model: Ellipsoids, identity=TRUE_ID, expression=TRUE_EX) -> Mesh:
    lat = {"identity": torch.tensor([identity], dtype=torch.float32),
           "expression": torch.tensor([expression], dtype=torch.float32)}
    return model.meshes(lat, resolution=256)[0]


def frontal_camera(mesh: Mesh, size: int = 96, distance: float = 600.0, direction=(0.15, 0.1, 1.0)) -> Camera:
    centre = 0.5 * (mesh.vertices.min(0) + mesh.vertices.max(0))
    d = np.asarray(direction, np.float64)
    eye = centre + distance * d / np.linalg.norm(d)
    f = 2.2 * size
    return Camera(f, f, (size - 1) / 2, (size - 1) / 2, size, size, look_at(eye, centre))


def single_view_cloud(mesh: Mesh, n: int = 3000, seed: int = 0, noise_mm: float = 0.0) -> np.ndarray:
    cam = frontal_camera(mesh, size=128)
    depth, _, _ = render_depth(mesh.vertices, mesh.faces, cam)
    from neuralmorph.geometry.raycast import backproject

    pts, _ = backproject(depth, cam)
    rng = np.random.default_rng(seed)
    pts = pts[rng.choice(len(pts), min(n, len(pts)), replace=False)]
    return pts + noise_mm * rng.standard_normal(pts.shape)


from neuralmorph.fitting.implicit import ImplicitFitConfig, canonical_points, fit_depth_sequence, fit_point_clouds
from neuralmorph.geometry.distance import distance_to_mesh
from neuralmorph.data.observations import DepthFrame, load_target, write_depth_sequence
from neuralmorph.models.implicit.roots import RootFinding

FAST = dict(steps=120, points_per_step=400, eval_points=2000, mesh_resolution=64, align=False)


def code_errors(result) -> tuple[float, float]:
    """Max abs error of the identity and of the (first) expression code against the truth."""
    return (float(np.abs(result.latents["identity"][0].numpy() - TRUE_ID).max()),
            float(np.abs(result.latents["expression"][0].numpy() - TRUE_EX).max()))


@pytest.fixture(scope="module")
def forward_model():
    return Ellipsoids("forward")


@pytest.fixture(scope="module")
def cloud(forward_model):
    return single_view_cloud(true_mesh(forward_model))


# --- config ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [dict(steps=-1), dict(lr_identity=0.0), dict(lr_factor=1.5),
                                 dict(lr_halve_at=(0.6, 0.2)), dict(points_per_step=0),
                                 dict(truncation_mm=(25.0, 12.5)), dict(truncation_at=(0.1, 0.25, 0.5)),
                                 dict(reg_weights={"symmetry": (1.0, 2.0)}), dict(reg_default=(-1.0,)),
                                 dict(temporal_code_weight=-1.0), dict(mesh_resolution=4),
                                 dict(code_prior="wide"), dict(expression_starts=-1), dict(head_pose_weight=-1.0),
                                 dict(lr_head_deg=0.0)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(InputError, match="implicit fit config"):
        ImplicitFitConfig(**bad)


def test_config_schedules_follow_their_milestones():
    cfg = ImplicitFitConfig(steps=1000, reg_weights={"identity_norm": (4.0, 2.0, 1.0, 0.5), "symmetry": (3.0,)},
                            reg_default=(0.7,))
    assert [cfg.lr_scale(s) for s in (0, 199, 200, 400, 999)] == [1.0, 1.0, 0.5, 0.25, 0.0625]
    # NPHM's 0.1 / 0.05 / 0.0075 units of 250 mm, here in mm and back into units of 100 mm
    assert [cfg.truncation_units(s, 100.0) for s in (0, 249, 250, 500)] == pytest.approx([0.25, 0.25, 0.125, 0.019])
    assert [cfg.reg_weight("identity_norm", s) for s in (0, 200, 500, 600)] == [4.0, 2.0, 1.0, 0.5]
    assert cfg.reg_weight("symmetry", 900) == 3.0
    assert cfg.reg_weight("something_new", 0) == 0.7


# --- point clouds -------------------------------------------------------------------------------------------


def test_single_view_fit_recovers_codes_and_surface(forward_model, cloud):
    res = fit_point_clouds(forward_model, [cloud], ImplicitFitConfig(**FAST))
    id_err, ex_err = code_errors(res)
    assert id_err < 0.005 and ex_err < 0.03  # identity scale 0.15, expression 0.5 (prior std)
    assert res.latents["identity"].shape == (1, 3) and res.latents["expression"].shape == (1, 2)
    assert res.converged_fraction == 1.0 and res.converged_per_observation == [1.0]
    assert distance_to_mesh(cloud, res.meshes[0].vertices, res.meshes[0].faces).mean() < 0.3
    assert len(res.history) == FAST["steps"] and res.history[-1] < res.history[0]
    # the prior mean is a different head: the fit moved the surface onto the points
    start = forward_model.meshes(forward_model.zero_latents(1))[0]
    assert distance_to_mesh(cloud, start.vertices, start.faces).mean() > 3.0


def test_several_observations_share_one_identity(forward_model):
    exprs = [(0.9, -0.7), (-0.5, 0.6), (0.0, 0.0)]
    clouds = [single_view_cloud(true_mesh(forward_model, expression=e), n=1500, seed=i) for i, e in enumerate(exprs)]
    res = fit_point_clouds(forward_model, clouds, ImplicitFitConfig(**FAST, observations_per_step=2))
    assert res.latents["identity"].shape == (1, 3) and res.latents["expression"].shape == (3, 2)
    assert np.abs(res.latents["identity"][0].numpy() - TRUE_ID).max() < 0.005
    assert np.abs(res.latents["expression"].numpy() - np.array(exprs)).max() < 0.05
    assert len(res.meshes) == 3
    assert max(distance_to_mesh(c, m.vertices, m.faces).mean() for c, m in zip(clouds, res.meshes)) < 0.3


def test_backward_model_fits_without_root_finding():
    model = Ellipsoids("backward")
    cloud = single_view_cloud(true_mesh(model))
    res = fit_point_clouds(model, [cloud], ImplicitFitConfig(**{**FAST, "steps": 200}))  # converges slower here
    id_err, ex_err = code_errors(res)
    assert id_err < 0.005 and ex_err < 0.03
    assert res.converged_fraction == 1.0
    assert distance_to_mesh(cloud, res.meshes[0].vertices, res.meshes[0].faces).mean() < 0.3


def _turn(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def _pose_error(found: Similarity, truth: Similarity) -> tuple[float, float]:
    """(translation error mm, rotation error degrees)."""
    cos = np.clip((np.trace(found.rotation.T @ truth.rotation) - 1) / 2, -1.0, 1.0)
    return float(np.linalg.norm(found.translation - truth.translation)), float(np.degrees(np.arccos(cos)))


def test_known_pose_returns_meshes_in_target_coordinates(forward_model, cloud):
    pose = Similarity(1.0, _turn(12.0), np.array([40.0, -25.0, 300.0]))  # model frame -> target (e.g. a camera)
    moved = pose.apply(cloud)
    res = fit_point_clouds(forward_model, [moved], ImplicitFitConfig(**FAST), pose=pose)
    assert code_errors(res)[0] < 0.005
    assert np.allclose(res.pose.matrix, pose.matrix)
    assert distance_to_mesh(moved, res.meshes[0].vertices, res.meshes[0].faces).mean() < 0.3
    # the same data, far from the model's frame, cannot be fitted without its pose
    res = fit_point_clouds(forward_model, [moved], ImplicitFitConfig(**{**FAST, "steps": 30, "eval_points": 0}))
    assert distance_to_mesh(moved, res.meshes[0].vertices, res.meshes[0].faces).mean() > 50.0


def test_alignment_finds_an_unknown_pose():
    # The average head is the subject's own here, so ICP has an exact answer; a smooth ellipsoid that
    # differs from the average one leaves the pose ambiguous (see docs/implicit_fitting.md).
    model = Ellipsoids()
    with torch.no_grad():
        model.prior["identity"].mean.copy_(torch.tensor(TRUE_ID))
        model.prior["expression"].mean.copy_(torch.tensor(TRUE_EX))
    cloud = single_view_cloud(true_mesh(model))
    pose = Similarity(1.0, _turn(-15.0), np.array([-100.0, 50.0, 300.0]))
    moved = pose.apply(cloud)
    cfg = ImplicitFitConfig(**{**FAST, "steps": 30, "eval_points": 0, "align": True}, refine_pose=False)
    res = fit_point_clouds(model, [moved], cfg)  # the alignment alone
    dt, dr = _pose_error(res.pose, pose)
    assert dt < 1.0 and dr < 0.5
    assert distance_to_mesh(moved, res.meshes[0].vertices, res.meshes[0].faces).mean() < 0.5
    # translation only: exact when the orientation is right
    shifted = Similarity(1.0, np.eye(3), pose.translation)
    res = fit_point_clouds(model, [shifted.apply(cloud)], ImplicitFitConfig(**{**FAST, "steps": 30, "eval_points": 0,
                                                                               "align": True}, align_rotation=False,
                                                                            refine_pose=False))
    dt, dr = _pose_error(res.pose, shifted)
    assert dt < 1.0 and dr == 0.0


def test_fits_align_by_default():
    # A cloud far from the model's frame (a scan centred on its own mean, say) is aligned before the fit
    # unless the caller says it is already in the frame: the same default as the mesh families' fits.
    model = Ellipsoids()
    with torch.no_grad():
        model.prior["identity"].mean.copy_(torch.tensor(TRUE_ID))
        model.prior["expression"].mean.copy_(torch.tensor(TRUE_EX))
    cloud = single_view_cloud(true_mesh(model))
    moved = cloud - cloud.mean(axis=0)
    assert ImplicitFitConfig().align and ImplicitFitConfig().pose_refined  # aligned, then refined with the codes
    assert not ImplicitFitConfig(align=False).pose_refined                # a known pose is kept as given
    res = fit_point_clouds(model, [moved], ImplicitFitConfig(**{**FAST, "steps": 30, "eval_points": 0, "align": True}))
    assert distance_to_mesh(moved, res.meshes[0].vertices, res.meshes[0].faces).mean() < 0.5


def test_pose_refinement_corrects_a_misalignment(forward_model):
    from neuralmorph.geometry.sampling import sample_surface

    mesh = true_mesh(forward_model)
    full, _, _ = sample_surface(mesh.vertices, mesh.faces, 3000, 0)  # all around: pose is well determined
    off = Similarity(1.0, _turn(5.0), np.array([6.0, -4.0, 8.0]))  # what a poor alignment leaves
    moved = off.apply(full)
    cfg = {**FAST, "steps": 200, "eval_points": 0}
    fixed = fit_point_clouds(forward_model, [moved], ImplicitFitConfig(**{**cfg, "steps": 80}))
    refined = fit_point_clouds(forward_model, [moved], ImplicitFitConfig(**cfg, refine_pose=True))
    assert _pose_error(fixed.pose, off)[0] > 10.0  # not refined: the pose stays the identity
    dt, dr = _pose_error(refined.pose, off)
    assert dt < 1.5 and dr < 2.0
    assert code_errors(refined)[0] < 0.005 < code_errors(fixed)[0]
    assert distance_to_mesh(moved, refined.meshes[0].vertices, refined.meshes[0].faces).mean() < 0.6 < distance_to_mesh(moved, fixed.meshes[0].vertices, fixed.meshes[0].faces).mean()


class EllipsoidsWithTraining(Ellipsoids):
    """Ellipsoids with a codebook of training expressions (what the multi-start picks from)."""

    def training_latents(self):
        ex = torch.tensor([[-0.8, 0.6], [0.0, 0.9], [0.85, -0.75], [0.3, 0.3]])
        return {"identity": torch.zeros(len(ex), 3), "expression": ex}


def test_diagonal_code_prior_keeps_each_dimension_spread_and_drops_correlations():
    from neuralmorph.fitting.implicit import _code_spaces

    model = Ellipsoids()
    codes = torch.randn(200, 3, generator=torch.Generator().manual_seed(0)) @ torch.tensor(
        [[0.2, 0.0, 0.0], [0.15, 0.1, 0.0], [0.0, 0.0, 0.05]]).T
    model.prior["identity"].fit(codes)
    full, diag = _code_spaces(model, "full")["identity"].scale_tril, _code_spaces(model, "diagonal")["identity"].scale_tril
    assert torch.allclose(diag @ diag.T, torch.diag(torch.diag(full @ full.T)))
    assert (full @ full.T)[1, 0] > 0.02  # the correlation the diagonal prior lets go
    spaces = _code_spaces(model, "diagonal")
    assert torch.allclose(spaces["identity"].unwhiten(spaces["identity"].whiten(codes[:5])), codes[:5], atol=1e-6)


def test_expression_start_is_the_training_code_that_explains_the_points_best(cloud):
    model = EllipsoidsWithTraining("forward")
    cfg = {**FAST, "steps": 0, "eval_points": 0}
    picked = fit_point_clouds(model, [cloud], ImplicitFitConfig(**cfg)).latents["expression"][0]
    assert np.allclose(picked.numpy(), [0.85, -0.75], atol=1e-5)  # the one nearest TRUE_EX (0.9, -0.7)
    mean = fit_point_clouds(model, [cloud], ImplicitFitConfig(**cfg, expression_starts=0)).latents["expression"][0]
    assert np.allclose(mean.numpy(), 0.0)


def test_head_pose_follows_a_head_that_turned_in_one_observation(forward_model):
    from neuralmorph.geometry.sampling import sample_surface

    mesh = true_mesh(forward_model)
    full, _, _ = sample_surface(mesh.vertices, mesh.faces, 3000, 0)
    turn = Similarity(1.0, _turn(6.0), np.array([4.0, -3.0, 5.0]))  # the second head turned and moved
    clouds = [full, turn.apply(full)]
    cfg = {**FAST, "steps": 200, "eval_points": 0}
    still = fit_point_clouds(forward_model, clouds, ImplicitFitConfig(**cfg))
    # no pull towards still heads: a smooth ellipsoid shows its turn only faintly
    moving = fit_point_clouds(forward_model, clouds, ImplicitFitConfig(**cfg, head_pose=True, head_pose_weight=0.0))
    assert len(moving.head_poses) == 2 and np.allclose(still.head_poses[1].matrix, np.eye(4), atol=1e-9)
    dt, dr = _pose_error(moving.head_poses[1], turn)
    assert dt < 1.5 and dr < 1.0
    assert _pose_error(moving.head_poses[0], Similarity())[0] < 0.5  # the still head stays still
    assert distance_to_mesh(clouds[1], moving.meshes[1].vertices, moving.meshes[1].faces).mean() < 0.5 < \
        distance_to_mesh(clouds[1], still.meshes[1].vertices, still.meshes[1].faces).mean()
    assert code_errors(moving)[0] < 0.005


def test_truncation_milestone_drops_outliers_when_scheduled(forward_model, cloud):
    rng = np.random.default_rng(3)
    noisy = cloud.copy()
    k = len(noisy) // 5  # a fifth of the points 4-12 mm off the head, like hair or a hand
    out = noisy[:k] - forward_model.frame.origin
    noisy[:k] += out / np.linalg.norm(out, axis=1, keepdims=True) * rng.uniform(4, 12, (k, 1))
    for at in ((0.0, 0.25, 0.5), (0.0, 0.25, 0.8)):
        res = fit_point_clouds(forward_model, [noisy], ImplicitFitConfig(**{**FAST, "eval_points": 0},
                                                                         truncation_at=at))
        drop = round(at[2] * FAST["steps"])
        kept = np.array(res.kept_fraction)
        assert kept[drop - 10: drop].min() > 0.97  # 12.5 mm keeps nearly all
        assert 0.7 < kept[drop: drop + 10].mean() < 0.85  # 1.9 mm drops the outliers from that step on
        assert code_errors(res)[0] < 0.01


def test_regulariser_weights_come_from_the_config(cloud):
    class WithExtra(Ellipsoids):
        def code_regularizers(self, identity, expression):
            return {**super().code_regularizers(identity, expression), "radius_prior": (identity**2).sum(-1).mean()}

    # test_single_view_fit... recovers the codes with the default weights; a large expression weight pulls
    # the expression to the prior mean, and a name the config does not know takes `reg_default`
    cfg = ImplicitFitConfig(**{**FAST, "steps": 80, "eval_points": 0}, reg_weights={"expression_norm": (1.0,)},
                            reg_default=(10.0,))
    res = fit_point_clouds(WithExtra(), [cloud], cfg)
    assert np.abs(res.latents["expression"].numpy()).max() < 0.05
    assert np.abs(res.latents["identity"].numpy()).max() < 0.02
    assert res.terms["expression_norm"][-1] < 0.01 and res.terms["radius_prior"][-1] < 1e-3


def test_unconverged_roots_are_counted_and_left_out(forward_model, cloud):
    rf = RootFinding(max_iter=1, tol=1e-6)
    cfg = ImplicitFitConfig(**{**FAST, "steps": 40}, root_finding=rf)
    res = fit_point_clouds(forward_model, [cloud], cfg)
    assert 0.0 < res.converged_fraction < 0.9
    assert 0.0 < res.converged_per_observation[0] < 0.9
    assert max(res.kept_fraction[1:]) <= 0.95  # (step 0: no deformation yet, every root is the point itself)
    y = torch.tensor(forward_model.frame.to_canonical(cloud[:500]), dtype=torch.float32)[None]
    lat = forward_model.zero_latents(1)
    lat["expression"] = torch.tensor([TRUE_EX])
    x, ok = canonical_points(forward_model, y, lat["identity"], lat["expression"], rf)
    assert torch.equal(x[~ok], y[~ok])  # not converged: left where observed, finite
    x, ok = canonical_points(forward_model, y, lat["identity"], lat["expression"])
    assert ok.all()
    assert torch.allclose(forward_model.deform(x, lat["identity"], lat["expression"]), y, atol=1e-5)


# --- depth sequences ------------------------------------------------------------------------------------------


def render_sequence(model, expressions, size=32, noise_mm=2.0, seed=0) -> list[DepthFrame]:
    cam = frontal_camera(true_mesh(model), size=size, direction=(0.0, 0.0, 1.0))
    k = np.array([[cam.fx, 0, cam.cx], [0, cam.fy, cam.cy], [0, 0, 1]])
    rng = np.random.default_rng(seed)
    frames = []
    for t, e in enumerate(expressions):
        mesh = true_mesh(model, expression=tuple(e))
        depth, _, _ = render_depth(mesh.vertices, mesh.faces, cam)
        depth = np.where(np.isfinite(depth), depth + noise_mm * rng.standard_normal(depth.shape), 0.0)
        frames.append(DepthFrame(depth.astype(np.float32), k, np.linalg.inv(cam.world_to_camera), name=f"frame {t}"))
    return frames


def test_depth_sequence_recovers_each_frames_expression(forward_model):
    truth = np.linspace([0.9, -0.7], [-0.3, 0.5], 6)  # a fast change: 0.24 per frame, half a prior std
    frames = render_sequence(forward_model, truth, noise_mm=1.0)
    cfg = ImplicitFitConfig(steps=200, points_per_step=300, observations_per_step=3, eval_points=500,
                            mesh_resolution=64, temporal_code_weight=0.0, temporal_deformation_weight=0.0,
                            align=False)  # the frames are in the model's frame (world = model)
    res = fit_depth_sequence(forward_model, frames, cfg)
    e = res.latents["expression"].numpy()
    assert e.shape == (6, 2) and len(res.meshes) == 6 and len(res.converged_per_observation) == 6
    assert np.sqrt(((e - truth) ** 2).sum(1).mean()) < 0.08
    assert np.abs(res.latents["identity"][0].numpy() - TRUE_ID).max() < 0.005
    for fr, mesh in zip(frames, res.meshes):
        assert distance_to_mesh(fr.points(), mesh.vertices, mesh.faces).mean() < 1.5  # 1 mm depth noise


def test_temporal_smoothness_reduces_jitter(forward_model):
    truth = np.linspace([0.6, -0.5], [0.8, -0.3], 6)  # a slow change, 2 mm depth noise
    frames = render_sequence(forward_model, truth, noise_mm=2.0)
    base = dict(steps=100, points_per_step=200, observations_per_step=3, eval_points=0, mesh_resolution=32, align=False)

    def jitter(e):  # second differences: zero for the (linear) truth, noise for a fit
        return float(np.linalg.norm(e[2:] - 2 * e[1:-1] + e[:-2], axis=1).mean())

    fits = {name: fit_depth_sequence(forward_model, frames, ImplicitFitConfig(**base, temporal_code_weight=wc,
                                                                               temporal_deformation_weight=wd))
            for name, wc, wd in (("free", 0.0, 0.0), ("codes", 0.05, 0.0), ("flow", 0.0, 30.0))}
    e = {name: r.latents["expression"].numpy() for name, r in fits.items()}
    assert jitter(e["codes"]) < 0.3 * jitter(e["free"])
    assert jitter(e["flow"]) < 0.6 * jitter(e["free"])
    for name in e:
        assert np.sqrt(((e[name] - truth) ** 2).sum(1).mean()) < 0.35  # measured 0.24-0.27: noise, not smoothing
    assert "temporal_code" in fits["codes"].terms and "temporal_deformation" in fits["flow"].terms
    assert "temporal_code" in fits["free"].terms  # computed (for the record) even at weight 0


# --- reading targets --------------------------------------------------------------------------------------------


def test_depth_sequence_folder_round_trip(forward_model, tmp_path):
    frames = render_sequence(forward_model, [(0.9, -0.7), (0.5, 0.0)], size=24, noise_mm=0.0)
    for png in (False, True):
        folder = tmp_path / ("png" if png else "npy")
        write_depth_sequence(folder, frames, png=png)
        target = load_target(folder)
        assert target.kind == "depth" and target.names == (f"depth_000.{'png' if png else 'npy'}",
                                                            f"depth_001.{'png' if png else 'npy'}")
        for fr, cloud in zip(frames, target.clouds):
            ref = fr.points()
            assert cloud.shape == ref.shape
            assert np.abs(cloud - ref).max() < (1.0 if png else 1e-3)  # PNG stores whole millimetres
    # units and depth_scale: metres stored in .npy
    spec = json.loads((tmp_path / "npy" / "camera.json").read_text())
    for i, f in enumerate(spec["frames"]):
        np.save(tmp_path / "npy" / f["depth"], np.load(tmp_path / "npy" / f["depth"]) / 1000.0)
        pose = np.array(f["camera_to_world"])
        pose[:3, 3] /= 1000.0
        f["camera_to_world"] = pose.tolist()
    spec["units"] = "m"
    (tmp_path / "npy" / "camera.json").write_text(json.dumps(spec))
    again = load_target(tmp_path / "npy")
    assert np.abs(again.clouds[0] - frames[0].points()).max() < 1e-3


def test_point_cloud_folder_is_read_in_name_order(tmp_path, forward_model):
    mesh = true_mesh(forward_model)
    np.save(tmp_path / "b.npy", mesh.vertices[:100])
    np.savetxt(tmp_path / "a.xyz", mesh.vertices[100:150])
    save_mesh(tmp_path / "c.ply", mesh)  # a mesh: area-uniform samples instead of its vertices
    (tmp_path / "notes.json").write_text("{}")
    target = load_target(tmp_path, mesh_points=321)
    assert target.kind == "points" and target.names == ("a.xyz", "b.npy", "c.ply")
    assert [len(c) for c in target.clouds] == [50, 100, 321]
    assert np.allclose(target.clouds[1], mesh.vertices[:100])
    single = load_target(tmp_path / "b.npy", units="cm")
    assert single.names == ("b.npy",) and np.allclose(single.clouds[0], 10 * mesh.vertices[:100])


def _sequence(tmp_path, **override):
    folder = tmp_path / "seq"
    folder.mkdir(exist_ok=True)
    np.save(folder / "depth_000.npy", np.full((4, 5), 500.0, np.float32))
    spec = {"format": "neuralmorph.depth_sequence/1", "intrinsics": [[50, 0, 2], [0, 50, 1.5], [0, 0, 1]],
            "frames": [{"depth": "depth_000.npy"}]}
    spec.update(override)
    (folder / "camera.json").write_text(json.dumps(spec))
    return folder


@pytest.mark.parametrize("override, file, message", [
    ({"frames": []}, "camera.json", "non-empty 'frames'"),
    ({"units": "inch"}, "camera.json", "units"),
    ({"intrinsics": [[50, 0, 2], [0, 50, 1.5]]}, "camera.json frame 0", "intrinsics must be 3x3"),
    ({"intrinsics": [[50, 3, 2], [0, 50, 1.5], [0, 0, 1]]}, "depth_000.npy", "intrinsics must be"),
    ({"frames": [{"depth": "depth_000.npy", "camera_to_world": [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}]},
     "depth_000.npy", "rigid"),
    ({"frames": [{"depth": "missing.npy"}]}, "missing.npy", "not found"),
    ({"format": "other/2"}, "camera.json", "format"),
])
def test_bad_depth_sequences_name_the_file(tmp_path, override, file, message):
    folder = _sequence(tmp_path, **override)
    with pytest.raises(InputError) as err:
        load_target(folder)
    assert file in err.value.where and message in err.value.problem


def test_bad_targets_name_the_file(tmp_path):
    from PIL import Image

    folder = _sequence(tmp_path, frames=[{"depth": "d.png"}])
    Image.fromarray(np.full((4, 5), 200, np.uint8)).save(folder / "d.png")
    with pytest.raises(InputError, match=r"d\.png: depth PNGs must be 16-bit"):
        load_target(folder)
    folder = _sequence(tmp_path)
    np.save(folder / "depth_000.npy", np.zeros((4, 5), np.float32))
    with pytest.raises(InputError, match=r"depth_000\.npy: no valid depth pixels"):
        load_target(folder)
    np.save(folder / "depth_000.npy", -np.ones((4, 5), np.float32))
    with pytest.raises(InputError, match=r"depth_000\.npy: depth has negative values"):
        load_target(folder)
    (folder / "camera.json").write_text("{not json")
    with pytest.raises(InputError, match=r"camera\.json: not valid JSON"):
        load_target(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no point clouds"):
        load_target(empty)
    with pytest.raises(InputError, match="target not found"):
        load_target(tmp_path / "nope.ply")
    (tmp_path / "bad.xyz").write_text("1 2\n3 4\n")
    with pytest.raises(InputError, match=r"bad\.xyz"):
        load_target(tmp_path / "bad.xyz")
    with pytest.raises(InputError, match="observation 1: has no points"):
        fit_point_clouds(Ellipsoids(), [np.zeros((5, 3)), np.zeros((0, 3))], ImplicitFitConfig(**FAST))


# --- the CLI, on a real (untrained) implicit model ------------------------------------------------------------


def test_cli_fit_writes_meshes_latents_and_metrics(tmp_path, forward_model):
    from neuralmorph.cli import main
    from neuralmorph.models.implicit.model import ImplicitGlobalConfig, ImplicitGlobalModel
    from neuralmorph.models.base import MorphableModel
    from neuralmorph.models.latents import load_latents

    torch.manual_seed(0)
    cfg = ImplicitGlobalConfig(identity_size=8, expression_size=4, sdf_hidden=32, sdf_layers=2, deform_hidden=32,
                               deform_layers=2, id_compress=4)
    ImplicitGlobalModel(cfg, Frame(np.zeros(3), np.eye(3), 100.0), np.array([[-1.0] * 3, [1.0] * 3]), 1, 1
                        ).save(tmp_path / "model")
    rng = np.random.default_rng(0)
    u = rng.standard_normal((4000, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    clouds = tmp_path / "clouds"
    clouds.mkdir()
    np.save(clouds / "s0.npy", 60.0 * u[:2000][u[:2000, 2] > 0])
    np.save(clouds / "s1.npy", 60.0 * u[2000:][u[2000:, 2] > -0.2])
    out = tmp_path / "fit"
    main(["fit", "--model", str(tmp_path / "model"), "--target", str(clouds), "--out", str(out),
          "--implicit.steps", "20", "--implicit.points-per-step", "200", "--implicit.mesh-resolution", "24",
          "--implicit.eval-points", "300", "--implicit.reg-weights.expression-norm", "0.5"])
    assert sorted(p.name for p in out.iterdir()) == [".neuralmorph", "fit_000.latents.json", "fit_000.ply",
                                                      "fit_001.latents.json", "fit_001.ply", "latents.json", "metrics.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [o["name"] for o in metrics["observations"]] == ["s0.npy", "s1.npy"]
    for o in metrics["observations"]:
        assert math.isfinite(o["observed_to_fit_mm"]["mean"]) and 0.0 <= o["converged_fraction"] <= 1.0
    assert metrics["fit"]["family"] == "implicit-global" and metrics["fit"]["config"]["steps"] == 20
    assert metrics["fit"]["config"]["reg_weights"]["expression_norm"] == [0.5]
    model = MorphableModel.load(tmp_path / "model")
    lat = load_latents(out / "fit_001.latents.json", model)
    assert lat["identity"].shape == (1, 8) and lat["expression"].shape == (1, 4)
    assert len(json.loads((out / "latents.json").read_text())["observations"]) == 2
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--model", str(tmp_path / "model"), "--target", str(clouds), "--out", str(out),
              "--kind", "registered"])
    assert exit_.value.code == 1


def test_a_diffusion_prior_joins_the_code_regularisers(forward_model, cloud):
    """`fit --prior` on an implicit family: the diffusion energy is a logged term of the fit, and a prior
    whose mass sits at the true codes does not pull the fit away from them."""
    from neuralmorph.prior.diffusion import DiffusionConfig, DiffusionPrior
    from neuralmorph.prior.latent import DiffusionLatentPrior

    gen = torch.Generator().manual_seed(0)
    codes = {"identity": torch.as_tensor(TRUE_ID, dtype=torch.float32) + 0.02 * torch.randn(512, 3, generator=gen),
             "expression": torch.as_tensor(TRUE_EX, dtype=torch.float32) + 0.05 * torch.randn(512, 2, generator=gen)}
    torch.manual_seed(0)
    prior = DiffusionPrior.for_latents(DiffusionConfig(hidden=32, blocks=1, time_embedding=8), codes)
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    rows = prior.flatten(codes)
    for step in range(200):
        loss, _ = prior.training_loss({"latents": rows[torch.randint(0, len(rows), (128,))]}, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    res = fit_point_clouds(forward_model, [cloud], ImplicitFitConfig(**FAST, diffusion_weight=1e-3),
                           diffusion=DiffusionLatentPrior(forward_model, prior.eval()))
    assert np.isfinite(res.terms["diffusion"]).all() and len(res.terms["diffusion"]) == FAST["steps"]
    id_err, ex_err = code_errors(res)
    assert id_err < 0.01 and ex_err < 0.05
