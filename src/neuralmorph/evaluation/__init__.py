"""Evaluation: point-set metrics in millimetres and the protocol that draws the points."""

from .metrics import THRESHOLDS_MM, metrics_from_distances, point_metrics, vertex_error_mm
from .protocol import Protocol, evaluate, surface_points

__all__ = [
    "THRESHOLDS_MM", "point_metrics", "metrics_from_distances", "vertex_error_mm",
    "Protocol", "surface_points", "evaluate",
]
