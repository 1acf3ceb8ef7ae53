"""Geometry core: mesh IO, sampling, distances, cameras and ray casting."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from neuralmorph.errors import InputError
from neuralmorph.geometry import (
    Camera, Mesh, backproject, closest_points, fibonacci_sphere, load_mesh, load_points, look_at,
    nearest_neighbors, protocol_cameras, render_depth, sample_surface, save_mesh, signed_distance,
)


def unit_cube() -> Mesh:
    """[0, 1]^3, outward winding."""
    b = trimesh.creation.box(extents=(1, 1, 1))
    return Mesh(b.vertices + 0.5, b.faces)


def shuffled_sphere(seed: int = 0) -> Mesh:
    """An icosphere whose vertex order is scrambled, so order-preservation is actually tested."""
    s = trimesh.creation.icosphere(2, radius=50.0)
    perm = np.random.default_rng(seed).permutation(len(s.vertices))
    inv = np.argsort(perm)
    return Mesh(s.vertices[perm], inv[s.faces])


# ---------------------------------------------------------------- mesh container and IO

@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_save_load_round_trip_keeps_order_exactly(tmp_path, suffix):
    m = shuffled_sphere()
    path = tmp_path / f"m{suffix}"
    save_mesh(path, m)
    back = load_mesh(path)
    np.testing.assert_array_equal(back.vertices, m.vertices)
    np.testing.assert_array_equal(back.faces, m.faces)
    first = path.read_bytes()
    save_mesh(path, m)
    assert path.read_bytes() == first  # deterministic bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp leftovers


@pytest.mark.parametrize("units,scale", [("mm", 1.0), ("cm", 10.0), ("m", 1000.0)])
def test_units_convert_to_mm(tmp_path, units, scale):
    m = shuffled_sphere()
    save_mesh(tmp_path / "m.ply", m)
    np.testing.assert_allclose(load_mesh(tmp_path / "m.ply", units=units).vertices, m.vertices * scale)
    with pytest.raises(InputError, match="units"):
        load_mesh(tmp_path / "m.ply", units="inch")


def test_obj_with_uv_seams_quads_and_negative_ids_keeps_vertices(tmp_path):
    path = tmp_path / "seam.obj"
    path.write_text(
        "# a quad and a triangle sharing seam vertices with different UVs\n"
        "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 2 0 0\n"
        "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nvt 0.5 0.5\nvn 0 0 1\n"
        "f 1/1/1 2/2/1 3/3/1 4/4/1\n"
        "f 2/5/1 -1/1/1 3/2/1\n"
    )
    m = load_mesh(path)
    np.testing.assert_array_equal(m.vertices, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0, 0]])
    np.testing.assert_array_equal(m.faces, [[0, 1, 2], [0, 2, 3], [1, 4, 2]])


BAD_FILES = {
    "garbage.ply": b"\x00\xff\x13garbage\x00" * 40,
    "garbage.obj": b"\x00\xff\xfe\x00" * 40,
    "garbage.off": b"not an off file at all\n1 2\n",
    "empty.ply": b"",
    "empty.obj": b"",
    "comments.obj": b"# only a comment\n",
    "nan.obj": b"v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n",
    "inf.obj": b"v 0 0 0\nv inf 0 0\nv 0 1 0\nf 1 2 3\n",
    "range.obj": b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n",
    "zero.obj": b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n",
    "points.obj": b"v 0 0 0\nv 1 0 0\nv 0 1 0\n",
    "range.ply": b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                 b"property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
                 b"0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n",
    "nan.ply": b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
               b"property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
               b"0 0 0\nnan 0 0\n0 1 0\n3 0 1 2\n",
    "mesh.glb": b"whatever",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_mesh_files_raise_input_error_naming_the_path(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name])
    with pytest.raises(InputError) as err:
        load_mesh(path)
    assert str(path) in str(err.value)


def test_missing_file_and_point_cloud_permission(tmp_path):
    with pytest.raises(InputError, match="not found") as err:
        load_mesh(tmp_path / "nope.ply")
    assert str(tmp_path / "nope.ply") in str(err.value)
    (tmp_path / "p.obj").write_text("v 0 0 0\nv 1 0 0\n")
    assert load_mesh(tmp_path / "p.obj", allow_points=True).is_point_cloud


def test_load_points_formats(tmp_path):
    pts = np.random.default_rng(0).normal(size=(20, 3))
    nrm = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    np.save(tmp_path / "a.npy", np.hstack([pts, nrm * 3]))
    p, n = load_points(tmp_path / "a.npy", units="cm")
    np.testing.assert_allclose(p, pts * 10)
    np.testing.assert_allclose(n, nrm)  # normals come back unit length
    np.savetxt(tmp_path / "a.xyz", pts)
    p, n = load_points(tmp_path / "a.xyz")
    np.testing.assert_allclose(p, pts)
    assert n is None
    trimesh.PointCloud(pts).export(tmp_path / "a.ply")
    np.testing.assert_allclose(load_points(tmp_path / "a.ply")[0], pts, rtol=1e-6)
    save_mesh(tmp_path / "m.obj", shuffled_sphere())
    np.testing.assert_array_equal(load_points(tmp_path / "m.obj")[0], shuffled_sphere().vertices)


@pytest.mark.parametrize("name,content", [
    ("empty.xyz", b""), ("blank.txt", b"# nothing\n\n"), ("nan.xyz", b"0 0 0\nnan 1 2\n"),
    ("cols.txt", b"1 2\n3 4\n"), ("words.xyz", b"a b c\n"), ("bad.npy", b"\x93NUMPY garbage"),
    ("missing.npy", None), ("a.stl", b"solid"),
])
def test_bad_point_files_raise_input_error(tmp_path, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as err:
        load_points(path)
    assert str(path) in str(err.value)


def test_mesh_validation_and_properties():
    with pytest.raises(ValueError):
        Mesh(np.zeros((3, 2)), np.zeros((0, 3)))
    with pytest.raises(ValueError):
        Mesh(np.zeros((3, 3)), [[0, 1, 3]])
    with pytest.raises(ValueError):
        Mesh([[0, 0, np.nan], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]])
    cube = unit_cube()
    assert cube.vertices.dtype == np.float64 and cube.faces.dtype == np.int64
    with pytest.raises(ValueError):
        cube.vertices[0, 0] = 5.0  # read-only: cached normals can never go stale
    assert cube.area == pytest.approx(6.0)
    assert not cube.is_point_cloud and Mesh(np.zeros((4, 3)), np.zeros((0, 3))).is_point_cloud
    # outward winding: face normals point away from the centre, vertex normals along the diagonals
    centres = cube.vertices[cube.faces].mean(axis=1) - 0.5
    assert np.all(np.einsum("ij,ij->i", cube.face_normals, centres) > 0)
    diag = (cube.vertices - 0.5) / np.linalg.norm(cube.vertices - 0.5, axis=1, keepdims=True)
    assert np.all(np.einsum("ij,ij->i", cube.vertex_normals, diag) > 0.5)
    np.testing.assert_allclose(np.linalg.norm(cube.vertex_normals, axis=1), 1.0)
    tm = cube.to_trimesh()
    np.testing.assert_array_equal(tm.vertices, cube.vertices)


# ---------------------------------------------------------------- sampling and distances

def test_sample_surface_deterministic_and_on_surface():
    m = shuffled_sphere()
    a = sample_surface(m.vertices, m.faces, 2000, seed=3)
    b = sample_surface(m.vertices, m.faces, 2000, seed=3)
    c = sample_surface(m.vertices, m.faces, 2000, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    pts, nrm, fid = a
    assert pts.shape == (2000, 3) and nrm.shape == (2000, 3) and fid.dtype == np.int64
    _, dist, _ = closest_points(pts, m.vertices, m.faces)
    assert dist.max() < 1e-9
    np.testing.assert_allclose(nrm, m.face_normals[fid])


def test_sample_surface_area_weighting():
    # two disjoint triangles, areas 3 : 1
    v = np.array([[0, 0, 0], [3, 0, 0], [0, 2, 0], [10, 0, 0], [11, 0, 0], [10, 2, 0]], float)
    f = np.array([[0, 1, 2], [3, 4, 5]])
    _, _, fid = sample_surface(v, f, 40_000, seed=0)
    ratio = np.sum(fid == 0) / np.sum(fid == 1)
    assert ratio == pytest.approx(3.0, rel=0.05)
    with pytest.raises(ValueError):
        sample_surface(np.zeros((3, 3)), [[0, 1, 2]], 10, seed=0)  # zero area


def test_closest_points_and_signed_distance_on_unit_cube():
    cube = unit_cube()
    q = np.array([[2.0, 0.5, 0.5], [0.5, 0.5, 0.5], [0.5, -3.0, 0.5], [2.0, 2.0, 0.5], [0.5, 0.5, 0.9]])
    closest, dist, fid = closest_points(q, cube.vertices, cube.faces)
    np.testing.assert_allclose(dist, [1.0, 0.5, 3.0, np.sqrt(2.0), 0.1], atol=1e-12)
    np.testing.assert_allclose(closest[[0, 2, 3, 4]], [[1, .5, .5], [.5, 0, .5], [1, 1, .5], [.5, .5, 1]], atol=1e-12)
    assert fid.dtype == np.int64
    sd = signed_distance(q, cube.vertices, cube.faces)
    np.testing.assert_allclose(sd, [1.0, -0.5, 3.0, np.sqrt(2.0), -0.1], atol=1e-12)


def test_signed_distance_sphere():
    s = trimesh.creation.icosphere(4, radius=1.0)
    q = np.array([[0, 0, 0], [0, 3, 0], [0.5, 0, 0]], float)
    np.testing.assert_allclose(signed_distance(q, s.vertices, s.faces), [-1, 2, -0.5], atol=2e-3)


def test_nearest_neighbors():
    ref = np.array([[0, 0, 0], [10, 0, 0]], float)
    d, i = nearest_neighbors(np.array([[1, 0, 0], [8, 0, 0], [5, 3, 4]], float), ref)
    np.testing.assert_allclose(d[:2], [1, 2])
    np.testing.assert_array_equal(i[:2], [0, 1])
    assert d[2] == pytest.approx(np.sqrt(50)) and i.dtype == np.int64


# ---------------------------------------------------------------- cameras and ray casting

def plane_facing_camera(cam: Camera, z: float, half: float, reverse: bool = False) -> Mesh:
    """A square at camera depth z (camera frame x, y in [-half, half]) wound to face the camera."""
    pc = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    world = (pc - cam.world_to_camera[:3, 3]) @ cam.rotation
    f = np.array([[0, 2, 1], [0, 3, 2]])  # normal along -z in the camera frame: towards the camera
    return Mesh(world, f[:, ::-1] if reverse else f)


def test_look_at_and_protocol_cameras():
    m = look_at((0, 0, 600), (0, 0, 0))
    np.testing.assert_allclose(m[:3, :3], np.diag([1, -1, -1]), atol=1e-12)  # x right, y down, z forward
    cams = protocol_cameras(10, 600.0, target=(1, 2, 3), width=64, height=48, focal=100.0)
    assert len(cams) == 10
    for cam in cams:
        assert np.linalg.norm(cam.position - [1, 2, 3]) == pytest.approx(600.0)
        uv, z = cam.project(np.array([[1.0, 2.0, 3.0]]))
        np.testing.assert_allclose(uv[0], [31.5, 23.5], atol=1e-9)  # the target is at the image centre
        assert z[0] == pytest.approx(600.0)
    dirs = np.array([c.position - [1, 2, 3] for c in cams]) / 600.0
    assert np.abs(dirs[:, 1]).max() < 0.99  # poles dropped
    sphere = fibonacci_sphere(12)
    np.testing.assert_allclose(np.linalg.norm(sphere, axis=1), 1.0)
    np.testing.assert_allclose(sphere[[0, -1], 1], [1, -1])
    with pytest.raises(ValueError):
        Camera(100, 100, 10, 10, 20, 20, np.diag([2.0, 1, 1, 1]))


def test_render_plane_gives_exact_depth_with_full_intrinsics():
    # fx != fy and an off-centre principal point
    cam = Camera(fx=150.0, fy=90.0, cx=20.3, cy=33.7, width=64, height=48,
                 world_to_camera=look_at((30, -20, 400), (0, 5, 0), up=(0.2, 1, 0)))
    half = 25.0
    plane = plane_facing_camera(cam, 500.0, half)
    depth, normals, fid = render_depth(plane.vertices, plane.faces, cam)
    assert depth.shape == (48, 64) and normals.shape == (48, 64, 3) and fid.shape == (48, 64)
    hit = np.isfinite(depth)
    np.testing.assert_allclose(depth[hit], 500.0, rtol=0, atol=1e-9)
    # which pixels hit follows from the intrinsics alone: |x|, |y| <= half at z = 500
    v, u = np.mgrid[0:48, 0:64]
    expect = (np.abs((u - 20.3) / 150.0 * 500) < half) & (np.abs((v - 33.7) / 90.0 * 500) < half)
    np.testing.assert_array_equal(hit, expect)
    assert 0 < hit.sum() < hit.size
    np.testing.assert_allclose(normals[hit], np.broadcast_to(-cam.rotation[2], normals[hit].shape), atol=1e-12)
    assert np.all(fid[~hit] == -1) and np.all(fid[hit] >= 0) and np.isnan(normals[~hit]).all()


def test_backproject_then_project_returns_pixel_centres():
    cam = Camera(fx=120.0, fy=130.0, cx=30.5, cy=20.0, width=60, height=40,
                 world_to_camera=look_at((0, 0, -300), (0, 0, 0)))
    s = trimesh.creation.icosphere(3, radius=80.0)
    depth, normals, _ = render_depth(s.vertices, s.faces, cam)
    pts, nrm = backproject(depth, cam, normals)
    hit = np.isfinite(depth)
    assert len(pts) == hit.sum() > 100 and nrm.shape == pts.shape
    uv, z = cam.project(pts)
    v, u = np.nonzero(hit)
    np.testing.assert_allclose(uv, np.stack([u, v], axis=1), atol=1e-9)
    np.testing.assert_allclose(z, depth[hit], rtol=1e-12)
    # the points are on the sphere, and the hit faces face the camera
    _, dist, _ = closest_points(pts, s.vertices, s.faces)
    assert dist.max() < 1e-6
    rays = pts - cam.position
    assert np.all(np.einsum("ij,ij->i", rays, nrm) < 0)
