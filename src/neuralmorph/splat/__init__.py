"""Differentiable 3D Gaussian splatting, CPU first and device-agnostic (docs/splat.md).

`rasterize(means, quats, scales, opacities, colors, viewmat, K, width, height, ...)` renders Gaussians into
one pinhole view and returns rgb, alpha, expected depth, screen radii and the 2D means (whose gradient
drives densification). The rasterizer's modules: `project` (EWA projection), `sh` (spherical harmonics),
`reference` (plain torch compositor, the ground truth), `fast` (numba CPU kernels with a hand-written
backward), `rasterize` (the public function); its benchmark is `neuralmorph.evaluation.rasterizer_bench`.
"""

from neuralmorph.splat.rasterize import rasterize

__all__ = ["rasterize"]
