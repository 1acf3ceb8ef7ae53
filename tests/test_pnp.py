"""solve_pnp: the camera that projects the embedded head's 68 landmarks onto given image points.

Cameras are random views of the head (yaw -60..60 deg, pitch -20..20 deg, roll -15..15 deg, 400-1200 mm,
square pixels of 300-2000 px focal, 256 or 512 px images, principal point centred or not) that keep
every landmark inside the image. Noise-free correspondences must come back exact; noisy ones must fit
at least as well as the true camera does (the least-squares optimum); bad input must be refused with
an InputError that says what is wrong.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from neuralmorph.data.head_model import HeadModel, Phenotype
from neuralmorph.errors import InputError
from neuralmorph.geometry.camera import Camera, look_at
from neuralmorph.geometry.pnp import PnPResult, project_points, solve_pnp


@pytest.fixture(scope="module")
def head() -> HeadModel:
    return HeadModel.load()


@pytest.fixture(scope="module")
def lm(head) -> np.ndarray:
    """(68, 3) float64 template landmarks, mm."""
    return head.vertices[head.landmark_ids].astype(np.float64)


def random_view(rng, pts, centred=None, focal=None, size=None, distance=None) -> tuple[Camera, np.ndarray]:
    """A random camera seeing all of `pts` (N, 3) inside its image, and their (N, 2) projections."""
    centre = pts.mean(axis=0)
    while True:
        yaw, pitch, roll = np.radians([rng.uniform(-60, 60), rng.uniform(-20, 20), rng.uniform(-15, 15)])
        d = rng.uniform(400, 1200) if distance is None else distance
        f = rng.uniform(300, 2000) if focal is None else focal
        w = int(rng.choice([256, 512])) if size is None else size
        h = w if rng.random() < 0.5 else w // 2 * 3 // 2  # square or 4:3-ish
        if centred if centred is not None else rng.random() < 0.5:
            cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        else:
            cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        eye = centre + d * np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
        m = look_at(eye, centre + rng.uniform(-20, 20, 3))
        c, s = np.cos(roll), np.sin(roll)
        m[:3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ m[:3]
        cam = Camera(f, f, cx, cy, w, h, m)
        uv = project_points(cam, pts)
        if np.all(uv >= 0) and np.all(uv[:, 0] <= w - 1) and np.all(uv[:, 1] <= h - 1):
            return cam, uv


def rot_err_deg(a: Camera, b: Camera) -> float:
    """Angle between two cameras' rotations, degrees (arcsin form: accurate near zero)."""
    x = np.linalg.norm(a.rotation - b.rotation) / (2.0 * np.sqrt(2.0))
    return float(np.degrees(2.0 * np.arcsin(min(x, 1.0))))


def true_rms(cam: Camera, pts, uv) -> float:
    return float(np.sqrt((np.linalg.norm(project_points(cam, pts) - uv, axis=1) ** 2).mean()))


def solve_known(cam: Camera, pts, uv, **kw) -> PnPResult:
    return solve_pnp(pts, uv, cam.width, cam.height, fx=cam.fx, fy=cam.fy, cx=cam.cx, cy=cam.cy, **kw)


def solve_unknown(cam: Camera, pts, uv, **kw) -> PnPResult:
    return solve_pnp(pts, uv, cam.width, cam.height, cx=cam.cx, cy=cam.cy, **kw)


# ---------------------------------------------------------------- accuracy

def test_known_intrinsics_exact(lm):
    rng = np.random.default_rng(0)
    for k in range(15):
        cam, uv = random_view(rng, lm)
        res = solve_known(cam, lm, uv)
        d = np.linalg.norm(cam.position - lm.mean(axis=0))
        assert rot_err_deg(res.camera, cam) < 1e-3, k
        assert np.linalg.norm(res.camera.position - cam.position) < 1e-5 * d, k
        assert res.rms_px < 1e-4 and res.max_px < 1e-3 and res.points_in_front, k
        assert (res.camera.fx, res.camera.fy, res.camera.cx, res.camera.cy) == (cam.fx, cam.fy, cam.cx, cam.cy)


def test_known_intrinsics_noisy_fit_is_optimal(lm):
    rng = np.random.default_rng(1)
    sigma = 0.5
    # 2N residuals minus 6 pose parameters: the expected rms of the optimum's Euclidean errors
    expected = sigma * np.sqrt((2 * len(lm) - 6) / len(lm))
    for k in range(8):
        cam, uv = random_view(rng, lm)
        uvn = uv + rng.normal(scale=sigma, size=uv.shape)
        res = solve_known(cam, lm, uvn)
        assert res.rms_px <= true_rms(cam, lm, uvn) + 1e-9, k  # no worse than the truth: the minimum
        assert abs(res.rms_px - expected) < 0.2, (k, res.rms_px)
        assert res.max_px >= res.rms_px and res.points_in_front


def test_unknown_focal_exact(lm):
    rng = np.random.default_rng(2)
    for k in range(8):
        cam, uv = random_view(rng, lm)
        res = solve_unknown(cam, lm, uv)
        assert res.camera.fx == res.camera.fy
        assert abs(res.camera.fx / cam.fx - 1) < 1e-5, (k, res.camera.fx, cam.fx)
        assert rot_err_deg(res.camera, cam) < 1e-3, k
        assert np.linalg.norm(res.camera.position - cam.position) < 1e-4 * np.linalg.norm(cam.position), k
        assert res.rms_px < 1e-4


def test_unknown_focal_noisy(lm):
    rng = np.random.default_rng(3)
    for k in range(6):
        cam, uv = random_view(rng, lm)
        uvn = uv + rng.normal(scale=0.5, size=uv.shape)
        res = solve_unknown(cam, lm, uvn)
        assert res.rms_px < 1.0, k
        assert res.rms_px <= true_rms(cam, lm, uvn) + 1e-9, k  # the true camera is one candidate


def test_extreme_views(lm):
    """The corners of the sampled range: long lens far away (nearly affine), short lens up close,
    strong yaw."""
    rng = np.random.default_rng(4)
    for focal, dist, size in [(2000.0, 1200.0, 512), (300.0, 400.0, 256), (300.0, 1200.0, 512)]:
        cam, uv = random_view(rng, lm, focal=focal, distance=dist, size=size)
        for res in (solve_known(cam, lm, uv), solve_unknown(cam, lm, uv)):
            assert rot_err_deg(res.camera, cam) < 1e-3
            assert abs(res.camera.fx / cam.fx - 1) < 1e-5


def test_reprojection_round_trip(lm):
    rng = np.random.default_rng(5)
    for solve in (solve_known, solve_unknown):
        cam, uv = random_view(rng, lm)
        res = solve(cam, lm, uv)
        assert np.abs(project_points(res.camera, lm) - uv).max() < 1e-3
        r = res.camera.rotation
        assert np.isclose(np.linalg.det(r), 1.0) and np.allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert (res.camera.to_camera(lm)[:, 2] > 0).all()
        assert (res.camera.width, res.camera.height) == (cam.width, cam.height)


def test_intrinsic_defaults_and_non_square_pixels(lm):
    rng = np.random.default_rng(6)
    cam, _ = random_view(rng, lm, centred=True)
    uv = project_points(cam, lm)
    res = solve_pnp(lm, uv, cam.width, cam.height, fx=cam.fx)  # fy = fx, centred principal point
    assert (res.camera.fy, res.camera.cx, res.camera.cy) == (cam.fx, (cam.width - 1) / 2, (cam.height - 1) / 2)
    assert res.rms_px < 1e-4
    res = solve_pnp(lm, uv, cam.width, cam.height)  # focal unknown, centred principal point
    assert abs(res.camera.fx / cam.fx - 1) < 1e-5
    # a given fy different from fx is honoured
    skewed = Camera(cam.fx, 1.1 * cam.fx, cam.cx, cam.cy, cam.width, cam.height, cam.world_to_camera)
    uv2 = project_points(skewed, lm)
    res = solve_pnp(lm, uv2, cam.width, cam.height, fx=skewed.fx, fy=skewed.fy)
    assert res.camera.fy == skewed.fy and rot_err_deg(res.camera, skewed) < 1e-3


def test_planar_points(lm):
    """Flattened landmarks: the DLT is degenerate and weak perspective has two mirror-image tilts."""
    flat = lm.copy()
    flat[:, 2] = flat[:, 2].mean()
    rng = np.random.default_rng(7)
    for k in range(10):
        cam, uv = random_view(rng, flat)
        res = solve_known(cam, flat, uv)
        assert rot_err_deg(res.camera, cam) < 1e-3, k


def test_other_identity_is_accepted(head, lm):
    """Landmarks of a different person still fit the template well enough to be accepted."""
    rng = np.random.default_rng(8)
    n_local = len(head.local_modifier_names)
    for k in range(4):
        other = head.identity(Phenotype(gender=rng.random(), age=rng.uniform(0.3, 1.0), muscle=rng.random(),
                                        weight=rng.random()), rng.uniform(-0.5, 0.5, n_local))
        cam, uv = random_view(rng, other[head.landmark_ids].astype(np.float64))
        res = solve_unknown(cam, lm, uv + rng.normal(scale=1.0, size=uv.shape))
        assert res.points_in_front and rot_err_deg(res.camera, cam) < 10.0, k


def test_zero_weight_ignores_a_point(lm):
    rng = np.random.default_rng(9)
    cam, uv = random_view(rng, lm)
    bad = uv.copy()
    bad[30] = (-100.0, 7.0)  # a wild point, dropped by its zero weight (even outside the image)
    w = np.ones(len(lm))
    w[30] = 0.0
    res = solve_known(cam, lm, bad, weights=w)
    assert rot_err_deg(res.camera, cam) < 1e-3 and res.max_px < 1e-3
    heavy = solve_known(cam, lm, uv, weights=rng.uniform(0.5, 2.0, len(lm)))
    assert rot_err_deg(heavy.camera, cam) < 1e-3


def test_fast_enough(lm):
    rng = np.random.default_rng(10)
    cam, uv = random_view(rng, lm)
    t0 = time.perf_counter()
    solve_unknown(cam, lm, uv + rng.normal(scale=0.5, size=uv.shape))
    assert time.perf_counter() - t0 < 1.0


# ---------------------------------------------------------------- refusals

def test_shuffled_landmarks_do_not_match(lm):
    rng = np.random.default_rng(11)
    # the last view has a small face in a large image: only the relative (spread) bound can catch it
    views = [random_view(rng, lm) for _ in range(4)]
    views.append(random_view(rng, lm, focal=350.0, distance=1150.0, size=512))
    for k, (cam, uv) in enumerate(views):
        perm = rng.permutation(len(lm))
        for solve in (solve_known, solve_unknown):
            with pytest.raises(InputError, match="do not match the model's landmarks.*px rms"):
                solve(cam, lm, uv[perm], where="photo landmarks")


def _base(lm):
    cam, uv = random_view(np.random.default_rng(12), lm, size=256, centred=True)
    return dict(points3d=lm, points2d=uv, width=256, height=cam.height, fx=cam.fx)


def _with(**changes):
    def f(kw):
        return {**kw, **{k: (v(kw) if callable(v) else v) for k, v in changes.items()}}
    return f


BAD = {
    "3d shape": (_with(points3d=lambda kw: kw["points3d"][:, :2]), r"points3d must have shape \(N, 3\)"),
    "2d shape": (_with(points2d=lambda kw: kw["points2d"].ravel()), r"points2d must have shape \(N, 2\)"),
    "count mismatch": (_with(points2d=lambda kw: kw["points2d"][:-1]), "68 3D points but 67 2D points"),
    "too few": (_with(points3d=lambda kw: kw["points3d"][:5], points2d=lambda kw: kw["points2d"][:5]),
                "at least 6 points"),
    "nan 3d": (_with(points3d=lambda kw: np.where(np.arange(68)[:, None] == 3, np.nan, kw["points3d"])),
               "points3d has non-finite"),
    "inf 2d": (_with(points2d=lambda kw: np.where(np.arange(68)[:, None] == 3, np.inf, kw["points2d"])),
               "points2d has non-finite"),
    "text": (_with(points3d=[["a", "b", "c"]] * 68), "points3d must be a numeric"),
    "collinear": (_with(points3d=lambda kw: np.outer(np.linspace(0, 100, 68), [1.0, 2.0, 3.0])
                        + np.random.default_rng(0).normal(scale=1e-6, size=(68, 3))), "collinear"),
    "coincident": (_with(points3d=np.tile([1.0, 700.0, 100.0], (68, 1))), "3D points all coincide"),
    "2d coincident": (_with(points2d=np.full((68, 2), 100.0)), "2D points all coincide"),
    "width zero": (_with(width=0), "image width must be a positive integer"),
    "height negative": (_with(height=-5), "image height must be a positive integer"),
    "width float": (_with(width=256.5), "image width must be a positive integer"),
    "fx zero": (_with(fx=0.0), "fx must be positive"),
    "fx negative": (_with(fx=-500.0), "fx must be positive"),
    "fx nan": (_with(fx=float("nan")), "fx must be positive and finite"),
    "fx inf": (_with(fx=float("inf")), "fx must be positive and finite"),
    "fy zero": (_with(fy=0.0), "fy must be positive"),
    "fy alone": (_with(fx=None, fy=500.0), "fy given without fx"),
    "cx nan": (_with(cx=float("nan")), "cx must be finite"),
    "far outside": (_with(points2d=lambda kw: kw["points2d"] + [600.0, 0.0]), "far outside the 256x"),
    "far outside negative": (_with(points2d=lambda kw: kw["points2d"] - [0.0, 1000.0]), "far outside"),
    "weights shape": (_with(weights=np.ones(67)), r"weights must have shape \(68,\)"),
    "weights negative": (_with(weights=-np.ones(68)), "weights must be finite and non-negative"),
    "weights zero": (_with(weights=np.r_[np.ones(5), np.zeros(63)]), "at least 6 points"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_refused(lm, case):
    change, message = BAD[case]
    with pytest.raises(InputError, match=message) as info:
        solve_pnp(**change(_base(lm)), where="face.jpg landmarks")
    assert str(info.value).startswith("face.jpg landmarks: ") and "\n" not in str(info.value)


def test_slightly_outside_is_fine(lm):
    """Landmarks may leave the image a little (a cropped chin): only wild ones are refused."""
    kw = _base(lm)
    cam_res = solve_pnp(**{**kw, "points2d": kw["points2d"] + [40.0, 0.0]})
    assert cam_res.points_in_front
