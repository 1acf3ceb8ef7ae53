"""The appearance model that ships with neuralmorph, in `assets/appearance/` (a model folder like any other;
`--model shipped:appearance` on the command line).

Built by `scripts/build_appearance_asset.py`, which rebuilds it byte for byte: 32 synthetic identities
(seeded [SEED, s]) x 2 expressions x 8 studio-lit views at 128², a PCA model of their heads, and the
appearance family with 10,000 Gaussians trained 3,000 steps on their images. The demo fits it to one
photo of people it never saw (synthesised with other seeds) and to the james scan.
"""

from __future__ import annotations

from pathlib import Path

from neuralmorph.errors import InputError
from neuralmorph.models.base import SHIPPED_PREFIX, MorphableModel, model_folder

SEED = 20261205
"""Seed of the synthetic population the shipped model was trained on (identity s is seeded [SEED, s])."""


NAME = SHIPPED_PREFIX + "appearance"
"""What --model takes for it."""


def pretrained_path() -> Path:
    """The shipped model's folder."""
    return model_folder(NAME)


def load_pretrained(device: str = "cpu"):
    """The shipped `AppearanceModel`, in eval mode on `device`."""
    folder = pretrained_path()
    if not (folder / "weights.safetensors").is_file():
        raise InputError(folder, "the shipped appearance model is missing: reinstall neuralmorph or run "
                                 "`python scripts/build_appearance_asset.py` from a source checkout")
    return MorphableModel.load(folder, device=device).eval()
