"""Pinhole cameras in the OpenCV convention and the evaluation protocol's camera rig.

Camera frame: x right, y down, z forward (into the scene). Pixel (row i, column j) has its centre at
image coordinates (u, v) = (j, i), so a centred principal point is ((W - 1) / 2, (H - 1) / 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True, eq=False)
class Camera:
    """Pinhole camera: intrinsics in pixels, a rigid (4, 4) float64 world-to-camera transform."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    world_to_camera: np.ndarray

    def __post_init__(self) -> None:
        m = np.array(self.world_to_camera, dtype=np.float64, copy=True)
        if m.shape != (4, 4):
            raise ValueError(f"world_to_camera must be (4, 4), got {m.shape}")
        r = m[:3, :3]
        if not (np.allclose(r @ r.T, np.eye(3), atol=1e-6) and np.isclose(np.linalg.det(r), 1.0, atol=1e-6)
                and np.allclose(m[3], [0, 0, 0, 1])):
            raise ValueError("world_to_camera must be a rigid transform (rotation + translation)")
        if not (self.fx > 0 and self.fy > 0 and self.width > 0 and self.height > 0):
            raise ValueError("focal lengths and image size must be positive")
        m.setflags(write=False)
        object.__setattr__(self, "world_to_camera", m)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) float64 world-to-camera rotation; its rows are the camera axes in world coordinates."""
        return self.world_to_camera[:3, :3]

    @property
    def position(self) -> np.ndarray:
        """(3,) float64 camera centre in world coordinates."""
        return -self.rotation.T @ self.world_to_camera[:3, 3]

    @cached_property
    def _pixel_dirs_cam(self) -> np.ndarray:
        """(H*W, 3) float64 un-normalised camera-frame ray directions with z = 1, row-major pixels."""
        v, u = np.mgrid[0 : self.height, 0 : self.width].astype(np.float64)
        d = np.stack([(u - self.cx) / self.fx, (v - self.cy) / self.fy, np.ones_like(u)], axis=-1)
        return d.reshape(-1, 3)

    @cached_property
    def _unit_dirs_cam(self) -> np.ndarray:
        """(H*W, 3) float64 unit camera-frame ray directions, row-major pixels."""
        d = self._pixel_dirs_cam
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """World-frame rays through every pixel centre, row-major.

        Returns origins (H*W, 3) float64 (all the camera centre) and unit directions (H*W, 3) float64.
        """
        dirs = self._unit_dirs_cam @ self.rotation  # = (R^T d^T)^T
        origins = np.broadcast_to(self.position, dirs.shape).copy()
        return origins, dirs

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """(P, 3) world points -> (P, 3) float64 camera-frame points."""
        p = np.asarray(points, dtype=np.float64)
        return p @ self.rotation.T + self.world_to_camera[:3, 3]

    @property
    def intrinsics(self) -> np.ndarray:
        """(3, 3) float64 pinhole matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (pixels)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P, 3) world points -> image coordinates uv (P, 2) float64 and camera depth z (P,) float64.

        Points behind the camera (z <= 0) get NaN uv.
        """
        pc = self.to_camera(points)
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([self.fx * pc[:, 0] / z + self.cx, self.fy * pc[:, 1] / z + self.cy], axis=1)
        uv[z <= 0] = np.nan
        return uv, z


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """World-to-camera (4, 4) float64 for a camera at `eye` (3,) looking at `target` (3,).

    The image's "up" (negative camera y) follows the world `up` (3,) as closely as possible.
    """
    eye, target, up = (np.asarray(x, dtype=np.float64) for x in (eye, target, up))
    z = target - eye
    if not np.linalg.norm(z) > 0:
        raise ValueError("eye and target coincide")
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:
        # looking straight along `up`: any perpendicular works, pick the least aligned world axis
        x = np.cross(z, np.eye(3)[np.argmin(np.abs(z))])
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, :3] = np.stack([x, y, z])
    m[:3, 3] = -m[:3, :3] @ eye
    return m


def fibonacci_sphere(n: int) -> np.ndarray:
    """(n, 3) float64 unit vectors spread evenly on the sphere; the first and last are the +y / -y poles.

    Golden-angle spiral with heights evenly spaced from +1 to -1 (endpoints included).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n == 1:
        return np.array([[0.0, 1.0, 0.0]])
    i = np.arange(n, dtype=np.float64)
    y = 1.0 - 2.0 * i / (n - 1)
    r = np.sqrt(np.clip(1.0 - y * y, 0.0, None))
    theta = np.pi * (3.0 - np.sqrt(5.0)) * i
    return np.stack([np.cos(theta) * r, y, np.sin(theta) * r], axis=1)


def protocol_cameras(
    n_views: int = 10,
    distance_mm: float = 600.0,
    target=(0.0, 0.0, 0.0),
    width: int = 640,
    height: int = 480,
    focal: float = 1220.0,
    up=(0.0, 1.0, 0.0),
) -> list[Camera]:
    """The evaluation rig: n_views cameras on an (n_views + 2)-point Fibonacci sphere minus its poles.

    Each sits `distance_mm` from `target` (3,) looking at it, square pixels (fx = fy = focal), centred
    principal point. Dropping the poles keeps every view away from looking straight down `up`
    (NPHM: 12 points minus 2 = 10 views at 0.6 m).
    """
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    t = np.asarray(target, dtype=np.float64)
    dirs = fibonacci_sphere(n_views + 2)[1:-1]
    # the spiral's poles lie on +-y; turn them onto +-up for a non-default up
    dirs = dirs @ _rotation_from_y(np.asarray(up, dtype=np.float64)).T
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    return [
        Camera(focal, focal, cx, cy, width, height, look_at(t + distance_mm * d, t, up)) for d in dirs
    ]


def _rotation_from_y(up: np.ndarray) -> np.ndarray:
    """(3, 3) float64: the smallest rotation taking +y onto the unit vector along `up` (3,)."""
    u = up / np.linalg.norm(up)
    y = np.array([0.0, 1.0, 0.0])
    c = float(y @ u)
    if c < -1 + 1e-12:  # opposite: half a turn about x
        return np.diag([1.0, -1.0, -1.0])
    k = np.cross(y, u)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + kx + kx @ kx / (1.0 + c)
