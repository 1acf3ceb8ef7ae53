"""The UV-space generator: an identity appearance code -> feature maps over the head's UV layout.

Identity Field Learning's idea, re-derived: a small convolutional decoder turns one latent code into maps
over texture space, and every Gaussian reads its attributes where its site lies in UV. Neighbouring
sites share the generator's features, so one code moves whole regions coherently (skin tone, lips,
brows) — what lets a code fitted to one photograph explain the unseen sides of the head.

    z (B, D) ─ mapping MLP ─ w (B, W)
    w ─ linear ─ (B, C, 4, 4) ─ [×2 upsample, 3×3 conv, FiLM(w), LeakyReLU] × n ─ 1×1 conv ─ (B, out, R, R)

Each block is modulated by the code (a per-channel scale and shift from w: FiLM, the cheap cousin of
StyleGAN's modulated convolutions), so the code acts at every resolution. The last layer starts at
zero: an untrained generator adds nothing, and the model starts as its per-Gaussian base attributes.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, w_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(w_dim, 2 * cout)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        scale, shift = self.film(w)[:, :, None, None].chunk(2, dim=1)
        return F.leaky_relu(x * (1 + scale) + shift, 0.2)


class UVGenerator(nn.Module):
    """z (B, latent) float32 -> maps (B, out_channels, resolution, resolution) float32.

    resolution: a power of two >= 8; channels: the widest layer (halved every two blocks, at least 16).
    """

    def __init__(self, latent: int, out_channels: int, resolution: int = 64, channels: int = 64, w_dim: int = 64):
        super().__init__()
        blocks = int(math.log2(resolution)) - 2
        if 2 ** (blocks + 2) != resolution or blocks < 1:
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        self.mapping = nn.Sequential(nn.Linear(latent, w_dim), nn.LeakyReLU(0.2), nn.Linear(w_dim, w_dim),
                                     nn.LeakyReLU(0.2))
        self.start = nn.Linear(w_dim, channels * 16)
        widths = [max(channels >> (i // 2), min(channels, 16)) for i in range(blocks + 1)]
        self.blocks = nn.ModuleList(_Block(widths[i], widths[i + 1], w_dim) for i in range(blocks))
        self.out = nn.Conv2d(widths[-1], out_channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.channels = channels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.mapping(z)
        x = F.leaky_relu(self.start(w).view(len(z), self.channels, 4, 4), 0.2)
        for block in self.blocks:
            x = block(x, w)
        return self.out(x)
