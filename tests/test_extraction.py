"""Mesh extraction from signed-distance fields (dense and coarse-to-fine) and its benchmark runner."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from neuralmorph.errors import InputError
from neuralmorph.frame import Frame
from neuralmorph.evaluation.extraction_bench import ExtractionBenchConfig, bench_extraction
from neuralmorph.models.implicit.extraction import evaluate_points, extract_coarse_to_fine, extract_dense

CUBE = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
CENTRE = (0.1, -0.05, 0.07)
RADIUS = 0.5


def sphere(p: torch.Tensor, centre=CENTRE, radius=RADIUS) -> torch.Tensor:
    assert p.dtype == torch.float32 and p.ndim == 2 and p.shape[1] == 3  # the Field contract
    return (p - torch.tensor(centre, dtype=p.dtype, device=p.device)).norm(dim=-1) - radius


def torus(p: torch.Tensor) -> torch.Tensor:
    """Exact SDF of a torus around z (major 0.5, minor 0.2): non-convex, genus one."""
    ring = torch.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2) - 0.5
    return torch.sqrt(ring**2 + p[:, 2] ** 2) - 0.2


def two_spheres(p: torch.Tensor) -> torch.Tensor:
    """Polynomial smooth union of two spheres: its gradient is a convex mix of unit vectors, so it is
    1-Lipschitz (a lower bound of the true distance), as the band argument needs."""
    a = sphere(p, (-0.35, 0.0, 0.0), 0.4)
    b = sphere(p, (0.4, 0.1, 0.05), 0.35)
    k = 0.2
    h = torch.clamp(k - (a - b).abs(), min=0.0) / k
    return torch.minimum(a, b) - h * h * k / 4


def _signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    t = v[f]
    return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0)


def test_dense_sphere_matches_the_analytic_surface():
    res = 64
    h = 2.0 / res
    mesh, stats = extract_dense(sphere, CUBE, res)
    assert stats.evaluations == (res + 1) ** 3 and stats.method == "dense" and stats.resolution == res
    assert mesh.vertices.dtype == np.float64 and mesh.faces.dtype == np.int64
    radius = np.linalg.norm(mesh.vertices - np.array(CENTRE), axis=1)
    # every vertex is the zero of the linear interpolant along a lattice edge (length h). Along the edge
    # |p - c| - r is convex, so the chord's zero lies inside the sphere; its second derivative is at most
    # h² / (r - h) there, so the chord sags below the function by at most h² / (8 (r - h)).
    sag = h * h / (8 * (RADIUS - h))
    slack = 2e-6  # float32 points and values
    assert radius.max() <= RADIUS + slack
    assert radius.min() >= RADIUS - sag - slack
    # any point of a triangle is a convex mix of vertices in one cell (diameter √3 h):
    # |p - c|² = Σ w |v - c|² - Σ w |v - p|² >= (r - sag)² - 3h²
    r_in = math.sqrt((RADIUS - sag) ** 2 - 3 * h * h)
    volume = _signed_volume(mesh.vertices, mesh.faces)
    assert 4 / 3 * math.pi * r_in**3 <= volume <= 4 / 3 * math.pi * RADIUS**3
    # outward and star-shaped about the centre: radial projection is one-to-one, each face's area is its
    # projection's (scaled by (ρ/r)² <= 1) over the cosine to the radial direction
    centroid = mesh.vertices[mesh.faces].mean(axis=1) - np.array(CENTRE)
    cos = np.einsum("ij,ij->i", mesh.face_normals, centroid / np.linalg.norm(centroid, axis=1, keepdims=True))
    assert cos.min() > 0.0
    assert 4 * math.pi * r_in**2 <= mesh.area <= 4 * math.pi * RADIUS**2 / cos.min()


@pytest.mark.parametrize("field, res, coarse", [(sphere, 96, 12), (torus, 64, 8), (two_spheres, 64, 8)])
def test_coarse_to_fine_equals_dense(field, res, coarse):
    dense, ds = extract_dense(field, CUBE, res)
    fine, fs = extract_coarse_to_fine(field, CUBE, res, coarse_resolution=coarse)
    assert fs.method == f"coarse-to-fine {coarse}->{res}" and fs.resolution == res
    assert fs.evaluations < ds.evaluations
    assert fine.vertices.shape == dense.vertices.shape
    assert np.array_equal(fine.faces, dense.faces)
    assert np.abs(fine.vertices - dense.vertices).max() <= 1e-6  # in fact bit-identical


def test_steep_field_needs_a_wider_band():
    """3 × sphere SDF has slope 3: the band argument covers it once band > 3 / 2; far below that,
    surface cells are dropped and the mesh differs (so the equality above is not vacuous)."""
    steep = lambda p: 3.0 * sphere(p)
    dense, _ = extract_dense(steep, CUBE, 64)
    fine, _ = extract_coarse_to_fine(steep, CUBE, 64, coarse_resolution=8, band=1.6)
    assert np.array_equal(fine.faces, dense.faces) and np.array_equal(fine.vertices, dense.vertices)
    narrow, _ = extract_coarse_to_fine(steep, CUBE, 64, coarse_resolution=8, band=0.3)
    assert narrow.vertices.shape != dense.vertices.shape or not np.array_equal(narrow.vertices, dense.vertices)


def _shell_volume(r: float, t: float) -> float:
    return 4 / 3 * math.pi * ((r + t) ** 3 - max(r - t, 0.0) ** 3)


def test_coarse_to_fine_evaluates_only_a_shell():
    res, coarse = 128, 16
    h = 2.0 / res
    fine, fs = extract_coarse_to_fine(sphere, CUBE, res, coarse_resolution=coarse)
    dense_evals = (res + 1) ** 3
    # bound: a kept cell (size s·h) has a corner with |sdf| < √3 s h, so all of it lies where
    # |sdf| < 2√3 s h; its children's points lie there too, and lattice points (spacing s h / 2) inside a
    # region number at most the region grown by half their cube's diagonal, over the cube's volume.
    bound = (coarse + 1) ** 3
    s = res // coarse
    while s > 1:
        t = 2 * math.sqrt(3) * s * h + math.sqrt(3) / 2 * (s * h / 2)
        bound += _shell_volume(RADIUS, t) / (s * h / 2) ** 3
        s //= 2
    assert fs.evaluations <= bound
    assert dense_evals / fs.evaluations >= dense_evals / bound > 7  # the bound alone gives 7.7x


def test_torus_faces_point_outward():
    mesh, _ = extract_coarse_to_fine(torus, CUBE, 48, coarse_resolution=12)
    # analytic volume 2π² R ρ² of the solid torus, positive only if the faces wind outward
    assert _signed_volume(mesh.vertices, mesh.faces) == pytest.approx(2 * math.pi**2 * 0.5 * 0.2**2, rel=0.02)
    centroid = torch.tensor(mesh.vertices[mesh.faces].mean(axis=1), requires_grad=True)
    torus(centroid).sum().backward()
    assert (np.einsum("ij,ij->i", mesh.face_normals, centroid.grad.numpy()) > 0).all()


@pytest.mark.parametrize("extract", [extract_dense, extract_coarse_to_fine])
def test_no_surface_inside_the_bounds(extract):
    far = lambda p: sphere(p, (3.0, 0.0, 0.0), 0.5)  # positive everywhere in the cube
    with pytest.raises(InputError, match="no surface inside the bounds"):
        extract(far, CUBE, 32)
    inside = lambda p: sphere(p, (0.0, 0.0, 0.0), 5.0)  # negative everywhere
    with pytest.raises(InputError, match="no surface inside the bounds"):
        extract(inside, CUBE, 32)


def test_arguments_are_validated():
    with pytest.raises(InputError, match="bounds"):
        extract_dense(sphere, np.array([[1.0, -1, -1], [-1, 1, 1]]), 32)
    with pytest.raises(InputError, match="bounds"):
        extract_dense(sphere, np.zeros(3), 32)
    with pytest.raises(InputError, match="resolution"):
        extract_dense(sphere, CUBE, 1)
    with pytest.raises(InputError, match="coarse_resolution"):
        extract_coarse_to_fine(sphere, CUBE, 32, coarse_resolution=64)
    with pytest.raises(InputError, match="band"):
        extract_coarse_to_fine(sphere, CUBE, 32, band=0.0)
    with pytest.raises(InputError, match="field"):
        extract_dense(lambda p: p, CUBE, 8)  # (P, 3) instead of (P,)
    with pytest.raises(InputError, match="field"):
        evaluate_points(lambda p: p[:, 0] / 0.0, np.zeros((4, 3), np.float32))


def test_anisotropic_bounds_and_odd_resolution():
    """A box that is not a cube, and a resolution with no power-of-two factor (the pass is then dense)."""
    box = np.array([[-0.6, -0.8, -0.7], [0.9, 0.6, 0.75]])
    dense, _ = extract_dense(sphere, box, 45)
    fine, fs = extract_coarse_to_fine(sphere, box, 45, coarse_resolution=8)
    assert fs.evaluations == 46**3 and np.array_equal(fine.vertices, dense.vertices)
    radius = np.linalg.norm(dense.vertices - np.array(CENTRE), axis=1)
    h = (box[1] - box[0]).max() / 45
    assert np.abs(radius - RADIUS).max() <= h * h / (8 * (RADIUS - h)) + 2e-6


def test_nonzero_level_is_an_offset_surface():
    """level 0.1 of a radius-0.5 sphere SDF is the radius-0.6 sphere; the band is measured from the level."""
    dense, _ = extract_dense(sphere, CUBE, 48, level=0.1)
    fine, _ = extract_coarse_to_fine(sphere, CUBE, 48, coarse_resolution=12, level=0.1)
    assert np.array_equal(fine.faces, dense.faces) and np.array_equal(fine.vertices, dense.vertices)
    h = 2.0 / 48
    radius = np.linalg.norm(dense.vertices - np.array(CENTRE), axis=1)
    assert 0.6 - h * h / (8 * (0.6 - h)) - 2e-6 <= radius.min() and radius.max() <= 0.6 + 2e-6


# ------------------------------------------------------------------------------- the benchmark runner


class FakeImplicitModel:
    """The contract `bench_extraction` uses, on an analytic head-like field (a smooth union of
    anchored spheres); `neighbours` picks how many nearest anchors blend (0: all); `all_members` gives
    the same field (here nothing is skipped either way)."""

    ANCHORS = torch.tensor([[0.0, 0.15, 0.0], [0.0, -0.25, 0.2], [0.0, -0.05, 0.55], [-0.55, 0.0, 0.0],
                            [0.55, 0.0, 0.0], [0.0, -0.75, -0.1]])
    RADII = torch.tensor([0.6, 0.45, 0.12, 0.12, 0.12, 0.3])

    def __init__(self, family: str = "implicit-local", default_neighbours: int = 3):
        self.family = family
        self.geometry = "mesh" if family == "pca" else "sdf"
        self.has_anchors = family == "implicit-local"
        self.frame = Frame(mm_per_unit=120.0)
        self.bounds = torch.tensor([[-0.9, -1.0, -0.8], [0.9, 0.9, 0.9]])
        self.default_neighbours = default_neighbours

    def zero_latents(self, batch: int = 1) -> dict[str, torch.Tensor]:
        return {"identity": torch.zeros(batch, 4), "expression": torch.zeros(batch, 2)}

    def canonical_field(self, identity: torch.Tensor, neighbours: int | None = None, all_members: bool = False):
        assert identity.shape == (1, 4)
        k = self.default_neighbours if neighbours is None else neighbours
        k = len(self.ANCHORS) if k == 0 or self.family == "implicit-global" else k

        def field(p: torch.Tensor) -> torch.Tensor:
            # elementwise, not torch.cdist: cdist's matmul path can round differently with the chunk
            # size on some CPUs, and the test needs a field whose value at a point never depends on it
            d = (p[:, None] - self.ANCHORS.to(p)).square().sum(-1).sqrt() - self.RADII.to(p)  # (P, A)
            d = torch.topk(d, k, dim=1, largest=False).values
            out = d[:, 0]
            for j in range(1, k):  # polynomial smooth union, width 0.1
                h = torch.clamp(0.1 - (out - d[:, j]).abs(), min=0.0) / 0.1
                out = torch.minimum(out, d[:, j]) - h * h * 0.1 / 4
            return out

        return field


def test_bench_runs_on_a_local_model(tmp_path):
    cfg = ExtractionBenchConfig(out=tmp_path / "E.json", resolution=48, coarse_resolution=12, repeats=2,
                                points=5000, chamfer_points=5000)
    result = bench_extraction(cfg, model=FakeImplicitModel())
    saved = json.loads((tmp_path / "E.json").read_text())
    for key in ("eval_ratio", "speedup", "chamfer_mm", "sparse_speedup", "sparse_max_abs_diff",
                "sparse_max_abs_diff_unit", "machine", "config", "model", "dense", "coarse_to_fine"):
        assert key in saved
    assert saved["eval_ratio"] == result["eval_ratio"] > 1
    assert saved["dense"]["evaluations"] == 49**3
    assert saved["identical_meshes"] is True and saved["chamfer_mm"] < 1e-6
    assert saved["sparse_speedup"] > 0 and 0 <= saved["sparse_max_abs_diff"] < 1.0
    assert saved["sparse_max_abs_diff_unit"] == "field units"
    assert saved["config"]["resolution"] == 48 and saved["machine"]["torch_threads"] >= 1


def test_bench_global_model_has_no_sparse_numbers(tmp_path):
    cfg = ExtractionBenchConfig(out=tmp_path / "E.json", resolution=32, coarse_resolution=8, repeats=1,
                                chamfer_points=2000)
    result = bench_extraction(cfg, model=FakeImplicitModel(family="implicit-global"))
    assert result["sparse_speedup"] is None and result["sparse_max_abs_diff"] is None
    assert "anchors" in result["sparse_reason"]
    assert json.loads((tmp_path / "E.json").read_text())["sparse_speedup"] is None


def test_bench_needs_an_implicit_model(tmp_path):
    with pytest.raises(InputError, match="--model.*train implicit-local"):
        bench_extraction(ExtractionBenchConfig(out=tmp_path / "E.json"))
    with pytest.raises(InputError, match="--model"):
        bench_extraction(ExtractionBenchConfig(out=tmp_path / "E.json"), model=FakeImplicitModel(family="pca"))
    with pytest.raises(InputError, match="--repeats"):
        ExtractionBenchConfig(repeats=0)
    with pytest.raises(InputError, match="--coarse-resolution"):
        ExtractionBenchConfig(resolution=32, coarse_resolution=64)
    assert not (tmp_path / "E.json").exists()
