"""`neuralmorph bench extraction`: what coarse-to-fine extraction and sparse anchor evaluation save.

On a trained implicit model's average identity (the zero identity code):
- eval_ratio: field evaluations of the dense pass / those of the coarse-to-fine pass (same lattice);
- speedup: median dense seconds / median coarse-to-fine seconds (wall time, marching cubes included);
- chamfer_mm: symmetric mean closest-point distance between the two meshes, in mm (points sampled
  uniformly on each surface, exact point-to-triangle distances to the other; the mean of both ways);
- sparse_speedup (local family): median time of the all-anchor evaluation / the sparse one over the same
  points near the surface; sparse_max_abs_diff: max |sdf_sparse - sdf_all| there, in field units. The
  model's field is the K-nearest blend (MonoNPHM), whose weights are exactly zero beyond the K nearest;
  "all-anchor" evaluates every member and blends with those weights (NPHM's evaluate-everything pattern),
  so the two must agree to float rounding. For context, dense_blend_max_abs_diff compares against a
  different field, NPHM's softmax over every anchor (K = 0), on the same trained weights.

The model is used through a small contract (`MorphableModel.load(folder)` giving `frame`, `bounds`,
`family`, `geometry`, `has_anchors`, `zero_latents(1)` and `canonical_field(identity, neighbours,
all_members)`), so tests can pass any object that honours it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from neuralmorph.atomic import output_files, write_json
from neuralmorph.errors import InputError
from neuralmorph.geometry.distance import closest_points
from neuralmorph.geometry.mesh import Mesh
from neuralmorph.outputs import Verb
from neuralmorph.geometry.sampling import sample_surface
from neuralmorph.models.implicit.extraction import (DEFAULT_CHUNK, evaluate_points, extract_coarse_to_fine,
                                             extract_dense)



def sdf_families() -> list[str]:
    """The registered signed-distance families."""
    from neuralmorph.models import MODELS

    return [name for name, cls in MODELS.items() if cls.geometry == "sdf"]

AIMS = {"eval_ratio": 10.0, "speedup": 5.0, "chamfer_mm": 0.05, "sparse_speedup": 3.0, "sparse_max_abs_diff": 1e-4}
"""What the benchmark is judged against: the ratios at least, the chamfer and the difference at most."""
NEAR_SURFACE_MM = 2.0
"""Std of the normal offset of the sparse-timing points from the surface: where fitting queries the field."""


@dataclass(frozen=True)
class ExtractionBenchConfig(Verb):
    """Coarse-to-fine vs dense mesh extraction, and sparse vs all-anchor field evaluation, on a trained implicit model."""

    out: Path = Path("extraction.json")
    """Where to write the results (JSON)."""
    model: Path | None = None
    """A trained implicit model folder (implicit-global or implicit-local); the run needs one."""
    resolution: int = 256
    """Cells per axis of the final lattice ((resolution + 1)³ points)."""
    coarse_resolution: int = 32
    """Cells per axis of the first coarse-to-fine level."""
    band: float = 1.0
    """Coarse-to-fine shell half-width in cell diagonals (safe for fields with slope below 2 * band)."""
    repeats: int = 3
    """Timed runs of the coarse-to-fine pass and of each sparse timing (medians reported)."""
    dense_repeats: int = 1
    """Timed runs of the dense pass (median reported)."""
    points: int = 200_000
    """Near-surface points for the sparse vs all-anchor timing."""
    chamfer_points: int = 100_000
    """Surface samples per mesh for the chamfer distance."""
    chunk: int = DEFAULT_CHUNK
    """Points per field call."""
    device: str = "cpu"
    """Torch device for the model."""
    seed: int = 0
    """Seed of every random draw (surface samples, offsets)."""

    def __post_init__(self):
        for name in ("resolution", "coarse_resolution", "repeats", "dense_repeats", "points", "chamfer_points", "chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"--{name.replace('_', '-')}", f"must be a positive integer, got {value!r}")
        if self.resolution < 2:
            raise InputError("--resolution", f"must be at least 2 cells, got {self.resolution}")
        if self.coarse_resolution > self.resolution:
            raise InputError("--coarse-resolution", f"must not exceed --resolution ({self.resolution}), got {self.coarse_resolution}")
        if not (np.isfinite(self.band) and self.band > 0):
            raise InputError("--band", f"must be a positive number, got {self.band!r}")


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _chamfer_mm(a: Mesh, b: Mesh, n: int, seed: int, mm_per_unit: float) -> float:
    """Mean of the two mean surface-to-surface distances (a's samples to b, b's to a), in mm.

    Exact point-to-triangle distances, not point-to-point: two meshes that agree to 1e-4 mm would
    otherwise read as the sampling spacing (~0.5 mm at 100k samples on a head).
    """
    pa, _, _ = sample_surface(a.vertices, a.faces, n, seed)
    pb, _, _ = sample_surface(b.vertices, b.faces, n, seed + 1)
    _, da, _ = closest_points(pa, b.vertices, b.faces)
    _, db, _ = closest_points(pb, a.vertices, a.faces)
    return 0.5 * (float(da.mean()) + float(db.mean())) * mm_per_unit


def _time_field(field, points: np.ndarray, cfg: ExtractionBenchConfig) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    values = evaluate_points(field, points, cfg.chunk, cfg.device)  # ends on the CPU: device work is done
    return values, time.perf_counter() - start


def _sparse(model, identity: torch.Tensor, surface: Mesh, cfg: ExtractionBenchConfig, mm_per_unit: float) -> dict:
    """Timing and agreement of the default (K nearest anchors) field against the all-anchor one."""
    pts, normals, _ = sample_surface(surface.vertices, surface.faces, cfg.points, cfg.seed + 2)
    rng = np.random.default_rng(cfg.seed + 3)
    offset = rng.normal(0.0, NEAR_SURFACE_MM / mm_per_unit, size=(cfg.points, 1))
    pts = (pts + offset * normals).astype(np.float32)
    sparse_field = model.canonical_field(identity)  # the model's configured default K
    all_field = model.canonical_field(identity, all_members=True)
    # one untimed pass each (allocator and kernel warm-up), then alternate so drift hits both alike
    sdf_sparse, _ = _time_field(sparse_field, pts[: cfg.chunk], cfg)
    _time_field(all_field, pts[: cfg.chunk], cfg)
    t_sparse, t_all = [], []
    for _ in range(cfg.repeats):
        sdf_sparse, ts = _time_field(sparse_field, pts, cfg)
        sdf_all, ta = _time_field(all_field, pts, cfg)
        t_sparse.append(ts)
        t_all.append(ta)
    diff = float(np.abs(sdf_sparse.astype(np.float64) - sdf_all.astype(np.float64)).max())
    sdf_softmax, _ = _time_field(model.canonical_field(identity, neighbours=0), pts, cfg)
    softmax_diff = np.abs(sdf_sparse.astype(np.float64) - sdf_softmax.astype(np.float64))
    return {"points": cfg.points, "near_surface_std_mm": NEAR_SURFACE_MM,
            "sparse_seconds": t_sparse, "all_anchor_seconds": t_all,
            "speedup": _median(t_all) / _median(t_sparse), "max_abs_diff": diff,
            "max_abs_diff_mm": diff * mm_per_unit,
            "dense_blend_max_abs_diff": float(softmax_diff.max()),
            "dense_blend_median_abs_diff": float(np.median(softmax_diff))}


def _machine(device: str) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": device}
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return info


def bench_extraction(cfg: ExtractionBenchConfig, model=None) -> dict:
    """Run the benchmark, write cfg.out atomically, return the result dict.

    model: an already loaded model honouring the contract above (tests); default: load cfg.model.
    Raises InputError("--model", ...) without a model, or with a model of a non-implicit family.
    """
    if model is None:
        if cfg.model is None:
            raise InputError("--model", "no model given: pass the folder of a trained implicit model "
                                        "(train one with `neuralmorph train implicit-local ...`)")
        from neuralmorph.models.base import MorphableModel

        model = MorphableModel.load(cfg.model, device=cfg.device)
    family = model.family
    if model.geometry != "sdf":
        raise InputError("--model", f"holds a {family!r} model; this benchmark needs a signed-distance family "
                                    f"({', '.join(sdf_families())})")
    mm_per_unit = float(model.frame.mm_per_unit)
    bounds = model.bounds.detach().cpu().double().numpy()
    identity = model.zero_latents(1)["identity"].to(cfg.device)
    field = model.canonical_field(identity)

    dense_runs = [extract_dense(field, bounds, cfg.resolution, cfg.chunk, cfg.device, progress=True)
                  for _ in range(cfg.dense_repeats)]
    fine_runs = [extract_coarse_to_fine(field, bounds, cfg.resolution, cfg.coarse_resolution, cfg.band,
                                        cfg.chunk, cfg.device) for _ in range(cfg.repeats)]
    dense, dense_stats = dense_runs[-1]
    fine, fine_stats = fine_runs[-1]
    dense_s = [s.seconds for _, s in dense_runs]
    fine_s = [s.seconds for _, s in fine_runs]
    identical = (dense.vertices.shape == fine.vertices.shape and np.array_equal(dense.faces, fine.faces)
                 and np.array_equal(dense.vertices, fine.vertices))
    result = {
        "eval_ratio": dense_stats.evaluations / fine_stats.evaluations,
        "speedup": _median(dense_s) / _median(fine_s),
        "chamfer_mm": _chamfer_mm(dense, fine, cfg.chamfer_points, cfg.seed, mm_per_unit),
        "identical_meshes": bool(identical),
        "dense": {"evaluations": dense_stats.evaluations, "seconds": dense_s, "vertices": len(dense.vertices),
                  "faces": len(dense.faces), "method": dense_stats.method},
        "coarse_to_fine": {"evaluations": fine_stats.evaluations, "seconds": fine_s, "vertices": len(fine.vertices),
                           "faces": len(fine.faces), "method": fine_stats.method},
    }
    if model.has_anchors:
        sparse = _sparse(model, identity, dense, cfg, mm_per_unit)
        result.update(sparse_speedup=sparse["speedup"], sparse_max_abs_diff=sparse["max_abs_diff"],
                      sparse_max_abs_diff_unit="field units", sparse=sparse)
    else:
        result.update(sparse_speedup=None, sparse_max_abs_diff=None, sparse_max_abs_diff_unit="field units",
                      sparse_reason=f"{family} has no anchors: every query evaluates the one global field")
    result.update(
        aims=AIMS,
        mm_per_unit=mm_per_unit,
        resolution=cfg.resolution,
        lattice_points_per_axis=cfg.resolution + 1,
        bounds=bounds.tolist(),
        family=family,
        model=None if cfg.model is None else str(cfg.model),
        machine=_machine(cfg.device),
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
    )
    with output_files(cfg.out, overwrite=cfg.overwrite) as (tmp,):
        write_json(tmp, result)
    return result

