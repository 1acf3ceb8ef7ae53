"""The appearance model that ships in the package (`--model shipped:appearance`) and the real-scan views the
benchmark and the demo fit it to."""

import numpy as np
import pytest
import torch

from neuralmorph.errors import InputError
from neuralmorph.models.base import MorphableModel, model_folder


def test_the_shipped_model_loads_by_name_and_is_small():
    model = MorphableModel.load("shipped:appearance")
    assert model.family == "appearance" and model.has_appearance and len(model.layout_faces) == 10_000
    folder = model_folder("shipped:appearance")
    assert sum(f.stat().st_size for f in folder.iterdir()) < 10e6  # the cap on shipped weights
    # the temporary folder it was built from is not recorded; the script that rebuilds it is
    assert model.config.geometry == "scripts/build_appearance_asset.py"


def test_an_unknown_shipped_name_is_one_line_naming_the_flag():
    with pytest.raises(InputError, match="--model.*no shipped model 'nope'.*shipped:appearance"):
        MorphableModel.load("shipped:nope")


def test_the_shipped_model_samples_different_people():
    """Eight draws from its priors give eight heads whose skin (the mean colour of their Gaussians) differs."""
    model = MorphableModel.load("shipped:appearance")
    with torch.no_grad():
        g = model.gaussians_of(model.sample(8, seed=0))
    dc = g.sh[:, :, 0].mean(dim=1)  # (8, 3) mean DC colour per head
    gaps = torch.cdist(dc, dc) + torch.eye(8) * 1e9
    assert float(gaps.min()) > 1e-3 and float(dc.std(dim=0).mean()) > 0.02


def test_james_views_put_the_scan_in_the_model_frame():
    """The real scan rendered around the model's mean head: most frontal view first, its landmarks land
    on its face in the image (the nose tip inside the mask), jaw-contour rows left out."""
    from neuralmorph.data.fetch import is_fetched
    from neuralmorph.evaluation.appearance_bench import _yaw, james_views

    if not is_fetched("james"):
        pytest.skip("james is not fetched (`neuralmorph data fetch james`)")
    model = MorphableModel.load("shipped:appearance")
    views = james_views(model, views=3, size=64)
    assert len(views) == 3
    with torch.no_grad():
        mean = model.decode(model.zero_latents(1))[0].numpy()
    centre = 0.5 * (mean.min(axis=0) + mean.max(axis=0))
    yaws = [_yaw(v.camera, centre) for v in views]
    assert yaws == sorted(yaws)
    for v in views:
        assert v.image.shape == (64, 64, 3) and 0 <= v.image.min() and v.image.max() <= 1
        assert v.landmarks.shape == (len(model.landmark_ids), 2)
        assert np.isnan(v.landmarks[:8]).all() and np.isfinite(v.landmarks[27:]).all()
    u, w = np.rint(views[0].landmarks[30]).astype(int)  # iBUG 30: the nose tip
    assert views[0].mask[w, u] > 0.5
