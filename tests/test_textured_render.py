"""The ground-truth textured renderer (data/textured_render.py) and `data synth --images`.

Planes seen head-on have exact answers: each pixel sample hits a known point, so its texture coordinate,
its depth and the texel it reads are known in closed form; the checks compare the renderer against those
numbers computed independently here (scipy's map_coordinates for the bilinear reads, the pinhole formula
for where edges land).
"""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, map_coordinates, maximum_filter

from neuralmorph.data.fetch import is_fetched
from neuralmorph.data.textured_render import (Lighting, TexturedMesh, TexturedRenderer, load_textured_obj,
                                              orbit_camera, read_obj_face_uvs, render_james, render_textured,
                                              sh_basis, srgb_decode, srgb_encode)
from neuralmorph.errors import InputError
from neuralmorph.geometry.camera import Camera, look_at
from neuralmorph.geometry.mesh import load_mesh

HALF = 100.0   # the plane spans [-HALF, HALF]^2 mm at z = 0
DIST = 200.0   # the camera sits at z = DIST, looking down -z, world +y up


def _plane(texture: np.ndarray, half: float = HALF) -> TexturedMesh:
    """A square at z = 0 facing +z, texture coordinates u = (x + half) / 2 half, v = (y + half) / 2 half."""
    v = np.array([[-half, -half, 0.0], [half, -half, 0.0], [half, half, 0.0], [-half, half, 0.0]])
    f = np.array([[0, 1, 2], [0, 2, 3]])
    uv = (v[f][..., :2] + half) / (2 * half)
    return TexturedMesh(v, f, uv, texture)


def _camera(size: int = 64, focal: float = 100.0) -> Camera:
    c = (size - 1) / 2.0
    return Camera(focal, focal, c, c, size, size, look_at((0.0, 0.0, DIST), (0.0, 0.0, 0.0)))


def _sample_points(cam: Camera, s: int) -> tuple[np.ndarray, np.ndarray]:
    """World x, y (H, W, s*s) where each sub-pixel sample ray meets the plane z = 0 (camera x = world x,
    camera y = world -y for this camera)."""
    off = (np.arange(s) + 0.5) / s - 0.5
    oy, ox = np.meshgrid(off, off, indexing="ij")
    r, c = np.mgrid[0:cam.height, 0:cam.width].astype(np.float64)
    u = c[..., None] + ox.reshape(-1)
    v = r[..., None] + oy.reshape(-1)
    return (u - cam.cx) / cam.fx * DIST, -(v - cam.cy) / cam.fy * DIST


def _expected(texture: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear texture reads at plane points, averaged over the samples: (H, W, 3)."""
    h, w = texture.shape[:2]
    col = (x + HALF) / (2 * HALF) * w - 0.5
    row = (1.0 - (y + HALF) / (2 * HALF)) * h - 0.5
    out = [map_coordinates(texture[..., k].astype(np.float64), [row.ravel(), col.ravel()], order=1, mode="nearest")
           .reshape(x.shape).mean(axis=-1) for k in range(3)]
    return np.stack(out, axis=-1)


def _smooth_texture(seed: int = 0, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.stack([gaussian_filter(rng.uniform(size=(size, size)), 2.0, mode="wrap") for _ in range(3)], axis=-1)
    return ((t - t.min()) / (t.max() - t.min())).astype(np.float32)


@pytest.mark.parametrize("s", [1, 3])
def test_plane_head_on_under_ambient_light_shows_the_texture(s):
    tex = _smooth_texture()
    cam = _camera()
    r = render_textured(_plane(tex), cam, Lighting.ambient(1.0), supersample=s, background=(1.0, 0.0, 1.0))
    x, y = _sample_points(cam, s)
    assert np.abs(x).max() < HALF and np.abs(y).max() < HALF  # the plane fills the image
    np.testing.assert_allclose(r.rgb, _expected(tex, x, y), atol=2e-5)
    assert r.mask.min() == 1.0
    np.testing.assert_allclose(r.depth, DIST, rtol=1e-6)                 # camera z, mm
    np.testing.assert_allclose(r.normals, np.broadcast_to([0, 0, 1.0], r.normals.shape), atol=1e-6)
    # an ambient level scales the albedo exactly
    half = render_textured(_plane(tex), cam, Lighting.ambient(0.5), supersample=s)
    np.testing.assert_allclose(half.rgb, 0.5 * r.rgb, atol=1e-6)


def test_checkerboard_edges_land_at_their_analytic_pixel_positions():
    # 8 x 8 squares of 25 mm; the focal length puts edges at fractional pixel positions
    n, texels = 8, 32
    board = (np.add.outer(np.arange(n * texels) // texels, np.arange(n * texels) // texels) % 2).astype(np.float32)
    tex = np.repeat(board[:, :, None], 3, axis=2)
    size, focal = 90, 113.7
    cam = _camera(size, focal)
    # pixel centres (s = 1): each pixel shows the square its centre's ray lands in, except within the
    # bilinear blur of one texel (0.78 mm) around an edge
    r1 = render_textured(_plane(tex), cam, supersample=1)
    x, y = _sample_points(cam, 1)
    x, y = x[..., 0], y[..., 0]
    square = ((np.floor((x + HALF) / 25) + np.floor((HALF - y) / 25)) % 2)
    edge_mm = np.minimum(np.abs((x + HALF) / 25 - np.rint((x + HALF) / 25)),
                         np.abs((y + HALF) / 25 - np.rint((y + HALF) / 25))) * 25
    clear = edge_mm > 2 * HALF / (n * texels)
    assert clear.mean() > 0.8
    np.testing.assert_allclose(r1.rgb[..., 0][clear], square[clear], atol=1e-6)
    # supersampled (s = 8): the coverage of each edge pixel says where the edge crosses it; along a row
    # through the middle of a square row, every vertical edge is found within 0.15 px of u = f x / z + c
    r8 = render_textured(_plane(tex), cam, supersample=8)
    row = int(round(cam.cy - focal * (-12.5) / DIST))  # world y = -12.5 mm: a square row's middle
    profile = r8.rgb[row, :, 0].astype(np.float64)
    found = 0
    for k in range(1, n):
        xe = -HALF + 25.0 * k
        ue = focal * xe / DIST + cam.cx
        if not 3 <= ue <= size - 4:
            continue
        j0, j1 = int(np.floor(ue)) - 2, int(np.ceil(ue)) + 2
        left, right = profile[j0 - 1], profile[j1 + 1]
        assert abs(left - right) > 0.99  # a dark-bright edge
        # the profile's integral over [j0 - 1/2, j1 + 1/2] = (ue - (j0 - 1/2)) * left + ((j1 + 1/2) - ue) * right
        integral = profile[j0:j1 + 1].sum()
        ue_hat = (integral - (j1 + 0.5) * right + (j0 - 0.5) * left) / (left - right)
        assert abs(ue_hat - ue) < 0.15, (k, ue, ue_hat)
        found += 1
    assert found >= 4


def _square_coverage(cam: Camera, corners: np.ndarray, fine: int = 32) -> np.ndarray:
    """Exact-ish (fine x fine samples per pixel) coverage of a convex polygon in the plane z = 0."""
    x, y = _sample_points(cam, fine)
    inside = np.ones(x.shape, dtype=bool)
    for a, b in zip(corners, np.roll(corners, -1, axis=0)):
        inside &= (b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0]) >= 0
    return inside.mean(axis=-1)


def test_supersampling_reduces_edge_aliasing():
    ang = np.radians(23.0)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    corners = (np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * 40.0) @ rot.T
    v = np.c_[corners, np.zeros(4)]
    mesh = TexturedMesh(v, np.array([[0, 1, 2], [0, 2, 3]]), np.full((2, 3, 2), 0.5), np.ones((2, 2, 3)))
    cam = _camera(48, 60.0)
    ref = _square_coverage(cam, corners)
    edge = (ref > 0) & (ref < 1)
    assert edge.sum() > 50
    renderer = TexturedRenderer(mesh)
    err = {}
    for s in (1, 2, 4):
        r = renderer.render(cam, supersample=s)
        np.testing.assert_allclose(r.rgb[..., 0], r.mask, atol=1e-6)  # white on black: colour = coverage
        assert np.array_equal(r.mask[~edge & (ref == 1)], np.ones(((~edge) & (ref == 1)).sum()))
        err[s] = float(np.abs(r.mask - ref)[edge].mean())
    assert err[2] < 0.6 * err[1] and err[4] < 0.6 * err[2], err
    assert np.isnan(renderer.render(cam).depth[0, 0])  # nothing there


def test_minified_texture_reads_a_coarser_level_instead_of_aliasing():
    fine = (np.add.outer(np.arange(1024), np.arange(1024)) % 2).astype(np.float32)  # 1-texel checks
    tex = np.repeat(fine[:, :, None], 3, axis=2)
    r = render_textured(_plane(tex), _camera(48), supersample=1)   # ~10 texels per pixel side
    assert abs(float(r.rgb.mean()) - 0.5) < 0.02 and float(r.rgb.std()) < 0.05


def test_spherical_harmonics_lighting():
    dirs = np.random.default_rng(0).normal(size=(2000, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    # the basis is orthonormal over the sphere (Monte Carlo: 4 pi * mean)
    b = sh_basis(dirs)
    np.testing.assert_allclose(4 * np.pi * b.T @ b / len(dirs), np.eye(9), atol=0.15)
    # ambient: E = level everywhere; one light: E ~ strength * max(0, n.l) (9 coefficients: within 0.1)
    np.testing.assert_allclose(Lighting.ambient((0.2, 0.3, 0.4)).irradiance(dirs), np.tile([0.2, 0.3, 0.4], (2000, 1)))
    l = np.array([0.3, 0.5, 0.81])
    l /= np.linalg.norm(l)
    light = Lighting.from_lights(ambient=0.0, lights=[(l, (1.0, 0.5, 0.25))])
    want = np.clip(dirs @ l, 0, None)[:, None] * np.array([1.0, 0.5, 0.25])
    assert np.abs(light.irradiance(dirs) - want).max() < 0.1
    np.testing.assert_allclose(light.key_direction, l)
    with pytest.raises(ValueError):
        Lighting(np.zeros((4, 3)))


def test_light_and_highlight_follow_the_normal():
    tex = np.full((4, 4, 3), 0.5, np.float32)
    cam = _camera(32)
    # a light from straight ahead lights the plane fully, one from behind not at all (ambient only)
    front = render_textured(_plane(tex), cam, Lighting.from_lights(0.1, [((0, 0, 1), 1.0)]))
    behind = render_textured(_plane(tex), cam, Lighting.from_lights(0.1, [((0, 0, -1), 1.0)]))
    assert front.rgb.mean() > 0.5 and behind.rgb.mean() < 0.1
    # a highlight from a light beside the camera peaks where the half vector meets the normal
    shiny = Lighting.from_lights(0.0, [((0, 0, 1), 1.0)], specular=0.5, shininess=50.0)
    img = render_textured(_plane(tex * 0.4), cam, shiny).rgb[..., 0]
    peak = np.unravel_index(np.argmax(img), img.shape)
    assert abs(peak[0] - cam.cy) <= 1 and abs(peak[1] - cam.cx) <= 1
    assert img.max() > 0.6 and img[0, 0] < img.max() - 0.05


def test_srgb_round_trip():
    x = np.linspace(0, 1, 256)
    np.testing.assert_allclose(srgb_decode(srgb_encode(x)), x, atol=0.01)
    assert srgb_encode(np.array([0.0, 1.0])).tolist() == [0, 255]
    assert srgb_encode(0.2159).item() == 128  # sRGB 128 is linear 0.2159


def test_orbit_camera_frames_the_sphere():
    cam = orbit_camera((1.0, 2.0, 3.0), 50.0, 90.0, 0.0, 128)
    np.testing.assert_allclose(cam.position[1:], [2.0, 3.0], atol=1e-9)
    assert cam.position[0] > 1.0  # yaw +90: from the subject's left (+x)
    pts = np.array([1.0, 2.0, 3.0]) + 50.0 * np.eye(3)[[1, 2]]
    uv, z = cam.project(np.vstack([pts, [1.0, 2.0, 3.0]]))
    assert np.all((uv >= 0) & (uv <= 127)) and np.allclose(uv[-1], 63.5)


def test_obj_texture_coordinates_follow_the_mesh_faces(tmp_path):
    obj = tmp_path / "quad.obj"
    obj.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nf 1/1 2/2 3/3 4/4\n")
    faces, uv = read_obj_face_uvs(obj)
    assert np.array_equal(faces, load_mesh(obj).faces)
    np.testing.assert_array_equal(uv, [[[0, 0], [1, 0], [1, 1]], [[0, 0], [1, 1], [0, 1]]])
    from neuralmorph.render import save_png

    save_png(tmp_path / "t.png", np.full((4, 4, 3), 200, np.uint8))
    m = load_textured_obj(obj, tmp_path / "t.png")
    assert m.texture.shape == (4, 4, 3) and np.allclose(m.texture, srgb_decode(np.uint8(200)))
    bad = tmp_path / "bad.obj"
    bad.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 3\n")
    with pytest.raises(InputError, match="no texture coordinate"):
        read_obj_face_uvs(bad)


@pytest.mark.skipif(not is_fetched("james"), reason="james not fetched: run `neuralmorph data fetch james`")
def test_the_real_james_scan_renders_plausibly():
    r = render_james(size=96, yaw_deg=20.0, lighting=Lighting.ambient(1.0))
    skin = r.rgb[r.mask == 1.0]
    assert 0.1 < r.mask.mean() < 0.6
    assert skin.std() > 0.02                                   # the photograph, not a flat colour
    mean = skin.mean(axis=0)
    assert mean[0] > mean[1] > mean[2] and mean[0] > 0.05      # a skin tone: red > green > blue
    assert np.isfinite(r.depth[r.mask == 1.0]).all() and np.isnan(r.depth[r.mask == 0]).all()


# ------------------------------------------------------------------------------------------ synth --images


def _synth(out: Path, seed: int = 0) -> None:
    from neuralmorph.cli import main

    main(["data", "synth", "--out", str(out), "--subjects", "2", "--expressions", "1", "--views", "2",
          "--image-size", "64", "--images", "--no-scans", "--seed", str(seed)])


def test_synth_images_are_byte_identical_for_the_same_seed_and_fit_their_heads(tmp_path):
    from neuralmorph.data.dataset import HeadDataset
    from neuralmorph.data.images import load_mask

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _synth(a)
    _synth(b)
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()) == files
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert not mismatch and not errors
    assert sum(f.startswith("images/") for f in files) == 2 * 2 * 2  # an image and a mask per view
    _synth(c, seed=1)
    assert (a / "images/subj000_neutral_000.png").read_bytes() != (c / "images/subj000_neutral_000.png").read_bytes()

    ds = HeadDataset.load(a)
    assert len(ds.images) == 4 and ds.extras["synth.appearance"].shape == (2, 12)
    assert json.loads((a / "transforms.json").read_text())["units"] == "mm"
    for frame in ds.images:
        head = ds.heads[frame.registered]
        assert (head.subject, head.expression) == (frame.subject, frame.expression)
        mask = load_mask(frame.mask_path(a))
        # the registered head's vertices, projected with the frame's camera, fall on the mask
        uv, z = frame.camera.project(ds.vertices[frame.registered].astype(np.float64))
        assert (z > 0).all() and np.all((uv > -0.5) & (uv < 63.5))
        ij = np.rint(uv[:, ::-1]).astype(int)
        on = mask[ij[:, 0], ij[:, 1]]
        assert on.mean() > 0.9                                  # silhouette pixels are partly covered
        assert maximum_filter(mask, size=3)[ij[:, 0], ij[:, 1]].min() > 0  # none lands a pixel off the head
        assert 0.15 < mask.mean() < 0.8


@pytest.mark.parametrize("kwargs, flag", [({"views": 0}, "--views"), ({"image_size": 8}, "--image-size"),
                                          ({"lighting": "noon"}, "--lighting")])
def test_bad_image_flags_are_refused_naming_the_flag(tmp_path, kwargs, flag):
    from neuralmorph.data.synth import SynthConfig

    with pytest.raises(InputError, match=flag):
        SynthConfig(out=tmp_path / "s", images=True, **kwargs)
    SynthConfig(out=tmp_path / "s", images=False, **kwargs)  # without --images they are not used
