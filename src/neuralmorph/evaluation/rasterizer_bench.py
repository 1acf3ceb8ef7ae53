"""`neuralmorph bench rasterizer`: the fast Gaussian rasterizer against the torch reference.

Scene (`head_scene`): N Gaussians sampled uniformly on the embedded head's surface (metres), flattened
along the surface normal (tangent standard deviations 0.5-1.0x the mean sample spacing sqrt(area / N),
0.1-0.3x along the normal, a random spin about the normal), random colours and opacities in [0.3, 1];
a pinhole camera 0.6 m in front of the face with fx = 1.03 fy and an off-centre principal point, the head
filling about 85% of the image height.

Per case (width x height, N): medians over repeats of the forward pass and of forward + backward (loss =
sum of rgb, alpha and depth images weighted by fixed random images) for the fast path and the reference,
both in float32; speedup = reference / fast, forward + backward. Agreement of the two on the same float32
inputs: max_image_abs_diff (max over rgb and alpha of |fast - reference|) and max_grad_rel_diff (max over
means, quats, scales, opacities, colours and the 2D means of max |g_fast - g_ref| / max |g_ref|). Beside
them: the same two numbers with both paths in float64 (`float64`), and each float32 path against the
float64 reference (`float32_vs_float64_reference`): rounding the inputs to float32 moves a few
pixel-Gaussian pairs across the compositing thresholds (the 3-sigma edge, alpha 1/255, transmittance
1e-4), which changes those pixels by up to ~1/255 whichever path computes them. fast_first_call_s: the
untimed first fast forward + backward of the case (in a process's first case it includes numba compiling
the kernels, or loading them from its cache).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from neuralmorph.atomic import output_files, write_json
from neuralmorph.errors import InputError
from neuralmorph.outputs import Verb
from neuralmorph.splat.project import matrix_to_quat

AIMS = {"fast_fwd_bwd_s@256x256_20k": 0.5, "speedup": 5.0, "max_image_abs_diff": 1e-5, "max_grad_rel_diff": 1e-4}
"""What the benchmark is judged against (the first at most, on 2 cores)."""
CASES = {"256x256_20k": (256, 256, 20_000), "512x512_100k": (512, 512, 100_000)}
"""Case name -> (width, height, Gaussians)."""
_GRAD_NAMES = ("means", "quats", "scales", "opacities", "colors")


@dataclass(frozen=True)
class RasterizerBenchConfig(Verb):
    """Time the fast Gaussian rasterizer against the torch reference on head-surface scenes, and check they agree."""

    out: Path = Path("rasterizer.json")
    """Where to write {"cases": {name: {...}}, "machine": ..., "command": ...} (JSON)."""
    cases: tuple[str, ...] = tuple(CASES)
    """Which cases to run (256x256_20k, 512x512_100k)."""
    repeats: int = 5
    """Timed runs of the fast path per case (medians reported)."""
    reference_repeats: int = 3
    """Timed runs of the reference per case (medians reported)."""
    sh_degree: int | None = None
    """Colour from SH coefficients of this degree (0-3) instead of plain RGB (unset: plain RGB)."""
    seed: int = 0
    """Seed of the scene's random draws."""

    def __post_init__(self):
        for name in ("repeats", "reference_repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"--{name.replace('_', '-')}", f"must be a positive integer, got {value!r}")
        unknown = [c for c in self.cases if c not in CASES]
        if unknown or not self.cases:
            raise InputError("--cases", f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
        if self.sh_degree is not None and not 0 <= self.sh_degree <= 3:
            raise InputError("--sh-degree", f"must be 0..3, got {self.sh_degree}")


def head_scene(n: int, width: int, height: int, seed: int = 0, dtype: torch.dtype = torch.float32,
               sh_degree: int | None = None) -> dict:
    """The benchmark's scene (see the module): keyword arguments of `splat.rasterize` as CPU tensors.

    Returns means (n, 3), quats (n, 4), scales (n, 3), opacities (n,), colors (n, 3) or (n, K, 3),
    viewmat (4, 4), K (3, 3) in `dtype`, and width, height (and sh_degree when given).
    """
    from neuralmorph.data.head_model import HeadModel
    from neuralmorph.geometry.camera import look_at
    from neuralmorph.geometry.sampling import sample_surface

    head = HeadModel.load()
    v = head.vertices.astype(np.float64) / 1000.0  # metres
    f = head.faces
    pts, normals, _ = sample_surface(v, f, n, seed)
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
    spacing = np.sqrt(area / n)
    rng = np.random.default_rng(seed + 1)
    # a frame per Gaussian: z along the normal, x a random tangent
    helper = np.where(np.abs(normals[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    t1 = np.cross(normals, helper)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    t2 = np.cross(normals, t1)
    ang = rng.uniform(0, 2 * np.pi, n)[:, None]
    x_axis = np.cos(ang) * t1 + np.sin(ang) * t2
    y_axis = np.cross(normals, x_axis)
    rot = np.stack([x_axis, y_axis, normals], axis=2)  # columns are the Gaussian's axes
    quats = matrix_to_quat(torch.as_tensor(rot)).numpy()
    scales = np.concatenate([rng.uniform(0.5, 1.0, (n, 2)), rng.uniform(0.1, 0.3, (n, 1))], axis=1) * spacing
    opacities = rng.uniform(0.3, 1.0, n)
    lo, hi = v.min(0), v.max(0)
    centre = 0.5 * (lo + hi)
    distance = 0.6
    eye = centre + np.array([0.0, 0.0, distance])
    viewmat = look_at(eye, centre, up=(0.0, 1.0, 0.0))
    fy = 0.85 * height * (distance - (hi[2] - centre[2])) / (hi[1] - lo[1])
    K = np.array([[1.03 * fy, 0.0, 0.47 * width], [0.0, fy, 0.53 * height], [0.0, 0.0, 1.0]])
    if sh_degree is None:
        colors = rng.uniform(0.0, 1.0, (n, 3))
    else:
        colors = rng.normal(0.0, 0.3, (n, (sh_degree + 1) ** 2, 3))
        colors[:, 0] = (rng.uniform(0.0, 1.0, (n, 3)) - 0.5) / 0.28209479177387814
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)
    scene = dict(means=t(pts), quats=t(quats), scales=t(scales), opacities=t(opacities), colors=t(colors),
                 viewmat=t(viewmat), K=t(K), width=width, height=height)
    if sh_degree is not None:
        scene["sh_degree"] = sh_degree
    return scene


def _weights(width: int, height: int, channels: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"rgb": torch.randn(height, width, channels, generator=g, dtype=torch.float64),
            "alpha": torch.randn(height, width, generator=g, dtype=torch.float64),
            "depth": torch.randn(height, width, generator=g, dtype=torch.float64)}


def run_once(scene: dict, backend: str, weights: dict | None, dtype: torch.dtype) -> tuple[dict, dict, float]:
    """One render (and a backward pass when weights are given): outputs, gradients, seconds."""
    from neuralmorph.splat import rasterize

    inputs = {k: (v.detach().to(dtype, copy=True).requires_grad_(weights is not None and k in _GRAD_NAMES)
                  if isinstance(v, torch.Tensor) else v) for k, v in scene.items()}  # fresh leaves every run
    start = time.perf_counter()
    out = rasterize(**inputs, backend=backend)
    grads = {}
    if weights is not None:
        loss = sum((out[k] * weights[k].to(dtype)).sum() for k in ("rgb", "alpha", "depth"))
        loss.backward()
        grads = {k: inputs[k].grad for k in _GRAD_NAMES}
        grads["means2d"] = out["means2d"].grad
    seconds = time.perf_counter() - start
    return {k: out[k].detach() for k in ("rgb", "alpha", "depth", "radii")}, grads, seconds


def _agreement(out_a: dict, grads_a: dict, out_b: dict, grads_b: dict) -> tuple[float, float, dict]:
    img = max(float((out_a[k].double() - out_b[k].double()).abs().max()) for k in ("rgb", "alpha"))
    per = {}
    for k in grads_b:
        ref = grads_b[k].double()
        per[k] = float((grads_a[k].double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300))
    return img, max(per.values()), per


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def bench_case(width: int, height: int, n: int, cfg: RasterizerBenchConfig, log=print) -> dict:
    """Time and compare the two paths on one head scene (see the module)."""
    scene = head_scene(n, width, height, cfg.seed, torch.float64, cfg.sh_degree)
    weights = _weights(width, height, 3, cfg.seed + 7)
    f32 = torch.float32
    # warm-up, kept apart: numba's compile (or its cache load) on a process's first call, torch's allocator
    first = run_once(scene, "fast", weights, f32)[2]

    def timed(backend: str, repeats: int):
        """Forward times, forward + backward times, and the last run's outputs and gradients."""
        fwd = [run_once(scene, backend, None, f32)[2] for _ in range(repeats)]
        runs = [run_once(scene, backend, weights, f32) for _ in range(repeats)]
        fb = [r[2] for r in runs]
        log(f"  {backend}: forward {_median(fwd):.3f} s, forward+backward {_median(fb):.3f} s")
        return fwd, fb, runs[-1][0], runs[-1][1]

    fwd, fb, out_fast, g_fast = timed("fast", cfg.repeats)
    rfwd, rfb, out_ref32, g_ref32 = timed("reference", cfg.reference_repeats)
    img, grad, per = _agreement(out_fast, g_fast, out_ref32, g_ref32)
    out_ref64, g_ref64, _ = run_once(scene, "reference", weights, torch.float64)
    out_fast64, g_fast64, _ = run_once(scene, "fast", weights, torch.float64)
    img64, grad64, _ = _agreement(out_fast64, g_fast64, out_ref64, g_ref64)
    img_f, grad_f, _ = _agreement(out_fast, g_fast, out_ref64, g_ref64)
    img_r, grad_r, _ = _agreement(out_ref32, g_ref32, out_ref64, g_ref64)
    visible = int((out_fast["radii"] > 0).sum())
    return {
        "width": width, "height": height, "gaussians": n, "visible_gaussians": visible,
        "fast_fwd_s": _median(fwd), "fast_fwd_bwd_s": _median(fb),
        "reference_fwd_s": _median(rfwd), "reference_fwd_bwd_s": _median(rfb),
        "speedup": _median(rfb) / _median(fb), "fast_first_call_s": first,
        "max_image_abs_diff": img, "max_grad_rel_diff": grad, "grad_rel_diff": per, "dtype": "float32",
        "float64": {"max_image_abs_diff": img64, "max_grad_rel_diff": grad64},
        "float32_vs_float64_reference": {
            "fast": {"max_image_abs_diff": img_f, "max_grad_rel_diff": grad_f},
            "reference": {"max_image_abs_diff": img_r, "max_grad_rel_diff": grad_r}},
        "fast_fwd_s_runs": fwd, "fast_fwd_bwd_s_runs": fb, "reference_fwd_s_runs": rfwd,
        "reference_fwd_bwd_s_runs": rfb,
    }


def _machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        import numba

        info["numba"] = numba.__version__
        info["numba_threads"] = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    except ImportError:
        info["numba"] = None
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines()
        info["lscpu"] = [" ".join(line.split()) for line in lscpu[:10]]
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def bench_rasterizer(cfg: RasterizerBenchConfig, log=print) -> dict:
    """Run every case of cfg, write cfg.out atomically, return the result dict."""
    start = time.perf_counter()
    cases = {}
    for name in cfg.cases:
        w, h, n = CASES[name]
        log(f"{name}: {n:,} Gaussians at {w}x{h}")
        cases[name] = bench_case(w, h, n, cfg, log)
    result = {
        "cases": cases,
        "aims": AIMS,
        "machine": _machine(),
        "command": " ".join(["neuralmorph"] + sys.argv[1:]) if Path(sys.argv[0]).name in ("neuralmorph", "__main__.py")
        else " ".join(sys.argv),
        "total_s": time.perf_counter() - start,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
    }
    with output_files(cfg.out, overwrite=cfg.overwrite) as (tmp,):
        write_json(tmp, result)
    return result
