"""`neuralmorph fit` on images: an appearance model fitted to a photo (camera given, or solved from 2D
landmarks), to RGBA and greyscale photos, and to a transforms.json of posed photos; bad input refused
with one line and nothing written.

One tiny appearance model (the smoke config on small_synth's 32² images, trained for a few steps) serves
every case; each fit runs a few dozen steps.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neuralmorph.cli import main
from neuralmorph.data.dataset import HeadDataset
from neuralmorph.data.images import load_image, nerfstudio_from_camera, read_transforms, write_transforms
from neuralmorph.evaluation.image_metrics import psnr
from neuralmorph.geometry.mesh import load_mesh
from neuralmorph.geometry.pnp import project_points
from neuralmorph.models.appearance.model import AppearanceModel
from neuralmorph.models.base import MorphableModel
from neuralmorph.models.latents import load_latents
from neuralmorph.models.train import train_model
from neuralmorph.splat.ply import load_gaussians_ply
from neuralmorph.training import TrainerConfig

FAST = ["--image-fit.steps", "40", "--image-fit.refine-steps", "20"]
OUTPUTS = {"fit.ply", "gaussians.ply", "latents.json", "input_render.png", "turntable.png", "metrics.json"}


class Env:
    def __init__(self, root: Path, data: Path):
        self.root, self.data = root, data
        self.dataset = HeadDataset.load(data)
        config, _ = AppearanceModel.smoke_setup(self.dataset, root / "work")
        self.geometry = Path(config.geometry)  # a pca model: geometry only
        trained = train_model(AppearanceModel, self.dataset, config, root / "run", progress=False,
                              trainer=TrainerConfig(max_steps=30, batch_size=2, checkpoint_every=0, val_every=0,
                                                    warmup_steps=0, tensorboard=False))
        self.model_dir = trained.folder
        self.model = MorphableModel.load(self.model_dir)
        self.frames = read_transforms(data)
        self.frame = self.frames[0]
        self.image = self.frame.image_path(data)
        self.mask = self.frame.mask_path(data)
        self.camera = self.write_camera(root / "cam.json", nerfstudio_from_camera(self.frame.camera))

    @staticmethod
    def write_camera(path: Path, keys: dict) -> Path:
        path.write_text(json.dumps({**keys, "units": "mm"}))
        return path


@pytest.fixture(scope="module")
def env(small_synth, tmp_path_factory) -> Env:
    return Env(tmp_path_factory.mktemp("fit_image"), small_synth)


def cli(*argv) -> tuple[int, str, list[str]]:
    """`neuralmorph ARGV` in-process: exit code, stdout, and the stderr lines that are neither progress
    bars nor `neuralmorph: warning:` lines."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code or 0
    lines = [seg.strip() for line in err.getvalue().split("\n") for seg in [line.split("\r")[-1]]
             if seg.strip() and "|" not in seg and not seg.startswith("neuralmorph: warning:")]
    assert "Traceback" not in err.getvalue(), err.getvalue()
    return code, out.getvalue(), lines


def fit_ok(*argv) -> tuple[str, dict]:
    code, stdout, lines = cli("fit", *argv, *FAST)
    assert code == 0 and lines == [], lines
    out = Path(argv[argv.index("--out") + 1])
    assert OUTPUTS <= {p.name for p in out.iterdir()}
    return stdout, json.loads((out / "metrics.json").read_text())


def test_fit_to_one_image_with_its_camera_improves_on_the_mean_head(env, tmp_path):
    out = tmp_path / "fit"
    stdout, metrics = fit_ok("--model", env.model_dir, "--target", env.image, "--camera", env.camera,
                             "--mask", env.mask, "--out", out)
    lines = stdout.strip().splitlines()
    assert len(lines) == 1 and "PSNR" in lines[0] and str(out) in lines[0], stdout

    # the start: the mean head with the mean appearance, seen by the same camera
    image = load_image(env.image)
    start = psnr(env.model.render_views(env.model.zero_latents(1), [env.frame.camera])[0], image)
    (view,) = metrics["views"]
    assert view["psnr_db"] >= start + 0.1, (view, start)
    assert abs(view["start_psnr_db"] - start) < 1e-6
    assert 0 < view["ssim"] <= 1 and np.isfinite(view["psnr_masked_db"]) and 0 < view["ssim_masked"] <= 1
    fit = metrics["fit"]
    assert fit["camera"]["source"] == "given" and fit["seconds"] > 0 and fit["config"]["steps"] == 40
    assert fit["camera"]["w"] == 32 and fit["camera"]["fl_x"] == pytest.approx(env.frame.camera.fx)

    g = load_gaussians_ply(out / "gaussians.ply")
    assert len(g.means) == env.model.config.gaussians and np.isfinite(g.means).all()
    latents = load_latents(out / "latents.json", env.model)
    assert set(latents) == set(env.model.latent_sizes)
    assert not np.allclose(latents["appearance"].numpy(), env.model.zero_latents(1)["appearance"].numpy())
    mesh = load_mesh(out / "fit.ply")
    assert len(mesh.vertices) == env.model.n_vertices
    # the input beside its render, enlarged x4 (32 -> 128 rows); 8 turntable views of 256²
    assert np.asarray(Image.open(out / "input_render.png")).shape == (128, 4 * (32 + 4 + 32), 3)
    turntable = np.asarray(Image.open(out / "turntable.png"))
    assert turntable.shape == (256, 8 * 256 + 7 * 4, 3)
    assert turntable[:, :256].max() > 40  # the head is in the picture


def test_camera_from_landmarks(env, tmp_path):
    # the true head's landmarks seen by the true camera
    lm = env.model.landmark_ids.numpy()
    uv = project_points(env.frame.camera, np.asarray(env.dataset.vertices[env.frame.registered])[lm])
    pts = tmp_path / "pts.txt"
    np.savetxt(pts, uv)
    out = tmp_path / "fit"
    stdout, metrics = fit_ok("--model", env.model_dir, "--target", env.image, "--landmarks2d", pts, "--out", out)
    lines = stdout.strip().splitlines()
    assert len(lines) == 2 and "PnP" in lines[0] and "rms" in lines[0] and "PSNR" in lines[1], stdout
    cam = metrics["fit"]["camera"]
    assert cam["source"] == "pnp" and cam["rms_px"] < 1.0, cam
    # the recovered camera looks at the head from about the true direction (OpenGL: it looks down -z)
    axis = -np.array(cam["transform_matrix"])[:3, 2]
    true_axis = env.frame.camera.rotation[2]
    assert np.degrees(np.arccos(np.clip(axis @ true_axis, -1, 1))) < 20


def test_rgba_and_greyscale_photos(env, tmp_path):
    rgb = np.asarray(Image.open(env.image).convert("RGB"))
    alpha = np.asarray(Image.open(env.mask).convert("L"))
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, alpha])).save(rgba)
    _, metrics = fit_ok("--model", env.model_dir, "--target", rgba, "--camera", env.camera, "--out", tmp_path / "a")
    assert "psnr_masked_db" in metrics["views"][0]  # its alpha became the mask
    grey = tmp_path / "grey.png"
    Image.fromarray(rgb).convert("L").save(grey)
    _, metrics = fit_ok("--model", env.model_dir, "--target", grey, "--camera", env.camera, "--out", tmp_path / "g")
    assert "psnr_masked_db" not in metrics["views"][0] and np.isfinite(metrics["views"][0]["psnr_db"])


def test_fit_to_a_transforms_json(env, tmp_path):
    frames = [f for f in env.frames if f.subject == env.frame.subject and f.expression == env.frame.expression]
    assert len(frames) == 2
    folder = tmp_path / "photos"
    for f in frames:
        for rel in (f.image, f.mask):
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(env.data / rel, folder / rel)
    write_transforms(folder, frames)
    _, metrics = fit_ok("--model", env.model_dir, "--target", folder / "transforms.json", "--out", tmp_path / "fit")
    assert [v["image"] for v in metrics["views"]] == [f.image for f in frames]
    assert metrics["fit"]["camera"]["source"] == "transforms" and all("psnr_masked_db" in v for v in metrics["views"])
    assert np.asarray(Image.open(tmp_path / "fit" / "input_render.png")).shape[0] == 2 * 128 + 8


def test_bad_input_is_one_line_and_writes_nothing(env, tmp_path):
    cam = nerfstudio_from_camera(env.frame.camera)
    big = Env.write_camera(tmp_path / "big.json", {**cam, "w": 48, "h": 48, "cx": 24.0, "cy": 24.0})
    near = tmp_path / "near.json"  # positions in metres, read as the default millimetres
    metres = np.array(cam["transform_matrix"])
    metres[:3, 3] /= 1000
    near.write_text(json.dumps({**cam, "transform_matrix": metres.tolist()}))
    nan = tmp_path / "nan.json"
    nan.write_text(json.dumps({**cam, "fl_x": float("nan")}))  # json writes NaN, and reads it back
    small_mask = tmp_path / "small_mask.png"
    Image.new("L", (16, 16), 255).save(small_mask)
    few = tmp_path / "few.txt"
    np.savetxt(few, np.full((5, 2), 16.0))
    base = ["--model", env.model_dir, "--target", env.image]
    cases = {
        "image size": ([*base, "--camera", big], [str(env.image), "32x32", "48x48"]),
        "missing mask": ([*base, "--camera", env.camera, "--mask", tmp_path / "none.png"], ["--mask", "not found"]),
        "mask size": ([*base, "--camera", env.camera, "--mask", small_mask], [str(small_mask), "16x16"]),
        "camera in metres read as mm": ([*base, "--camera", near], [str(near), "inside the head", "units"]),
        "nan focal": ([*base, "--camera", nan], [str(nan), "fl_x"]),
        "no camera": (base, ["--camera", "--landmarks2d"]),
        "landmark count": ([*base, "--landmarks2d", few], [str(few), "68"]),
        "pca model": (["--model", env.geometry, "--target", env.image, "--camera", env.camera],
                      ["--model", "'pca'", "appearance"]),
        "image flag, mesh target": (["--model", env.model_dir, "--target", env.root / "x.ply", "--camera", env.camera],
                                    ["--camera"]),
        "transforms and --camera": (["--model", env.model_dir, "--target", env.data / "transforms.json",
                                     "--camera", env.camera], ["--camera", "transforms.json"]),
    }
    before = {p: p.read_bytes() for p in (env.image, env.camera, big, nan, small_mask)}
    for name, (argv, expected) in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        code, stdout, lines = cli("fit", *argv, "--out", out, *FAST)
        assert code != 0, name
        assert len(lines) == 1 and lines[0].startswith("neuralmorph: error: "), (name, lines)
        for text in expected:
            assert text in lines[0], (name, text, lines[0])
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}*")), name
        assert "PSNR" not in stdout, name
    assert all(p.read_bytes() == b for p, b in before.items())


def test_a_foreign_out_folder_is_refused(env, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, lines = cli("fit", "--model", env.model_dir, "--target", env.image, "--camera", env.camera,
                         "--out", out, *FAST)
    assert code != 0 and len(lines) == 1 and "--out" in lines[0], lines
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
