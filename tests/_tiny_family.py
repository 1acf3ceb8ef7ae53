"""A tiny trainable "family" for the trainer's tests: an MLP autoencoder over small registered heads.

Importable (TinyHeads, TinyAutoencoder) and runnable as a script, also under torchrun:

    python tests/_tiny_family.py --out RUN [--steps 12] [--resume] ...
    python -m torch.distributed.run --nproc-per-node 2 --standalone tests/_tiny_family.py --out RUN ...

The loss is a mean over the batch, so the mean of two equal halves' gradients (what DDP averages) is
the gradient of the whole batch. With --noise > 0 the loss draws from torch, numpy and python RNGs, so
the kill-and-resume test also checks that all three are restored.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from neuralmorph.training import Trainable


class TinyHeads(Dataset):
    """n registered "heads" of n_vertices vertices: a mean shape plus a few random modes, float32.

    `start` skips the population's first heads: TinyHeads(6, start=24) is a held-out split of TinyHeads(24).
    """

    def __init__(self, n: int = 24, n_vertices: int = 16, modes: int = 3, seed: int = 0, start: int = 0):
        g = torch.Generator().manual_seed(seed)
        mean = torch.randn(n_vertices, 3, generator=g)
        basis = torch.randn(modes, n_vertices, 3, generator=g) * 0.3
        codes = torch.randn(start + n, modes, generator=g)[start:]  # heads start..start+n of one population
        self.vertices = (mean + torch.einsum("sk,knc->snc", codes, basis)).float()

    def __len__(self) -> int:
        return len(self.vertices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"vertices": self.vertices[i]}


class TinyAutoencoder(torch.nn.Module, Trainable):
    """vertices (B, N, 3) -> latent (B, K) -> vertices; trained on the mean squared vertex error."""

    def __init__(self, n_vertices: int = 16, latent: int = 4, hidden: int = 16, noise: float = 0.0,
                 nan_at_step: int | None = None):
        super().__init__()
        d = n_vertices * 3
        self.encoder = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, latent))
        self.decoder = torch.nn.Sequential(torch.nn.Linear(latent, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, d))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.noise = noise
        self.nan_at_step = nan_at_step

    def forward(self, vertices: torch.Tensor) -> torch.Tensor:
        x = vertices.flatten(1)
        return self.decoder(self.encoder(x)).view_as(vertices)

    def training_loss(self, batch: dict[str, torch.Tensor], step: int):
        x = batch["vertices"]
        inp = x
        if self.noise:
            jitter = (1.0 + 0.1 * float(np.random.rand())) * (1.0 + 0.1 * random.random())
            inp = x + self.noise * jitter * torch.randn_like(x)
        loss = ((self(inp) - x) ** 2).mean()
        if self.nan_at_step is not None and step >= self.nan_at_step:
            loss = loss * float("nan")
        with torch.no_grad():
            self.calls += 1
        return loss, {"mse": loss.detach()}

    def validation_metrics(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, float]:
        x = batch["vertices"]
        err = (self(x) - x).norm(dim=-1)
        return {"mse": float((err ** 2).mean() / 3), "mean_err": float(err.mean())}


def main(argv: list[str] | None = None) -> None:
    from neuralmorph.training import TrainerConfig, train

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--checkpoint-every", type=int, default=4)
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--noise", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--val", action="store_true")
    p.add_argument("--test", action="store_true", help="also score 5 further held-out heads after the last step")
    p.add_argument("--resume", action="store_true")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    model = TinyAutoencoder(noise=a.noise)
    cfg = TrainerConfig(max_steps=a.steps, batch_size=a.batch, lr=a.lr, warmup_steps=2, checkpoint_every=a.checkpoint_every,
                        val_every=4, log_every=2, seed=3, tensorboard=False)
    train(model, TinyHeads(a.n), cfg, Path(a.out), val_set=TinyHeads(6, start=a.n) if a.val else None, resume=a.resume,
          test_set=TinyHeads(5, start=a.n + 6) if a.test else None, run_config={"family": "tiny", "noise": a.noise, "n": a.n, "resume": a.resume}, progress=False)


if __name__ == "__main__":
    sys.exit(main())
