import numpy as np
import pytest
import trimesh

from neuralmorph.errors import InputError
from neuralmorph.geometry.mesh import Mesh, save_mesh
from neuralmorph.commands.render import RenderConfig, run_render
from neuralmorph.render import (
    ERROR_ANCHORS, NAN_COLOR, VIEWS, MeshRenderer, bounding_box, colorbar, error_colors,
    hstack_images, render_mesh, render_points, save_png, view_camera,
)

WHITE = np.array([255, 255, 255], dtype=np.uint8)


def sphere(radius=50.0, centre=(0.0, 0.0, 0.0), subdivisions=3):
    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return np.asarray(s.vertices) + np.asarray(centre), np.asarray(s.faces)


def box(extents, centre=(0.0, 0.0, 0.0)):
    b = trimesh.creation.box(extents=extents)
    return np.asarray(b.vertices) + np.asarray(centre), np.asarray(b.faces)


def mask(img, bg=WHITE):
    return (img != bg).any(axis=2)


def centroid(m):
    rows, cols = np.nonzero(m)
    return rows.mean(), cols.mean()


def srgb_lightness(rgb):
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = c @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(y > 0.008856, 116 * np.cbrt(y) - 16, 903.3 * y)


def test_background_where_missed_shading_where_hit():
    v, f = sphere()
    img = render_mesh(v, f, "front", size=(64, 48))
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    assert (img[0, 0] == WHITE).all() and (img[-1, -1] == WHITE).all()
    centre = img[24, 32].astype(int)
    assert (centre != 255).any()
    # clay grey, lit head-on: bright, nearly neutral
    assert centre.min() > 120 and centre.max() - centre.min() < 40
    # Lambert: the rim of the sphere is darker than its centre (where the head-light hits square on)
    row = img[24, :, :].astype(int).sum(axis=1)
    hit = np.flatnonzero(row < 3 * 255)
    assert row[hit[2]] < row[32]
    # custom background
    black = render_mesh(v, f, "front", size=(32, 32), background=(0, 0, 0))
    assert (black[0, 0] == 0).all()


def test_framing_centres_any_box_and_is_shared_through_frame_bbox():
    v, f = box((40.0, 80.0, 20.0), centre=(300.0, -120.0, 55.0))
    for view in VIEWS:
        m = mask(render_mesh(v, f, view, size=(96, 96)))
        r, c = centroid(m)
        assert abs(r - 47.5) < 3 and abs(c - 47.5) < 3, view
        # the framed box fills most of the image (margin only), never spills over its border
        assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()), view
        assert m.any(axis=1).sum() > 60 or m.any(axis=0).sum() > 60, view
    # same frame_bbox -> same camera: a small sphere inside a big box renders small and off centre
    big = bounding_box(np.array([[-100.0, -100, -100], [100, 100, 100]]))
    vs, fs = sphere(10.0, centre=(50.0, 0.0, 0.0))
    m_own = mask(render_mesh(vs, fs, "front", size=(96, 96)))
    m_big = mask(render_mesh(vs, fs, "front", size=(96, 96), frame_bbox=big))
    assert m_big.sum() < 0.2 * m_own.sum()
    a = view_camera("side", big, (96, 96))
    b = view_camera("side", big, (96, 96))
    assert np.array_equal(a.world_to_camera, b.world_to_camera) and a.fx == b.fx


def test_view_conventions():
    """+x (the subject's left) is on the image right from the front; +z (the face) left in the side view."""
    big = np.array([[-100.0, -100, -100], [100, 100, 100]])
    left = sphere(15.0, centre=(70.0, 0.0, 0.0))
    nose = sphere(15.0, centre=(0.0, 0.0, 70.0))
    up = sphere(15.0, centre=(0.0, 70.0, 0.0))
    _, c = centroid(mask(render_mesh(*left, "front", (64, 64), frame_bbox=big)))
    assert c > 40
    _, c = centroid(mask(render_mesh(*nose, "side", (64, 64), frame_bbox=big)))
    assert c < 24
    r, _ = centroid(mask(render_mesh(*up, "front", (64, 64), frame_bbox=big)))
    assert r < 24
    r, _ = centroid(mask(render_mesh(*nose, "top", (64, 64), frame_bbox=big)))
    assert r < 24  # from above, the face is toward the top of the image
    _, c = centroid(mask(render_mesh(*nose, "three_quarter", (64, 64), frame_bbox=big)))
    assert c < 28  # turned toward the subject's left, the face moves left but stays in view


def test_front_and_side_differ():
    v, f = box((40.0, 80.0, 20.0))
    front = mask(render_mesh(v, f, "front", size=(64, 64)))
    side = mask(render_mesh(v, f, "side", size=(64, 64)))
    # both framed on the same box: 40 mm wide from the front, 20 mm deep from the side
    assert front.any(axis=0).sum() > 1.5 * side.any(axis=0).sum()
    with pytest.raises(InputError):
        render_mesh(v, f, "nope")


def test_vertex_colours_show_up():
    v, f = sphere()
    red = np.tile([220, 20, 20], (len(v), 1)).astype(np.uint8)
    img = render_mesh(v, f, "three_quarter", size=(48, 48), vertex_colors=red).astype(int)
    px = img[mask(img)]
    assert (px[:, 0] > px[:, 1] + 60).mean() > 0.9 and (px[:, 0] > px[:, 2] + 60).mean() > 0.9
    # floats in [0, 1] mean the same as uint8
    img_f = render_mesh(v, f, "three_quarter", size=(48, 48), vertex_colors=red / 255.0).astype(int)
    assert np.abs(img_f - img).max() <= 1
    # colours are interpolated across triangles: a top/bottom split gives a gradient, not a step
    split = np.where(v[:, 1:2] > 0, [255, 0, 0], [0, 0, 255]).astype(np.uint8)
    col = render_mesh(v, f, "front", size=(64, 64), vertex_colors=split, supersample=1)[:, 32].astype(int)
    purple = (col[:, 0] > 40) & (col[:, 2] > 40)
    assert purple.any()
    with pytest.raises(ValueError):
        render_mesh(v, f, vertex_colors=red[:5])


def test_open_mesh_seen_from_behind_is_shaded_not_black():
    quad = np.array([[-1.0, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])  # normal +z
    front = render_mesh(quad, faces, "front", size=(32, 32))[16, 16].astype(int)
    back = render_mesh(quad, faces, "back", size=(32, 32))[16, 16].astype(int)
    assert back.min() > 100 and np.abs(front - back).max() < 60


def test_renderer_reuse_camera_view_and_supersampling():
    v, f = sphere()
    r = MeshRenderer(v, f)
    cam = view_camera("three_quarter", bounding_box(v), (40, 30))
    assert np.array_equal(r.render(cam), r.render("three_quarter", (40, 30)))
    one = r.render("front", (40, 40), supersample=1)
    aa = r.render("front", (40, 40), supersample=3)
    # anti-aliasing only touches edge pixels: the inside stays the same, the rim gets in-between values
    assert np.array_equal(one[20, 20], aa[20, 20])
    assert len(np.unique(aa.reshape(-1, 3), axis=0)) > len(np.unique(one.reshape(-1, 3), axis=0))


def test_error_colors_ramp():
    vals = np.linspace(0.0, 5.0, 101)
    c = error_colors(vals, 5.0)
    assert c.shape == (101, 3) and c.dtype == np.uint8
    assert np.array_equal(c[0], ERROR_ANCHORS[0]) and np.array_equal(c[-1], ERROR_ANCHORS[-1])
    light = srgb_lightness(c)
    assert np.all(np.diff(light) > -0.5)  # monotonic up to uint8 rounding
    assert light[-1] - light[0] > 60
    assert np.all(np.diff(srgb_lightness(ERROR_ANCHORS)) > 5)  # strictly rising anchors
    odd = error_colors(np.array([-1.0, 50.0, np.nan]), 5.0)
    assert np.array_equal(odd[0], ERROR_ANCHORS[0]) and np.array_equal(odd[1], ERROR_ANCHORS[-1])
    assert tuple(odd[2]) == NAN_COLOR
    with pytest.raises(ValueError):
        error_colors(vals, 0.0)


def test_colorbar():
    bar = colorbar(5.0, height=200)
    assert bar.shape[0] == 200 and bar.shape[2] == 3 and bar.dtype == np.uint8 and 30 < bar.shape[1] < 200
    flat = bar.reshape(-1, 3).astype(int)
    for anchor in (ERROR_ANCHORS[0], ERROR_ANCHORS[-1]):
        assert (np.abs(flat - anchor).sum(axis=1) <= 6).any()
    assert ((flat < 80).all(axis=1)).any()  # tick labels drawn in dark text


def test_points_render_with_z_buffer():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(2500, 3))
    p = 60 * p / np.linalg.norm(p, axis=1, keepdims=True)
    img = render_points(p, "front", size=(64, 64))
    assert img.shape == (64, 64, 3) and (img[0, 0] == WHITE).all()
    assert 0.2 < mask(img).mean() < 0.95
    # two points on the same ray: the nearer one (z = +1, toward the front camera) wins
    pts = np.array([[0.0, 0, 1], [0, 0, -1], [5, 5, 0], [-5, -5, 0]])
    cols = np.array([[255, 0, 0], [0, 0, 255], [0, 255, 0], [0, 255, 0]], dtype=np.uint8)
    img = render_points(pts, "front", size=(64, 64), colors=cols, radius_px=3).astype(int)
    r, g, b = img[31:33, 31:33].reshape(-1, 3).mean(axis=0)
    assert r > b + 50
    img = render_points(pts, "back", size=(64, 64), colors=cols, radius_px=3).astype(int)
    r, g, b = img[31:33, 31:33].reshape(-1, 3).mean(axis=0)
    assert b > r + 50


def test_hstack_and_deterministic_png(tmp_path):
    v, f = sphere(subdivisions=2)
    a = render_mesh(v, f, "front", size=(32, 32))
    b = render_mesh(v, f, "side", size=(40, 24))
    s = hstack_images([a, b], pad=4)
    assert s.shape == (32, 32 + 4 + 40, 3)
    save_png(tmp_path / "a.png", s)
    save_png(tmp_path / "b.png", hstack_images([render_mesh(v, f, "front", size=(32, 32)), b], pad=4))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temp files left


def test_render_verb(tmp_path):
    v, f = sphere(subdivisions=2)
    save_mesh(tmp_path / "s.ply", Mesh(v, f))
    save_mesh(tmp_path / "gt.ply", Mesh(v * 1.02, f))
    save_mesh(tmp_path / "pts.ply", Mesh(v, np.zeros((0, 3), int)))
    run_render(RenderConfig(mesh=tmp_path / "s.ply", out=tmp_path / "s.png", views=("front", "side"), size=48))
    from PIL import Image

    assert Image.open(tmp_path / "s.png").size == (48 * 2 + 8, 48)
    run_render(RenderConfig(mesh=tmp_path / "pts.ply", out=tmp_path / "p.png", views=("top",), size=32))
    assert Image.open(tmp_path / "p.png").size == (32, 32)
    run_render(RenderConfig(mesh=tmp_path / "s.ply", out=tmp_path / "e.png", views=("front",), size=64,
                            errors_against=tmp_path / "gt.ply", vmax_mm=2.0))
    assert Image.open(tmp_path / "e.png").size[0] > 64 + 8 + 20  # the colour bar is there
    save_mesh(tmp_path / "other.ply", Mesh(*sphere(subdivisions=1)))
    with pytest.raises(InputError, match="correspondence"):
        run_render(RenderConfig(mesh=tmp_path / "s.ply", out=tmp_path / "x.png",
                                errors_against=tmp_path / "other.ply", error_kind="vertex"))
    with pytest.raises(InputError):
        RenderConfig(mesh=tmp_path / "s.ply", out=tmp_path / "x.png", views=("sideways",))
    with pytest.raises(InputError):
        run_render(RenderConfig(mesh=tmp_path / "missing.ply", out=tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


def test_coverage_culling_loses_no_hit():
    """Rays are cast only under triangles' projected rectangles: the hits must be those of a full cast."""
    from neuralmorph.geometry.camera import Camera, look_at
    from neuralmorph.render import _pixel_rays

    v, f = sphere(subdivisions=2)
    v = v * np.array([1.0, 1.6, 0.7])
    r = MeshRenderer(v, f)
    cams = [view_camera(name, bounding_box(v), (53, 41)) for name in VIEWS]
    cams.append(Camera(60.0, 60.0, 20.0, 25.0, 47, 39, look_at((90.0, 40.0, 150.0), (10.0, 0.0, 0.0))))
    cams.append(Camera(20.0, 20.0, 15.5, 15.5, 32, 32, look_at((0.0, 0.0, 30.0), (0.0, 0.0, -100.0))))  # inside
    for cam in cams:
        full = r._caster.cast(cam)[0]
        cand = r._coverage(cam)
        assert np.array_equal(cand[r._caster.cast_rays(cam.position, _pixel_rays(cam, cand, 1))[0]], full)


def grid_plane(n: int, half: float = 40.0, z: float = 0.0):
    """An n x n-cell square grid in the plane at height z (vertices (n+1)^2, normal +z)."""
    xs = np.linspace(-half, half, n + 1)
    gx, gy = np.meshgrid(xs, xs, indexing="ij")
    v = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, z)], axis=1)
    ids = np.arange(gx.size).reshape(n + 1, n + 1)
    a, b, c, d = ids[:-1, :-1].ravel(), ids[1:, :-1].ravel(), ids[1:, 1:].ravel(), ids[:-1, 1:].ravel()
    return v, np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])


def printed_errors(out: str) -> tuple[str, float, float]:
    """(kind, mean, max) from the render verb's printed line."""
    import re

    m = re.search(r"error kind (\w+) \(.*\): mean ([0-9.]+) mm, max ([0-9.]+) mm", out)
    assert m, out
    return m.group(1), float(m.group(2)), float(m.group(3))


def test_surface_heat_map_against_meshes_and_clouds_of_other_sizes(tmp_path, capsys):
    from neuralmorph.cli import main
    from neuralmorph.render import heatmap_errors

    # a coarse plane 3 mm above a finer, larger one: every vertex is 3 mm from the other surface
    v, f = grid_plane(4, half=40.0, z=3.0)
    gv, gf = grid_plane(9, half=60.0)
    save_mesh(tmp_path / "pred.ply", Mesh(v, f))
    save_mesh(tmp_path / "gt.ply", Mesh(gv, gf))
    err, kind = heatmap_errors(v, gv, gf)
    assert kind == "surface" and np.allclose(err, 3.0, atol=1e-12)
    main(["render", "--mesh", str(tmp_path / "pred.ply"), "--errors-against", str(tmp_path / "gt.ply"),
          "--out", str(tmp_path / "e.png"), "--views", "front", "--size", "48", "--vmax-mm", "5"])
    kind, mean, worst = printed_errors(capsys.readouterr().out)
    assert (kind, mean, worst) == ("surface", 3.0, 3.0)
    from PIL import Image

    img = np.asarray(Image.open(tmp_path / "e.png").convert("RGB"))
    # the plane's pixels carry the colour of 3 mm on a 5 mm scale (shaded): hue of the ramp at 0.6
    expected = error_colors(np.array([3.0]), 5.0)[0].astype(float)
    centre = img[24, 24].astype(float)
    assert np.allclose(centre / np.linalg.norm(centre), expected / np.linalg.norm(expected), atol=0.03)

    # a point-cloud ground truth: the distance to its nearest point; cloud points under each vertex, shifted
    # 4 mm sideways, are sqrt(3^2 + 4^2) = 5 mm away
    save_mesh(tmp_path / "cloud.ply", Mesh(v - [0.0, 4.0, 3.0], np.zeros((0, 3), int)))
    main(["render", "--mesh", str(tmp_path / "pred.ply"), "--errors-against", str(tmp_path / "cloud.ply"),
          "--error-kind", "surface", "--out", str(tmp_path / "c.png"), "--views", "front", "--size", "32"])
    kind, mean, worst = printed_errors(capsys.readouterr().out)
    assert kind == "surface" and mean == worst == 5.0

    # a sphere moved 2 mm along its vertex normals: 2 mm per vertex in correspondence (auto picks vertex),
    # and exactly 2 mm to the convex sphere's surface too (the vertex normal lies in the vertex's normal cone)
    sv, sf = sphere(subdivisions=2)
    moved = Mesh(sv, sf)
    moved = Mesh(sv + 2.0 * moved.vertex_normals, sf)
    err_v, kind_v = heatmap_errors(moved.vertices, sv, sf)
    err_s, kind_s = heatmap_errors(moved.vertices, sv, sf, "surface")
    assert (kind_v, kind_s) == ("vertex", "surface")
    assert np.allclose(err_v, 2.0) and np.allclose(err_s, 2.0, atol=1e-9)
    save_mesh(tmp_path / "moved.ply", moved)
    save_mesh(tmp_path / "sphere.ply", Mesh(sv, sf))
    main(["render", "--mesh", str(tmp_path / "moved.ply"), "--errors-against", str(tmp_path / "sphere.ply"),
          "--out", str(tmp_path / "m.png"), "--views", "front", "--size", "32"])
    assert printed_errors(capsys.readouterr().out) == ("vertex", 2.0, 2.0)
    with pytest.raises(InputError, match="correspondence"):
        heatmap_errors(v, gv, gf, "vertex", "gt.ply")


def test_render_writes_png_or_jpeg_and_refuses_other_suffixes(tmp_path, capsys):
    from PIL import Image

    from neuralmorph.atomic import is_signed
    from neuralmorph.cli import main

    v, f = sphere(subdivisions=1)
    save_mesh(tmp_path / "s.ply", Mesh(v, f))
    for name, fmt in (("a.jpg", "JPEG"), ("b.JPEG", "JPEG"), ("c.png", "PNG")):
        main(["render", "--mesh", str(tmp_path / "s.ply"), "--out", str(tmp_path / name), "--views", "front",
              "--size", "32"])
        with Image.open(tmp_path / name) as im:
            assert im.format == fmt and im.size == (32, 32)
        assert is_signed(tmp_path / name)  # ours: a later --overwrite may replace it
    capsys.readouterr()
    for name in ("x.bmp", "x.jpg.txt", "x"):
        with pytest.raises(SystemExit) as exit_:
            main(["render", "--mesh", str(tmp_path / "s.ply"), "--out", str(tmp_path / name)])
        assert exit_.value.code != 0
        err = capsys.readouterr().err
        assert "--out" in err and ".png" in err and err.count("\n") == 1, err
        assert not (tmp_path / name).exists()


@pytest.mark.parametrize("vertices, problem", [
    (np.full((4, 3), 7.0), "coincide"),                                     # one point, four times
    (np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]]), "zero area"),  # collinear triangles
])
def test_render_refuses_meshes_with_nothing_to_frame(tmp_path, capsys, vertices, problem):
    from neuralmorph.cli import main

    save_mesh(tmp_path / "flat.ply", Mesh(vertices, [[0, 1, 2], [1, 2, 3]]))
    save_mesh(tmp_path / "dot.ply", Mesh(np.full((3, 3), -2.0), np.zeros((0, 3), int)))
    for mesh in ("flat.ply", "dot.ply"):
        with pytest.raises(SystemExit) as exit_:
            main(["render", "--mesh", str(tmp_path / mesh), "--out", str(tmp_path / "r.png")])
        assert exit_.value.code != 0
        err = capsys.readouterr().err
        assert err.startswith("neuralmorph: error: ") and mesh in err and err.count("\n") == 1, err
        assert (problem if mesh == "flat.ply" else "coincide") in err
        assert not (tmp_path / "r.png").exists()
