"""`edit` (regional family): the edit is applied to the given head, exactly local, and honest about it.

Two tiny regional models are trained through stage 1 and a short stage 2 once per module, saved, and
edited both in Python and through the CLI: one with soft regions (weights blended over 2 rings), one with
the dataset's own one-hot regions (as `data synth` and `data ingest` make them), whose edits would leave
a crease at the region border without the blend band.
"""

import json

import numpy as np
import pytest
import torch

from neuralmorph.cli import main
from neuralmorph.data.dataset import HeadDataset
from neuralmorph.errors import InputError
from neuralmorph.geometry.adjacency import face_edges, k_ring, vertex_adjacency
from neuralmorph.geometry.mesh import Mesh, load_mesh, save_mesh
from neuralmorph.models import MorphableModel
from neuralmorph.models.regional.model import RegionalConfig, RegionalModel, RegionalTrainData
from neuralmorph.models.regional.regions import BLEND_RINGS, blend_into_rings, soften_weights
from neuralmorph.training import TrainerConfig, train

TINY = dict(latent_size=8, dim=32, heads=2, encoder_depth=1, decoder_depth=1, ffn_mult=2, embed_size=8,
            control_per_region=4, control_hidden=16, alpha_ramp_steps=10)


def _train(model, data, steps, lr, batch, out):
    cfg = TrainerConfig(max_steps=steps, batch_size=batch, lr=lr, seed=0, warmup_steps=0, checkpoint_every=0,
                        val_every=0, log_every=steps, tensorboard=False)
    return train(model, data, cfg, out, progress=False).eval()


def _trained(pca_data, tmp, soft: bool):
    """(dataset, saved stage-2 model folder, a held-out head file); soft: regions blended over 2 rings,
    else the dataset's one-hot regions."""
    ds = HeadDataset.load(pca_data)
    data = RegionalTrainData(ds, "train")
    weights = soften_weights(ds.region_weights, ds.faces, hops=2) if soft else ds.region_weights
    assert soft or set(np.unique(weights)) == {0.0, 1.0}                  # synth regions are one-hot
    model = RegionalModel.build(ds, RegionalConfig(**TINY), region_weights=weights, region_names=ds.region_names)
    _train(model, data, 10, 1e-3, 8, tmp / "stage1")
    model.with_config(stage=2)
    # enough for the control pathway to move the nose by tenths of a mm (~6 s on one thread)
    _train(model, data, 150, 3e-3, 4, tmp / "stage2")
    model.fit_prior(ds, data)
    model.save(tmp / "model")
    head = tmp / "head.ply"
    save_mesh(head, Mesh(ds.vertices[ds.registered_rows("test")[0]], ds.faces))
    return ds, tmp / "model", head


@pytest.fixture(scope="module")
def trained(pca_data, tmp_path_factory):
    """Soft regions (each region has an overlap where its weight falls from 1 to 0)."""
    return _trained(pca_data, tmp_path_factory.mktemp("edit"), soft=True)


@pytest.fixture(scope="module")
def trained_hard(pca_data, tmp_path_factory):
    """The dataset's one-hot regions: no overlap, so only the blend band can soften an edit's border."""
    return _trained(pca_data, tmp_path_factory.mktemp("edit_hard"), soft=False)


def _region(model, region):
    """The region's vertices: soft weight > 0."""
    return model.region_weights[:, model.region_names.index(region)].cpu().numpy() > 0


def _support(model, region, rings=BLEND_RINGS):
    """The vertices an edit of `region` may move: the region grown by `rings` rings of mesh edges."""
    faces = model.faces.cpu().numpy()
    return k_ring(vertex_adjacency(faces, model.n_vertices), _region(model, region), rings)


def _border_jump(model, region, displacement) -> float:
    """The largest change of displacement (mm) along a mesh edge across the region's border: the crease."""
    e = face_edges(model.faces.cpu().numpy())
    inside = _region(model, region)
    across = e[inside[e[:, 0]] != inside[e[:, 1]]]
    return float(np.linalg.norm(displacement[across[:, 0]] - displacement[across[:, 1]], axis=1).max())


def test_edit_changes_nothing_outside_region_and_ring(trained):
    _, folder, head = trained
    model = MorphableModel.load(folder).eval()
    v = load_mesh(head).vertices
    region, inside = _region(model, "nose"), _support(model, "nose")
    w = model.region_weights[:, model.region_names.index("nose")].cpu().numpy()
    overlap, band = (w > 0) & (w < 1), inside & ~region
    assert overlap.sum() > 0 and band.sum() > 0 and (~inside).sum() > 0
    assert np.array_equal(model.edit_support(["nose"]).cpu().numpy(), inside)
    delta = torch.full((4, 3), 4.0)
    out = model.edit(v, {"nose": delta}).numpy()
    assert out.dtype == np.float64
    assert np.array_equal(out[~inside], v[~inside])                       # bit for bit
    moved = np.linalg.norm(out - v, axis=1)
    assert moved[region].max() > 0.1                                      # the edit does something
    assert moved[overlap].max() > 0 and moved[band].max() > 0             # ... and fades over overlap and band
    # in the region (soft weights included) the applied change is the model's own edited-minus-unedited
    # displacement, with local attention zero beyond it
    with torch.no_grad():
        z = model.encode(torch.as_tensor(np.array(v, np.float32))[None])
        own = (model.decode(z, {"nose": delta[None]}) - model.decode(z))[0].double().numpy()
    np.testing.assert_allclose((out - v)[region], own[region], atol=1e-4)
    # without a band (blend_rings=0) that is the whole edit, and nothing beyond the region moves
    only = model.edit(v, {"nose": delta}, blend_rings=0).numpy()
    np.testing.assert_allclose(only - v, own, atol=1e-4)
    assert np.array_equal(only[~region], v[~region]) and np.array_equal(only[region], out[region])
    # resampling is the same edit with displacements drawn from the region's prior
    res = model.resample_region(v, "nose", seed=2).numpy()
    assert np.array_equal(res[~inside], v[~inside]) and np.linalg.norm(res - v, axis=1).max() > 0
    assert np.array_equal(res, model.edit(v, {"nose": model.sample_control("nose", 1, seed=2)[0]}).numpy())
    res1, one_ring = model.resample_region(v, "nose", seed=2, blend_rings=1).numpy(), _support(model, "nose", 1)
    drawn = {"nose": model.sample_control("nose", 1, seed=2)[0]}
    assert np.array_equal(res1, model.edit(v, drawn, blend_rings=1).numpy())
    assert np.array_equal(res1[~one_ring], v[~one_ring]) and not np.array_equal(res1, res)
    # no displacements: the input itself, not the model's reconstruction of it
    assert np.array_equal(model.edit(v, {}).numpy(), v)


def test_edit_discards_leakage_of_full_attention(trained):
    """Full decoder attention lets a control token change every region's output; the edit keeps only the
    edited region's share, so the rest of the head still stays exactly as given."""
    _, folder, head = trained
    model = MorphableModel.load(folder).eval().with_config(decoder_attention="full")
    v = load_mesh(head).vertices
    inside = _support(model, "nose")
    delta = {"nose": torch.full((4, 3), 4.0)}
    with torch.no_grad():
        z = model.encode(torch.as_tensor(np.array(v, np.float32))[None])
        leak = (model.decode(z, {"nose": delta["nose"][None]}) - model.decode(z))[0].norm(dim=-1).numpy()
    assert leak[~inside].max() > 0                                        # the decoder itself is not local
    out = model.edit(v, delta).numpy()
    assert np.array_equal(out[~inside], v[~inside])


def _edit(tmp_path, folder, head, *args):
    out = tmp_path / "edited.ply"
    main(["edit", "--model", str(folder), "--target", str(head), "--out", str(out), *map(str, args)])
    return out, json.loads(out.with_suffix(".json").read_text())


def test_cli_control_move_writes_exact_head_and_record(trained, tmp_path, capsys):
    _, folder, head = trained
    model = MorphableModel.load(folder)
    moves = {"nose": [[0.0, 1.0, 5.0], [0.0, 0.0, 5.0], [1.0, 0.0, 5.0], [0.0, -1.0, 5.0]]}
    (tmp_path / "moves.json").write_text(json.dumps(moves))
    out, record = _edit(tmp_path, folder, head, "--control", tmp_path / "moves.json")
    v, e = load_mesh(head).vertices, load_mesh(out).vertices
    region, inside = _region(model, "nose"), _support(model, "nose")
    assert np.array_equal(e[~inside], v[~inside])
    moved = np.linalg.norm(e - v, axis=1)
    assert record["requested_displacements_mm"] == moves
    nose = record["regions"]["nose"]
    asked = np.linalg.norm(np.array(moves["nose"]), axis=1)
    assert nose["requested_max_mm"] == pytest.approx(asked.max()) and nose["requested_mean_mm"] == pytest.approx(asked.mean())
    assert nose["moved_max_mm"] == pytest.approx(moved[region].max()) and nose["moved_mean_mm"] == pytest.approx(moved[region].mean())
    assert nose["moved_at_control_vertices_mean_mm"] == pytest.approx(moved[model.control_vertices["nose"]].mean())
    assert nose["vertices"] == int(region.sum()) < record["allowed_vertices"] == int(inside.sum())
    assert record["blend_rings"] == BLEND_RINGS and f"within {BLEND_RINGS} mesh edges" in record["allowed"]
    assert record["moved_vertices"] == int((moved > 0).sum()) and record["max_movement_mm"] == pytest.approx(moved.max())
    assert record["resample"] is None and record["control_vertices"]["nose"] == model.control_vertices["nose"].tolist()
    assert "nose up to" in capsys.readouterr().out


def test_cli_resample_is_the_models_resample_and_exactly_local(trained, tmp_path):
    _, folder, head = trained
    model = MorphableModel.load(folder).eval()
    out, record = _edit(tmp_path, folder, head, "--resample-region", "nose", "--seed", 5, "--temperature", 0.5)
    v, e = load_mesh(head).vertices, load_mesh(out).vertices
    assert np.array_equal(e, model.resample_region(v, "nose", seed=5, temperature=0.5).numpy())
    inside = _support(model, "nose")
    assert np.array_equal(e[~inside], v[~inside]) and not np.array_equal(e, v)
    assert record["resample"] == {"region": "nose", "seed": 5, "temperature": 0.5}
    np.testing.assert_array_equal(record["requested_displacements_mm"]["nose"],
                                  model.sample_control("nose", 1, 0.5, 5)[0].double().numpy())


def _refused(capsys, tmp_path, folder, head, *args) -> str:
    with pytest.raises(SystemExit) as exc:
        main(["edit", "--model", str(folder), "--target", str(head), "--out", str(tmp_path / "edited.ply"),
              *map(str, args)])
    assert exc.value.code != 0
    assert list(tmp_path.glob("edited*")) == []                           # nothing written
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_cli_refuses_edits_without_effect(trained, tmp_path, capsys):
    _, folder, head = trained
    # a model whose control pathway does nothing (as after no or a too short stage 2)
    model = MorphableModel.load(folder)
    with torch.no_grad():
        for mlp in model.control_mlp.values():
            mlp[-1].weight.zero_()
    model.save(tmp_path / "dead")
    (tmp_path / "moves.json").write_text(json.dumps({"nose": [[0.0, 0.0, 10.0]] * 4}))
    for args in (["--control", tmp_path / "moves.json"], ["--resample-region", "nose"]):
        err = _refused(capsys, tmp_path, tmp_path / "dead", head, *args)
        assert str(tmp_path / "dead") in err and "control pathway has no effect" in err and "--model.stage 2" in err
    # zero displacements ask for nothing
    (tmp_path / "zero.json").write_text(json.dumps({"nose": [[0.0, 0.0, 0.0]] * 4}))
    err = _refused(capsys, tmp_path, folder, head, "--control", tmp_path / "zero.json")
    assert str(tmp_path / "zero.json") in err and "zero" in err


@pytest.mark.parametrize("temperature", ["nan", "inf", "-1"])
def test_cli_refuses_bad_temperature(trained, tmp_path, capsys, temperature):
    _, folder, head = trained
    err = _refused(capsys, tmp_path, folder, head, "--resample-region", "nose", "--temperature", temperature)
    assert err.startswith("neuralmorph: error: --temperature: ")


def _grid(cols: int, rows: int):
    """A triangulated cols x rows grid (vertex c * rows + r at (c, r)); the graph distance between
    columns is their index difference (the diagonals never cross two columns in one edge)."""
    ids = np.arange(cols * rows).reshape(cols, rows)
    a, b, c, d = ids[:-1, :-1].ravel(), ids[1:, :-1].ravel(), ids[1:, 1:].ravel(), ids[:-1, 1:].ravel()
    return np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)]), np.repeat(np.arange(cols), rows)


@pytest.mark.parametrize("rings", [0, 1, 3, 5])
def test_blend_into_rings_falls_linearly_to_zero(rings):
    """A uniform displacement on the first two columns carries over `rings` columns, falling by 1/(rings+1)
    per column, and is exactly zero beyond; inside the region it is kept as given."""
    faces, col = _grid(12, 5)
    region = col <= 1
    shift = np.array([0.5, -2.0, 3.0])
    disp = np.where(region[:, None], shift, np.nan)        # values outside the region must not be read
    out, support = blend_into_rings(disp, region, faces, rings)
    j = col - 1                                              # rings from the region
    np.testing.assert_array_equal(support, col <= 1 + rings)
    np.testing.assert_array_equal(out[region], disp[region])
    assert np.all(out[~support] == 0)
    band = support & ~region
    np.testing.assert_allclose(out[band], (1 - j[band] / (rings + 1))[:, None] * shift, rtol=1e-12)
    # the largest step between neighbours is the even step, not the whole shift
    e = face_edges(faces)
    step = np.linalg.norm(out[e[:, 0]] - out[e[:, 1]], axis=1).max()
    assert step == pytest.approx(np.linalg.norm(shift) / (rings + 1))


def test_blend_into_rings_refuses_bad_rings():
    faces, col = _grid(4, 3)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(InputError) as exc:
            blend_into_rings(np.zeros((len(col), 3)), col == 0, faces, bad)
        assert exc.value.where == "blend_rings"


@pytest.mark.parametrize("rings", [0, 1, 3, 6])
def test_edit_is_exact_outside_region_and_band(trained_hard, rings):
    """One-hot regions: with K rings, every vertex further than K edges from the region keeps its input
    coordinates bit for bit, the region's own change does not depend on K, and the band moves."""
    _, folder, head = trained_hard
    model = MorphableModel.load(folder).eval()
    v = load_mesh(head).vertices
    region, inside = _region(model, "nose"), _support(model, "nose", rings)
    delta = {"nose": torch.full((4, 3), 4.0)}
    out = model.edit(v, delta, blend_rings=rings).numpy()
    assert np.array_equal(out[~inside], v[~inside])
    assert np.array_equal(out[region], model.edit(v, delta, blend_rings=0).numpy()[region])
    moved = np.linalg.norm(out - v, axis=1) > 0
    assert moved[region].any()
    if rings:
        assert moved[inside & ~region].any()
    else:
        assert np.array_equal(inside, region)
    with pytest.raises(InputError):
        model.edit(v, delta, blend_rings=-1)


def test_cli_blend_band_removes_the_crease(trained_hard, tmp_path):
    """The crease of a one-hot region: with --blend-rings 0 the border vertices move next to neighbours
    that do not; the default 3-ring band spreads that step over the band."""
    _, folder, head = trained_hard
    model = MorphableModel.load(folder)
    v = load_mesh(head).vertices
    (tmp_path / "moves.json").write_text(json.dumps({"nose": [[0.0, 0.0, 10.0]] * 4}))
    jumps = {}
    for rings in (0, 3):
        out, record = _edit(tmp_path, folder, head, "--control", tmp_path / "moves.json", "--blend-rings", rings)
        disp = load_mesh(out).vertices - v
        inside = _support(model, "nose", rings)
        assert np.array_equal(disp[~inside], np.zeros_like(disp[~inside]))
        assert record["blend_rings"] == rings and record["allowed_vertices"] == int(inside.sum())
        jumps[rings] = _border_jump(model, "nose", disp)
        out.unlink()
        out.with_suffix(".json").unlink()
    # without a band the crease is the border's whole displacement
    assert jumps[0] > 0.1
    assert jumps[3] / jumps[0] < 0.5


def test_cli_refuses_bad_blend_rings(trained, tmp_path, capsys):
    _, folder, head = trained
    err = _refused(capsys, tmp_path, folder, head, "--resample-region", "nose", "--blend-rings", "-1")
    assert err.startswith("neuralmorph: error: --blend-rings: ") and "-1" in err
