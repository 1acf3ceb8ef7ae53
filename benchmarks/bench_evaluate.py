"""Time `neuralmorph.evaluation.evaluate` on synthetic head-sized meshes (no external data).

    python benchmarks/bench_evaluate.py --out bench.json [--repeats 3] [--sweep]

Cases:
  points  - the default protocol: 250k area-weighted samples per surface, then all metrics.
  metrics - point_metrics alone on two fixed 250k-point clouds.
  render  - the render protocol (10 views, the default image) on 50k-face meshes.
  --sweep - the render protocol at several image sizes with the same field of view, reporting time,
            hits and the metric noise floor: GT vs the same surface tessellated differently (ideal:
            chamfer 0, F@1mm 1) and vs that surface pushed out 1 mm (ideal: chamfer 1 mm).
The test pair: a bumpy ~100 mm-radius sphere (head-sized) and the same surface re-tessellated from a
rotated icosphere, optionally offset along the radius.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import fast_simplification
import numpy as np
import trimesh

from neuralmorph.evaluation import Protocol, evaluate, point_metrics
from neuralmorph.geometry import Mesh


def _radius(u: np.ndarray) -> np.ndarray:
    """Radius (mm) of the bumpy head-sized surface along unit directions u (N, 3)."""
    x, y, z = u.T
    return 100.0 + 6.0 * np.sin(3 * x) * np.cos(2 * y) + 4.0 * np.sin(4 * z + 1.0) * y


def head_like(n_faces: int = 50_000, rotation_seed: int | None = None, offset_mm: float = 0.0) -> Mesh:
    """A closed bumpy sphere with ~n_faces faces; a rotation seed changes only the tessellation."""
    s = trimesh.creation.icosphere(subdivisions=6)
    u = s.vertices / np.linalg.norm(s.vertices, axis=1, keepdims=True)
    if rotation_seed is not None:
        q = np.linalg.qr(np.random.default_rng(rotation_seed).normal(size=(3, 3)))[0]
        u = u @ (q * np.sign(np.linalg.det(q)))
    v, f = fast_simplification.simplify(u * _radius(u)[:, None], s.faces, target_count=n_faces)
    # push the decimated vertices back onto the analytic surface
    uu = v / np.linalg.norm(v, axis=1, keepdims=True)
    return Mesh(uu * (_radius(uu) + offset_mm)[:, None], f.astype(np.int64))


def timeit(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file for the results")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sweep", action="store_true", help="also sweep render image sizes")
    args = ap.parse_args()

    gt = head_like()
    pred = head_like(rotation_seed=1, offset_mm=1.0)
    rows = []

    t, r = timeit(lambda: evaluate(pred, gt, Protocol(kind="points")), args.repeats)
    rows.append({"case": "points protocol, 250k pts/set", "faces": len(gt.faces), "median_s": t,
                 "chamfer_l1_mm": r["metrics"]["chamfer_l1_mm"], "fscore@1mm": r["metrics"]["fscore@1mm"]})

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(250_000, 3)) * 50, rng.normal(size=(250_000, 3)) * 50
    na, nb = rng.normal(size=(250_000, 3)), rng.normal(size=(250_000, 3))
    t, r = timeit(lambda: point_metrics(a, b, na, nb), args.repeats)
    rows.append({"case": "point_metrics only, 250k vs 250k", "faces": 0, "median_s": t,
                 "chamfer_l1_mm": r["chamfer_l1_mm"], "fscore@1mm": r["fscore@1mm"]})

    t, r = timeit(lambda: evaluate(pred, gt, Protocol(kind="render")), args.repeats)
    rows.append({"case": "render protocol, 10 views 640x480", "faces": len(gt.faces), "median_s": t,
                 "chamfer_l1_mm": r["metrics"]["chamfer_l1_mm"], "fscore@1mm": r["metrics"]["fscore@1mm"],
                 "hits_gt": r["protocol"]["counts"]["gt"]["hits"]})

    print(f"{'case':40s} {'faces':>7s} {'median s':>9s} {'CD-L1 mm':>9s} {'F@1mm':>7s}")
    for row in rows:
        print(f"{row['case']:40s} {row['faces']:7d} {row['median_s']:9.3f} {row['chamfer_l1_mm']:9.4f} "
              f"{row['fscore@1mm']:7.4f}")

    sweep = []
    if args.sweep:
        same = head_like(rotation_seed=1)
        print(f"\n{'image':>10s} {'focal':>6s} {'mm/px':>6s} {'s/eval':>7s} {'hits/head':>10s} "
              f"{'floor CD-L1':>11s} {'floor F@1':>9s} {'+1mm CD-L1':>10s} {'+1mm F@2.5':>10s}")
        for w, h, f in [(320, 240, 610.0), (480, 360, 915.0), (640, 480, 1220.0), (1280, 960, 2440.0)]:
            p = Protocol(kind="render", image_width=w, image_height=h, focal=f)
            t, r0 = timeit(lambda: evaluate(same, gt, p), args.repeats)
            r1 = evaluate(pred, gt, p)
            row = {"width": w, "height": h, "focal": f, "mm_per_px_at_600": 600.0 / f, "median_s": t,
                   "hits_gt": r0["protocol"]["counts"]["gt"]["hits"],
                   "floor_chamfer_l1_mm": r0["metrics"]["chamfer_l1_mm"],
                   "floor_fscore@1mm": r0["metrics"]["fscore@1mm"],
                   "offset1_chamfer_l1_mm": r1["metrics"]["chamfer_l1_mm"],
                   "offset1_fscore@2.5mm": r1["metrics"]["fscore@2.5mm"]}
            sweep.append(row)
            print(f"{w:>5d}x{h:<4d} {f:6.0f} {600 / f:6.3f} {t:7.2f} {row['hits_gt']:10d} "
                  f"{row['floor_chamfer_l1_mm']:11.4f} {row['floor_fscore@1mm']:9.4f} "
                  f"{row['offset1_chamfer_l1_mm']:10.4f} {row['offset1_fscore@2.5mm']:10.4f}")

    with open(args.out, "w") as fh:
        json.dump({"machine": {"python": platform.python_version(), "processor": platform.processor(),
                               "cpus": __import__("os").cpu_count()},
                   "repeats": args.repeats, "rows": rows, "render_sweep": sweep}, fh, indent=2)


if __name__ == "__main__":
    main()
