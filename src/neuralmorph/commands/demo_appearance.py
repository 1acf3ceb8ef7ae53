"""The demo's appearance section: the shipped appearance model fitted to one photo of a head it never saw.

Cases: synthetic heads (synthesised with the demo's seed; the shipped model's training population has its
own, `pretrained.SEED`) and the real james scan when it is fetched. Each is fitted from its most
frontal view alone — `bench appearance`'s protocol: known camera, landmarks projected — then rendered
from the other views and scored there against the ground truth, beside the mean appearance on the same
fitted geometry (the floor the identity field must clear).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from neuralmorph.data.fetch import is_fetched
from neuralmorph.data.synth import SynthConfig, synthesize
from neuralmorph.evaluation.appearance_bench import james_views, single_image, synthetic_views
from neuralmorph.fitting.image import ImageFitConfig, render_fit
from neuralmorph.geometry.mesh import save_mesh
from neuralmorph.models.appearance.pretrained import SEED, load_pretrained
from neuralmorph.models.latents import save_latents
from neuralmorph.render import hstack_images, save_png, to_uint8

VIEWS, SIZE = 6, 128
"""Views per case (one fitted, the rest held out) and their size in pixels (the shipped model's)."""
METHODS = ("identity_field", "mean_appearance")


@dataclass
class AppearanceCase:
    """One fitted case: its scores per method (`appearance_bench.single_image`'s rows) and a strip of
    ground truth (top) over the fit (bottom), input view first."""

    name: str
    scores: dict[str, dict]
    strip: np.ndarray



def appearance_cases(out: Path, seed: int, fit_cfg: ImageFitConfig = ImageFitConfig(), synthetic: int = 2,
                     james: bool = True) -> tuple[list[AppearanceCase], dict]:
    """Fit the cases (see the module): `synthetic` synthetic identities (neutral), and james when `james` and
    fetched. Each is written into out/appearance/<case>/ as `fit` writes an image fit (fit.ply,
    gaussians.ply, latents.json) plus views.png; the synthetic images stay in out/appearance/data. Returns
    the cases and the protocol record."""
    model = load_pretrained()
    data_seed = seed if seed != SEED else seed + 1  # never a person the model was trained on
    data = synthesize(SynthConfig(out=out / "appearance" / "data", subjects=synthetic, expressions=1, seed=data_seed,
                                  scans=False, test_fraction=0.0, val_fraction=0.0, images=True, views=VIEWS,
                                  image_size=SIZE, lighting="studio"), progress=False)
    ids = model.landmark_ids.cpu().numpy()
    named = [(f"synthetic_{h.subject}", lambda h=h: synthetic_views(data, h, ids)) for h in data.heads]
    if james and is_fetched("james"):
        named.append(("james", lambda: james_views(model, VIEWS, SIZE, seed)))
    cases = []
    for name, make_views in tqdm(named, desc="fit one photo", unit="head"):
        views = make_views()
        scores, fit = single_image(model, views, fit_cfg, METHODS)
        folder = out / "appearance" / name
        save_mesh(folder / "fit.ply", model.meshes(fit.latents)[0])
        with torch.no_grad():
            model.save_ply(fit.gaussians(model), 0, folder / "gaussians.ply")
        save_latents(folder / "latents.json", model, fit.latents, fit_kind="images")
        renders = render_fit(model, fit, [v.camera for v in views])
        truth = hstack_images([to_uint8(v.image) for v in views], pad=4)
        strip = np.concatenate([truth, np.full((4, truth.shape[1], 3), 255, np.uint8),
                                hstack_images([to_uint8(r) for r in renders], pad=4)])
        save_png(folder / "views.png", strip)
        cases.append(AppearanceCase(name, scores, strip))
    protocol = {"model": "assets/appearance (scripts/build_appearance_asset.py)", "views": VIEWS, "size": SIZE,
                "input_view": "the most frontal", "synthetic": synthetic, "synthetic_seed": data_seed, "fit": fit_cfg.to_dict(),
                "james": "fitted" if len(named) > synthetic else ("not fetched (`neuralmorph data fetch james`)" if james
                                                          else "left out")}
    return cases, protocol
