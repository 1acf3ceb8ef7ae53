"""Implicit families: point-cloud fit time per subject, and how quickly the fit gets close to its final error.

    python benchmarks/bench_implicit_fit.py --model RUN/model --data DATA [--subjects 2] [--steps 50 100 200 300 400]
                                           [--out bench_implicit_fit.json]

For each held-out subject of DATA (the test split; the model must not have seen it): one single-view
2,500-point cloud per head of the subject (NPHM's protocol), then `fit_point_clouds` with the default
ImplicitFitConfig and a head pose per observation (as the fidelity benchmark) at each step count. Each
fit is scored against the registered ground truth with the fidelity benchmark's protocol (render, 20 mm
neck cut; face region, mm). Reported per step count: median fit seconds (fitting and meshing), the mean
face chamfer-L1 and face F@1mm; and the smallest step count whose error is within 5% of the longest
run's, with its time: the time to within 5% of the final error. With --subjects 6 --steps 300
the clouds and fit settings are the fidelity benchmark's (same seed, same order).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.data.head_model import HeadModel
from neuralmorph.data.observe import single_view_points
from neuralmorph.evaluation.fidelity import IMPLICIT_PROTOCOL
from neuralmorph.evaluation.protocol import evaluate
from neuralmorph.geometry.mesh import Mesh
from neuralmorph.fitting.implicit import ImplicitFitConfig, fit_point_clouds
from neuralmorph.models.base import MorphableModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--subjects", type=int, default=2)
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 100, 200, 300, 400])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    model = MorphableModel.load(args.model)
    data = HeadDataset.load(args.data)
    face = {"face": HeadModel.load().regions["face"]}
    subjects = sorted({h.subject for h in data.heads if h.split == "test"})[:args.subjects]
    rng = np.random.default_rng(0)
    observations = {s: [h.registered for h in data.heads if h.subject == s and h.registered >= 0] for s in subjects}
    clouds = {s: [single_view_points(data.vertices[i], data.faces, rng)[0] for i in rows]
              for s, rows in observations.items()}
    rows = []
    for steps in sorted(args.steps):
        seconds, errors, fscores = [], [], []
        for s in subjects:
            start = time.perf_counter()
            # as the fidelity benchmark fits: a head pose per observation
            result = fit_point_clouds(model, clouds[s], ImplicitFitConfig(steps=steps, eval_points=0, head_pose=True, align=False))
            seconds.append(time.perf_counter() - start)
            for i, mesh in zip(observations[s], result.meshes):
                m = evaluate(mesh, Mesh(data.vertices[i].astype(np.float64), data.faces), IMPLICIT_PROTOCOL,
                             regions=face)["metrics"]
                errors.append(m["face/chamfer_l1_mm"])
                fscores.append(m["face/fscore@1mm"])
        rows.append({"steps": steps, "seconds_per_subject": float(np.median(seconds)),
                     "face_chamfer_l1_mm": float(np.mean(errors)), "face_fscore@1mm": float(np.mean(fscores))})
        print(f"{steps:5d} steps: {rows[-1]['seconds_per_subject']:6.1f} s/subject, face chamfer-L1 "
              f"{rows[-1]['face_chamfer_l1_mm']:.3f} mm, face F@1mm {rows[-1]['face_fscore@1mm']:.3f}", flush=True)
    final = rows[-1]["face_chamfer_l1_mm"]
    within = next(r for r in rows if r["face_chamfer_l1_mm"] <= 1.05 * final)
    report = {"rows": rows, "within_5_percent": within, "family": model.family, "model": str(args.model),
              "subjects": subjects, "observations_per_subject": [len(observations[s]) for s in subjects],
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}}
    print(f"within 5% of the {rows[-1]['steps']}-step error after {within['steps']} steps: "
          f"{within['seconds_per_subject']:.1f} s per subject")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
