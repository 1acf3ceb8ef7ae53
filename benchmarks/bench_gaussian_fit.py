"""Free 3D Gaussians fitted to posed views of a textured head: PSNR on training and held-out views, time.

    python benchmarks/bench_gaussian_fit.py [--subject synthetic|james] [--size 256] [--gaussians 20000]
        [--steps 1500] [--train-views 8] [--test-views 4] [--out R.json]

Views: ground truth from the ray-cast textured renderer (`data.textured_render`, 2x2 supersampling,
studio lighting, black background, sRGB-encoded as in a PNG), cameras on an orbit around the head: the training views evenly
from yaw -60 to 60 degrees at pitch 0 and +-10, the held-out views in between (yaw -45..45, pitch 5).
Synthetic: the embedded head's template with the albedo of identity seed 0 (`data.appearance`); james:
menpo3d's real textured scan (`neuralmorph data fetch james`). The Gaussians start on area-uniform
samples of the mesh surface, grey, isotropic (`splat.optimize.initial_scene`), and are fitted by
`splat.optimize.fit_gaussians` (no densification). PSNR over the whole image (background included) and
within the mask (coverage > 0.5).
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

from neuralmorph.data.textured_render import srgb_encode
from neuralmorph.geometry.sampling import sample_surface
from neuralmorph.splat.optimize import GaussianFitConfig, fit_gaussians, initial_scene, view_psnr


def _subject(name: str):
    from neuralmorph.data.textured_render import TexturedMesh

    if name == "james":
        from neuralmorph.data.textured_render import load_textured_obj
        from neuralmorph.data.fetch import cache_dir

        return load_textured_obj(cache_dir() / "james" / "james.obj")
    from neuralmorph.data.appearance import generate_appearance
    from neuralmorph.data.head_model import HeadModel

    head = HeadModel.load()
    return TexturedMesh(head.vertices, head.faces, head.face_uvs, generate_appearance(0).texture)


def _views(mesh, size: int, n_train: int, n_test: int):
    from neuralmorph.data.textured_render import Lighting, TexturedRenderer, orbit_camera

    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    centre = (lo + hi) / 2
    radius = float(np.linalg.norm(mesh.vertices - centre, axis=1).max())  # the head fills the frame
    pitches = [0.0, 10.0, -10.0]
    train = [orbit_camera(centre, radius, yaw, pitches[i % 3], size)
             for i, yaw in enumerate(np.linspace(-60, 60, n_train))]
    test = [orbit_camera(centre, radius, yaw, 5.0, size) for yaw in np.linspace(-45, 45, n_test)]
    renderer, light = TexturedRenderer(mesh), Lighting.studio()
    shots = [renderer.render(c, light, supersample=2) for c in train + test]
    return train, test, shots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subject", choices=["synthetic", "james"], default="synthetic")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--gaussians", type=int, default=20_000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--train-views", type=int, default=8)
    ap.add_argument("--test-views", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    mesh = _subject(args.subject)
    start = time.perf_counter()
    train, test, shots = _views(mesh, args.size, args.train_views, args.test_views)
    render_s = time.perf_counter() - start
    # fitted as the image files hold them (sRGB-encoded, like `data synth --images` PNGs and users' photos):
    # linear values crowd the dark skin into a few per cent of the range and flatter the PSNR
    images = [srgb_encode(s.rgb).astype(np.float32) / 255 for s in shots]
    masks = [(s.mask > 0.5).astype(np.float32) for s in shots]
    points = sample_surface(mesh.vertices, mesh.faces, args.gaussians, 0)[0]
    config = GaussianFitConfig(steps=args.steps)
    scene = initial_scene(points, sh_degree=config.sh_degree, init_opacity=config.init_opacity)
    n = args.train_views
    before = view_psnr(scene, images[:n], train)
    result = fit_gaussians(images[:n], train, scene, config)
    report = {
        "subject": args.subject, "size": args.size, "gaussians": args.gaussians, "steps": args.steps,
        "train_views": n, "test_views": args.test_views, "render_views_s": render_s, "fit_s": result.seconds,
        "psnr_train_before_db": float(np.mean(before)),
        "psnr_train_db": float(np.mean(view_psnr(scene, images[:n], train))),
        "psnr_test_db": float(np.mean(view_psnr(scene, images[n:], test))),
        "psnr_train_masked_db": float(np.mean(view_psnr(scene, images[:n], train, masks=masks[:n]))),
        "psnr_test_masked_db": float(np.mean(view_psnr(scene, images[n:], test, masks=masks[n:]))),
        "loss": result.history,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
    }
    print(json.dumps({k: v for k, v in report.items() if k != "loss"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
