"""Surface reconstruction metrics between point sets, all in millimetres.

Definitions (NPHM's protocol, re-derived): nearest-neighbour Euclidean distances both ways;
accuracy = mean pred->gt distance, completeness = mean gt->pred distance, chamfer_l1 = their mean,
chamfer_l2 = mean of the two mean *squared* distances (mm²), normal consistency = mean of the two mean
|cos| between a point's normal and its nearest neighbour's (orientation-free), precision@t / recall@t =
fraction of pred / gt points within t mm (d <= t) of the other set, F = 2PR / (P + R) (0 when P = R = 0).
"""

from __future__ import annotations

import numpy as np

from ..geometry.distance import nearest_neighbors

THRESHOLDS_MM = (1.0, 2.5, 5.0, 10.0)


def _cloud(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"{name} must be (N, 3), got {x.shape}")
    if len(x) == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _abs_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) |cos| between rows of a (N, 3) and b (N, 3); 0 where either is zero."""
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    dot = np.abs(np.einsum("ij,ij->i", a, b))
    den = na * nb
    return np.divide(dot, den, out=np.zeros_like(dot), where=den > 0)


def metrics_from_distances(
    d_pred: np.ndarray,
    d_gt: np.ndarray,
    thresholds=THRESHOLDS_MM,
    cos_pred: np.ndarray | None = None,
    cos_gt: np.ndarray | None = None,
) -> dict[str, float]:
    """The metric dict from nearest-neighbour distances already computed.

    d_pred: (P,) float64 pred->gt distances (mm); d_gt: (Q,) float64 gt->pred distances (mm);
    cos_pred / cos_gt: optional (P,) / (Q,) |cos| to the nearest neighbour's normal.
    """
    d_pred = np.asarray(d_pred, dtype=np.float64)
    d_gt = np.asarray(d_gt, dtype=np.float64)
    if d_pred.size == 0 or d_gt.size == 0:
        raise ValueError("metrics need non-empty point sets on both sides")
    acc, comp = float(d_pred.mean()), float(d_gt.mean())
    out = {
        "accuracy_mm": acc,
        "completeness_mm": comp,
        "chamfer_l1_mm": 0.5 * (acc + comp),
        "chamfer_l2_mm2": 0.5 * (float(np.mean(d_pred**2)) + float(np.mean(d_gt**2))),
    }
    if cos_pred is not None and cos_gt is not None:
        out["normal_consistency"] = 0.5 * (float(np.mean(cos_pred)) + float(np.mean(cos_gt)))
    for t in thresholds:
        p = float(np.mean(d_pred <= t))
        r = float(np.mean(d_gt <= t))
        out[f"precision@{t:g}mm"] = p
        out[f"recall@{t:g}mm"] = r
        out[f"fscore@{t:g}mm"] = 2.0 * p * r / (p + r) if p + r > 0 else 0.0
    return out


def point_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    pred_normals: np.ndarray | None = None,
    gt_normals: np.ndarray | None = None,
    thresholds=THRESHOLDS_MM,
) -> dict[str, float]:
    """Accuracy, completeness, chamfer, normal consistency and P/R/F between two point sets (mm).

    pred: (P, 3) float64 mm; gt: (Q, 3) float64 mm; pred_normals (P, 3) / gt_normals (Q, 3): optional,
    need not be unit or consistently oriented; normal_consistency is reported only when both are given.
    thresholds: F-score distances in mm; keys look like "precision@1mm", "fscore@2.5mm".
    Empty, malformed or non-finite input raises ValueError.
    """
    pred = _cloud(pred, "pred")
    gt = _cloud(gt, "gt")
    d_pred, i_pred = nearest_neighbors(pred, gt)
    d_gt, i_gt = nearest_neighbors(gt, pred)
    cos_pred = cos_gt = None
    if pred_normals is not None and gt_normals is not None:
        pn = np.asarray(pred_normals, dtype=np.float64)
        gn = np.asarray(gt_normals, dtype=np.float64)
        if pn.shape != pred.shape or gn.shape != gt.shape:
            raise ValueError("normals must have the same shape as their points")
        cos_pred = _abs_cos(pn, gn[i_pred])
        cos_gt = _abs_cos(gn, pn[i_gt])
    return metrics_from_distances(d_pred, d_gt, thresholds, cos_pred, cos_gt)


def vertex_error_mm(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean Euclidean distance between corresponding vertices, mm.

    pred, gt: (V, 3) float64 in the same vertex order; a shape mismatch raises ValueError.
    """
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if p.shape != g.shape or p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"vertex arrays must both be (V, 3) with equal V, got {p.shape} and {g.shape}")
    if len(p) == 0:
        raise ValueError("no vertices")
    return float(np.linalg.norm(p - g, axis=1).mean())
