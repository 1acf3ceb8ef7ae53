"""The camera that sees a head model's landmarks where a photo shows them (perspective-n-point).

Fitting a head model to a single photo starts by placing the camera: given the image positions of the
face landmarks and the same landmarks on the model (mm, model world frame), find the pinhole camera
(`Camera`: OpenCV convention, pixel (row i, col j) centred at (u, v) = (j, i)) that projects the model's
landmarks onto the image's. With known intrinsics only the pose is found; with an unknown focal length
one focal (square pixels, centred principal point unless given) is found as well.

Method. Closed-form starts, each refined by nonlinear least squares (scipy's trust-region reflective,
analytic Jacobian) on the reprojection error in pixels over a rotation vector, a translation and, when
unknown, the log focal length:

- a linear DLT for [R|t] on K-normalised points: exact for noise-free points in general position, but
  ill-conditioned when the points are close to a plane (parts of a face are);
- a weak-perspective (scaled orthographic) pose: an affine camera by least squares, its top two rows
  orthonormalised; good whenever the head is small against its distance;
- the two weak-perspective poses that fit only the points' best-fit plane: near a plane the affine
  camera's out-of-plane column is noise, and the plane's tilt is two-fold ambiguous.

The solution with all points in front of the camera and the lowest error wins. For an unknown focal
the starts are repeated at a few seed focals (fields of view 10 to 60 degrees, plus the focal implied by
a pixel-space DLT) with the focal held, and the best two seeds are refined with the focal free: focal
and distance trade off along a shallow valley that a free-focal fit from a poor seed crawls along.

numpy / scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from ..errors import InputError
from .camera import Camera
from .rotation import rotvec_to_matrix

MIN_POINTS = 6
FOV_STARTS_DEG = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0)
"""Fields of view (across the larger image side) that seed the search when the focal is unknown."""
FOV_RANGE_DEG = (2.0, 150.0)
"""Fields of view an estimated focal may take. The upper focal limit matters: when the model's landmarks
differ in shape from the photographed face, perspective hardly constrains the focal and the best fit
drifts towards an orthographic camera infinitely far away; the limit (beyond the longest telephoto
portrait lenses) stops that drift at a finite, if too long, focal."""
MISMATCH_PX, MISMATCH_DIAG = 5.0, 0.05
"""A fit worse than max(MISMATCH_PX, MISMATCH_DIAG * image diagonal) rms means the landmarks do not
correspond."""
MISMATCH_SPREAD = 0.5
"""... as does one whose rms exceeds this fraction of the 2D landmarks' own rms spread: random
correspondences fit at about the spread itself, real ones (even to an unfitted identity) far below it,
and a small face in a large image would pass the absolute bound whatever the order."""


@dataclass(frozen=True)
class PnPResult:
    """A recovered camera and how well it reprojects the 3D landmarks onto the 2D ones.

    rms_px / max_px: root-mean-square (weighted by `weights` when given) and largest Euclidean
    reprojection error in pixels, over the points with positive weight. points_in_front: every such
    point has positive camera depth.
    """

    camera: Camera
    rms_px: float
    max_px: float
    points_in_front: bool


def project_points(camera: Camera, points3d: np.ndarray) -> np.ndarray:
    """(N, 3) float world points (mm) -> (N, 2) float64 pixel coordinates (u, v); NaN behind the camera."""
    return camera.project(np.asarray(points3d, dtype=np.float64))[0]


def solve_pnp(points3d, points2d, width, height, fx=None, fy=None, cx=None, cy=None, weights=None,
              where="landmarks") -> PnPResult:
    """Pinhole camera projecting `points3d` onto `points2d`; the focal is estimated when `fx` is None.

    Args:
        points3d: (N, 3) float 3D landmarks, mm, in the model's world frame (N >= 6, not collinear).
        points2d: (N, 2) float matching image landmarks, pixels (u, v) = (column, row).
        width, height: image size in pixels (positive ints).
        fx, fy: focal lengths in pixels; fy defaults to fx. fx None: one focal (fx = fy) is estimated.
        cx, cy: principal point, pixels; default the image centre ((W - 1) / 2, (H - 1) / 2).
        weights: optional (N,) float non-negative per-point weights; zero drops a point (its 2D
            position is then not checked against the image).
        where: names the input in error messages.

    Raises InputError (naming `where`) for malformed or degenerate input, and when the best fit is too
    poor for the landmarks to be the model's (wrong order or count).
    """
    p3, p2, w, size = _validate(points3d, points2d, width, height, weights, where)
    fxy, c = _intrinsics(fx, fy, cx, cy, size, where)
    centre = np.average(p3, axis=0, weights=w)
    # work about the landmarks' centroid: the translation is then ~(0, 0, distance), nearly decoupled
    # from the rotation, which keeps the least-squares problem well conditioned
    p3c = p3 - centre
    sw = np.sqrt(w)
    fit = _fit(p3c, p2, sw, fxy, c, size)
    if fit is None:
        raise InputError(where, "no camera found: the landmarks are degenerate")
    _, r, t, f = fit
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = t - r @ centre
    cam = Camera(float(f[0]), float(f[1]), float(c[0]), float(c[1]), size[0], size[1], m)
    return _judge(cam, p3, p2, w, where)


# ------------------------------------------------------------------------------------ input checks

def _validate(points3d, points2d, width, height, weights, where):
    """Checked float64 arrays (points with zero weight dropped), weights (M,) and (width, height)."""
    size = tuple(_positive_int(v, name, where) for v, name in ((width, "width"), (height, "height")))
    p3 = _float_array(points3d, 3, "points3d", where)
    p2 = _float_array(points2d, 2, "points2d", where)
    if len(p3) != len(p2):
        raise InputError(where, f"{len(p3)} 3D points but {len(p2)} 2D points: they must correspond one to one")
    w = np.ones(len(p3)) if weights is None else _weights(weights, len(p3), where)
    keep = w > 0
    p3, p2, w = p3[keep], p2[keep], w[keep]
    if len(p3) < MIN_POINTS:
        raise InputError(where, f"need at least {MIN_POINTS} points (with positive weight), got {len(p3)}")
    _check_inside(p2, size, where)
    _check_spread(p3, p2, where)
    return p3, p2, w, size


def _positive_int(v, name: str, where: str) -> int:
    """`v` as an int, refusing anything but a positive integer (a float size is a mistake upstream)."""
    ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
    if not ok:
        raise InputError(where, f"image {name} must be a positive integer, got {v!r}")
    return int(v)


def _float_array(a, cols: int, name: str, where: str) -> np.ndarray:
    """(N, cols) finite float64 copy of `a`."""
    try:
        x = np.array(a, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(where, f"{name} must be a numeric (N, {cols}) array ({e})") from None
    if x.ndim != 2 or x.shape[1] != cols:
        raise InputError(where, f"{name} must have shape (N, {cols}), got {x.shape}")
    if not np.isfinite(x).all():
        raise InputError(where, f"{name} has non-finite values (NaN or inf)")
    return x


def _weights(weights, n: int, where: str) -> np.ndarray:
    """(n,) finite non-negative float64 copy of `weights`."""
    try:
        w = np.array(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(where, "weights must be a numeric (N,) array") from None
    if w.shape != (n,):
        raise InputError(where, f"weights must have shape ({n},), got {w.shape}")
    if not (np.isfinite(w).all() and (w >= 0).all()):
        raise InputError(where, "weights must be finite and non-negative")
    return w


def _check_inside(p2: np.ndarray, size, where: str) -> None:
    """Refuse 2D points p2 (N, 2) more than one image size beyond the border of an image of `size`
    (width, height): wrong units, a wrong image, or a detector's failure."""
    hi = np.array(size, dtype=np.float64)
    lo = -0.5 - hi
    up = hi - 0.5 + hi
    bad = ((p2 < lo) | (p2 > up)).any(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(where, f"2D point {i} at ({p2[i, 0]:.1f}, {p2[i, 1]:.1f}) lies far outside the "
                                f"{size[0]}x{size[1]} image (more than one image size beyond its border)")


def _check_spread(p3: np.ndarray, p2: np.ndarray, where: str) -> None:
    """Refuse coincident or collinear 3D points p3 (N, 3) (the pose about their line is unobservable)
    and coincident 2D points p2 (N, 2)."""
    s = np.linalg.svd(p3 - p3.mean(axis=0), compute_uv=False)
    scale = 1.0 + np.abs(p3).max()
    if s[0] <= 1e-9 * scale * np.sqrt(len(p3)):
        raise InputError(where, "the 3D points all coincide")
    if s[1] <= 1e-3 * s[0]:
        raise InputError(where, "the 3D points are (nearly) collinear: the camera cannot be recovered")
    if np.ptp(p2, axis=0).max() <= 1e-6:
        raise InputError(where, "the 2D points all coincide")


def _intrinsics(fx, fy, cx, cy, size, where):
    """(fx, fy) floats or None (estimate), and the principal point (2,) float64."""
    def finite(v, name, positive):
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise InputError(where, f"{name} must be a number, got {v!r}") from None
        if not np.isfinite(x) or (positive and x <= 0):
            raise InputError(where, f"{name} must be {'positive and ' if positive else ''}finite, got {v!r}")
        return x

    c = np.array([(size[0] - 1) / 2.0 if cx is None else finite(cx, "cx", False),
                  (size[1] - 1) / 2.0 if cy is None else finite(cy, "cy", False)])
    if fx is None:
        if fy is not None:
            raise InputError(where, "fy given without fx: give fx (and optionally fy), or neither")
        return None, c
    f_x = finite(fx, "focal length fx", True)
    f_y = f_x if fy is None else finite(fy, "focal length fy", True)
    return (f_x, f_y), c


# ------------------------------------------------------------------------------------ starts

def _pose_starts(p3c, p2, sw, fxy, c) -> list[tuple[np.ndarray, np.ndarray]]:
    """Initial (R (3, 3), t (3,)) poses for centred points under focal `fxy` = (fx, fy)."""
    xn = (p2 - c) / np.asarray(fxy)
    poses = [_dlt_pose(p3c, xn, sw), _weak_perspective_pose(p3c, xn, sw)]
    poses += _planar_weak_perspective_poses(p3c, xn, sw)
    return [p for p in poses if p is not None]


def _dlt_pose(p3c, xn, sw):
    """Linear [R|t] from normalised image points xn (N, 2): x * (P3 . X) = P1 . X, y * (P3 . X) = P2 . X."""
    s = np.sqrt((sw[:, None] ** 2 * p3c ** 2).sum() / (sw ** 2).sum()) or 1.0
    xh = np.hstack([p3c / s, np.ones((len(p3c), 1))])  # unit scale: the SVD sees balanced columns
    p = _dlt(xh, xn, sw)
    if p is None:
        return None
    # P is known up to sign: the right sign puts the points in front of the camera
    if np.sum(np.sign(xh @ p[2])) < 0:
        p = -p
    u, sv, vt = np.linalg.svd(p[:, :3])
    r = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    k = sv.mean()
    if not k > 0:
        return None
    return r, s * p[:, 3] / k  # camera = s R Xn + T, so [R | T / s] ~ P / k


def _dlt(xh, xy, sw):
    """(3, 4) P minimising the algebraic error of xy (N, 2) ~ P xh (N, 4), or None if rank-deficient."""
    n = len(xh)
    a = np.zeros((2 * n, 12))
    a[0::2, 0:4] = xh
    a[0::2, 8:12] = -xy[:, :1] * xh
    a[1::2, 4:8] = xh
    a[1::2, 8:12] = -xy[:, 1:] * xh
    a *= np.repeat(sw, 2)[:, None]
    try:
        _, sv, vt = np.linalg.svd(a, full_matrices=False)
    except np.linalg.LinAlgError:
        return None
    if not np.isfinite(vt).all():
        return None
    return vt[-1].reshape(3, 4)


def _weak_perspective_pose(p3c, xn, sw):
    """Scaled orthographic pose: xn ~ k R[:2] X + b, so depth = 1 / k and t = (b / k, 1 / k)."""
    xh = np.hstack([p3c, np.ones((len(p3c), 1))])
    coef = np.linalg.lstsq(xh * sw[:, None], xn * sw[:, None], rcond=None)[0]  # (4, 2)
    a, b = coef[:3].T, coef[3]
    u, sv, vt = np.linalg.svd(a, full_matrices=False)
    k = sv.mean()
    if not k > 1e-12:
        return None
    rows = u @ vt  # the nearest pair of orthonormal rows
    r = np.vstack([rows, np.cross(rows[0], rows[1])])
    return r, np.array([b[0] / k, b[1] / k, 1.0 / k])


def _planar_weak_perspective_poses(p3c, xn, sw) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two scaled orthographic poses fitting only the points' in-plane layout.

    Near a plane the affine camera's out-of-plane column is noise, so `_weak_perspective_pose` can tilt
    the plane arbitrarily. Here only the in-plane 2x2 block B (= k times the rows of R on the plane's
    axes e1, e2) is fitted; the rows' components c along the normal follow from the rows being
    orthogonal and of equal norm: c1^2 - c2^2 = |b2|^2 - |b1|^2 and c1 c2 = -b1.b2, i.e.
    (c1 + i c2)^2 = (|b2|^2 - |b1|^2) - 2i b1.b2, with the two roots +-c the mirror-image tilts.
    """
    axes = np.linalg.svd(p3c * sw[:, None], full_matrices=False)[2]  # e1, e2, normal n
    qh = np.hstack([p3c @ axes[:2].T, np.ones((len(p3c), 1))])
    coef = np.linalg.lstsq(qh * sw[:, None], xn * sw[:, None], rcond=None)[0]  # (3, 2)
    bm, b = coef[:2].T, coef[2]  # bm rows: b1, b2
    z = np.sqrt(complex(bm[1] @ bm[1] - bm[0] @ bm[0], -2.0 * bm[0] @ bm[1]))
    poses = []
    for cn in (np.array([z.real, z.imag]), -np.array([z.real, z.imag])):
        rows = bm @ axes[:2] + cn[:, None] * axes[2]  # k R[:2] in world axes
        u, sv, vt = np.linalg.svd(rows, full_matrices=False)
        k = sv.mean()
        if not k > 1e-12:
            continue
        r12 = u @ vt
        poses.append((np.vstack([r12, np.cross(r12[0], r12[1])]), np.array([b[0] / k, b[1] / k, 1.0 / k])))
    return poses


def _focal_starts(p3c, p2, sw, c, size) -> list[tuple[float, float]]:
    """Focal seeds (f, f) for an unknown focal: a fixed spread of fields of view plus the DLT's focal."""
    half = max(size) / 2.0
    fs = [half / np.tan(np.radians(fov) / 2.0) for fov in FOV_STARTS_DEG]
    f_dlt = _dlt_focal(p3c, p2 - c, sw)
    lo, hi = _focal_bounds(size)
    if f_dlt is not None and lo < f_dlt < hi:
        fs.append(f_dlt)
    return [(f, f) for f in fs]


def _dlt_focal(p3c, uv, sw):
    """Focal of the pixel-space DLT with the principal point at the origin: P ~ diag(f, f, 1) [R|t],
    so the first two rows of P's left 3x3 have norm f times the third's."""
    s3 = np.sqrt((p3c ** 2).sum(axis=1).mean()) or 1.0
    s2 = np.sqrt((uv ** 2).sum(axis=1).mean()) or 1.0
    p = _dlt(np.hstack([p3c / s3, np.ones((len(p3c), 1))]), uv / s2, sw)  # balanced scales, as Hartley
    if p is None:
        return None
    norms = np.linalg.norm(p[:, :3], axis=1)
    if not norms[2] > 0:
        return None
    f = s2 * (norms[0] + norms[1]) / (2.0 * norms[2])
    return float(f) if np.isfinite(f) else None


def _focal_bounds(size) -> tuple[float, float]:
    """Focal search range (pixels): fields of view FOV_RANGE_DEG across the larger image side."""
    half = max(size) / 2.0
    return tuple(half / np.tan(np.radians(fov) / 2.0) for fov in FOV_RANGE_DEG[::-1])


# ------------------------------------------------------------------------------------ refinement

def _fit(p3c, p2, sw, fxy, c, size):
    """Best (score, R, t, (fx, fy)) over all starts, or None when no start could be formed.

    Every start gets a coarse pose-only fit at its seed focal: cheap, and for an unknown focal a profile
    of the error over focal. Only the best (for an unknown focal: the best at each of the two best seed
    focals) is then refined to full precision, the focal joining in, since with the focal free the
    solver may crawl along the focal-distance valley.
    """
    seeds = [fxy] if fxy is not None else _focal_starts(p3c, p2, sw, c, size)
    coarse = sorted((_refine(p3c, p2, sw, r0, t0, f0, c, size, False, tol=1e-6)
                     for f0 in seeds for r0, t0 in _pose_starts(p3c, p2, sw, f0, c)), key=lambda x: x[0])
    if not coarse:
        return None
    if fxy is not None:
        return _refine(p3c, p2, sw, *coarse[0][1:], c, size, False, tol=1e-12)
    picked = []
    for cand in coarse:
        if all(cand[3] != p[3] for p in picked):
            picked.append(cand)
    fine = [_refine(p3c, p2, sw, *p[1:], c, size, True, tol=1e-12) for p in picked[:2]]
    return min(fine, key=lambda x: x[0])


def _refine(p3c, p2, sw, r0, t0, fxy, c, size, fit_focal: bool, tol: float):
    """Least-squares reprojection fit from (r0, t0, fxy) to relative tolerance `tol`:
    (score, R, t, (fx, fy)).

    The rotation is exp(w) r0 with w starting at zero, so the rotation vector never nears the angle pi
    where it is singular. The score ranks solutions: points behind the camera rank after any in front.
    """
    x0 = np.concatenate([np.zeros(3), t0])
    bounds = (-np.inf, np.inf)
    if fit_focal:
        lo, hi = np.log(_focal_bounds(size))
        x0 = np.append(x0, np.clip(np.log(fxy[0]), lo + 1e-9, hi - 1e-9))
        bounds = (np.r_[np.full(6, -np.inf), lo], np.r_[np.full(6, np.inf), hi])

    sw2 = np.repeat(sw, 2)

    def fun(x):
        r, t, f = _unpack(x, r0, fxy, fit_focal)
        return (_reproject(p3c, r, t, f, c) - p2).ravel() * sw2

    def jac(x):
        return _jacobian(x, p3c, r0, fxy, fit_focal) * sw2[:, None]

    sol = least_squares(fun, x0, jac=jac, bounds=bounds, method="trf", x_scale="jac", ftol=tol, xtol=tol,
                        gtol=tol, max_nfev=60 if tol > 1e-9 else 100)
    r, t, f = _unpack(sol.x, r0, fxy, fit_focal)
    behind = bool(((p3c @ r.T + t)[:, 2] <= 0).any())
    return (behind, float(sol.cost)), r, t, f


def _unpack(x, r0, fxy, fit_focal):
    """Parameters x = (w (3), t (3)[, log f]) -> R (3, 3), t (3,), (fx, fy)."""
    r = rotvec_to_matrix(x[:3]) @ r0
    f = (np.exp(x[6]),) * 2 if fit_focal else fxy
    return r, x[3:6], f


def _jacobian(x, p3c, r0, fxy, fit_focal) -> np.ndarray:
    """(2N, 6 or 7) derivative of the (unweighted) pixel residuals in x = (w, t[, log f]).

    With q = exp([w]) r0 X, the camera point is p = q + t and dp/dw = -[q]x J(w), J the left Jacobian of
    the rotation exponential: I + (1 - cos a) / a^2 [w]x + (a - sin a) / a^3 [w]x^2 (a = |w|).
    """
    r, t, f = _unpack(x, r0, fxy, fit_focal)
    q = p3c @ r.T
    p = q + t
    z = np.where(np.abs(p[:, 2]) < 1e-9, 1e-9, p[:, 2])
    n = len(p)
    duv_dp = np.zeros((n, 2, 3))  # d(u, v) / dp for u = fx px / pz + cx, v = fy py / pz + cy
    duv_dp[:, 0, 0] = f[0] / z
    duv_dp[:, 1, 1] = f[1] / z
    duv_dp[:, 0, 2] = -f[0] * p[:, 0] / z ** 2
    duv_dp[:, 1, 2] = -f[1] * p[:, 1] / z ** 2
    dp_dw = -_skew(q) @ _left_jacobian(x[:3])  # (N, 3, 3)
    cols = [duv_dp @ dp_dw, duv_dp]
    if fit_focal:  # d u / d log f = fx px / pz = u - cx
        cols.append(np.stack([f[0] * p[:, 0] / z, f[1] * p[:, 1] / z], axis=1)[:, :, None])
    return np.concatenate(cols, axis=2).reshape(2 * n, -1)


def _skew(v: np.ndarray) -> np.ndarray:
    """(..., 3) vectors -> (..., 3, 3) cross-product matrices [v]x."""
    z = np.zeros(v.shape[:-1])
    return np.stack([np.stack([z, -v[..., 2], v[..., 1]], -1), np.stack([v[..., 2], z, -v[..., 0]], -1),
                     np.stack([-v[..., 1], v[..., 0], z], -1)], -2)


def _left_jacobian(w: np.ndarray) -> np.ndarray:
    """(3, 3) left Jacobian of SO(3)'s exponential at rotation vector w (3,); series form near zero."""
    a = float(np.linalg.norm(w))
    k = _skew(w)
    if a < 1e-6:
        return np.eye(3) + k / 2.0 + k @ k / 6.0
    return np.eye(3) + (1.0 - np.cos(a)) / a ** 2 * k + (a - np.sin(a)) / a ** 3 * k @ k


def _reproject(p3c, r, t, f, c) -> np.ndarray:
    """(N, 2) pixel coordinates of camera-frame points p3c R^T + t; depths near zero are clamped so a
    wandering iterate yields large, finite residuals rather than NaN."""
    pc = p3c @ r.T + t
    z = pc[:, 2]
    z = np.where(np.abs(z) < 1e-9, 1e-9, z)
    return np.stack([f[0] * pc[:, 0] / z + c[0], f[1] * pc[:, 1] / z + c[1]], axis=1)


# ------------------------------------------------------------------------------------ verdict

def _judge(cam: Camera, p3, p2, w, where: str) -> PnPResult:
    """The result for p3 (N, 3), p2 (N, 2), weights w (N,), or InputError when the fit is too poor for
    the landmarks to correspond."""
    pc = cam.to_camera(p3)
    in_front = bool((pc[:, 2] > 0).all())
    r = cam.world_to_camera[:3, :3]
    uv = _reproject(p3, r, cam.world_to_camera[:3, 3], (cam.fx, cam.fy), (cam.cx, cam.cy))
    err = np.linalg.norm(uv - p2, axis=1)
    rms = float(np.sqrt(np.sum(w * err ** 2) / np.sum(w)))
    dev = p2 - np.average(p2, axis=0, weights=w)
    spread = float(np.sqrt(np.sum(w * (dev ** 2).sum(axis=1)) / np.sum(w)))
    limit = max(MISMATCH_PX, MISMATCH_DIAG * float(np.hypot(cam.width, cam.height)))
    if rms > limit or rms > MISMATCH_SPREAD * spread:
        raise InputError(where, f"the landmarks do not match the model's landmarks (wrong order or count?): "
                                f"best camera reprojects them {rms:.1f} px rms apart (limit "
                                f"{min(limit, MISMATCH_SPREAD * spread):.1f} px)")
    return PnPResult(camera=cam, rms_px=rms, max_px=float(err.max()), points_in_front=in_front)
