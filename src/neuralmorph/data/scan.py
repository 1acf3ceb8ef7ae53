"""Raw-scan simulation: turn a registered head into what a scanner would hand over.

A real scan shares nothing with the registration but the surface: its own vertices and triangles, sensor
noise, holes where the scanner saw nothing, and an arbitrary pose. `raw_scan` reproduces each of these
so that alignment, point-cloud fitting and the evaluation protocol are exercised on honest inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import fast_simplification
import numpy as np
import trimesh
from scipy.spatial.transform import Rotation

from neuralmorph.errors import InputError
from neuralmorph.frame import Similarity
from neuralmorph.geometry.mesh import Mesh


@dataclass(frozen=True)
class ScanConfig:
    resolution_mm: float = 3.0         # target mean edge length of the re-meshed surface
    noise_mm: float = 0.2              # std of Gaussian displacement along the surface normal
    holes: int = 2                     # number of holes punched into the surface
    hole_radius_mm: float = 8.0        # radius of each hole
    max_rotation_deg: float = 10.0     # the scan's pose: random rotation up to this angle ...
    max_translation_mm: float = 20.0   # ... and translation up to this distance per axis

    def __post_init__(self):
        if not 0 < self.resolution_mm < float("inf"):  # NaN fails too
            raise InputError("--scan-resolution-mm", f"must be a finite number > 0, got {self.resolution_mm}")
        if not 0 <= self.noise_mm < float("inf"):
            raise InputError("--scan-noise-mm", f"must be a finite number >= 0, got {self.noise_mm}")
        if self.holes < 0 or not 0 <= self.hole_radius_mm < float("inf"):
            raise InputError("--scan-holes", f"must not be negative, got {self.holes} (hole radius {self.hole_radius_mm} mm)")
        if not (0 <= self.max_rotation_deg <= 180 and 0 <= self.max_translation_mm < float("inf")):
            raise InputError("scan pose", f"rotation must lie in [0, 180] degrees and translation be finite and >= 0, "
                                          f"got {self.max_rotation_deg} and {self.max_translation_mm}")


def remesh(vertices: np.ndarray, faces: np.ndarray, edge_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """A new triangulation of the same surface with edges of about `edge_mm`.

    vertices: (N, 3) float mm; faces: (F, 3) int. Subdivides finely, then quadric decimation picks new
    vertex positions, so no vertex of the result corresponds to one of the input.
    Returns (K, 3) float64 vertices and (G, 3) int64 faces.
    """
    fine_v, fine_f = trimesh.remesh.subdivide_to_size(np.asarray(vertices, np.float64), np.asarray(faces, np.int64),
                                                      max_edge=edge_mm)
    area = Mesh(fine_v, fine_f).area
    target_faces = area / (np.sqrt(3) / 4 * edge_mm**2)  # equilateral triangles of the target edge
    reduction = float(np.clip(1.0 - target_faces / len(fine_f), 0.0, 0.99))
    new_v, new_f = fast_simplification.simplify(fine_v.astype(np.float32), fine_f.astype(np.int32),
                                                target_reduction=reduction)
    return np.asarray(new_v, np.float64), np.asarray(new_f, np.int64)


def _drop_unreferenced(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    used = np.unique(faces)
    remap = np.full(len(vertices), -1, np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces]


def raw_scan(vertices: np.ndarray, faces: np.ndarray, config: ScanConfig,
             rng: np.random.Generator) -> tuple[Mesh, Similarity]:
    """Simulate a raw scan of a registered head.

    vertices: (N, 3) float mm; faces: (F, 3) int; rng: the caller's generator (determinism by seed).
    Returns the scan (in its own pose, mm) and the similarity that maps the registered head's frame to
    the scan's (so `pose.inverse()` brings the scan back).
    """
    v, f = remesh(vertices, faces, config.resolution_mm)
    if config.noise_mm > 0:
        normals = Mesh(v, f).vertex_normals
        v = v + normals * rng.normal(0.0, config.noise_mm, size=(len(v), 1))
    if config.holes > 0:
        centres = v[rng.choice(len(v), size=config.holes, replace=False)]
        centroids = v[f].mean(axis=1)
        dist = np.linalg.norm(centroids[:, None, :] - centres[None, :, :], axis=2)
        f = f[(dist > config.hole_radius_mm).all(axis=1)]
        v, f = _drop_unreferenced(v, f)
    axis = rng.normal(size=3)
    angle = np.deg2rad(config.max_rotation_deg) * rng.uniform()
    rot = Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix()
    # Rotate about the head's own centre so the angle does not turn into a large lever-arm translation.
    centre = v.mean(axis=0)
    shift = rng.uniform(-1, 1, size=3) * config.max_translation_mm
    pose = Similarity(1.0, rot, centre - rot @ centre + shift)
    return Mesh(pose.apply(v), f), pose
