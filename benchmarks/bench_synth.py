"""Time `neuralmorph data synth` for 100 heads, with and without raw scans (median over repeats).

    python benchmarks/bench_synth.py [--heads 100] [--repeats 3] [--out bench_synth.json]
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

from neuralmorph.data.head_model import HeadModel
from neuralmorph.data.synth import SynthConfig, synthesize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--heads", type=int, default=100)
    ap.add_argument("--expressions", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    subjects = args.heads // args.expressions
    model = HeadModel.load()  # loaded once: the asset read is not what we time
    results = {}
    for scans in (False, True):
        times = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                synthesize(SynthConfig(out=Path(tmp) / "d", subjects=subjects, expressions=args.expressions,
                                       scans=scans), model=model, progress=False)
                times.append(time.perf_counter() - t0)
        key = "with_scans" if scans else "registered_only"
        results[key] = {"median_s": statistics.median(times), "runs_s": times,
                        "heads_per_s": subjects * args.expressions / statistics.median(times)}
        print(f"synth {subjects * args.expressions} heads ({key}): median {statistics.median(times):.2f} s "
              f"over {args.repeats} runs ({results[key]['heads_per_s']:.1f} heads/s)")
    report = {"benchmark": "synth", "heads": subjects * args.expressions, "results": results,
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "python": platform.python_version(), "cpus": os.cpu_count()}}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
