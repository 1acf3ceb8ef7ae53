"""PCA 3DMM on the embedded test split: held-out error vs latent size, and fitting time per head.

    python benchmarks/bench_pca.py [--subjects 50] [--expressions 6] [--repeats 3] [--out bench_pca.json]

Data: the demo's dataset (synth, seed 0; a fifth of the identities held out). Latent size d is the total
over both spaces, split evenly (d/2 identity + d/2 expression components; identity is capped at the
number of training subjects minus one). Held-out error: exact projection of every test-split head,
mean per-vertex Euclidean error in mm. Fit times: median over repeats of one head, registered (closed
form with rigid alignment) and from a single-view 2,500-point cloud (the default FitConfig).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from neuralmorph.data.observe import single_view_points
from neuralmorph.data.synth import SynthConfig, synthesize
from neuralmorph.fitting import FitConfig, PointToSurfaceTerm, fit, fit_registered, initial_pose
from neuralmorph.models import PCAConfig, PCAModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--subjects", type=int, default=50)
    ap.add_argument("--expressions", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = synthesize(SynthConfig(out=Path(tmp) / "d", subjects=args.subjects, expressions=args.expressions,
                                      scans=False, val_fraction=0.0), progress=False)  # the demo's train/test split
    full = PCAModel.build(data, PCAConfig(identity_dims=10_000, expression_dims=10_000))
    test = torch.as_tensor(data.vertices[data.registered_rows("test")])
    errors = {}
    for d in (16, 32, 64):
        sub = full.truncated(d // 2, d // 2)
        with torch.no_grad():
            errors[d] = {"latent_sizes": sub.latent_sizes,
                         "vertex_error_mm": float((sub.decode(sub.project(test)) - test).norm(dim=-1).mean())}
        print(f"held-out vertex error at d={d:3d} {sub.latent_sizes}: {errors[d]['vertex_error_mm']:.3f} mm "
              f"({len(test)} heads)")

    model = full.truncated(16, 16)
    truth = test[0].double().numpy()
    reg_times, pc_times, pc_errors = [], [], []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        fit_registered(model, truth)
        reg_times.append(time.perf_counter() - t0)
        points, _ = single_view_points(truth, data.faces, np.random.default_rng(r))
        t0 = time.perf_counter()
        pose = initial_pose(model, points=points)
        res = fit(model, [PointToSurfaceTerm(torch.tensor(points, dtype=torch.float32), model.faces)], FitConfig(),
                  init_pose=pose)
        pc_times.append(time.perf_counter() - t0)
        pc_errors.append(float(np.linalg.norm(res.vertices - truth, axis=1).mean()))
    timing = {"registered_fit_s": statistics.median(reg_times), "point_cloud_fit_s": statistics.median(pc_times),
              "point_cloud_fit_vertex_error_mm": statistics.median(pc_errors), "latent_sizes": model.latent_sizes,
              "fit_config": FitConfig().__dict__}
    print(f"fit one head (d=32): registered {timing['registered_fit_s'] * 1000:.0f} ms, 2,500-point view "
          f"{timing['point_cloud_fit_s']:.2f} s (vertex error {timing['point_cloud_fit_vertex_error_mm']:.2f} mm), "
          f"medians of {args.repeats}")
    if args.out:
        args.out.write_text(json.dumps({
            "benchmark": "pca", "held_out": errors, "fit": timing,
            "data": {"subjects": args.subjects, "expressions": args.expressions, "test_heads": len(test)},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "python": platform.python_version(), "torch": torch.__version__},
        }, indent=2))


if __name__ == "__main__":
    main()
