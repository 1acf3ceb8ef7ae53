"""Latent codes on disk: a small JSON file that `fit` and `sample` write and `interpolate`, `transfer`
and `decode` read.

    {"format": "neuralmorph.latents/1", "family": "pca", "latent_sizes": {...},
     "latents": {"identity": [...], "expression": [...]}, "pose": {...} (optional)}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from neuralmorph.atomic import read_json, write_json
from neuralmorph.errors import InputError
from neuralmorph.models.base import Latents, MorphableModel

FORMAT = "neuralmorph.latents/1"


def save_latents(path: str | Path, model: MorphableModel, latents: Latents, **extra) -> None:
    """Write one head's latents (each (1, K) or (K,)) plus any JSON-able extras (e.g. pose)."""
    data = {
        "format": FORMAT,
        "family": model.family,
        "latent_sizes": model.latent_sizes,
        "latents": {k: v.detach().reshape(-1).cpu().tolist() for k, v in latents.items()},
        **extra,
    }
    write_json(path, data)


def load_latents(path: str | Path, model: MorphableModel) -> Latents:
    """Read a latents file and check it against `model`; returns space -> (1, K) float32 on its device."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "latents file not found")
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(path, f"not a {FORMAT} file")
    if data.get("family") != model.family:
        raise InputError(path, f"holds {data.get('family')!r} latents, the model is {model.family!r}")
    codes = data.get("latents")
    if not isinstance(codes, dict):
        raise InputError(path, "'latents' must be an object mapping each latent space to a list of numbers, got "
                               + ("nothing" if codes is None else type(codes).__name__))
    latents = {}
    for name, values in codes.items():
        if not isinstance(values, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values):
            raise InputError(path, f"latent {name!r} must be a flat list of numbers")
        code = np.asarray(values, dtype=np.float64)
        if not np.isfinite(code).all() or (np.abs(code) > np.finfo(np.float32).max).any():
            raise InputError(path, f"latent {name!r} holds NaN, infinite or float32-overflowing values")
        latents[name] = torch.tensor(code, dtype=torch.float32, device=model.device)[None]
    return model.check_latents(latents, str(path))
