"""The canonical frame and similarity alignment into it.

Every model works in a canonical frame where a head spans about [-1, 1]; every reported number is in
millimetres. `Frame` is the one checked object that maps between the two. `Similarity` is a scale,
rotation and translation; `umeyama` estimates one from corresponding points (landmarks) in closed form,
and `icp_similarity` refines one for a point cloud against a reference surface when there are no
correspondences (raw scans).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from neuralmorph.geometry.distance import closest_points
from neuralmorph.geometry.rotation import rotvec_to_matrix


def _as_points(points: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


@dataclass(frozen=True)
class Similarity:
    """x -> scale * rotation @ x + translation.

    scale: float > 0; rotation: (3, 3) float64, proper (det +1); translation: (3,) float64.
    """

    scale: float = 1.0
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self):
        rot = np.asarray(self.rotation, dtype=np.float64)
        trans = np.asarray(self.translation, dtype=np.float64).reshape(3)
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"similarity scale must be positive and finite, got {self.scale}")
        if rot.shape != (3, 3) or not np.allclose(rot @ rot.T, np.eye(3), atol=1e-6) or np.linalg.det(rot) < 0:
            raise ValueError("similarity rotation must be a proper 3x3 rotation matrix")
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "rotation", rot)
        object.__setattr__(self, "translation", trans)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """points (N, 3) -> (N, 3) float64."""
        return self.scale * np.asarray(points, dtype=np.float64) @ self.rotation.T + self.translation

    def rotate(self, directions: np.ndarray) -> np.ndarray:
        """Normals / directions (N, 3) -> (N, 3); rotation only (scale and translation do not apply)."""
        return np.asarray(directions, dtype=np.float64) @ self.rotation.T

    def inverse(self) -> "Similarity":
        rot_inv = self.rotation.T
        return Similarity(1.0 / self.scale, rot_inv, -(rot_inv @ self.translation) / self.scale)

    def compose(self, first: "Similarity") -> "Similarity":
        """The similarity that applies `first`, then `self`."""
        return Similarity(
            self.scale * first.scale,
            self.rotation @ first.rotation,
            self.scale * self.rotation @ first.translation + self.translation,
        )

    @property
    def matrix(self) -> np.ndarray:
        """(4, 4) float64 homogeneous matrix."""
        m = np.eye(4)
        m[:3, :3] = self.scale * self.rotation
        m[:3, 3] = self.translation
        return m

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> "Similarity":
        m = np.asarray(matrix, dtype=np.float64)
        scale = float(np.cbrt(np.linalg.det(m[:3, :3])))
        return cls(scale, m[:3, :3] / scale, m[:3, 3])

    def as_dict(self) -> dict:
        return {"scale": self.scale, "rotation": self.rotation.tolist(), "translation": self.translation.tolist()}


def umeyama(source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None,
            with_scale: bool = True) -> Similarity:
    """Least-squares similarity with target ≈ s R source + t (Umeyama 1991), closed form.

    source, target: (N, 3) corresponding points, N >= 3 and not collinear; weights: (N,) >= 0 or None.
    """
    src = _as_points(source, "source points")
    dst = _as_points(target, "target points")
    if src.shape != dst.shape:
        raise ValueError(f"source and target need the same number of points, got {len(src)} and {len(dst)}")
    if len(src) < 3:
        raise ValueError(f"need at least 3 corresponding points, got {len(src)}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_src, mu_dst = w @ src, w @ dst
    src_c, dst_c = src - mu_src, dst - mu_dst
    cov = (dst_c * w[:, None]).T @ src_c
    u, sing, vt = np.linalg.svd(cov)
    if sing[1] < 1e-12 * max(sing[0], 1e-300):
        raise ValueError("corresponding points are (nearly) collinear: the rotation is not determined")
    # Flip the smallest axis if needed so the result is a rotation, not a reflection.
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    rot = u @ np.diag(d) @ vt
    var_src = w @ (src_c**2).sum(axis=1)
    scale = float((sing * d).sum() / var_src) if with_scale else 1.0
    return Similarity(scale, rot, mu_dst - scale * rot @ mu_src)


@dataclass(frozen=True)
class IcpResult:
    transform: Similarity   # maps the input points onto the reference surface
    rmse_mm: float          # root mean square point-to-surface distance of the inliers at the end
    inlier_fraction: float
    iterations: int


def icp_similarity(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                   init: Similarity | None = None, with_scale: bool = True, max_iterations: int = 50,
                   trim: float = 0.9, tolerance: float = 1e-6) -> IcpResult:
    """Align a point cloud to a reference surface with trimmed point-to-plane ICP.

    points: (P, 3) float, the cloud to move (e.g. a raw scan's vertices); vertices (V, 3), faces (F, 3):
    the reference surface. Each step pairs every moved point with its closest point on the surface, keeps
    the `trim` fraction with the smallest distances (partial scans, holes and extra surface such as
    shoulders have no true partner) and solves a linearised similarity that minimises point-to-plane
    distances; point-to-plane lets points slide along the surface, so it converges in a few steps where
    point-to-point crawls. Without `init` the centroids are matched first; the basin of convergence is
    then rotations of roughly ±30°, so pass a landmark-based `init` for anything further off.
    """
    src = _as_points(points, "points")
    if len(src) < 7:
        raise ValueError(f"need at least 7 points to align, got {len(src)}")
    ref_v = _as_points(vertices, "reference vertices")
    ref_f = np.asarray(faces, dtype=np.int64)
    face_n = np.cross(ref_v[ref_f[:, 1]] - ref_v[ref_f[:, 0]], ref_v[ref_f[:, 2]] - ref_v[ref_f[:, 0]])
    face_n /= np.maximum(np.linalg.norm(face_n, axis=1, keepdims=True), 1e-300)
    if init is None:
        init = Similarity(1.0, np.eye(3), ref_v.mean(axis=0) - src.mean(axis=0))
    transform = init
    keep = max(7, int(round(trim * len(src))))
    it = 0
    for it in range(1, max_iterations + 1):
        moved = transform.apply(src)
        closest, dist, face_idx = closest_points(moved, ref_v, ref_f)
        inl = np.argsort(dist, kind="stable")[:keep]
        x, q, n = moved[inl], closest[inl], face_n[face_idx[inl]]
        # Residual after a small step (rotation w, translation t, scale 1+ds) about the cloud's centre c:
        # ((1+ds)(x-c) + w x (x-c) + c + t - q) . n, linear in (w, t, ds).
        c = x.mean(axis=0)
        xc = x - c
        cols = [np.cross(xc, n), n] + ([np.sum(xc * n, axis=1, keepdims=True)] if with_scale else [])
        a = np.hstack(cols)
        b = -np.sum((x - q) * n, axis=1)
        sol, *_ = np.linalg.lstsq(a, b, rcond=None)
        w, t = sol[:3], sol[3:6]
        ds = sol[6] if with_scale else 0.0
        angle = np.linalg.norm(w)
        rot = rotvec_to_matrix(w)
        step = Similarity(1.0 + ds, rot, c + t - (1.0 + ds) * rot @ c)
        transform = step.compose(transform)
        if angle < tolerance and np.linalg.norm(t) < tolerance * (1.0 + np.abs(xc).max()) and abs(ds) < tolerance:
            break
    moved = transform.apply(src)
    _, dist, _ = closest_points(moved, ref_v, ref_f)
    inliers = np.sort(dist)[:keep]
    return IcpResult(transform, float(np.sqrt(np.mean(inliers**2))), keep / len(src), it)


@dataclass(frozen=True)
class Frame:
    """The canonical frame: x_canonical = axes @ (x_mm - origin) / mm_per_unit.

    origin: (3,) float64, in the data's millimetre coordinates; axes: (3, 3) float64 rotation whose rows
    are the canonical x (subject's left), y (up) and z (where the face looks) axes in data coordinates;
    mm_per_unit: millimetres per canonical unit (chosen so a head spans about [-1, 1]).
    """

    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    axes: np.ndarray = field(default_factory=lambda: np.eye(3))
    mm_per_unit: float = 1.0

    def __post_init__(self):
        origin = np.asarray(self.origin, dtype=np.float64).reshape(-1)
        axes = np.asarray(self.axes, dtype=np.float64)
        if origin.shape != (3,) or not np.isfinite(origin).all():
            raise ValueError(f"frame origin must be 3 finite numbers, got {self.origin!r}")
        if axes.shape != (3, 3) or not np.allclose(axes @ axes.T, np.eye(3), atol=1e-6) or np.linalg.det(axes) < 0:
            raise ValueError("frame axes must be a proper 3x3 rotation (orthonormal rows, right-handed)")
        if not (np.isfinite(self.mm_per_unit) and self.mm_per_unit > 0):
            raise ValueError(f"frame mm_per_unit must be positive, got {self.mm_per_unit}")
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "mm_per_unit", float(self.mm_per_unit))

    @classmethod
    def fit(cls, vertices_mm: np.ndarray) -> "Frame":
        """The frame that puts a template's bounding-box centre at 0 and its longest half-extent at 1.

        vertices_mm: (N, 3) template vertices already in the canonical orientation (y up, z forward).
        """
        v = _as_points(vertices_mm, "template vertices")
        lo, hi = v.min(axis=0), v.max(axis=0)
        return cls((lo + hi) / 2, np.eye(3), float((hi - lo).max() / 2))

    def to_canonical(self, points_mm: np.ndarray) -> np.ndarray:
        """(..., 3) millimetres -> (..., 3) canonical units."""
        return (np.asarray(points_mm, dtype=np.float64) - self.origin) @ self.axes.T / self.mm_per_unit

    def to_mm(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) canonical units -> (..., 3) millimetres."""
        return np.asarray(points, dtype=np.float64) * self.mm_per_unit @ self.axes + self.origin

    def as_dict(self) -> dict:
        return {"origin": self.origin.tolist(), "axes": self.axes.tolist(), "mm_per_unit": self.mm_per_unit}

    @classmethod
    def from_dict(cls, d: dict) -> "Frame":
        return cls(np.asarray(d["origin"]), np.asarray(d["axes"]), float(d["mm_per_unit"]))
