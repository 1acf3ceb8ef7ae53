"""`neuralmorph bench fidelity | extraction | rasterizer | appearance | prior`: measure families side by side,
what implicit mesh extraction saves, the fast Gaussian rasterizer against its reference, single-image
appearance fits, and the diffusion prior against the Gaussian.

`FidelityConfig`, `ExtractionBenchConfig` and `RasterizerBenchConfig` are the library functions' own inputs
(`evaluation.fidelity.bench_fidelity`, `evaluation.extraction_bench.bench_extraction`,
`evaluation.rasterizer_bench.bench_rasterizer`); those run the benchmark, write the JSON and return the
results; the runners here print the tables.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from neuralmorph.evaluation.appearance_bench import METHODS, AppearanceBenchConfig, bench_appearance
from neuralmorph.evaluation.extraction_bench import AIMS, ExtractionBenchConfig, bench_extraction
from neuralmorph.evaluation.fidelity import FidelityConfig, bench_fidelity
from neuralmorph.evaluation.prior_bench import PriorBenchConfig, bench_prior
from neuralmorph.evaluation.rasterizer_bench import RasterizerBenchConfig, bench_rasterizer

FIDELITY_COLUMNS = ("vertex_error_mm", "face/vertex_error_mm", "chamfer_l1_mm", "fscore@1mm", "chamfer_l1_mm_face",
                    "fscore@1mm_face")
"""The metrics `bench fidelity` prints per family (the JSON has them all)."""


def run_fidelity(cfg: FidelityConfig) -> dict:
    """`neuralmorph bench fidelity`: run the benchmark, print one row per family, return the report."""
    report = bench_fidelity(cfg)
    keys = FIDELITY_COLUMNS
    print(f"{'family':16s}" + "".join(f"{k:>21s}" for k in keys))
    for name, m in report["models"].items():
        print(f"{name:16s}" + "".join(f"{m[k]:21.3f}" if k in m else f"{'-':>21s}" for k in keys))
    print(f"-> {Path(cfg.out)}")
    return report


def run_extraction_bench(cfg: ExtractionBenchConfig) -> dict:
    """`neuralmorph bench extraction`: run the benchmark, print its table against the aims, return the results."""
    r = bench_extraction(cfg)
    print(f"{'pass':16s}{'evaluations':>14s}{'median s':>12s}{'vertices':>11s}")
    for name, key in (("dense", "dense"), ("coarse-to-fine", "coarse_to_fine")):
        row = r[key]
        print(f"{name:16s}{row['evaluations']:14d}{float(statistics.median(row['seconds'])):12.2f}{row['vertices']:11d}")
    lines = [("eval_ratio", r["eval_ratio"], ">="), ("speedup", r["speedup"], ">="),
             ("chamfer_mm", r["chamfer_mm"], "<="), ("sparse_speedup", r["sparse_speedup"], ">="),
             ("sparse_max_abs_diff", r["sparse_max_abs_diff"], "<=")]
    for name, value, sense in lines:
        shown = "n/a" if value is None else f"{value:.4g}"
        print(f"{name:22s}{shown:>12s}   aim {sense} {AIMS[name]:g}")
    print(f"-> {cfg.out}")
    return r


def run_rasterizer_bench(cfg: RasterizerBenchConfig) -> dict:
    """`neuralmorph bench rasterizer`: time the fast Gaussian rasterizer against the reference, print one row
    per case, return the results."""
    r = bench_rasterizer(cfg)
    cols = ("fast_fwd_s", "fast_fwd_bwd_s", "reference_fwd_s", "reference_fwd_bwd_s", "speedup",
            "max_image_abs_diff", "max_grad_rel_diff")
    print(f"{'case':14s}" + "".join(f"{k:>21s}" for k in cols))
    for name, row in r["cases"].items():
        print(f"{name:14s}" + "".join(f"{row[k]:21.3g}" for k in cols))
    print(f"-> {cfg.out}")
    return r


def run_appearance_bench(cfg: AppearanceBenchConfig) -> dict:
    """`neuralmorph bench appearance`: single-image fits of held-out identities scored on unseen views; print
    one row per method, return the report."""
    r = bench_appearance(cfg)
    cols = ("psnr_heldout_db", "psnr_heldout_masked_db", "ssim_heldout", "psnr_input_db", "fit_seconds")
    print(f"{'method':18s}" + "".join(f"{k:>24s}" for k in cols))
    for name in METHODS:
        row = r["methods"][name]
        print(f"{name:18s}" + "".join(f"{row[k]:24.3f}" for k in cols))
    print(f"-> {cfg.out}")
    return r


def run_prior_bench(cfg: PriorBenchConfig) -> dict:
    """`neuralmorph bench prior`: the Gaussian and the diffusion prior of each mesh family side by side; print
    their generative metrics and fits, return the report."""
    r = bench_prior(cfg)
    cols = ("mmd_cd_mm", "cov", "nna_1", "specificity_cd_mm", "sample_seconds_100")
    fit_cols = ("chamfer_l1_face_mm", "f_score_1mm_face")
    print(f"{'family / prior':22s}" + "".join(f"{k:>20s}" for k in cols + fit_cols))
    for family, priors in r["families"].items():
        for kind, row in priors.items():
            fit = r["fits"][family][kind]
            print(f"{family + ' / ' + kind:22s}" + "".join(f"{row[k]:20.4f}" for k in cols)
                  + "".join(f"{fit[k]:20.4f}" for k in fit_cols))
    print(f"-> {cfg.out}")
    return r
