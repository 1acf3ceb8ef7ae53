"""The initial alignment every fit starts from: where the observation sits relative to the model's frame.

One procedure for every family, against the model's average head (`model.meshes(zero_latents)`: the
decoded mean mesh of registered families, the extracted zero level set of signed-distance ones):

- landmarks, when given: Umeyama from the average head's landmark vertices to them;
- otherwise the observation's points: a rigid (or similarity) ICP from the matched centroids. A partial
  view's centroid lies inside the head, not at its centre, so when that ICP ends with a trimmed RMSE
  above `RETRY_RMSE_MM`, a translation-only ICP runs from the bounding-box centres and from six starts
  shifted by a quarter of the head's extent along ±x, ±y, ±z, the best of them is refined by ICP too,
  and the better of the two alignments is kept. Rotation ICP's basin is about ±30°: the observation
  must be roughly upright in the model's orientation, or come with landmarks.

Registered meshes in the model's topology align by Umeyama over every vertex (`fit_registered`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree

from neuralmorph.errors import InputError
from neuralmorph.frame import Similarity, icp_similarity, umeyama
from neuralmorph.geometry.mesh import Mesh
from neuralmorph.geometry.sampling import sample_surface
from neuralmorph.models.base import MorphableModel

MAX_POINTS = 20_000
"""Points kept for the alignment: plenty for 7 pose parameters, and the closest-point queries stay cheap."""


@torch.no_grad()
def average_head(model: MorphableModel, resolution: int = 64) -> Mesh:
    """The model's mean head (mm), the surface every alignment aims at (`resolution`: extraction grid of
    signed-distance families)."""
    return model.meshes(model.zero_latents(1), resolution=resolution)[0]


def _translation_icp(points: np.ndarray, tree: cKDTree, normals: np.ndarray, start: np.ndarray,
                     iterations: int = 30, trim: float = 0.9) -> tuple[np.ndarray, float]:
    """Trimmed point-to-plane ICP over a translation only.

    points: (P, 3) float64 mm; tree: KD-tree of (S, 3) dense surface samples, normals: (S, 3) their unit
    normals; start: (3,) initial translation. Returns the translation (3,) and the trimmed RMSE (mm).
    """
    t = np.asarray(start, np.float64).copy()
    keep = max(3, int(round(trim * len(points))))
    for _ in range(iterations):
        dist, idx = tree.query(points + t)  # one thread: thread start-up costs more than these small queries
        inl = np.argsort(dist, kind="stable")[:keep]
        n = normals[idx[inl]]
        r = np.einsum("ij,ij->i", points[inl] + t - tree.data[idx[inl]], n)
        step, *_ = np.linalg.lstsq(n, -r, rcond=None)
        t += step
        if np.linalg.norm(step) < 1e-3:  # mm
            break
    dist, _ = tree.query(points + t)
    return t, float(np.sqrt(np.mean(np.sort(dist)[:keep] ** 2)))


RETRY_RMSE_MM = 5.0
"""An ICP from the matched centroids that ends with a trimmed RMSE above this is retried from the
multi-start translation search (the better of the two is kept)."""


def align_points(avg: Mesh, clouds: Sequence[np.ndarray], init: Similarity | None = None, rotation: bool = True,
                 scale: bool = False, seed: int = 0) -> Similarity:
    """ICP of all observations together against the average head `avg` (mm).

    clouds: n arrays (P_i, 3) float mm in the target's coordinates; init: an initial target -> model
    similarity (default: the matched centroids, then, if that ICP ends poorly, the multi-start
    translation search in the module docstring). rotation off: only the translation is refined, the
    robust choice when the orientation is known (an upright camera) and the subject's head differs much
    from the average one; scale: estimate a scale too. Returns the target -> model-frame (mm) similarity.
    """
    pts = np.concatenate([np.asarray(c, np.float64) for c in clouds])
    rng = np.random.default_rng(seed)
    if len(pts) > MAX_POINTS:
        pts = pts[rng.choice(len(pts), MAX_POINTS, replace=False)]
    if len(pts) < 7:
        raise InputError("alignment", f"needs at least 7 observed points, got {len(pts)}")
    surface: list = []  # dense samples with normals and their KD-tree, made on first need

    def samples() -> tuple[cKDTree, np.ndarray]:
        if not surface:
            surf, normals, _ = sample_surface(avg.vertices, avg.faces, 10_000, seed)
            surface.extend([cKDTree(surf), normals])
        return surface[0], surface[1]

    def refine(start: Similarity) -> tuple[Similarity, float]:
        if not rotation:
            tree, normals = samples()
            t, rmse = _translation_icp(start.apply(pts), tree, normals, np.zeros(3), iterations=50)
            return Similarity(1.0, np.eye(3), t).compose(start), rmse
        try:
            result = icp_similarity(pts, avg.vertices, avg.faces, init=start, with_scale=scale)
        except ValueError as exc:
            raise InputError("alignment", str(exc)) from None
        return result.transform, result.rmse_mm

    if init is not None:
        return refine(init)[0]
    best = refine(Similarity(1.0, np.eye(3), avg.vertices.mean(axis=0) - pts.mean(axis=0)))
    if best[1] <= RETRY_RMSE_MM:
        return best[0]
    # a partial view's centroid lies inside the head, not at its centre: search translations
    tree, normals = samples()
    few = pts[rng.choice(len(pts), min(len(pts), 1000), replace=False)]
    lo, hi = avg.vertices.min(axis=0), avg.vertices.max(axis=0)
    base = 0.5 * (lo + hi) - few.mean(axis=0)
    shifts = [np.zeros(3)] + [s * 0.25 * (hi - lo)[k] * np.eye(3)[k] for k in range(3) for s in (1, -1)]
    t, _ = min((_translation_icp(few, tree, normals, base + d) for d in shifts), key=lambda r: r[1])
    return min(best, refine(Similarity(1.0, np.eye(3), t)), key=lambda r: r[1])[0]


def align_landmarks(model: MorphableModel, avg: Mesh, landmarks: np.ndarray, landmark_ids: np.ndarray | None = None,
                    scale: bool = False) -> Similarity:
    """Model frame -> observation by Umeyama from the average head's landmark vertices to `landmarks`
    (L, 3) mm, in the model's landmark order (`landmark_ids`: another subset of its vertices)."""
    ids = model.landmark_ids.cpu().numpy() if landmark_ids is None else np.asarray(landmark_ids)
    if len(ids) == 0:
        raise InputError("--landmarks", f"a {model.family!r} model has no landmarks; align by its points instead")
    if len(ids) != len(landmarks):
        raise InputError("landmarks", f"got {len(landmarks)} landmarks, the model has {len(ids)}")
    try:
        return umeyama(avg.vertices[ids], landmarks, with_scale=scale)
    except ValueError as exc:  # e.g. the landmarks lie on one line: no rotation is determined
        raise InputError("--landmarks", str(exc)) from None


def initial_pose(model: MorphableModel, landmarks: np.ndarray | None = None, landmark_ids: np.ndarray | None = None,
                 points: np.ndarray | Sequence[np.ndarray] | None = None, with_scale: bool = False,
                 rotation: bool = True, resolution: int = 64, seed: int = 0) -> Similarity:
    """Model frame -> observation coordinates: from landmarks if given, else from the points (one cloud
    (P, 3) or several), else the identity."""
    if landmarks is None and points is None:
        return Similarity()
    avg = average_head(model, resolution)
    if landmarks is not None:
        return align_landmarks(model, avg, landmarks, landmark_ids, with_scale)
    clouds = [points] if isinstance(points, np.ndarray) else list(points)
    return align_points(avg, clouds, rotation=rotation, scale=with_scale, seed=seed).inverse()
