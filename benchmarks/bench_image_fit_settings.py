"""Single-image fit settings on a finished `bench appearance` run: held-out PSNR per setting and identity.

    python benchmarks/bench_image_fit_settings.py WORK --identities 4,1,7 \\
        'prior3e-2={"prior_weight": 0.03}' 'short={"steps": 200, "refine_steps": 60}' [--oracle]

WORK: the benchmark's work folder (`--work-dir`, default beside its --out: A_work), holding data/ and
run/model. Identities are the test identities' indices in the benchmark's per-subject order. Each
setting is a name and the `ImageFitConfig` fields it changes (JSON); every identity is fitted from its
most frontal view, as the benchmark does, and scored on its other views. `--oracle` adds two rows that
locate the error: the appearance fitted with the geometry fixed at the true head's projection
(`model.project`), from the one image and from all views at once. One JSON line per identity.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.evaluation.appearance_bench import _score, synthetic_views
from neuralmorph.fitting.image import ImageFitConfig, fit_image
from neuralmorph.models.base import MorphableModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", type=Path)
    p.add_argument("settings", nargs="*", help='NAME={"field": value, ...}')
    p.add_argument("--identities", default="0", help="comma-separated test identity indices")
    p.add_argument("--oracle", action="store_true", help="also fit with the true geometry (one image; all views)")
    args = p.parse_intermixed_args()
    settings = {"default": ImageFitConfig()}
    for item in args.settings:
        name, fields = item.split("=", 1)
        settings[name] = ImageFitConfig(**json.loads(fields))
    model = MorphableModel.load(args.work / "run" / "model").eval()
    data = HeadDataset.load(args.work / "data")
    test = [h for h in data.heads if h.split == "test" and h.expression == "neutral"]
    ids = model.landmark_ids.cpu().numpy()
    for k in (int(x) for x in args.identities.split(",")):
        views = synthetic_views(data, test[k], ids)
        row = {"identity": k, "subject": test[k].subject}
        for name, cfg in settings.items():
            fit = fit_image(model, views[:1], cfg, progress=False)
            row[name] = {"psnr_heldout_db": _score(model, fit, views[1:])["psnr_heldout_db"], "fit_seconds": fit.seconds}
        if args.oracle:
            start = model.project(torch.as_tensor(data.vertices[test[k].registered][None], dtype=torch.float32))
            one = fit_image(model, views[:1], ImageFitConfig(fit_geometry=False), start=start, progress=False)
            every = fit_image(model, views, ImageFitConfig(fit_geometry=False, steps=600, refine="none"), start=start,
                              progress=False)
            row["true_geometry"] = _score(model, one, views[1:])["psnr_heldout_db"]
            row["true_geometry_all_views"] = _score(model, every, views[1:])["psnr_heldout_db"]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
