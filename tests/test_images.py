"""Posed images as data: transforms.json read/write (OpenGL <-> OpenCV, nerfstudio's pixel centres), every
validation error, datasets holding images, `data ingest --transforms` and `data info` through the CLI."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neuralmorph.atomic import is_signed
from neuralmorph.cli import main
from neuralmorph.data.dataset import Head, HeadDataset
from neuralmorph.data.images import (ImageFrame, camera_from_nerfstudio, camera_to_world, load_image, load_mask,
                                     nerfstudio_from_camera, read_transforms, write_transforms)
from neuralmorph.errors import InputError
from neuralmorph.geometry.camera import Camera, look_at
from neuralmorph.geometry.mesh import Mesh, save_mesh

W, H = 64, 48


def _png(path: Path, size=(W, H), mode="RGB", seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def _gl(eye, target) -> list[list[float]]:
    """An OpenGL camera-to-world looking from `eye` at `target`, y up (independent of our conversion)."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    back = (eye - target) / np.linalg.norm(eye - target)
    right = np.cross([0.0, 1.0, 0.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, eye
    return m.tolist()


def _capture(folder: Path, units="m", n=3, masks=True) -> Path:
    """A small nerfstudio-style capture: n images (+ masks), shared intrinsics, poses in `units`."""
    frames = []
    for i in range(n):
        _png(folder / "images" / f"frame_{i:03d}.png", seed=i)
        f = {"file_path": f"images/frame_{i:03d}.png",
             "transform_matrix": _gl([0.1 * i, 0.05, 0.6], [0.0, 0.0, 0.0])}
        if masks:
            _png(folder / "masks" / f"frame_{i:03d}.png", mode="L", seed=10 + i)
            f["mask_path"] = f"masks/frame_{i:03d}.png"
        frames.append(f)
    meta = {"camera_model": "OPENCV", "fl_x": 70.25, "fl_y": 71.5, "cx": 32.0, "cy": 24.0, "w": W, "h": H,
            "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames}
    if units is not None:
        meta["units"] = units
    (folder / "transforms.json").write_text(json.dumps(meta))
    return folder / "transforms.json"


# --- conventions --------------------------------------------------------------------------------------


@pytest.mark.parametrize("eye", [(0.0, 0.0, 500.0), (500.0, 0.0, 0.0)])
def test_a_known_camera_sees_a_known_point_at_a_known_pixel(eye):
    # nerfstudio: principal point (320.5, 240.5) in corner coordinates, i.e. the centre of pixel (row 240,
    # column 320); a point 10 mm right of and 20 mm above the optical axis, 500 mm away, is 20 px right and
    # 40 px up at focal 1000: the centre of pixel (row 200, column 340). For the camera on +x looking
    # at the origin, "right" is world -z.
    gl = np.array(_gl(eye, (0, 0, 0)))
    cam = camera_from_nerfstudio(gl, 1000.0, 1000.0, 320.5, 240.5, 640, 480)
    point = np.array([10.0, 20.0, 0.0]) if eye[2] else np.array([0.0, 20.0, -10.0])
    uv, z = cam.project(point[None])
    np.testing.assert_allclose(uv[0], [340.0, 200.0], atol=1e-9)
    assert z[0] == pytest.approx(500.0)
    origins, dirs = cam.rays()  # and the ray through that pixel's centre passes through the point
    d = dirs[200 * 640 + 340]
    to_point = (point - origins[0]) / np.linalg.norm(point - origins[0])
    np.testing.assert_allclose(d, to_point, atol=1e-12)
    back = nerfstudio_from_camera(cam)
    assert (back["cx"], back["cy"], back["w"], back["h"]) == (320.5, 240.5, 640, 480)
    np.testing.assert_allclose(back["transform_matrix"], gl, rtol=0, atol=1e-12)


def test_units_scale_the_translation_only():
    gl = np.array(_gl((0.0, 0.0, 0.5), (0, 0, 0)))
    cam = camera_from_nerfstudio(gl, 100.0, 100.0, 32.0, 24.0, W, H, mm_per_unit=1000.0)
    np.testing.assert_allclose(cam.position, [0.0, 0.0, 500.0])
    np.testing.assert_allclose(camera_to_world(cam)[:3, :3], gl[:3, :3] @ np.diag([1.0, -1.0, -1.0]), rtol=0, atol=1e-15)


# --- round trips --------------------------------------------------------------------------------------


def test_transforms_file_round_trips_every_number(tmp_path):
    src = _capture(tmp_path / "cap", units="mm")
    meta = json.loads(src.read_text())
    meta["frames"][1].update(subject="alice", expression="smile", registered=3)
    meta["frames"][2].update(fl_x=80.125, cx=30.75)  # per-frame intrinsics override the shared ones
    src.write_text(json.dumps(meta))
    frames = read_transforms(src)
    assert [f.subject for f in frames] == ["", "alice", ""] and frames[1].registered == 3
    assert frames[0].mask == "masks/frame_000.png"
    (tmp_path / "cap2").mkdir()
    for sub in ("images", "masks"):  # the paths stay relative: give the copy its files
        (tmp_path / "cap2" / sub).symlink_to(tmp_path / "cap" / sub)
    out = write_transforms(tmp_path / "cap2", frames)
    assert is_signed(out)
    written = json.loads(out.read_text())
    assert written["units"] == "mm" and "fl_x" not in written  # frames differ: intrinsics per frame
    for a, b in zip(meta["frames"], written["frames"]):
        np.testing.assert_allclose(b["transform_matrix"], a["transform_matrix"], rtol=0, atol=1e-12)
        for k in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
            assert b[k] == a.get(k, meta[k])
    again = read_transforms(out)
    for f, g in zip(frames, again):
        assert (g.image, g.mask, g.subject, g.expression, g.registered) == (f.image, f.mask, f.subject, f.expression,
                                                                            f.registered)
        np.testing.assert_allclose(g.camera.world_to_camera, f.camera.world_to_camera, rtol=0, atol=1e-12)
    write_transforms(tmp_path / "cap2", again)  # ours: may be replaced
    for a, b in zip(written["frames"], json.loads(out.read_text())["frames"]):
        np.testing.assert_allclose(b["transform_matrix"], a["transform_matrix"], rtol=0, atol=1e-12)


def test_frames_made_in_code_round_trip(tmp_path):
    cams = [Camera(90.0, 91.0, 31.5, 23.25, W, H, look_at(np.array([40.0 * i, 10.0, 600.0]), np.zeros(3)))
            for i in range(3)]
    for i in range(3):
        _png(tmp_path / f"im{i}.png", seed=i)
    frames = [ImageFrame(f"im{i}.png", c, "bob", "neutral", -1) for i, c in enumerate(cams)]
    out = write_transforms(tmp_path, frames)
    meta = json.loads(out.read_text())
    assert meta["fl_x"] == 90.0 and meta["cx"] == 32.0 and "fl_x" not in meta["frames"][0]  # shared: top level
    back = read_transforms(tmp_path)
    for f, b in zip(frames, back):
        assert (b.image, b.subject, b.expression, b.registered) == (f.image, "bob", "neutral", -1)
        assert (b.camera.fx, b.camera.fy, b.camera.cx, b.camera.cy) == (90.0, 91.0, 31.5, 23.25)
        np.testing.assert_allclose(b.camera.world_to_camera, f.camera.world_to_camera, rtol=0, atol=1e-12)
    write_transforms(tmp_path, back)
    for a, b in zip(meta["frames"], json.loads(out.read_text())["frames"]):
        np.testing.assert_allclose(b["transform_matrix"], a["transform_matrix"], rtol=0, atol=1e-12)


def test_write_transforms_never_replaces_a_users_file(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "transforms.json").write_text("{}")
    cam = Camera(50.0, 50.0, 31.5, 23.5, W, H, np.eye(4))
    with pytest.raises(InputError, match="not an output of neuralmorph"):
        write_transforms(tmp_path, [ImageFrame("a.png", cam)])
    assert (tmp_path / "transforms.json").read_text() == "{}"


def test_load_image_and_mask(tmp_path):
    rgb = _png(tmp_path / "c.png")
    img = load_image(rgb)
    assert img.shape == (H, W, 3) and img.dtype == np.float32
    np.testing.assert_array_equal(img, np.asarray(Image.open(rgb), np.float32) / 255.0)
    grey = _png(tmp_path / "g.png", mode="L")
    assert load_image(grey).shape == (H, W, 3)
    deep = tmp_path / "d.png"
    Image.fromarray(np.full((H, W), 65535, np.uint16)).save(deep)
    assert load_mask(deep).max() == 1.0 and load_mask(grey).shape == (H, W)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png")[0, 0], [1.0, 0.0, 0.0])
    with pytest.raises(InputError, match="greyscale"):
        load_mask(rgb)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="bad.png: not a readable image"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(InputError, match="not found"):
        load_mask(tmp_path / "none.png")


# --- validation -------------------------------------------------------------------------------------


def _edit(meta, what):
    f0 = meta["frames"][0]
    if what == "no frames":
        meta["frames"] = []
    elif what == "frame not object":
        meta["frames"][0] = 3
    elif what == "no file_path":
        del f0["file_path"]
    elif what == "no transform":
        del f0["transform_matrix"]
    elif what == "3x4 transform":
        f0["transform_matrix"] = f0["transform_matrix"][:3]
    elif what == "text transform":
        f0["transform_matrix"] = "identity"
    elif what == "bad last row":
        f0["transform_matrix"][3] = [0, 0, 0.5, 1]
    elif what == "scaled":
        f0["transform_matrix"] = (np.diag([2.0, 2.0, 2.0, 1.0]) @ np.array(f0["transform_matrix"])).tolist()
    elif what == "reflection":
        f0["transform_matrix"] = (np.array(f0["transform_matrix"]) @ np.diag([-1.0, 1.0, 1.0, 1.0])).tolist()
    elif what == "nan transform":
        f0["transform_matrix"][0][3] = float("nan")
    elif what == "far camera":
        f0["transform_matrix"][2][3] = 5000.0
    elif what == "zero focal":
        f0["fl_x"] = 0.0
    elif what == "negative focal":
        meta["fl_y"] = -3.0
    elif what == "nan focal":
        f0["fl_x"] = float("nan")
    elif what == "text focal":
        f0["fl_x"] = "70"
    elif what == "cx outside":
        f0["cx"] = W + 1.0
    elif what == "cy outside":
        f0["cy"] = -0.5
    elif what == "zero width":
        f0["w"] = 0
    elif what == "fractional height":
        f0["h"] = 47.5
    elif what == "no focal":
        del meta["fl_x"]
    elif what == "distortion":
        f0["k1"] = 0.1
    elif what == "fisheye":
        meta["camera_model"] = "OPENCV_FISHEYE"
    elif what == "image missing":
        f0["file_path"] = "images/nothing.png"
    elif what == "image size":
        f0["w"], f0["cx"] = W + 2, 32.0
    elif what == "mask missing":
        f0["mask_path"] = "masks/none.png"
    elif what == "subject not text":
        f0["subject"] = 7
    elif what == "registered bad":
        f0["registered"] = -2
    elif what == "units bad":
        meta["units"] = "inch"
    return meta


CASES = [
    ("no frames", "non-empty 'frames'", False), ("frame not object", "frames[0] must be a JSON object", True),
    ("no file_path", "frames[0]: no 'file_path'", True), ("no transform", "no 'transform_matrix'", True),
    ("3x4 transform", "4x4", True), ("text transform", "4x4", True), ("bad last row", "last row", True),
    ("scaled", "not orthonormal", True), ("reflection", "reflection", True), ("nan transform", "NaN", True),
    ("far camera", "wrong units", True), ("zero focal", "fl_x must be positive", True),
    ("negative focal", "fl_y must be positive", True), ("nan focal", "fl_x must be finite", True),
    ("text focal", "fl_x must be a number", True), ("cx outside", "outside the 64x48 image", True),
    ("cy outside", "outside", True), ("zero width", "w must be a whole number", True),
    ("fractional height", "h must be a whole number", True), ("no focal", "no 'fl_x'", True),
    ("distortion", "lens distortion k1", True), ("fisheye", "OPENCV_FISHEYE", False),
    ("image missing", "image file", True), ("image size", "is 64x48 pixels but the camera says", True),
    ("mask missing", "mask file", True), ("subject not text", "subject must be a string", True),
    ("registered bad", "registered must be", True), ("units bad", "'units' is 'inch'", False),
]


@pytest.mark.parametrize("what, expect, per_frame", CASES, ids=[c[0] for c in CASES])
def test_every_bad_transforms_file_is_one_line_naming_the_file_and_frame(tmp_path, what, expect, per_frame):
    src = _capture(tmp_path, units="m")
    src.write_text(json.dumps(_edit(json.loads(src.read_text()), what)))
    with pytest.raises(InputError) as err:
        read_transforms(src)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(src)), msg
    assert expect in msg, msg
    if per_frame:
        assert "frames[0]" in msg, msg


def test_file_level_problems(tmp_path, capsys):
    with pytest.raises(InputError, match="transforms file not found"):
        read_transforms(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_transforms(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(InputError, match="JSON object"):
        read_transforms(tmp_path / "list.json")
    src = _capture(tmp_path / "c", units=None)
    with pytest.raises(InputError, match="no 'units' key.*--units"):
        read_transforms(src)
    assert read_transforms(src, units="m")[0].camera.position[2] == pytest.approx(600.0)
    meta = json.loads(src.read_text())
    meta["units"] = "mm"
    src.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="says its units are 'mm' but 'm' was given"):
        read_transforms(src, units="m")
    bad_mask = _png(tmp_path / "c" / "masks" / "big.png", size=(W + 1, H), mode="L")
    meta["frames"][1]["mask_path"] = "masks/big.png"
    meta["aabb_scale"] = 16
    meta["frames"][0]["depth_file_path"] = "d.png"
    src.write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"frames\[1\].*mask .*big.png is 65x48"):
        read_transforms(src)
    bad_mask.unlink()
    del meta["frames"][1]["mask_path"]
    src.write_text(json.dumps(meta))
    capsys.readouterr()
    frames = read_transforms(src)  # masks per frame are optional
    assert frames[1].mask is None and frames[0].mask is not None
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "aabb_scale" in err and "depth_file_path" in err and str(src) in err


# --- datasets and the CLI -----------------------------------------------------------------------------


def _heads(tmp_path, subjects=("alice", "bob")):
    """Two registered tetrahedra meshes as a user's files + a manifest (subject, expression neutral)."""
    folder = tmp_path / "meshes"
    folder.mkdir()
    v = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100]], float)
    f = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
    lines = ["path,subject,expression,split"]
    for i, s in enumerate(subjects):
        save_mesh(folder / f"{s}.ply", Mesh(v * (1 + 0.1 * i), f))
        lines.append(f"{s}.ply,{s},neutral,{'train' if i == 0 else 'test'}")
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    return folder / "m.csv"


def test_ingest_images_only_through_the_cli_then_info(tmp_path, capsys):
    cap = tmp_path / "cap"
    src = _capture(cap, units=None)
    meta = json.loads(src.read_text())
    meta["frames"][2]["file_path"] = "other/frame_000.png"  # same name as frame 0: must not collide
    _png(cap / "other" / "frame_000.png", seed=99)
    meta["frames"][1]["subject"] = "bob"
    src.write_text(json.dumps(meta))
    out = tmp_path / "ds"
    main(["data", "ingest", "--transforms", str(src), "--out", str(out), "--units", "m", "--subject", "alice"])
    assert "ingested 3 posed images (3 with masks)" in capsys.readouterr().out
    assert not (out / "manifest.csv").exists() and (out / ".neuralmorph").is_file()
    ds = HeadDataset.load(out)
    assert ds.heads == [] and len(ds.images) == 3
    names = [f.image for f in ds.images]
    assert len(set(n.lower() for n in names)) == 3 and all(n.startswith("images/") for n in names)
    assert [f.subject for f in ds.images] == ["alice", "bob", "alice"]
    assert ds.images[0].mask == "images/frame_000.mask.png"
    assert (out / names[2]).read_bytes() == (cap / "other" / "frame_000.png").read_bytes()  # copied, not re-encoded
    assert (out / ds.images[1].mask).read_bytes() == (cap / "masks" / "frame_001.png").read_bytes()
    np.testing.assert_allclose(ds.images[1].camera.position, [100.0, 50.0, 600.0], atol=1e-9)  # m -> mm
    assert json.loads((out / "transforms.json").read_text())["units"] == "mm"

    main(["data", "info", "--data", str(out)])
    text = capsys.readouterr().out
    assert "no heads (posed images only)" in text
    assert "images: 3 of 2 subjects, 3 with masks, 0 linked to a registered head; sizes: 64x48 (3)" in text
    assert "cameras per subject: alice 2, bob 1" in text


def test_ingest_meshes_and_images_links_them(tmp_path):
    manifest = _heads(tmp_path)
    src = _capture(tmp_path / "cap", units="m", masks=False)
    meta = json.loads(src.read_text())
    for f, s in zip(meta["frames"], ["alice", "bob", "carol"]):
        f.update(subject=s, expression="neutral", registered=17)  # a foreign row index: recomputed from labels
    src.write_text(json.dumps(meta))
    out = tmp_path / "ds"
    main(["data", "ingest", "--manifest", str(manifest), "--transforms", str(src), "--out", str(out), "--units", "m"])
    ds = HeadDataset.load(out)
    assert len(ds.heads) == 2 and ds.vertices.shape == (2, 4, 3)
    assert ds.vertices[0, 1, 0] == pytest.approx(100_000.0)  # --units m applies to the meshes too
    assert [f.registered for f in ds.images] == [0, 1, -1]  # carol has no head


def test_ingest_refusals_are_one_line(tmp_path, capsys):
    src = _capture(tmp_path / "cap", units="mm")
    cases = [
        (["--transforms", str(src), "--out", str(tmp_path / "o")], "has no subject"),
        (["--out", str(tmp_path / "o")], "give --manifest"),
        (["--transforms", str(src), "--out", str(tmp_path / "o"), "--subject", "a", "--units", "m"],
         "says its units are 'mm' but 'm'"),
        (["--manifest", str(_heads(tmp_path)), "--transforms", str(src), "--subject", "a", "--align", "rigid",
          "--out", str(tmp_path / "o")], "--align"),
        (["--manifest", str(tmp_path / "meshes" / "m.csv"), "--subject", "a", "--out", str(tmp_path / "o")],
         "use it with --transforms"),
    ]
    for args, expect in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as code:
            main(["data", "ingest", *args])
        err = capsys.readouterr().err.strip()
        assert code.value.code == 1 and err.count("\n") == 0 and expect in err, (args, err)
        assert not (tmp_path / "o").exists()


def test_dataset_saves_and_loads_images_and_checks_their_links(tmp_path):
    _png(tmp_path / "ds" / "images" / "a.png")
    v = np.array([[[0, 0, 0], [100, 0, 0], [0, 100, 0]]], np.float32)
    cam = Camera(50.0, 50.0, 31.5, 23.5, W, H, look_at(np.array([0.0, 0.0, 500.0]), np.zeros(3)))
    heads = [Head("ann", "neutral", "train", 0)]
    ds = HeadDataset(heads, v, np.array([[0, 1, 2]]), images=[ImageFrame("images/a.png", cam, "ann", "neutral", 0)])
    ds.save(tmp_path / "ds")
    back = HeadDataset.load(tmp_path / "ds")
    assert back.images == ds.images
    with pytest.raises(InputError, match="is ann/neutral"):
        HeadDataset(heads, v, np.array([[0, 1, 2]]), images=[ImageFrame("images/a.png", cam, "bob", "neutral", 0)])
    with pytest.raises(InputError, match="does not list"):
        HeadDataset(heads, v, np.array([[0, 1, 2]]), images=[ImageFrame("images/a.png", cam, "ann", "neutral", 4)])
    with pytest.raises(InputError, match="inside it"):
        HeadDataset(heads, v, np.array([[0, 1, 2]]), images=[ImageFrame("../a.png", cam)])
    (tmp_path / "ds" / "images" / "a.png").unlink()
    with pytest.raises(InputError, match=r"transforms.json: frames\[0\] \(images/a.png\): image file"):
        HeadDataset.load(tmp_path / "ds")


def test_synth_datasets_without_images_are_unchanged(pca_data, tmp_path):
    ds = HeadDataset.load(pca_data)
    assert ds.images == [] and not (pca_data / "transforms.json").exists()
    copy.deepcopy(ds).save(tmp_path / "copy")
    assert not (tmp_path / "copy" / "transforms.json").exists()
