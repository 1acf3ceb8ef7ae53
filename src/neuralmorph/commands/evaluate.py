"""`neuralmorph align | evaluate | evaluate-model | evaluate-real`: put a surface in a reference frame,
score a mesh against its ground truth, measure a model's statistics, and fit a model to public real data.

The work is the library's: `frame.icp_similarity`, `evaluation.protocol.evaluate`,
`evaluation.model_quality.model_quality` and `evaluation.real.write_real_evaluation`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from neuralmorph.errors import InputError
from neuralmorph.fitting import FitConfig
from neuralmorph.geometry.mesh import check_mesh_suffix
from neuralmorph.outputs import Output, Verb


@dataclass(frozen=True)
class AlignConfig(Verb):
    """Align a mesh or point cloud to a reference surface (landmarks, then similarity ICP)."""

    source: Path
    """Mesh or point cloud to move (.ply/.obj/.off/.stl, or .xyz/.npy points)."""
    target: Path
    """Reference mesh."""
    out: Path
    """Aligned copy of the source (.ply or .obj); the transform goes to the same name with .json."""
    source_landmarks: Path | None = None
    """Text file of landmark positions (L rows of x y z) on the source, for the initial similarity."""
    target_landmarks: Path | None = None
    """The same landmarks on the target."""
    scale: bool = True
    """Estimate a scale as well (similarity); off for a rigid alignment."""
    units: Literal["mm", "cm", "dm", "m"] = "mm"
    """Units of both input files."""

    def __post_init__(self):
        check_mesh_suffix("--out", self.out)
        if (self.source_landmarks is None) != (self.target_landmarks is None):
            raise InputError("--source-landmarks/--target-landmarks", "give both landmark files or neither")

    def outputs(self) -> list[Output]:
        return [Output("--out", self.out, None), Output("--out (its transform)", self.out.with_suffix(".json"), None)]


@dataclass(frozen=True)
class EvaluateConfig(Verb):
    """Compare a predicted mesh (or point cloud) with a ground-truth mesh; metrics in millimetres."""

    pred: Path
    """Predicted mesh (or point cloud, points protocol only)."""
    gt: Path
    """Ground-truth mesh."""
    out: Path = Path("metrics.json")
    """Where to write {"metrics": ..., "protocol": ...}."""
    protocol: Literal["points", "render"] = "points"
    """points: area-weighted surface samples; render: NPHM's 10-view render-and-back-project sampling."""
    units: Literal["mm", "cm", "dm", "m"] = "mm"
    """Units of both mesh files."""
    n_points: int = 250_000
    """Points drawn from each surface."""
    views: int = 10
    """Views for the render protocol."""
    seed: int = 0
    """Seed for the point draws."""
    regions: Path | None = None
    """YAML/JSON mapping region name -> ground-truth vertex ids, for region-restricted metrics."""

    def __post_init__(self):
        if self.out.suffix.lower() != ".json":
            raise InputError("--out", f"{self.out}: the metrics are written as JSON; give a .json file name")
        if self.n_points < 1 or self.views < 1:
            raise InputError("--n-points/--views", f"must be positive, got {self.n_points} and {self.views}")


@dataclass(frozen=True)
class EvaluateModelConfig(Verb):
    """Model quality: compactness, generalisation and specificity (mm) against a dataset, with plots."""

    out_kind = "model-quality report"

    model: Path
    """Model folder."""
    data: Path
    """Dataset folder: its test split measures generalisation, its train split specificity."""
    out: Path
    """Output folder: model_quality.json and model_quality.html (plots and table)."""
    sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    """Latent sizes k (per space) to measure at; capped at the model's own sizes."""
    samples: int = 100
    """Heads drawn from the prior for specificity, and from each prior for the generative metrics."""
    seed: int = 0
    """Seed of the prior draws."""
    device: str = "cpu"
    """Torch device."""
    prior: Path | None = None
    """A diffusion prior trained for the model (`train prior`): its generative metrics (MMD, COV, 1-NNA,
    specificity; docs/evaluation.md) are reported beside the Gaussian prior's."""

    def __post_init__(self):
        if not self.sizes or min(self.sizes) < 1 or self.samples < 1:
            raise InputError("--sizes/--samples", "sizes must be positive integers and samples >= 1")


@dataclass(frozen=True)
class RealEvalConfig(Verb):
    """Fit a trained model to a public real data set (SIMPOP faces or the james scan) and score it."""

    out_kind = "real-data evaluation"

    model: Path
    """Model folder (from `neuralmorph train`)."""
    dataset: Literal["simpop", "james"]
    """simpop: the 45 SIMPOP face masks (first --max-faces); james: menpo3d's head-and-shoulders scan."""
    out: Path
    """Output folder: metrics.json and report.html."""
    max_faces: int = 45
    """SIMPOP subset size (the first N faces)."""
    n_points: int = 10_000
    """Points drawn from each target surface for the fit."""
    landmark_weight: float = 0.1
    """Weight of the landmark term in the fit."""
    protocol: Literal["render", "points"] = "render"
    """Evaluation sampling: render (only surface visible from the protocol's cameras, as NPHM evaluates, so
    the model's mouth and eye pockets do not count) or points (area-weighted samples of the cropped
    surfaces)."""
    eval_points: int = 100_000
    """Points per surface in the evaluation protocol."""
    renders: int = 3
    """Targets drawn in the report."""
    device: str = "cpu"
    """Torch device, e.g. cuda."""
    fit: FitConfig = field(default_factory=FitConfig)
    """The fitting loop's weights and schedule."""
    cache: Path | None = None
    """Data cache root (unset: $NEURALMORPH_CACHE when set, else ~/.cache/neuralmorph)."""

    def __post_init__(self):
        if self.max_faces < 1 or self.n_points < 10 or self.eval_points < 1 or self.renders < 0:
            raise InputError("--max-faces/--n-points/--eval-points/--renders",
                             "must be >= 1, >= 10, >= 1 and >= 0")
        if self.landmark_weight < 0:
            raise InputError("--landmark-weight", f"must be >= 0, got {self.landmark_weight}")


def run_align(cfg: AlignConfig) -> None:
    from neuralmorph.atomic import output_files, write_json
    from neuralmorph.frame import icp_similarity, umeyama
    from neuralmorph.geometry.mesh import Mesh, check_cloud, load_landmarks, load_mesh, save_mesh

    src = load_mesh(cfg.source, units=cfg.units, allow_points=True)
    check_cloud(cfg.source, src.vertices)
    ref = load_mesh(cfg.target, units=cfg.units)
    if not ref.area > 0:
        raise InputError(cfg.target, "the reference mesh has zero surface area; nothing to align to")
    init = None
    if cfg.source_landmarks is not None:
        lm_src = load_landmarks(cfg.source_landmarks, cfg.units)
        lm_dst = load_landmarks(cfg.target_landmarks, cfg.units)
        if lm_src.shape != lm_dst.shape:
            raise InputError(cfg.source_landmarks, f"has {len(lm_src)} landmarks, {cfg.target_landmarks} has {len(lm_dst)}")
        try:
            init = umeyama(lm_src, lm_dst, with_scale=cfg.scale)
        except ValueError as exc:  # each set is fine alone, but together they fix no pose
            raise InputError(cfg.source_landmarks, f"and {cfg.target_landmarks} determine no alignment: {exc}") from None
    try:
        result = icp_similarity(src.vertices, ref.vertices, ref.faces, init=init, with_scale=cfg.scale)
    except ValueError as exc:  # the similarity degenerated (e.g. its scale collapsed)
        raise InputError(cfg.source, f"cannot be aligned to {cfg.target}: {exc}") from None
    summary = {"transform": result.transform.as_dict(), "rmse_mm": result.rmse_mm,
               "inlier_fraction": result.inlier_fraction, "iterations": result.iterations}
    with output_files(cfg.out, cfg.out.with_suffix(".json"), overwrite=cfg.overwrite) as (mesh_tmp, json_tmp):
        save_mesh(mesh_tmp, Mesh(result.transform.apply(src.vertices), src.faces))
        write_json(json_tmp, summary)
    print(f"aligned {cfg.source} -> {cfg.out}: rmse {result.rmse_mm:.3f} mm after {result.iterations} iterations, "
          f"scale {result.transform.scale:.4f}")


def run_evaluate(cfg: EvaluateConfig) -> None:
    from neuralmorph.atomic import output_files, write_json
    from neuralmorph.data.ingest import read_regions
    from neuralmorph.evaluation.protocol import Protocol, evaluate
    from neuralmorph.geometry.mesh import load_mesh

    pred = load_mesh(cfg.pred, units=cfg.units, allow_points=cfg.protocol == "points")
    gt = load_mesh(cfg.gt, units=cfg.units)
    regions = None
    if cfg.regions is not None:
        names, weights = read_regions(cfg.regions, len(gt.vertices))
        regions = {n: (weights[:, i] > 0).nonzero()[0] for i, n in enumerate(names)}
    result = evaluate(pred, gt, Protocol(kind=cfg.protocol, n_points=cfg.n_points, n_views=cfg.views, seed=cfg.seed),
                      regions=regions, names=(str(cfg.pred), str(cfg.gt), str(cfg.regions)))
    with output_files(cfg.out, overwrite=cfg.overwrite) as (tmp,):
        write_json(tmp, result)
    m = result["metrics"]
    print(f"{cfg.pred} vs {cfg.gt} ({cfg.protocol}): accuracy {m['accuracy_mm']:.3f} mm, completeness "
          f"{m['completeness_mm']:.3f} mm, chamfer-L1 {m['chamfer_l1_mm']:.3f} mm, F@2.5mm {m['fscore@2.5mm']:.3f}"
          f" -> {cfg.out}")


def run_evaluate_model(cfg: EvaluateModelConfig) -> dict:
    from neuralmorph.atomic import atomic_dir, write_json
    from neuralmorph.data.dataset import HeadDataset
    from neuralmorph.evaluation.generative import prior_report
    from neuralmorph.evaluation.model_quality import model_quality, quality_plots
    from neuralmorph.evaluation.report import Report
    from neuralmorph.models.base import MorphableModel
    from neuralmorph.prior.latent import load_prior

    start = time.perf_counter()
    model = MorphableModel.load(cfg.model, device=cfg.device)
    priors = {"gaussian": load_prior(model, None)}
    if cfg.prior is not None:
        priors["diffusion"] = load_prior(model, cfg.prior)
    dataset = HeadDataset.load(cfg.data)
    result = model_quality(model, dataset, cfg.sizes, cfg.samples, cfg.seed, where=str(cfg.model))
    result["generative"] = prior_report(model, dataset, priors, cfg.samples, cfg.seed)
    report = Report(f"Model quality: {cfg.model}")
    c = result["curves"]
    report.add_metrics_table("Per latent size", [{"k": k, "generalisation (mm)": g, "specificity (mm)": s}
                                                 for k, g, s in zip(c["k"], c["generalisation_mm"], c["specificity_mm"])])
    report.add_metrics_table("Generative metrics per prior (chamfer-L1 mm on 2,048 points; 1-NNA: 0.5 ideal)",
                             [{"prior": kind, **{k: v for k, v in row.items() if k != "protocol"}}
                              for kind, row in result["generative"].items()])
    for title, svg in quality_plots(result):
        report.add_svg(title, svg)
    report.add_json("Protocol", result["protocol"])
    with atomic_dir(cfg.out, "model-quality report", cfg.overwrite) as tmp:
        write_json(tmp / "model_quality.json", result)
        report.write(tmp / "model_quality.html")
    m = result["metrics"]
    generative = "; ".join(f"{kind} prior 1-NNA {row['nna_1']:.3f}, COV {row['cov']:.2f}, MMD {row['mmd_cd_mm']:.3f} mm"
                           for kind, row in result["generative"].items())
    print(f"{cfg.model}: generalisation {m['generalisation_mm']:.3f} mm, specificity {m['specificity_mm']:.3f} mm "
          f"at k={c['k'][-1]}; {generative} ({time.perf_counter() - start:.1f} s) -> {cfg.out}")
    return result


def run_real_eval(cfg: RealEvalConfig) -> dict:
    """`neuralmorph evaluate-real`: fit, score, write out/metrics.json and out/report.html."""
    from neuralmorph.evaluation.protocol import Protocol
    from neuralmorph.evaluation.real import LANDMARK_KEY, RealSettings, write_real_evaluation

    settings = RealSettings(n_points=cfg.n_points, landmark_weight=cfg.landmark_weight, fit=cfg.fit,
                            protocol=Protocol(kind=cfg.protocol, n_points=cfg.eval_points))
    summary = write_real_evaluation(cfg.model, cfg.dataset, cfg.out, settings, cache=cfg.cache,
                                    max_faces=cfg.max_faces, renders=cfg.renders, device=cfg.device,
                                    overwrite=cfg.overwrite)
    m, p = summary["metrics"], summary["protocol"]
    print(f"{p['dataset']}: {len(summary['per_target'])} targets, completeness {m['completeness_mm']:.2f} mm, accuracy "
          f"{m['accuracy_mm']:.2f} mm, F@2.5mm {m['fscore@2.5mm']:.3f}, landmark error {m[LANDMARK_KEY]:.2f} mm "
          f"in {p['wall_seconds']:.0f} s -> {Path(cfg.out)}")
    return summary
