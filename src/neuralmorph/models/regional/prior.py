"""Region-swap priors of the regional model: per-region Gaussians over control-vertex displacements, in mm.

For pairs (source, target) of training heads and each region with control vertices: take the target's
region, align it to the source on the region's boundary ring with a least-squares transform (affine
3×4, or a similarity), and record the displacement the aligned target region makes at the region's
control vertices relative to the source. A full-covariance Gaussian per region over those displacements
(millimetres, not a normalised space, so the alignment is a physical transform) is what
`RegionalModel.resample_region` draws from.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.errors import InputError
from neuralmorph.frame import umeyama
from neuralmorph.models.regional.model import RegionalModel, RegionalTrainData
from neuralmorph.models.regional.regions import boundary_ring


def align_region(source_ring: np.ndarray, target_ring: np.ndarray, target_points: np.ndarray,
                 transform: Literal["affine", "similarity"] = "affine") -> tuple[np.ndarray, bool]:
    """Map target_points (M, 3) by the least-squares transform taking target_ring (K, 3) onto
    source_ring (K, 3). Returns the mapped points and whether the transform is well-behaved (an affine
    whose linear part has singular values in [0.5, 2]; a similarity with scale in [0.5, 2])."""
    if transform == "similarity":
        sim = umeyama(target_ring, source_ring, with_scale=True)
        return sim.apply(target_points), 0.5 <= sim.scale <= 2.0
    a = np.concatenate([target_ring, np.ones((len(target_ring), 1))], axis=1)
    m, *_ = np.linalg.lstsq(a, source_ring, rcond=None)          # (4, 3)
    sv = np.linalg.svd(m[:3], compute_uv=False)
    ok = bool(np.isfinite(m).all() and sv.min() >= 0.5 and sv.max() <= 2.0)
    return np.concatenate([target_points, np.ones((len(target_points), 1))], axis=1) @ m, ok


def region_swap_displacements(model: RegionalModel, vertices: np.ndarray, pairs: np.ndarray,
                              transform: Literal["affine", "similarity"] = "affine") -> dict[str, np.ndarray]:
    """vertices (S, N, 3) mm; pairs (P, 2) rows (source, target) -> region -> (P', C_r, 3) displacements mm
    of the well-aligned swaps."""
    faces = model.faces.cpu().numpy()
    weights = model.region_weights.cpu().numpy()
    out: dict[str, np.ndarray] = {}
    for name, ctrl in model.control_vertices.items():
        r = model.region_names.index(name)
        ring = boundary_ring(weights, faces, r)
        if len(ring) < 4:   # a region with no boundary (the whole mesh): align on all its vertices
            ring = np.flatnonzero(weights[:, r] > 0)
        deltas = []
        for s, t in pairs:
            moved, ok = align_region(vertices[s, ring].astype(np.float64), vertices[t, ring].astype(np.float64),
                                     vertices[t, ctrl].astype(np.float64), transform)
            if ok:
                deltas.append(moved - vertices[s, ctrl])
        out[name] = np.array(deltas, np.float64).reshape(-1, len(ctrl), 3)
    return out


def fit_control_prior(model: RegionalModel, dataset: HeadDataset, split: str = "train", shifts: int = 5,
                      transform: Literal["affine", "similarity"] = "affine", jitter_mm2: float = 1e-4,
                      max_pairs: int = 2000, seed: int = 0) -> dict[str, int]:
    """Fit every controlled region's Gaussian (mm) from region swaps of training pairs (each head with
    the heads `1..shifts` places after it in a seeded shuffle). Returns region -> swaps used."""
    data = RegionalTrainData(dataset, split).vertices.numpy()
    if len(data) < 2:
        raise InputError(dataset.where, "region-swap priors need at least 2 training heads")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data))
    pairs = np.concatenate([np.stack([order, np.roll(order, -k)], 1) for k in range(1, min(shifts, len(data) - 1) + 1)])
    if len(pairs) > max_pairs:
        pairs = pairs[rng.choice(len(pairs), max_pairs, replace=False)]
    deltas = region_swap_displacements(model, data, pairs, transform)
    used = {}
    for name, d in deltas.items():
        prior = model.control_prior[str(model.region_names.index(name))]
        if len(d) < 2:
            raise InputError(dataset.where, f"region {name!r}: fewer than 2 usable region swaps")
        prior.fit(torch.as_tensor(d.reshape(len(d), -1)), jitter=jitter_mm2)
        used[name] = len(d)
    return used
