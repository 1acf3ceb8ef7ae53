"""The regional model (LAMM family): control tokens, locality, soft regions, save/load, priors."""

import numpy as np
import pytest
import torch

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.models import MorphableModel
from neuralmorph.models.regional.model import RegionalConfig, RegionalModel, RegionalTrainData
from neuralmorph.models.regional.regions import boundary_ring, segment_template, soften_weights
from neuralmorph.models.regional.prior import fit_control_prior
from neuralmorph.training import TrainerConfig, train

TINY = dict(latent_size=8, dim=32, heads=2, encoder_depth=1, decoder_depth=1, ffn_mult=2, embed_size=8,
            control_per_region=4, control_hidden=16)


@pytest.fixture(scope="module")
def ds(pca_data) -> HeadDataset:
    return HeadDataset.load(pca_data)


def _randomise_controls(model: RegionalModel, seed: int = 0) -> None:
    """Control MLPs start as exact no-ops; give them random weights so edits do something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mlp in model.control_mlp.values():
            w = mlp[-1].weight
            w.copy_(torch.randn(w.shape, generator=g) * 0.5)
        # the transformer path of a PCA-initialised model starts at zero: open it too
        model.head_w.copy_(torch.randn(model.head_w.shape, generator=g) * 0.05)


def _change(model, v, region, delta):
    """(N,) change of every vertex when region's control vertices move by delta (C, 3) mm."""
    with torch.no_grad():
        z = model.encode(v[None])
        base = model.decode(z)[0]
        edited = model.decode(z, {region: delta[None]})[0]
    return (edited - base).norm(dim=-1)


def _locality_ratio(model, v, region, delta):
    """Mean change outside the region and its boundary ring / mean change inside the region."""
    r = model.region_names.index(region)
    w = model.region_weights.cpu().numpy()
    ring = boundary_ring(w, model.faces.cpu().numpy(), r, hops=2)
    inside = np.setdiff1d(np.flatnonzero(w[:, r] > 0), ring)
    outside = np.setdiff1d(np.flatnonzero(w[:, r] == 0), ring)
    ch = _change(model, v, region, delta)
    return float(ch[outside].mean() / ch[inside].mean()), float(ch[inside].mean())


def test_shapes_units_and_zero_control_is_exact(ds):
    model = RegionalModel.build(ds, RegionalConfig(**TINY)).eval()
    _randomise_controls(model)
    v = torch.as_tensor(ds.vertices[:3])
    z = model.encode(v)
    assert set(z) == {"global"} and z["global"].shape == (3, 8)
    out = model.decode(z)
    assert out.shape == (3, ds.n_vertices, 3) and out.dtype == torch.float32
    # PCA initialisation: the untrained model already reconstructs within millimetres
    assert float((out.detach() - v).norm(dim=-1).mean()) < 10.0
    zeros = {name: torch.zeros(3, len(ids), 3) for name, ids in model.control_vertices.items()}
    assert torch.equal(model.decode(z, zeros), out)          # bit-exact
    assert torch.equal(model.decode(z, None), out)
    some = next(iter(model.control_vertices))
    moved = model.decode(z, {some: torch.full((3, 4, 3), 5.0)})
    assert not torch.equal(moved, out)


def test_control_vertices_lie_inside_their_region(ds):
    model = RegionalModel.build(ds, RegionalConfig(**TINY))
    w = model.region_weights.numpy()
    for name, ids in model.control_vertices.items():
        r = model.region_names.index(name)
        assert len(ids) == 4 and (w[ids, r] >= 0.5).all()


def test_local_attention_edits_are_local_by_construction(ds):
    """decoder_attention='local': moving one region's controls changes nothing outside it (exact 0)."""
    model = RegionalModel.build(ds, RegionalConfig(**TINY, decoder_attention="local")).eval()
    _randomise_controls(model)
    v = torch.as_tensor(ds.vertices[0])
    r = model.region_names.index("nose")
    ch = _change(model, v, "nose", torch.full((4, 3), 3.0))
    outside = model.region_weights[:, r] == 0
    assert float(ch[~outside].mean()) > 1e-3
    assert float(ch[outside].max()) == 0.0


def _train(model, data, steps, seed, out, **trainer):
    """The shared trainer at quick settings; returns the last logged training row of metrics.csv."""
    import csv

    cfg = TrainerConfig(**{"max_steps": steps, "batch_size": 8, "lr": 1e-3, "seed": seed, "checkpoint_every": 0,
                           "val_every": 0, "log_every": 1, "tensorboard": False, **trainer})
    train(model, data, cfg, out, progress=False).eval()
    with open(out / "metrics.csv") as fh:
        return {k: float(v) for k, v in list(csv.DictReader(fh))[-1].items() if v}


def test_stage2_training_learns_local_edits(ds, tmp_path):
    """Tiny model, stage 1 then stage 2 (default: local decoder attention): the manipulation loss falls,
    the edit moves the region, and the change outside the region and its 2-ring is < 1e-6 of the change
    inside (exactly 0 with hard regions)."""
    data = RegionalTrainData(ds, "train")
    model = RegionalModel.build(ds, RegionalConfig(**TINY, alpha_ramp_steps=10))
    _train(model, data, 10, 0, tmp_path / "stage1")
    model.with_config(stage=2)
    torch.manual_seed(0)
    with torch.no_grad():
        _, first = model.training_loss({"vertices": data.vertices[:16]}, 40)
    # stage 2 at the regional benchmark's lr, no warm-up: a larger step undoes the stage-1 fit first
    logs = _train(model, data, 40, 1, tmp_path / "stage2", lr=3e-4, warmup_steps=0)
    torch.manual_seed(0)
    with torch.no_grad():
        _, last = model.training_loss({"vertices": data.vertices[:16]}, 40)
    assert np.isfinite(logs["manip"]) and last["manip"] < first["manip"], (first, last)
    v = torch.as_tensor(ds.vertices[data.rows[0]])
    t = torch.as_tensor(ds.vertices[data.rows[5]])
    ctrl = model.control_vertices["nose"]
    ratio, inside = _locality_ratio(model, v, "nose", t[ctrl] - v[ctrl])
    assert inside > 1e-5 and ratio < 1e-6, (ratio, inside)


def test_soft_regions_blend_without_double_counting(ds):
    w = soften_weights(ds.region_weights, ds.faces, hops=2)
    assert np.allclose(w.sum(1), 1, atol=1e-5)
    shared = (w > 0).sum(1) > 1
    assert shared.sum() > 100
    model = RegionalModel.build(ds, RegionalConfig(**TINY), region_weights=w, region_names=ds.region_names).eval()
    # every region emitting the same coefficients gives each vertex exactly one copy of its offset
    with torch.no_grad():
        model.head_w.zero_()
        model.dec_skip.weight.zero_()
        model.dec_skip.bias.zero_()
        model.head_b.copy_(torch.linspace(-1, 1, model.config.embed_size).expand(model.n_regions, -1))
        out = model.decode({"global": torch.zeros(1, 8)})[0]
        single = model.mean + model.scale * (model.dec_embed * model.head_b[0]).sum(-1)
    assert torch.allclose(out, single, atol=1e-4)


def test_automatic_segmentation(ds):
    w = segment_template(ds.vertices[0], 6)
    assert w.shape == (ds.n_vertices, 6) and np.allclose(w.sum(1), 1)
    bare = HeadDataset(ds.heads, vertices=ds.vertices, faces=ds.faces, landmark_ids=ds.landmark_ids)
    model = RegionalModel.build(bare, RegionalConfig(**TINY, n_regions=5))
    assert model.region_names == tuple(f"region_{i:02d}" for i in range(5))
    assert len(model.control_vertices) == 5


def test_save_load_round_trip_is_bit_exact(ds, tmp_path):
    model = RegionalModel.build(ds, RegionalConfig(**TINY)).eval()
    _randomise_controls(model)
    model.fit_prior(ds)
    fit_control_prior(model, ds, shifts=2)
    model.save(tmp_path / "m")
    loaded = MorphableModel.load(tmp_path / "m").eval()
    assert isinstance(loaded, RegionalModel)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    v = torch.as_tensor(ds.vertices[:2])
    ctl = {"nose": torch.ones(2, 4, 3)}
    with torch.no_grad():
        assert torch.equal(model.decode(model.encode(v), ctl), loaded.decode(loaded.encode(v), ctl))
    assert np.array_equal(model.control_vertices["eyes"], loaded.control_vertices["eyes"])


def test_prior_sampling_is_deterministic(ds):
    model = RegionalModel.build(ds, RegionalConfig(**TINY)).eval().fit_prior(ds)
    a, b = model.sample(4, seed=3), model.sample(4, seed=3)
    assert torch.equal(a["global"], b["global"]) and not torch.equal(a["global"], model.sample(4, seed=4)["global"])
    heads = model.decode(a)
    assert heads.shape == (4, ds.n_vertices, 3) and torch.isfinite(heads).all()


def test_region_swap_prior_is_finite_mm_gaussian(ds):
    model = RegionalModel.build(ds, RegionalConfig(**TINY)).eval()
    used = fit_control_prior(model, ds, shifts=3)
    assert set(used) == set(model.control_vertices) and min(used.values()) >= 2
    for name in model.control_vertices:
        p = model.control_prior[str(model.region_names.index(name))]
        assert torch.isfinite(p.mean).all() and torch.isfinite(p.scale_tril).all()
        # millimetres: a head's regions differ by tenths to tens of mm, not normalised units
        std = p.scale_tril.square().sum(1).sqrt()
        assert 0.01 < float(std.mean()) < 50.0
    d1, d2 = model.sample_control("nose", 2, seed=1), model.sample_control("nose", 2, seed=1)
    assert d1.shape == (2, 4, 3) and torch.equal(d1, d2)
    _randomise_controls(model)
    out = model.resample_region(ds.vertices[0], "nose", seed=1)
    assert out.shape == (ds.n_vertices, 3) and torch.isfinite(out).all()


def test_refine_does_not_get_worse_and_batches_like_single_heads(ds):
    model = RegionalModel.build(ds, RegionalConfig(**TINY)).eval().fit_prior(ds)
    v = torch.as_tensor(ds.vertices[RegionalTrainData(ds, "test").rows[0]])
    with torch.no_grad():
        before = float((model.decode(model.encode(v[None]))[0] - v).norm(dim=-1).mean())
    z = model.refine(v, steps=30, lr=0.02)
    with torch.no_grad():
        after = float((model.decode(z)[0] - v).norm(dim=-1).mean())
    assert z["global"].shape == (1, 8) and after <= before + 1e-3
    rows = RegionalTrainData(ds, "test").rows[:2]
    both = model.refine(torch.as_tensor(ds.vertices[rows]), steps=30, lr=0.02)["global"]
    one_by_one = torch.cat([model.refine(ds.vertices[r], steps=30, lr=0.02)["global"] for r in rows])
    assert both.shape == (2, 8) and torch.allclose(both, one_by_one, atol=1e-4)


def test_pca_init_with_fewer_heads_than_latents_is_stable(tmp_path):
    """Directions without variance must not be whitened: with 4 training heads and an 8-d latent, a few
    small optimiser steps once blew the reconstruction up from 5 mm to hundreds."""
    from neuralmorph.data.synth import SynthConfig, synthesize

    data = synthesize(SynthConfig(out=tmp_path / "d", subjects=3, expressions=2, scans=False), progress=False)
    model = RegionalModel.build(data, RegionalConfig(**TINY), seed=0)
    test = torch.as_tensor(data.vertices[data.registered_rows("test")])

    def error() -> float:
        with torch.no_grad():
            return float((model.eval().decode(model.encode(test)) - test).norm(dim=-1).mean())

    before = error()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    for step in range(3):
        loss, _ = model.train().training_loss({"vertices": torch.as_tensor(data.vertices[data.registered_rows("train")])}, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert error() < 1.5 * before


def test_continue_with_applies_run_fields_and_refuses_weight_shaping_ones(ds):
    # `train regional --init MODEL`: this run's losses, schedules and decoder attention apply; a flag
    # that would change the weights' shapes is refused rather than recorded and ignored
    from neuralmorph.errors import InputError

    model = RegionalModel.build(ds, RegionalConfig(**TINY))
    assert bool(model.decoder_mask.any())  # local attention masks cross-region attention
    cont = model.continue_with(RegionalConfig(**TINY, stage=2, decoder_attention="full"))
    assert cont.config.stage == 2 and cont.config.decoder_attention == "full"
    assert not bool(cont.decoder_mask.any())
    with pytest.raises(InputError, match="--model.dim"):
        model.continue_with(RegionalConfig(**{**TINY, "dim": 64}, stage=2))


def test_training_validates_on_val_and_scores_test_once(ds, tmp_path):
    """train_model hands the trainer the val split as `val/...` (every val_every steps) and the test split
    as `test/...` (after the last step); a split trained on never scores the run."""
    import csv

    from neuralmorph.models.train import train_model

    assert len(ds.registered_rows("val")) and len(ds.registered_rows("test"))
    for split in ("val", "test"):
        scored = getattr(RegionalModel, "validation_set" if split == "val" else "test_set")(ds, RegionalConfig(**TINY))
        assert torch.equal(scored.vertices, torch.as_tensor(ds.vertices[ds.registered_rows(split)]))
    trainer = TrainerConfig(max_steps=4, batch_size=8, val_every=2, log_every=1, checkpoint_every=0, tensorboard=False)
    model = train_model(RegionalModel, ds, RegionalConfig(**TINY), tmp_path / "run", trainer=trainer,
                        progress=False).model
    with open(tmp_path / "run" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["step"] for r in rows if r["val/vertex_error_mm"]] == ["2", "4"]
    assert [r["step"] for r in rows if r["test/vertex_error_mm"]] == ["4"]
    for split in ("val", "test"):   # each column is its own split's error under the final weights
        heads = torch.as_tensor(ds.vertices[ds.registered_rows(split)])
        expected = model.eval().validation_metrics({"vertices": heads})["vertex_error_mm"]
        assert float(rows[-1][f"{split}/vertex_error_mm"]) == pytest.approx(expected, rel=1e-4)
    # trained on the val split: nothing validates it, the test split still scores the end
    train_model(RegionalModel, ds, RegionalConfig(**TINY), tmp_path / "on_val", trainer=trainer, split="val",
                progress=False)
    with open(tmp_path / "on_val" / "metrics.csv") as fh:
        reader = csv.DictReader(fh)
        columns, last = reader.fieldnames, list(reader)[-1]
    assert not any(c.startswith("val/") for c in columns) and last["test/vertex_error_mm"]
