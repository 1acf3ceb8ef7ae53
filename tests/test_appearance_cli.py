"""`sample` and `render` of a model with appearance: Gaussians as 3DGS PLYs, render strips, turntables,
transforms.json cameras and GIFs; bad input refused with one line and nothing written; mesh models
unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuralmorph.atomic import is_signed
from neuralmorph.cli import main
from neuralmorph.data.dataset import HeadDataset
from neuralmorph.data.images import ImageFrame, write_transforms
from neuralmorph.data.textured_render import orbit_camera
from neuralmorph.errors import InputError
from neuralmorph.geometry.mesh import load_mesh
from neuralmorph.models import MorphableModel
from neuralmorph.models.appearance.model import AppearanceModel
from neuralmorph.models.latents import load_latents
from neuralmorph.models.train import train_model
from neuralmorph.render import bounding_box, turntable_cameras, view_camera
from neuralmorph.splat.ply import load_gaussians_ply
from neuralmorph.training import TrainerConfig

VIEW = 256  # the sample strip's view size


@pytest.fixture(scope="module")
def models(small_synth, tmp_path_factory):
    """(appearance model folder, its pca geometry model folder, a folder of 3 appearance samples)."""
    work = tmp_path_factory.mktemp("appearance_cli")
    data = HeadDataset.load(small_synth)
    config, _ = AppearanceModel.smoke_setup(data, work)
    trainer = TrainerConfig(max_steps=20, batch_size=2, checkpoint_every=0, val_every=0, tensorboard=False)
    trained = train_model(AppearanceModel, data, config, work / "run", trainer=trainer, progress=False)
    main(["sample", "--model", str(trained.folder), "--n", "3", "--out", str(work / "samples"), "--seed", "5"])
    return trained.folder, Path(config.geometry), work / "samples"


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def _head_fraction(image: np.ndarray) -> float:
    """Share of pixels clearly off the black background."""
    return float((image.max(axis=-1) > 40).mean())


def _refused(args: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code not in (0, None), err
    assert err.startswith("neuralmorph: error: ") and err.count("\n") == 1, err
    return err


# ------------------------------------------------------------------------------------------ sample


def test_sample_writes_meshes_latents_gaussians_and_strips(models):
    folder, _, samples = models
    model = MorphableModel.load(folder)
    assert model.has_appearance
    names = {p.name for p in samples.iterdir()}
    assert names == {".neuralmorph"} | {f"sample_{i:03d}{s}" for i in range(3)
                                        for s in (".ply", ".json", ".gaussians.ply", ".png")}
    strips, means = [], []
    for i in range(3):
        stem = samples / f"sample_{i:03d}"
        mesh = load_mesh(stem.with_suffix(".ply"))
        latents = load_latents(stem.with_suffix(".json"), model)
        # the PLY holds this head's Gaussians: the model's count, where the model puts them
        g = load_gaussians_ply(stem.with_name(stem.name + ".gaussians.ply"))
        assert len(g.means) == model.config.gaussians
        with torch.no_grad():
            want = model.gaussians_of(latents)
        np.testing.assert_allclose(g.means, want.means[0].numpy(), atol=1e-3)
        assert is_signed(stem.with_name(stem.name + ".gaussians.ply")) and is_signed(stem.with_suffix(".png"))
        # the strip: front, three-quarter, side at 256², each showing the head on black
        strip = _rgb(stem.with_suffix(".png"))
        assert strip.shape == (VIEW, 3 * VIEW, 3)
        for k in range(3):
            view = strip[:, k * VIEW:(k + 1) * VIEW]
            assert 0.1 < _head_fraction(view) < 0.95, (i, k)
            assert view[:4].max() < 40 and view[:, :4].max() < 40  # black background at the border
        front = model.render_views(latents, [view_camera("front", bounding_box(mesh.vertices), (VIEW, VIEW))])[0]
        assert np.abs(strip[:, :VIEW] - np.clip(np.rint(front * 255), 0, 255)).max() <= 1
        strips.append(strip)
        means.append(g.means)
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.abs(strips[a] - strips[b]).mean() > 0.5, (a, b)
            assert np.abs(means[a] - means[b]).max() > 1.0, (a, b)


def test_a_mesh_model_samples_only_meshes_and_latents(models, tmp_path):
    _, pca, _ = models
    main(["sample", "--model", str(pca), "--n", "2", "--out", str(tmp_path / "s")])
    assert {p.name for p in (tmp_path / "s").iterdir()} == {
        ".neuralmorph", "sample_000.ply", "sample_000.json", "sample_001.ply", "sample_001.json"}


def test_a_failed_sample_leaves_nothing(models, tmp_path, monkeypatch, capsys):
    folder, _, _ = models
    calls = []

    def failing(self, gaussians, index, path, overwrite=False):
        calls.append(path)
        if len(calls) == 2:
            raise InputError(path, "disk full (test)")
        path.write_bytes(b"x")

    monkeypatch.setattr(AppearanceModel, "save_ply", failing)
    _refused(["sample", "--model", str(folder), "--n", "3", "--out", str(tmp_path / "s")], capsys)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ render


def test_render_turntable_strip_and_gif(models, tmp_path, capsys):
    folder, _, samples = models
    size = 48
    main(["render", "--model", str(folder), "--latents", str(samples / "sample_000.json"), "--out",
          str(tmp_path / "t.png"), "--turntable", "4", "--gif", str(tmp_path / "t.gif"), "--size", str(size)])
    assert "t.gif (4 frames)" in capsys.readouterr().out
    strip = _rgb(tmp_path / "t.png")
    assert strip.shape == (size, 4 * size, 3)
    assert is_signed(tmp_path / "t.gif") and is_signed(tmp_path / "t.png")
    gif = Image.open(tmp_path / "t.gif")
    assert gif.n_frames == 4 and gif.size == (size, size) and gif.info.get("loop") == 0
    frames = []
    for k in range(4):
        gif.seek(k)
        frames.append(np.asarray(gif.convert("RGB"), dtype=np.float64))
    for k, frame in enumerate(frames):
        assert _head_fraction(frame) > 0.1, k
        # the GIF's frame is the strip's view, up to the GIF palette
        assert np.abs(frame - strip[:, k * size:(k + 1) * size]).mean() < 6, k
    for k in range(3):
        assert np.abs(frames[k] - frames[k + 1]).mean() > 2, k
    # the views are `turntable_cameras`' around the head: from its right profile (-x) to its left (+x), above
    model = MorphableModel.load(folder)
    latents = load_latents(samples / "sample_000.json", model)
    vertices = model.meshes(latents)[0].vertices
    cams = turntable_cameras(vertices, 4, size)
    centre = bounding_box(vertices).mean(axis=0)
    assert cams[0].position[0] < centre[0] < cams[-1].position[0]
    assert all(c.position[1] > centre[1] for c in cams)
    for k, want in enumerate(model.render_views(latents, cams)):
        assert np.abs(strip[:, k * size:(k + 1) * size] - np.clip(np.rint(want * 255), 0, 255)).max() <= 1, k


def test_render_gif_alone_is_a_turntable_of_eight(models, tmp_path):
    folder, _, _ = models
    main(["render", "--model", str(folder), "--out", str(tmp_path / "a.png"), "--gif", str(tmp_path / "a.gif"),
          "--size", "24"])
    assert Image.open(tmp_path / "a.gif").n_frames == 8
    assert _rgb(tmp_path / "a.png").shape == (24, 8 * 24, 3)


def test_render_at_the_cameras_of_a_transforms_file(models, tmp_path):
    folder, _, samples = models
    model = MorphableModel.load(folder)
    latents = load_latents(samples / "sample_001.json", model)
    box = bounding_box(model.meshes(latents)[0].vertices)
    centre, radius = box.mean(axis=0), 0.5 * float(np.linalg.norm(box[1] - box[0]))
    cams = [orbit_camera(centre, radius, 0.0, 0.0, (40, 32)), orbit_camera(centre, radius, 60.0, 10.0, 32),
            orbit_camera(centre, radius, -60.0, 0.0, (24, 32))]
    write_transforms(tmp_path / "cams", [ImageFrame(f"images/{k}.png", c) for k, c in enumerate(cams)])
    main(["render", "--model", str(folder), "--latents", str(samples / "sample_001.json"), "--out",
          str(tmp_path / "c.png"), "--cameras", str(tmp_path / "cams" / "transforms.json")])
    strip = _rgb(tmp_path / "c.png")
    assert strip.shape == (32, 40 + 32 + 24, 3)  # one image per frame, each at its own size
    direct = model.render_views(latents, cams)
    x = 0
    for cam, want in zip(cams, direct):
        got = strip[:, x:x + cam.width]
        assert _head_fraction(got) > 0.1
        assert np.abs(got - np.clip(np.rint(want * 255), 0, 255)).max() <= 1
        x += cam.width
    # a transforms.json without a "units" key is read in --units (mm by default)
    meta = json.loads((tmp_path / "cams" / "transforms.json").read_text())
    del meta["units"]
    (tmp_path / "plain.json").write_text(json.dumps(meta))
    main(["render", "--model", str(folder), "--latents", str(samples / "sample_001.json"), "--out",
          str(tmp_path / "p.png"), "--cameras", str(tmp_path / "plain.json")])
    assert np.array_equal(_rgb(tmp_path / "p.png"), strip)


def test_a_mesh_model_renders_a_turntable_of_its_mesh(models, tmp_path):
    _, pca, _ = models
    main(["render", "--model", str(pca), "--out", str(tmp_path / "m.png"), "--turntable", "3", "--gif",
          str(tmp_path / "m.gif"), "--size", "32"])
    strip = _rgb(tmp_path / "m.png")
    assert strip.shape == (32, 3 * 32 + 2 * 8, 3)
    assert strip[0, 0].tolist() == [255, 255, 255]  # the mesh renderer's white background
    assert (strip.max(axis=-1) < 250).mean() > 0.05  # a shaded head on it
    assert Image.open(tmp_path / "m.gif").n_frames == 3


def _bad_transforms(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    out = {}
    (folder / "garbage.json").write_text("{not json")
    out["not-json"] = folder / "garbage.json"
    (folder / "empty.json").write_text(json.dumps({"units": "mm", "frames": []}))
    out["no-frames"] = folder / "empty.json"
    skew = np.eye(4)
    skew[0, 1] = 0.5
    (folder / "skew.json").write_text(json.dumps({"units": "mm", "frames": [
        {"file_path": "a.png", "transform_matrix": skew.tolist(), "fl_x": 30, "fl_y": 30, "cx": 16, "cy": 16,
         "w": 32, "h": 32}]}))
    out["not-rigid"] = folder / "skew.json"
    out["missing"] = folder / "absent.json"
    return out


def test_bad_input_is_refused_with_one_line_and_nothing_written(models, tmp_path, capsys):
    folder, pca, samples = models
    main(["sample", "--model", str(pca), "--n", "1", "--out", str(tmp_path / "pca")])
    wrong_size = json.loads((samples / "sample_000.json").read_text())
    wrong_size["latents"]["appearance"] = wrong_size["latents"]["appearance"][:-1]
    (tmp_path / "short.json").write_text(json.dumps(wrong_size))
    bad = _bad_transforms(tmp_path / "bad")
    out = tmp_path / "out"
    out.mkdir()
    render = ["render", "--model", str(folder), "--out", str(out / "r.png"), "--gif", str(out / "r.gif")]
    cases = {
        "wrong family": (render + ["--latents", str(tmp_path / "pca" / "sample_000.json")], "'pca' latents"),
        "wrong size": (render + ["--latents", str(tmp_path / "short.json")], "appearance"),
        "turntable 0": (render + ["--turntable", "0"], "--turntable"),
        "size 8": (render + ["--size", "8"], "--size"),
        "both cameras": (render + ["--turntable", "3", "--cameras", str(bad["no-frames"])], "--turntable"),
        "gif suffix": (render[:-1] + [str(out / "r.png.mp4")], "--gif"),
        "heat-map": (render + ["--errors-against", str(samples / "sample_000.ply")], "--errors-against"),
        "no model": (["render", "--out", str(out / "r.png")], "--mesh/--model"),
        "latents alone": (["render", "--mesh", str(samples / "sample_000.ply"), "--latents",
                           str(samples / "sample_000.json"), "--out", str(out / "r.png")], "--latents"),
        "sample n 0": (["sample", "--model", str(folder), "--n", "0", "--out", str(out / "s")], "--n"),
        **{f"transforms {k}": (render + ["--cameras", str(p)], p.name) for k, p in bad.items()},
    }
    for name, (args, says) in cases.items():
        err = _refused(args, capsys)
        assert says in err, (name, err)
        assert list(out.iterdir()) == [], name


def test_outputs_are_checked_together(models, tmp_path, capsys):
    folder, _, _ = models
    (tmp_path / "mine.gif").write_bytes(b"GIF89a a user's file")
    args = ["render", "--model", str(folder), "--out", str(tmp_path / "r.png"), "--gif", str(tmp_path / "mine.gif"),
            "--size", "16"]
    assert "--gif" in _refused(args, capsys)
    assert not (tmp_path / "r.png").exists() and (tmp_path / "mine.gif").read_bytes() == b"GIF89a a user's file"
    # our own GIF is replaced with --overwrite, and only then
    shutil.move(tmp_path / "mine.gif", tmp_path / "users.gif")
    main(args)
    assert "--overwrite" in _refused(args, capsys)
    main(args + ["--overwrite"])
    assert is_signed(tmp_path / "mine.gif") and (tmp_path / "users.gif").exists()
