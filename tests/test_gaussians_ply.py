"""3DGS PLY files: the standard layout byte for byte, exact round trips, the output policy, header checks."""

import numpy as np
import pytest
import torch

from neuralmorph.atomic import is_signed
from neuralmorph.errors import InputError
from neuralmorph.splat.ply import load_gaussians_ply, save_gaussians_ply


def _gaussians(n=7, k=16, seed=0):
    rng = np.random.default_rng(seed)
    f = np.float32
    return (rng.normal(0, 50, (n, 3)).astype(f), rng.uniform(0.1, 5.0, (n, 3)).astype(f),
            rng.normal(size=(n, 4)).astype(f), rng.uniform(0.01, 0.99, n).astype(f), rng.normal(size=(n, k, 3)).astype(f))


def _header_and_rows(path):
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode().splitlines()
    props = [line.split()[2] for line in header if line.startswith("property")]
    rows = np.frombuffer(data[end:], dtype="<f4").reshape(-1, len(props))
    return header, props, rows


def test_standard_layout(tmp_path):
    means, scales, quats, opac, sh = _gaussians(k=16)
    path = tmp_path / "g.ply"
    save_gaussians_ply(path, means, scales, quats, opac, sh)
    header, props, rows = _header_and_rows(path)
    assert header[:4] == ["ply", "format binary_little_endian 1.0", "comment written by neuralmorph, units mm",
                          "element vertex 7"]
    assert all(line.startswith("property float ") for line in header[4:-1])
    assert props == (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
                     + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    col = {p: rows[:, i] for i, p in enumerate(props)}
    np.testing.assert_array_equal(np.stack([col["x"], col["y"], col["z"]], 1), means)
    assert not np.any(np.stack([col["nx"], col["ny"], col["nz"]]))
    np.testing.assert_array_equal(col["f_dc_1"], sh[:, 0, 1])
    # channel-major: the 15 higher coefficients of R, then of G, then of B
    np.testing.assert_array_equal(col["f_rest_0"], sh[:, 1, 0])
    np.testing.assert_array_equal(col["f_rest_14"], sh[:, 15, 0])
    np.testing.assert_array_equal(col["f_rest_15"], sh[:, 1, 1])
    np.testing.assert_array_equal(col["f_rest_44"], sh[:, 15, 2])
    o = opac.astype(np.float64)
    np.testing.assert_allclose(col["opacity"], (np.log(o) - np.log1p(-o)).astype(np.float32), rtol=0, atol=0)  # logit
    np.testing.assert_allclose(col["scale_2"], np.log(scales[:, 2].astype(np.float64)).astype(np.float32), rtol=0)  # log
    np.testing.assert_array_equal(col["rot_0"], quats[:, 0])  # w first
    assert is_signed(path)


@pytest.mark.parametrize("k", [1, 4, 9, 16])
def test_round_trip_exact_in_float32(tmp_path, k):
    g = _gaussians(k=k)
    raw = (g[0], np.log(g[1]), g[2], np.log(g[3] / (1 - g[3])), g[4])
    raw = tuple(np.asarray(a, np.float32) for a in raw)
    save_gaussians_ply(tmp_path / "raw.ply", *raw, activated=False)
    back = load_gaussians_ply(tmp_path / "raw.ply", activated=False)
    for a, b in zip(raw, back):
        assert b.dtype == np.float32 and b.shape == a.shape
        np.testing.assert_array_equal(b, a)  # bit for bit
    save_gaussians_ply(tmp_path / "act.ply", *g)
    act = load_gaussians_ply(tmp_path / "act.ply")
    for i in (0, 2, 4):
        np.testing.assert_array_equal(act[i], g[i])
    np.testing.assert_allclose(act.scales, g[1], rtol=2e-6)  # exp(log(s)): float32 precision
    np.testing.assert_allclose(act.opacities, g[3], rtol=2e-6)


def test_inputs_torch_degree_zero_and_saturated_opacities(tmp_path):
    means, scales, quats, _, sh = _gaussians(n=4, k=1)
    opac = torch.tensor([0.0, 1.0, 0.5, 0.25])
    save_gaussians_ply(tmp_path / "g.ply", torch.tensor(means), torch.tensor(scales), torch.tensor(quats),
                       opac[:, None], torch.tensor(sh[:, 0, :]))  # (N, 1) opacities, (N, 3) DC colours
    back = load_gaussians_ply(tmp_path / "g.ply")
    assert back.sh.shape == (4, 1, 3)
    raw = load_gaussians_ply(tmp_path / "g.ply", activated=False)
    assert np.isfinite(raw.opacities).all() and raw.opacities[0] < -50 and raw.opacities[1] > 15
    np.testing.assert_allclose(back.opacities, opac.numpy(), atol=1e-7)


def test_never_replaces_a_users_file(tmp_path):
    g = _gaussians()
    path = tmp_path / "g.ply"
    save_gaussians_ply(path, *g)
    with pytest.raises(InputError, match="--overwrite"):
        save_gaussians_ply(path, *g)
    save_gaussians_ply(path, *g, overwrite=True)  # ours: replaced
    mine = tmp_path / "mine.ply"
    mine.write_bytes(b"ply\nformat ascii 1.0\nend_header\n")
    with pytest.raises(InputError, match="not an output of neuralmorph"):
        save_gaussians_ply(mine, *g, overwrite=True)
    assert mine.read_bytes() == b"ply\nformat ascii 1.0\nend_header\n"


@pytest.mark.parametrize("what, expect", [
    ("scales", "must be positive"), ("opacity", "must lie in [0, 1]"), ("nan", "NaN"), ("count", "holds 6 Gaussians"),
    ("k", "square number"), ("quat", "all zeros"), ("shape", "must have shape (N, 3)"),
])
def test_bad_arrays_are_refused(tmp_path, what, expect):
    means, scales, quats, opac, sh = _gaussians()
    if what == "scales":
        scales[0, 0] = 0.0
    elif what == "opacity":
        opac[1] = 1.5
    elif what == "nan":
        means[2, 1] = np.nan
    elif what == "count":
        opac = opac[:6]
    elif what == "k":
        sh = sh[:, :5]
    elif what == "quat":
        quats[3] = 0.0
    elif what == "shape":
        means = means[:, :2]
    with pytest.raises(InputError) as err:
        save_gaussians_ply(tmp_path / "g.ply", means, scales, quats, opac, sh)
    assert expect in str(err.value)
    assert not (tmp_path / "g.ply").exists()


def _file(tmp_path, edit):
    path = tmp_path / "g.ply"
    save_gaussians_ply(path, *_gaussians(n=3, k=4), overwrite=True)
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header, body = edit(data[:end].decode(), data[end:])
    path.write_bytes(header.encode() + body)
    return path


@pytest.mark.parametrize("edit, expect", [
    (lambda h, b: (h.replace("ply\n", "plx\n", 1), b), "not a PLY file"),
    (lambda h, b: (h.replace("binary_little_endian", "binary_big_endian"), b), "binary_little_endian 1.0"),
    (lambda h, b: (h.replace("property float rot_3\n", ""), b), "lacks property rot_3"),
    (lambda h, b: (h.replace("property float opacity", "property double opacity"), b), "float32 scalar"),
    (lambda h, b: (h.replace("end_header", "element face 0\nproperty list uchar int vertex_indices\nend_header"), b),
     "not a 3DGS vertex element"),
    (lambda h, b: (h, b[:-4]), "truncated"),
    (lambda h, b: (h, b + b"\0\0\0\0"), "truncated or damaged"),
    (lambda h, b: (h.replace("f_rest_3", "f_rest_30"), b), "without gaps"),
    (lambda h, b: (h.replace("property float f_rest_8\n", ""), b), "K a square"),
    (lambda h, b: (h.replace("end_header\n", ""), b""), "no end_header"),
    (lambda h, b: (h, np.full(len(b) // 4, np.nan, "<f4").tobytes()), "NaN or infinite"),
    (lambda h, b: (h.replace("element vertex 3", "element vertex three"), b), "bad PLY element"),
])
def test_bad_files_are_one_line_naming_the_file(tmp_path, edit, expect):
    path = _file(tmp_path, edit)
    with pytest.raises(InputError) as err:
        load_gaussians_ply(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    assert expect in str(err.value)


def test_other_tools_files_read_by_property_name(tmp_path, capsys):
    """A file without normals, properties in another order and an extra property: read by name, warned once."""
    means, scales, quats, opac, sh = _gaussians(n=5, k=1)
    props = ["rot_0", "rot_1", "rot_2", "rot_3", "x", "y", "z", "filter_3D", "scale_0", "scale_1", "scale_2",
             "opacity", "f_dc_0", "f_dc_1", "f_dc_2"]
    cols = {"x": means[:, 0], "y": means[:, 1], "z": means[:, 2], "filter_3D": np.ones(5, np.float32),
            "opacity": np.log(opac / (1 - opac)), **{f"rot_{i}": quats[:, i] for i in range(4)},
            **{f"scale_{i}": np.log(scales[:, i]) for i in range(3)}, **{f"f_dc_{i}": sh[:, 0, i] for i in range(3)}}
    table = np.stack([cols[p] for p in props], 1).astype("<f4")
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 5\n" + "".join(
        f"property float {p}\n" for p in props) + "end_header\n"
    (tmp_path / "o.ply").write_bytes(header.encode() + table.tobytes())
    back = load_gaussians_ply(tmp_path / "o.ply", activated=False)
    np.testing.assert_array_equal(back.means, means)
    np.testing.assert_array_equal(back.quats, quats)
    np.testing.assert_array_equal(back.sh, sh)
    err = capsys.readouterr().err.strip()
    assert "filter_3D" in err and "\n" not in err
    assert not is_signed(tmp_path / "o.ply")
