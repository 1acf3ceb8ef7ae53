"""The evaluation protocol: how surface points are drawn from a prediction and a ground truth, then scored.

Two ways to get points, both ending in `n_points` per set and the metrics of `metrics.py`:

* "points": area-weighted uniform samples of each surface (point clouds are used as they are, or
  subsampled without replacement when larger than n_points).
* "render": NPHM's protocol, re-derived. Both meshes are ray cast from the same `n_views` cameras
  (an (n_views + 2)-point Fibonacci sphere minus its poles, `distance_mm` from the ground truth's
  bounding-box centre, looking at it); hit pixels are lifted to 3D with their face normals, points
  whose normal faces away from their camera (cos(ray, normal) >= -0.01) are dropped, and n_points are
  drawn with replacement. Only surface a scanner could see counts, so a model that fills the mouth
  interior or closes the neck is not punished for it.

Winding in "render": normals follow the mesh winding. A mesh wound inside-out as a whole (more than
half of all hits back-facing) is handled by flipping its normals (recorded as `flipped_winding`); faces
whose winding disagrees with the rest (raw open scans) are dropped in the views that see them, and the
count appears as `backfacing_dropped` so such a mesh is easy to spot. Fix the winding first
(e.g. trimesh.repair.fix_winding) if those counts are large.

Seeds: every random draw comes from (protocol.seed, rng_key); `evaluate` uses rng_key 0 for the ground
truth and 1 for the prediction, so results are reproducible and the GT sample is shared across methods.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

import numpy as np

from ..errors import InputError
from ..geometry.camera import protocol_cameras
from ..geometry.distance import nearest_neighbors
from ..geometry.mesh import Mesh
from ..geometry.raycast import RayCaster
from ..geometry.sampling import sample_surface
from .metrics import THRESHOLDS_MM, _abs_cos, metrics_from_distances, vertex_error_mm

GT_KEY, PRED_KEY = 0, 1
BACKFACE_COS = -0.01  # NPHM: keep a point only if cos(view ray, normal) < -0.01


@dataclass(frozen=True)
class Protocol:
    """How points are drawn for evaluation. Defaults: 250k area-weighted samples per surface.

    Render defaults (640x480, f = 1220 px, 600 mm) keep NPHM's field of view (1280x960, f = 2440 px;
    a 315 x 236 mm frame) at half the resolution: 0.49 mm pixels at the head and ~1.3M hits per
    head-sized mesh over 10 views, five times the 250k points drawn, so the draw, not the pixel grid,
    sets the noise floor. Measured on a 50k-face head-sized pair (benchmarks/bench_evaluate.py --sweep):
    chamfer-L1 within 0.02 mm of NPHM's full resolution at a fifth of the time (2.5 s vs 12 s);
    320x240 has fewer hits than 1.3x the draw, which repeats pixels and flatters near-identical pairs.
    """

    kind: Literal["points", "render"] = "points"
    n_points: int = 250_000
    n_views: int = 10
    image_width: int = 640
    image_height: int = 480
    focal: float = 1220.0
    distance_mm: float = 600.0
    seed: int = 0
    thresholds: tuple[float, ...] = THRESHOLDS_MM
    neck_cut_mm: float | None = None
    """NPHM's neck cut (render protocol): drop every rendered point of both surfaces lower (along +y, the
    canonical up axis) than the ground truth's lowest vertex plus this many mm, so neither side is judged
    on how it ends the neck. None: no cut."""

    def __post_init__(self) -> None:
        if self.kind not in ("points", "render"):
            raise InputError("protocol.kind", f"must be 'points' or 'render', got {self.kind!r}")
        for name in ("n_points", "n_views", "image_width", "image_height"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
                raise InputError(f"protocol.{name}", f"must be a positive integer, got {val!r}")
        for name in ("focal", "distance_mm"):
            if not (np.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise InputError(f"protocol.{name}", f"must be a positive number, got {getattr(self, name)!r}")
        th = tuple(float(t) for t in self.thresholds)
        if not th or not all(np.isfinite(t) and t > 0 for t in th):
            raise InputError("protocol.thresholds", f"must be positive distances in mm, got {self.thresholds!r}")
        object.__setattr__(self, "thresholds", th)
        if self.neck_cut_mm is not None and not np.isfinite(self.neck_cut_mm):
            raise InputError("protocol.neck_cut_mm", f"must be a finite number of mm, got {self.neck_cut_mm!r}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["thresholds"] = list(self.thresholds)
        return d


class _Sample(NamedTuple):
    points: np.ndarray  # (n, 3) float64 mm
    normals: np.ndarray | None  # (n, 3) float64 unit, or None for point clouds
    face_idx: np.ndarray  # (n,) int64, -1 when not on a face
    counts: dict


def _seed(protocol: Protocol, rng_key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(protocol.seed), int(rng_key)])


def _bbox_center(mesh: Mesh) -> np.ndarray:
    return 0.5 * (mesh.vertices.min(axis=0) + mesh.vertices.max(axis=0))


def _sample(mesh: Mesh, protocol: Protocol, rng_key: int, center, name: str, floor: float | None = None) -> _Sample:
    ss = _seed(protocol, rng_key)
    n = protocol.n_points
    if protocol.kind == "points":
        if mesh.is_point_cloud:
            rng = np.random.default_rng(ss)
            pts = mesh.vertices
            if len(pts) > n:
                pts = pts[np.sort(rng.choice(len(pts), n, replace=False))]
            return _Sample(pts, None, np.full(len(pts), -1, np.int64), {"source_points": len(mesh.vertices)})
        if not mesh.area > 0:
            raise InputError(name, "mesh has zero surface area")
        pts, nrm, fid = sample_surface(mesh.vertices, mesh.faces, n, int(ss.generate_state(1, np.uint64)[0]))
        return _Sample(pts, nrm, fid, {})
    return _render_sample(mesh, protocol, ss, center, name, floor)


def _render_sample(mesh: Mesh, protocol: Protocol, ss, center, name: str, floor: float | None = None) -> _Sample:
    if mesh.is_point_cloud:
        raise InputError(name, "the render protocol needs a mesh with faces; use the points protocol for point clouds")
    cams = protocol_cameras(protocol.n_views, protocol.distance_mm, center,
                            protocol.image_width, protocol.image_height, protocol.focal)
    caster = RayCaster(mesh.vertices, mesh.faces)
    pts, cos, fid = [], [], []
    for cam in cams:
        _, f, t, d = caster.cast(cam)
        pts.append(cam.position + t[:, None] * d)
        fid.append(f)
        # d is the unit ray from the camera to the point: the back-face test needs nothing else
        cos.append(np.einsum("ij,ij->i", d, mesh.face_normals[f]))
    pts, cos, fid = np.concatenate(pts), np.concatenate(cos), np.concatenate(fid)
    hits = len(pts)
    # a mesh wound inside-out everywhere shows mostly "back" faces: flip it rather than lose it
    flipped = bool(hits and np.mean(cos >= BACKFACE_COS) > 0.5)
    sign = -1.0 if flipped else 1.0
    keep = sign * cos < BACKFACE_COS
    pts, fid = pts[keep], fid[keep]
    counts = {"hits": int(hits), "backfacing_dropped": int(hits - len(pts)), "flipped_winding": flipped}
    if floor is not None:
        above = pts[:, 1] >= floor
        counts["below_neck_cut_dropped"] = int((~above).sum())
        pts, fid = pts[above], fid[above]
        if len(pts) == 0:
            raise InputError(name, f"nothing of it is visible above the neck cut (y ≥ {floor:.1f} mm)")
    if len(pts) == 0:
        raise InputError(name, f"no front-facing surface is visible from the {protocol.n_views} protocol "
                               f"cameras ({protocol.distance_mm:g} mm around {np.round(center, 1).tolist()})")
    rng = np.random.default_rng(ss)
    pick = rng.integers(0, len(pts), protocol.n_points)
    return _Sample(pts[pick], sign * mesh.face_normals[fid[pick]], fid[pick], counts)


def surface_points(
    mesh: Mesh, protocol: Protocol, rng_key: int, center=None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Points (n, 3) float64 mm and unit normals (n, 3) or None (point clouds) drawn under `protocol`.

    rng_key: separates the draws of different meshes under one protocol seed (evaluate: GT 0, pred 1).
    center: (3,) render target; default the mesh's own bounding-box centre (evaluate passes the GT's,
    so both meshes are seen by the same cameras).
    """
    c = _bbox_center(mesh) if center is None else np.asarray(center, dtype=np.float64)
    s = _sample(mesh, protocol, rng_key, c, "mesh")
    return s.points, s.normals


def _is_correspondence(pred: Mesh, gt: Mesh) -> bool:
    return (not gt.is_point_cloud and pred.vertices.shape == gt.vertices.shape
            and np.array_equal(pred.faces, gt.faces))


def evaluate(
    pred: Mesh, gt: Mesh, protocol: Protocol = Protocol(), regions: dict[str, np.ndarray] | None = None,
    names: tuple[str, str, str] = ("pred", "gt", "regions"),
) -> dict:
    """Score a predicted surface against the ground truth (both in mm) under `protocol`.

    Returns {"metrics": {name: float}, "protocol": {...}}; the protocol record holds every protocol
    field, units "mm", the points actually used per set, the render target and per-set counts.

    Registered pairs (same vertex count and identical faces) also get "vertex_error_mm".
    regions: name -> GT vertex ids. Each adds "<name>/<metric>" for every metric: GT points are the
    samples on faces whose three vertices are all in the region; predicted points are those whose
    nearest GT point (over the whole GT sample) is one of them, so a region's pred set is the part of
    the prediction that lies against that region. Registered pairs also get "<name>/vertex_error_mm".
    A region left with no predicted points gets NaN metrics (its counts say so).
    names: what errors call the prediction, the ground truth and the regions (the CLI passes their files).
    """
    pred_name, gt_name, regions_name = names
    if regions and gt.is_point_cloud:
        raise InputError(regions_name, f"regions need a ground-truth mesh with faces; {gt_name} has none")
    center = _bbox_center(gt)
    floor = (None if protocol.neck_cut_mm is None or protocol.kind != "render"
             else float(gt.vertices[:, 1].min()) + protocol.neck_cut_mm)
    gs = _sample(gt, protocol, GT_KEY, center, gt_name, floor)
    ps = _sample(pred, protocol, PRED_KEY, center, pred_name, floor)
    d_pred, i_pred = nearest_neighbors(ps.points, gs.points)
    d_gt, i_gt = nearest_neighbors(gs.points, ps.points)
    with_normals = ps.normals is not None and gs.normals is not None
    cos_pred = _abs_cos(ps.normals, gs.normals[i_pred]) if with_normals else None
    cos_gt = _abs_cos(gs.normals, ps.normals[i_gt]) if with_normals else None
    metrics = metrics_from_distances(d_pred, d_gt, protocol.thresholds, cos_pred, cos_gt)
    corr = _is_correspondence(pred, gt)
    if corr:
        metrics["vertex_error_mm"] = vertex_error_mm(pred.vertices, gt.vertices)

    record = protocol.as_dict()
    record.update(units="mm", n_points_pred=int(len(ps.points)), n_points_gt=int(len(gs.points)),
                  correspondence=corr, counts={"pred": ps.counts, "gt": gs.counts})
    if protocol.kind == "render":
        record["camera_target_mm"] = center.tolist()
        if floor is not None:
            record["neck_cut_y_mm"] = floor

    region_record = {}
    for name, ids in (regions or {}).items():
        vmask = _region_mask(name, ids, len(gt.vertices), regions_name)
        gt_in = vmask[gt.faces].all(axis=1)[gs.face_idx]
        pred_in = gt_in[i_pred]
        n_g, n_p = int(gt_in.sum()), int(pred_in.sum())
        if n_g == 0:
            raise InputError(regions_name, f"region {name!r}: no ground-truth sample lies on a face fully inside it")
        region_record[name] = {"vertices": int(vmask.sum()), "gt_points": n_g, "pred_points": n_p}
        if n_p:
            # pred points kept here have their nearest GT point inside the region, so their distance to
            # the region's GT set is the one already computed; GT->pred needs a fresh query
            dg, ig = nearest_neighbors(gs.points[gt_in], ps.points[pred_in])
            cp = cg = None
            if with_normals:
                cp = cos_pred[pred_in]
                cg = _abs_cos(gs.normals[gt_in], ps.normals[pred_in][ig])
            sub = metrics_from_distances(d_pred[pred_in], dg, protocol.thresholds, cp, cg)
        else:
            sub = {k: float("nan") for k in metrics if k != "vertex_error_mm"}
        if corr:
            sub["vertex_error_mm"] = vertex_error_mm(pred.vertices[vmask], gt.vertices[vmask])
        metrics.update({f"{name}/{k}": v for k, v in sub.items()})
    if region_record:
        record["regions"] = region_record
    return {"metrics": metrics, "protocol": record}


def _region_mask(name: str, ids, n_vertices: int, where: str = "regions") -> np.ndarray:
    """(V,) bool mask from user-given vertex ids, validated (errors name `where`)."""
    a = np.asarray(ids)
    if a.ndim != 1 or a.size == 0 or (a.dtype.kind not in "iu"):
        raise InputError(where, f"region {name!r} must be a non-empty 1-D array of integer vertex ids")
    if a.min() < 0 or a.max() >= n_vertices:
        raise InputError(where, f"region {name!r}: vertex ids must lie in [0, {n_vertices}), got [{a.min()}, {a.max()}]")
    mask = np.zeros(n_vertices, dtype=bool)
    mask[a] = True
    return mask
