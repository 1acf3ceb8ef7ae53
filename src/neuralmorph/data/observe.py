"""Partial observations of a head, as NPHM's test protocol makes them: one depth view, a few points.

A camera 650 mm from the head looks at it from a random near-frontal direction (a Fibonacci-sphere
direction with 0.6 < z < 0.9 and |y| < 0.55, z being where the face looks); the depth map is
back-projected, back-facing hits are dropped, and `n_points` are drawn with replacement. The field of
view is NPHM's (f = 1.5 × image width); the image is smaller because 2,500 points need far fewer pixels.
"""

from __future__ import annotations

import numpy as np

from neuralmorph.geometry.camera import Camera, fibonacci_sphere, look_at
from neuralmorph.geometry.raycast import RayCaster

NEAR_FRONTAL_Z = (0.6, 0.9)
NEAR_FRONTAL_MAX_Y = 0.55


def near_frontal_directions(n_sphere: int = 200) -> np.ndarray:
    """(K, 3) unit directions from the head to candidate cameras, NPHM's near-frontal band."""
    d = fibonacci_sphere(n_sphere)
    keep = (d[:, 2] > NEAR_FRONTAL_Z[0]) & (d[:, 2] < NEAR_FRONTAL_Z[1]) & (np.abs(d[:, 1]) < NEAR_FRONTAL_MAX_Y)
    return d[keep]


def single_view_points(vertices: np.ndarray, faces: np.ndarray, rng: np.random.Generator, n_points: int = 2500,
                       distance_mm: float = 650.0, image_size: int = 320,
                       direction: np.ndarray | None = None) -> tuple[np.ndarray, Camera]:
    """Draw a single-view partial point cloud of a head.

    vertices: (N, 3) float mm (head in the canonical orientation, +z where the face looks);
    faces: (F, 3) int; rng: the caller's generator; direction: (3,) unit, default a random near-frontal one.
    Returns points (n_points, 3) float64 mm and the camera that saw them.
    """
    v = np.asarray(vertices, np.float64)
    centre = 0.5 * (v.min(axis=0) + v.max(axis=0))
    if direction is None:
        candidates = near_frontal_directions()
        direction = candidates[rng.integers(len(candidates))]
    eye = centre + distance_mm * np.asarray(direction, np.float64)
    focal = 1.5 * image_size
    cam = Camera(focal, focal, (image_size - 1) / 2, (image_size - 1) / 2, image_size, image_size,
                 look_at(eye, centre))
    caster = RayCaster(v, np.asarray(faces, np.int64))
    _, face_idx, t, dirs = caster.cast(cam)
    front = np.einsum("ij,ij->i", dirs, caster.face_normals[face_idx]) < -0.01
    hits = cam.position + t[front, None] * dirs[front]
    if len(hits) == 0:
        raise ValueError("the camera sees no front-facing surface")
    return hits[rng.integers(0, len(hits), n_points)], cam
