"""`neuralmorph data observe`: single-view clouds and depth sequences of any mesh, in the formats `fit`
reads; the library functions behind it (`data.observe`)."""

import json

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from neuralmorph.cli import main
from neuralmorph.data.observations import load_target
from neuralmorph.data.observe import (NEAR_FRONTAL_MAX_Y, NEAR_FRONTAL_Z, front_hits, observation_camera,
                                      observe_depth, observe_points, single_view_points)
from neuralmorph.errors import InputError
from neuralmorph.geometry.distance import distance_to_mesh
from neuralmorph.geometry.mesh import Mesh, load_mesh, load_points, save_mesh
from neuralmorph.geometry.raycast import RayCaster


def plane(half_mm: float, z_mm: float = 0.0, facing: float = 1.0, n: int = 4) -> Mesh:
    """A square grid of side 2 * half_mm at height z, its normal along +z (facing=1) or -z (facing=-1)."""
    xs = np.linspace(-half_mm, half_mm, n + 1)
    gx, gy = np.meshgrid(xs, xs, indexing="ij")
    v = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, z_mm)], axis=1)
    ids = np.arange(gx.size).reshape(n + 1, n + 1)
    a, b, c, d = ids[:-1, :-1].ravel(), ids[1:, :-1].ravel(), ids[1:, 1:].ravel(), ids[:-1, 1:].ravel()
    f = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])  # counter-clockwise seen from +z
    return Mesh(v, f if facing > 0 else f[:, ::-1])


@pytest.fixture(scope="module")
def pca_run(tmp_path_factory):
    """A tiny pca model and one head sampled from it (in the model's span, away from the mean), via the CLI."""
    root = tmp_path_factory.mktemp("observe")
    main(["data", "synth", "--out", str(root / "data"), "--subjects", "6", "--expressions", "2", "--no-scans"])
    main(["train", "pca", "--data", str(root / "data"), "--out", str(root / "pca")])
    main(["sample", "--model", str(root / "pca"), "--n", "1", "--seed", "3", "--out", str(root / "sample")])
    main(["export", "--model", str(root / "pca"), "--out", str(root / "mean.ply")])
    return root


def test_points_observation_is_fitted_through_the_cli(pca_run, tmp_path):
    head_file = pca_run / "sample" / "sample_000.ply"
    head = load_mesh(head_file)
    mean = load_mesh(pca_run / "mean.ply")
    obs = tmp_path / "obs"
    main(["data", "observe", "--mesh", str(head_file), "--out", str(obs), "--camera-direction", "0.3", "-0.1", "1",
          "--seed", "5"])
    assert sorted(p.name for p in obs.iterdir()) == [".neuralmorph", "cloud_000.ply", "views.json"]
    pts, _ = load_points(obs / "cloud_000.ply")
    assert pts.shape == (2500, 3)
    assert distance_to_mesh(pts, head.vertices, head.faces).max() < 1e-6  # on the surface, exactly
    views = json.loads((obs / "views.json").read_text())
    (view,) = views["views"]
    d = np.array([0.3, -0.1, 1.0]) / np.linalg.norm([0.3, -0.1, 1.0])
    centre = 0.5 * (head.vertices.min(0) + head.vertices.max(0))
    assert np.allclose(view["direction"], d) and np.allclose(view["position_mm"], centre + 650.0 * d)
    assert view["name"] == "cloud_000.ply" and views["kind"] == "points" and views["n_points"] == 2500
    # every point is one the camera sees first, on a face turned toward it
    _, seen, _ = front_hits(RayCaster(head.vertices, head.faces), observation_camera(head.vertices, d))
    assert cKDTree(seen).query(pts)[0].max() < 1e-6

    fit = tmp_path / "fit"
    main(["fit", "--model", str(pca_run / "pca"), "--target", str(obs), "--out", str(fit), "--fit.steps", "80"])
    fitted = load_mesh(fit / "fit_000.ply")
    err = np.linalg.norm(fitted.vertices - head.vertices, axis=1)
    away = np.linalg.norm(mean.vertices - head.vertices, axis=1)
    assert away.mean() > 5.0  # the sampled head is far from the mean: recovering it takes the observation
    assert err.mean() < 1.0 and err.max() < 3.0, (err.mean(), err.max())
    metrics = json.loads((fit / "metrics.json").read_text())
    assert metrics["fit"]["kind"] == "points" and metrics["observations"][0]["name"] == "cloud_000.ply"


def test_random_views_are_near_frontal_distinct_and_seeded(pca_run, tmp_path):
    head_file = pca_run / "mean.ply"
    for name, seed in (("a", "2"), ("b", "2"), ("c", "3")):
        main(["data", "observe", "--mesh", str(head_file), "--out", str(tmp_path / name), "--views", "3",
              "--n-points", "300", "--seed", seed])
    files = [f"cloud_{i:03d}.ply" for i in range(3)]
    for i, f in enumerate(files):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()  # same seed, same bytes
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)
    dirs = np.array([v["direction"] for v in json.loads((tmp_path / "a" / "views.json").read_text())["views"]])
    assert len({tuple(d) for d in dirs.round(9)}) == 3
    assert ((dirs[:, 2] > NEAR_FRONTAL_Z[0]) & (dirs[:, 2] < NEAR_FRONTAL_Z[1])).all()
    assert (np.abs(dirs[:, 1]) < NEAR_FRONTAL_MAX_Y).all()
    assert load_points(tmp_path / "a" / files[0])[0].shape == (300, 3)
    # an earlier observation folder is replaced only with --overwrite
    again = ["data", "observe", "--mesh", str(head_file), "--out", str(tmp_path / "a"), "--n-points", "20"]
    with pytest.raises(SystemExit):
        main(again)
    assert load_points(tmp_path / "a" / files[0])[0].shape == (300, 3)
    main(again + ["--overwrite"])
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [".neuralmorph", files[0], "views.json"]


def test_depth_sequence_of_a_plane_has_the_exact_depths_and_round_trips(tmp_path):
    # camera 650 mm straight above a plane through the origin: every valid depth is 650 mm; with f = 1.5 x 64
    # = 96 px, a half side of 10 px * 650 / 96 mm covers the 20 x 20 pixel centres within 10 px of the
    # principal point (pixel centres sit at half-pixel offsets from it, so none lies on the rim)
    half = 10.0 * 650.0 / 96.0
    save_mesh(tmp_path / "plane.ply", plane(half))
    for fmt in ("npy", "png"):
        out = tmp_path / fmt
        main(["data", "observe", "--mesh", str(tmp_path / "plane.ply"), "--out", str(out), "--kind", "depth",
              "--views", "2", "--camera-direction", "0", "0", "1", "--image-size", "64", "--depth-format", fmt])
        assert sorted(p.name for p in out.iterdir()) == [".neuralmorph", "camera.json", f"depth_000.{fmt}",
                                                         f"depth_001.{fmt}", "views.json"]
        target = load_target(out)
        assert target.kind == "depth" and target.names == (f"depth_000.{fmt}", f"depth_001.{fmt}")
        for frame, cloud in zip(target.frames, target.clouds):
            valid = frame.depth > 0
            assert valid.sum() == 400 and np.all(frame.depth[valid] == 650.0)
            rows, cols = np.nonzero(valid)
            assert rows.min() == cols.min() == 22 and rows.max() == cols.max() == 41
            assert cloud.shape == (400, 3) and np.abs(cloud[:, 2]).max() < 1e-9  # back on the plane
            assert np.abs(cloud[:, :2]).max() < half
            assert np.allclose(frame.camera.position, [0.0, 0.0, 650.0])
        views = json.loads((out / "views.json").read_text())
        assert [v["visible_pixels"] for v in views["views"]] == [400, 400]


def test_depth_frames_back_project_onto_the_surface_points_draws_from():
    s = trimesh.creation.icosphere(subdivisions=3, radius=80.0)
    v, f = np.asarray(s.vertices) + [5.0, -3.0, 2.0], np.asarray(s.faces)
    dirs = np.array([[0.0, 0.0, 1.0], [1.0, 0.5, 0.2]])
    frames = observe_depth(v, f, dirs, image_size=48)
    clouds = observe_points(v, f, dirs, np.random.default_rng(0), n_points=500, image_size=48)
    for (frame, view), (pts, view2) in zip(frames, clouds):
        assert np.allclose(frame.camera.world_to_camera, view.camera.world_to_camera)
        lifted = frame.points()
        assert len(lifted) == view.visible_pixels == view2.visible_pixels
        assert distance_to_mesh(lifted, v, f).max() < 1e-3  # float32 depths of a 650 mm camera
        # every drawn point is one of the frame's pixels (to float32 depth rounding)
        assert cKDTree(lifted).query(pts)[0].max() < 1e-3
    # the library's one-view protocol is the same camera and the same visible set
    pts, cam = single_view_points(v, f, np.random.default_rng(1), n_points=200, image_size=48,
                                  direction=dirs[0])
    assert np.allclose(cam.world_to_camera, frames[0][1].camera.world_to_camera)
    assert cKDTree(frames[0][0].points()).query(pts)[0].max() < 1e-3


def test_depth_sequence_is_fitted_by_an_implicit_model_through_the_cli(tmp_path):
    """`fit` takes the depth folder as a sequence (one fit per frame); an untrained model keeps it fast."""
    import torch

    from neuralmorph.frame import Frame
    from neuralmorph.models.implicit.model import ImplicitGlobalConfig, ImplicitGlobalModel

    torch.manual_seed(0)
    cfg = ImplicitGlobalConfig(identity_size=8, expression_size=4, sdf_hidden=32, sdf_layers=2, deform_hidden=32,
                               deform_layers=2, id_compress=4)
    ImplicitGlobalModel(cfg, Frame(np.zeros(3), np.eye(3), 100.0), np.array([[-1.0] * 3, [1.0] * 3]), 1, 1
                        ).save(tmp_path / "model")
    s = trimesh.creation.icosphere(subdivisions=3, radius=60.0)
    save_mesh(tmp_path / "sphere.ply", Mesh(s.vertices, s.faces))
    main(["data", "observe", "--mesh", str(tmp_path / "sphere.ply"), "--out", str(tmp_path / "seq"), "--kind", "depth",
          "--views", "2", "--image-size", "64"])
    main(["fit", "--model", str(tmp_path / "model"), "--target", str(tmp_path / "seq"), "--out", str(tmp_path / "fit"),
          "--implicit.steps", "10", "--implicit.points-per-step", "200", "--implicit.mesh-resolution", "24",
          "--implicit.eval-points", "300"])
    metrics = json.loads((tmp_path / "fit" / "metrics.json").read_text())
    assert metrics["fit"]["kind"] == "depth"
    assert [o["name"] for o in metrics["observations"]] == ["depth_000.npy", "depth_001.npy"]
    assert (tmp_path / "fit" / "fit_001.ply").is_file()


def test_bad_observe_requests_stop_before_writing(tmp_path, capsys):
    save_mesh(tmp_path / "up.ply", plane(50.0))
    save_mesh(tmp_path / "down.ply", plane(50.0, facing=-1.0))
    mesh = str(tmp_path / "up.ply")
    cases = [
        (["--mesh", mesh, "--kind", "depth", "--n-points", "10"], "--n-points"),
        (["--mesh", mesh, "--camera-direction", "0", "1"], "--camera-direction"),
        (["--mesh", mesh, "--camera-direction", "0", "0", "0"], "--camera-direction"),
        (["--mesh", mesh, "--views", "2", "--camera-direction", "0", "0", "1", "1", "0", "1", "0", "1", "1"],
         "--camera-direction"),
        (["--mesh", mesh, "--views", "0"], "--views"),
        (["--mesh", mesh, "--depth-format", "png"], "--depth-format"),
        (["--mesh", mesh, "--distance-mm", "20"], "up.ply"),  # the camera would sit inside the mesh's bounds
        (["--mesh", str(tmp_path / "down.ply"), "--camera-direction", "0", "0", "1"], "down.ply"),  # sees its back
        (["--mesh", str(tmp_path / "missing.ply")], "missing.ply"),
    ]
    for args, named in cases:
        with pytest.raises(SystemExit) as exit_:
            main(["data", "observe", "--out", str(tmp_path / "out"), *args])
        assert exit_.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith("neuralmorph: error: ") and named in err and err.count("\n") == 1, err
        assert not (tmp_path / "out").exists()
    # a folder of the user's is never written into
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit):
        main(["data", "observe", "--mesh", mesh, "--out", str(tmp_path / "mine"), "--camera-direction", "0", "0", "1"])
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    with pytest.raises(InputError, match="n_points"):
        observe_points(plane(50.0).vertices, plane(50.0).faces, np.array([[0.0, 0.0, 1.0]]),
                       np.random.default_rng(0), n_points=0)
