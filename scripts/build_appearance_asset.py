"""Build the appearance model that ships in `src/neuralmorph/assets/appearance/`.

The demo fits it to one photo of a held-out synthetic head (and of the james scan, when fetched); it is
small enough to ship (a few MB) and this script rebuilds it byte for byte:

    python scripts/build_appearance_asset.py                # rebuild the shipped model in place
    python scripts/build_appearance_asset.py --check        # rebuild in a temporary folder, compare bytes
    python scripts/build_appearance_asset.py --steps 50 --out /tmp/m   # a quick look elsewhere

What it does: `data synth --images --lighting studio` of SUBJECTS identities (seeded [SEED, s]: the
demo's held-out heads come from other seeds, so they are people the model never saw) x 2 expressions x
8 views at 128² (`pretrained.SEED`), a PCA model on all of their heads, then the appearance family (10,000 Gaussians)
trained on all of their images by the shared trainer. Torch (and with it the numba rasterizer) runs on
one thread, so the floating-point sums run in one order on every machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import filecmp
import sys
import tempfile
import time
from pathlib import Path

import torch

from neuralmorph.models.appearance.pretrained import SEED

ASSET = Path(__file__).resolve().parents[1] / "src" / "neuralmorph" / "assets" / "appearance"
SUBJECTS = 32
VIEWS, IMAGE_SIZE = 8, 128
GAUSSIANS = 10_000
STEPS = 3000


def build(out: Path, steps: int, work: Path) -> None:
    """Synthesise, build the PCA, train the appearance model; save it to `out` (replaced)."""
    from neuralmorph.data.synth import SynthConfig, synthesize
    from neuralmorph.models.appearance.model import AppearanceConfig, AppearanceModel
    from neuralmorph.models.pca import PCAConfig, PCAModel
    from neuralmorph.models.train import train_model

    data = synthesize(SynthConfig(out=work / "data", subjects=SUBJECTS, expressions=2, seed=SEED, scans=False,
                                  test_fraction=0.0, val_fraction=0.0, images=True, views=VIEWS,
                                  image_size=IMAGE_SIZE, lighting="studio"))
    PCAModel.build(data, PCAConfig()).save(work / "pca")
    config = AppearanceConfig(geometry=str(work / "pca"), gaussians=GAUSSIANS)
    trainer = dataclasses.replace(AppearanceModel.trainer_defaults(), max_steps=steps, seed=0, tensorboard=False,
                                  checkpoint_every=0)
    model = train_model(AppearanceModel, data, config, work / "run", trainer=trainer).model
    # the geometry is copied into the model; the temporary folder it came from means nothing once shipped
    model.config = dataclasses.replace(model.config, geometry="scripts/build_appearance_asset.py")
    model.save(out, overwrite=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ASSET, help="where to write the model (default: the shipped asset)")
    p.add_argument("--steps", type=int, default=STEPS, help=f"training steps (default {STEPS})")
    p.add_argument("--check", action="store_true", help="rebuild in a temporary folder and compare with --out")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="appearance_asset_") as tmp:
        work = Path(tmp)
        target = work / "model" if args.check else args.out
        build(target, args.steps, work)
        print(f"built in {time.perf_counter() - start:.0f} s")
        if args.check:
            names = sorted(f.name for f in args.out.iterdir())
            same, differ, missing = filecmp.cmpfiles(args.out, target, names, shallow=False)
            if differ or missing or sorted(f.name for f in target.iterdir()) != names:
                print(f"differs from {args.out}: {differ + missing}")
                return 1
            print(f"identical to {args.out}: {', '.join(same)}")
        else:
            size = sum(f.stat().st_size for f in args.out.iterdir())
            print(f"wrote {args.out} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
