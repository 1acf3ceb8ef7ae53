"""Triangle-bound Gaussians and UV sampling (neuralmorph.models.appearance.binding).

The binding checks invert `bind` independently (numpy, float64): a Gaussian's mean, rotation and scale,
expressed back in its deformed parent triangle's frame, must give back exactly the local parameters.
"""

import math

import numpy as np
import pytest
import torch

from neuralmorph.data.head_model import HeadModel
from neuralmorph.errors import InputError
from neuralmorph.models.appearance.binding import Layout, bind, sample_layout, sample_maps, triangle_frames
from neuralmorph.splat.project import matrix_to_quat, quat_to_rotmat


@pytest.fixture(scope="module")
def head():
    return HeadModel.load()


def _random_rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    return quat_to_rotmat(torch.tensor(q[None])).numpy()[0]


def _random_binding(head, g: int, seed: int, batch: int = 1) -> dict:
    """Random local parameters (G of them) on the head template, as float64 tensors."""
    rng = np.random.default_rng(seed)
    layout = sample_layout(head.vertices, head.faces, g, seed=seed)
    # float32 weights sum to 1 only within ~1e-7, which moves a point by that times its distance from the
    # origin (~1e-4 mm on the head): renormalise in float64 so that the checks below can be tight
    bary = layout.barycentric.astype(np.float64)
    return dict(
        faces=torch.from_numpy(np.array(head.faces)),
        face_ids=torch.from_numpy(np.array(layout.face_ids)),
        barycentric=torch.from_numpy(bary / bary.sum(1, keepdims=True)),
        offset=torch.from_numpy(rng.normal(0, 0.5, (batch, g))),
        local_quats=torch.from_numpy(rng.normal(size=(batch, g, 4))),
        local_log_scales=torch.from_numpy(rng.normal(-1, 0.5, (batch, g, 3))),
    )


def _unbind(vertices: np.ndarray, faces: np.ndarray, face_ids: np.ndarray, means, quats, scales) -> dict:
    """The inverse of bind for one mesh, written from the definitions: (G, ...) local parameters."""
    tri = vertices[faces[face_ids]]  # (G, 3, 3)
    edge, other = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    cross = np.cross(edge, other)
    n = cross / np.linalg.norm(cross, axis=1, keepdims=True)
    e0 = edge / np.linalg.norm(edge, axis=1, keepdims=True)
    frame = np.stack([e0, n, np.cross(e0, n)], axis=2)
    base = np.linalg.norm(edge, axis=1)
    height = np.linalg.norm(other - (other * e0).sum(1, keepdims=True) * e0, axis=1)
    size = (base + height) / 2
    h = ((means - tri[:, 0]) * n).sum(1)
    foot = means - h[:, None] * n - tri[:, 0]
    # barycentric (b1, b2) of the foot point: normal equations in the plane (exact: foot lies in it)
    basis = np.stack([edge, other], axis=2)  # (G, 3, 2)
    gram = np.einsum("gki,gkj->gij", basis, basis)
    b12 = np.linalg.solve(gram, np.einsum("gki,gk->gi", basis, foot)[..., None])[..., 0]
    bary = np.concatenate([1 - b12.sum(1, keepdims=True), b12], axis=1)
    world = quat_to_rotmat(torch.from_numpy(quats)).numpy()
    local = np.einsum("gji,gjk->gik", frame, world)  # R_tri^T R_world
    return dict(barycentric=bary, offset=h / size, rotation=local, log_scales=np.log(scales / size[:, None]))


def _check_recovers(vertices, faces, binding, out, item=0):
    local = _unbind(vertices, faces, binding["face_ids"].numpy(), *(t[item].detach().numpy() for t in out))
    np.testing.assert_allclose(local["barycentric"], binding["barycentric"].numpy(), atol=1e-5)
    np.testing.assert_allclose(local["offset"], binding["offset"][item].numpy(), atol=1e-5)
    np.testing.assert_allclose(local["rotation"], quat_to_rotmat(binding["local_quats"][item]).numpy(), atol=1e-5)
    np.testing.assert_allclose(local["log_scales"], binding["local_log_scales"][item].numpy(), atol=1e-5)


def test_gaussians_follow_any_deformation_of_their_triangles(head):
    rng = np.random.default_rng(1)
    b = _random_binding(head, 300, seed=1, batch=2)
    faces = np.asarray(head.faces)
    template = np.asarray(head.vertices, np.float64)
    # per-vertex, non-rigid: a smooth bulge plus independent jitter (about a triangle's size)
    warped = template * np.array([1.1, 0.9, 1.2]) + 8 * np.sin(template / 30) + rng.normal(0, 0.5, template.shape)
    verts = torch.from_numpy(np.stack([template, warped]))
    out = bind(verts, **b)
    assert [tuple(t.shape) for t in out] == [(2, 300, 3), (2, 300, 4), (2, 300, 3)]
    for item, v in enumerate([template, warped]):
        _check_recovers(v, faces, b, out, item)


def test_rigid_motion_and_uniform_scale_carry_the_gaussians_along(head):
    rng = np.random.default_rng(2)
    b = _random_binding(head, 200, seed=2)
    template = np.asarray(head.vertices, np.float64)
    R, s, t = _random_rotation(rng), 1.7, rng.normal(0, 100, 3)
    moved = s * template @ R.T + t
    means, quats, scales = bind(torch.from_numpy(template[None]), **b)
    means2, quats2, scales2 = bind(torch.from_numpy(moved[None]), **b)
    np.testing.assert_allclose(means2[0].numpy(), s * means[0].numpy() @ R.T + t, atol=1e-6)
    np.testing.assert_allclose(quat_to_rotmat(quats2[0]).numpy(), R @ quat_to_rotmat(quats[0]).numpy(), atol=1e-6)
    np.testing.assert_allclose(scales2.numpy(), s * scales.numpy(), rtol=1e-9)


def test_zero_offset_lies_on_the_triangle(head):
    b = _random_binding(head, 500, seed=3)
    b["offset"] = torch.zeros(500, dtype=torch.float64)
    verts = torch.from_numpy(np.asarray(head.vertices, np.float64)[None])
    means = bind(verts, **b)[0][0].numpy()
    tri = np.asarray(head.vertices, np.float64)[np.asarray(head.faces)[b["face_ids"].numpy()]]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    np.testing.assert_allclose(((means - tri[:, 0]) * n).sum(1), 0, atol=1e-9)  # on the plane
    # inside: the sub-triangle areas (signed along n) are all >= 0 and sum to the whole
    signed = np.stack([(np.cross(tri[:, (k + 1) % 3] - means, tri[:, (k + 2) % 3] - means) * n).sum(1)
                       for k in range(3)], axis=1)
    assert (signed >= -1e-9).all()
    np.testing.assert_allclose(signed / signed.sum(1, keepdims=True), b["barycentric"].numpy(), atol=1e-9)


def test_shared_and_per_item_parameters_agree(head):
    b = _random_binding(head, 50, seed=4, batch=1)
    template = torch.from_numpy(np.asarray(head.vertices, np.float64))
    verts = torch.stack([template, template * 1.1 + 3.0, template.flip(1)])
    shared = {k: (v[0] if k in ("offset", "local_quats", "local_log_scales") else v) for k, v in b.items()}
    batched = {k: (v[0].expand(3, *v.shape[1:]) if k in ("offset", "local_quats", "local_log_scales") else v)
               for k, v in b.items()}
    for x, y in zip(bind(verts, **shared), bind(verts, **batched)):
        assert x.shape[0] == 3
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    # mixing shared and per-item parameters is fine too
    mixed = dict(shared, offset=batched["offset"])
    for x, y in zip(bind(verts, **mixed), bind(verts, **shared)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_bind_is_differentiable_and_keeps_dtype(head):
    b = _random_binding(head, 20, seed=5)
    b = {k: (v.float().requires_grad_() if v.is_floating_point() else v) for k, v in b.items()}
    verts = torch.from_numpy(np.asarray(head.vertices)[None].copy()).requires_grad_()
    means, quats, scales = bind(verts, **b)
    assert means.dtype == quats.dtype == scales.dtype == torch.float32
    torch.testing.assert_close(quats.norm(dim=-1), torch.ones(1, 20))
    assert (quats[..., 0] >= 0).all()
    (means.sum() + (quats * torch.randn(4)).sum() + scales.sum()).backward()
    for name, t in [("vertices", verts), *((k, b[k]) for k in ("barycentric", "offset", "local_quats",
                                                               "local_log_scales"))]:
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, name


def test_bind_gradients_match_finite_differences():
    torch.manual_seed(0)
    verts = torch.randn(1, 4, 3, dtype=torch.float64, requires_grad=True)
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    ids, bary = torch.tensor([0, 1, 1]), torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]],
                                                       dtype=torch.float64)
    params = [torch.randn(3, dtype=torch.float64, requires_grad=True),
              torch.randn(3, 4, dtype=torch.float64, requires_grad=True),
              torch.randn(3, 3, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda v, o, q, s: bind(v, faces, ids, bary, o, q, s), (verts, *params))


@pytest.mark.parametrize("bad, where", [
    (dict(vertices=torch.zeros(4, 3)), "vertices"),
    (dict(faces=torch.zeros(2, 3)), "faces"),
    (dict(face_ids=torch.zeros(3, 1, dtype=torch.long)), "face_ids"),
    (dict(barycentric=torch.zeros(2, 3)), "barycentric"),
    (dict(offset=torch.zeros(2, 3)), "offset"),
    (dict(local_quats=torch.zeros(3, 3)), "local_quats"),
    (dict(local_log_scales=torch.zeros(1, 3, 4)), "local_log_scales"),
])
def test_bind_rejects_bad_shapes(bad, where):
    args = dict(vertices=torch.randn(1, 4, 3), faces=torch.tensor([[0, 1, 2], [1, 3, 2]]),
                face_ids=torch.tensor([0, 1, 1]), barycentric=torch.full((3, 3), 1 / 3), offset=torch.zeros(3),
                local_quats=torch.randn(3, 4), local_log_scales=torch.zeros(3, 3))
    with pytest.raises(InputError) as e:
        bind(**{**args, **bad})
    assert e.value.where == where


def _axis_angle(axis, angle) -> torch.Tensor:
    axis = torch.as_tensor(axis, dtype=torch.float64)
    axis = axis / axis.norm()
    return torch.cat([torch.tensor([math.cos(angle / 2)], dtype=torch.float64), math.sin(angle / 2) * axis])


def _hard_rotations() -> torch.Tensor:
    """Quaternions (N, 4): random ones, plus identity and rotations at and near 180 degrees about many axes."""
    axes = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, -1], [1, 1, 1], [-1, 2, 0.5]]
    angles = [0.0, math.pi, math.pi - 1e-3, math.pi - 1e-6, -math.pi + 1e-5, 3.0]
    special = [_axis_angle(a, t) for a in axes for t in angles]
    random = torch.randn(200, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    return torch.cat([torch.stack(special), random])


def test_matrix_to_quat_round_trips_everywhere():
    q = _hard_rotations()
    R = quat_to_rotmat(q)
    back = matrix_to_quat(R)
    torch.testing.assert_close(quat_to_rotmat(back), R, atol=1e-12, rtol=0)
    torch.testing.assert_close(back.norm(dim=-1), torch.ones(len(q), dtype=torch.float64))
    assert (back[:, 0] >= 0).all()
    unit = q / q.norm(dim=-1, keepdim=True)
    # the same quaternion up to sign (w = 0 at exactly 180 degrees leaves the sign free)
    torch.testing.assert_close(torch.minimum((back - unit).norm(dim=-1), (back + unit).norm(dim=-1)),
                               torch.zeros(len(q), dtype=torch.float64), atol=1e-12, rtol=0)
    # batched leading dimensions and float32
    R32 = R.float().reshape(2, -1, 3, 3)
    assert matrix_to_quat(R32).shape == (2, R.shape[0] // 2, 4) and matrix_to_quat(R32).dtype == torch.float32
    with pytest.raises(InputError):
        matrix_to_quat(torch.zeros(3, 4))


def test_matrix_to_quat_gradients_are_finite_and_correct_near_180_degrees():
    R = quat_to_rotmat(_hard_rotations()).requires_grad_()
    (matrix_to_quat(R) * torch.randn(4, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(R.grad).all()
    # away from branch ties (e.g. 180 degrees about x, where only 4x^2 is large) it is smooth: check the values
    # (not exactly 180 degrees: there w = 0 and the w >= 0 sign choice is, rightly, discontinuous)
    near = quat_to_rotmat(torch.stack([_axis_angle([1, 0, 0], math.pi - 1e-3),
                                       _axis_angle([0, 1, 0], math.pi - 1e-4),
                                       _axis_angle([0.3, 0.2, 1], math.pi - 1e-5),
                                       _axis_angle([1, 2, 3], 0.7)])).requires_grad_()
    assert torch.autograd.gradcheck(matrix_to_quat, (near,))
    # a zero matrix (a fully degenerate frame) still gives finite values and gradients
    zero = torch.zeros(1, 3, 3, requires_grad=True)
    matrix_to_quat(zero).sum().backward()
    assert torch.isfinite(zero.grad).all()


def test_triangle_frames_are_right_handed_orthonormal():
    torch.manual_seed(7)
    verts = torch.randn(3, 10, 3, dtype=torch.float64)
    faces = torch.randint(0, 10, (40, 3))
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    rot, size, normal = triangle_frames(verts, faces)
    eye = torch.eye(3, dtype=torch.float64).expand_as(rot)
    torch.testing.assert_close(rot.transpose(-1, -2) @ rot, eye)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones_like(size))
    tri = verts[:, faces]
    edge, other = tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0]
    cross = torch.linalg.cross(edge, other, dim=-1)
    torch.testing.assert_close(normal, cross / cross.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(rot[..., 1], normal)  # column order (e0, n, e0 x n)
    torch.testing.assert_close(rot[..., 0], edge / edge.norm(dim=-1, keepdim=True))
    # the size: a right triangle with legs 3 (first edge) and 4 -> (3 + 4) / 2
    right = torch.tensor([[[0.0, 0, 0], [3, 0, 0], [0, 4, 0]]])
    r, s, n = triangle_frames(right, torch.tensor([[0, 1, 2]]))
    torch.testing.assert_close(s, torch.tensor([[3.5]]))
    torch.testing.assert_close(n, torch.tensor([[[0.0, 0, 1]]]))
    torch.testing.assert_close(r[0, 0], torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]))


def test_degenerate_triangles_give_no_nan():
    verts = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 0, 0]]], requires_grad=True)
    faces = torch.tensor([[0, 1, 2], [0, 3, 1], [0, 0, 0]])  # collinear, zero first edge, one point
    rot, size, normal = triangle_frames(verts, faces)
    assert all(torch.isfinite(t).all() for t in (rot, size, normal))
    out = bind(verts, faces, torch.tensor([0, 1, 2]), torch.full((3, 3), 1 / 3), torch.ones(3),
               torch.randn(3, 4), torch.zeros(3, 3))
    sum(o.sum() for o in out).backward()
    assert all(torch.isfinite(t).all() for t in out) and torch.isfinite(verts.grad).all()


def _two_triangles():
    # areas 1 and 3, in parallel planes
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 1], [3, 0, 1], [0, 2, 1]], float)
    return verts, np.array([[0, 1, 2], [3, 4, 5]])


def test_sample_layout_is_area_uniform_deterministic_and_valid():
    verts, faces = _two_triangles()
    lay = sample_layout(verts, faces, 20000, seed=3)
    assert isinstance(lay, Layout)
    assert lay.face_ids.dtype == np.int64 and lay.barycentric.dtype == lay.uv.dtype == np.float32
    assert lay.face_ids.shape == (20000,) and lay.barycentric.shape == (20000, 3) and lay.uv.shape == (20000, 2)
    assert abs((lay.face_ids == 0).mean() - 0.25) < 0.015
    assert (np.diff(lay.face_ids) >= 0).all()  # sorted by face
    assert (lay.barycentric >= 0).all()
    np.testing.assert_allclose(lay.barycentric.sum(1), 1, atol=1e-6)
    assert (np.abs(lay.uv) <= 1).all()
    # uniform within a triangle too: the mean barycentric is the centroid's (1/3 each)
    np.testing.assert_allclose(lay.barycentric.mean(0), 1 / 3, atol=0.01)
    again, other = sample_layout(verts, faces, 20000, seed=3), sample_layout(verts, faces, 20000, seed=4)
    for a, b in zip((lay.face_ids, lay.barycentric, lay.uv), (again.face_ids, again.barycentric, again.uv)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(lay.barycentric, other.barycentric)
    with pytest.raises(ValueError):
        lay.uv[0, 0] = 0.0  # read-only


def test_sample_layout_interpolates_and_crops_face_uvs():
    verts, faces = _two_triangles()
    face_uvs = np.array([[[0.1, 0.2], [0.3, 0.2], [0.1, 0.6]], [[0.2, 0.3], [0.5, 0.3], [0.2, 0.4]]])
    lay = sample_layout(verts, faces, 2000, seed=0, face_uvs=face_uvs)
    raw = np.einsum("gk,gkd->gd", lay.barycentric.astype(np.float64), face_uvs[lay.face_ids])
    lo, hi = np.array([0.1, 0.2]), np.array([0.5, 0.6])  # box of all corners; padded 2% of 0.4 per side
    unit = (raw - (lo - 0.008)) / (hi - lo + 0.016)
    np.testing.assert_allclose(lay.uv, np.stack([2 * unit[:, 0] - 1, 1 - 2 * unit[:, 1]], 1), atol=1e-6)
    # one site: only its face's box counts
    one = sample_layout(verts, faces, 1, seed=0, face_uvs=face_uvs)
    assert (np.abs(one.uv) < 1).all()


def test_sample_layout_uses_the_uv_box_on_the_head(head):
    lay = sample_layout(head.vertices, head.faces, 20000, seed=0, face_uvs=head.face_uvs)
    assert (np.abs(lay.uv) <= 1).all()
    np.testing.assert_allclose(lay.uv.min(0), -1, atol=0.1)
    np.testing.assert_allclose(lay.uv.max(0), 1, atol=0.1)


def test_sample_layout_cylindrical_fallback(head):
    lay = sample_layout(head.vertices, head.faces, 5000, seed=1)
    assert (np.abs(lay.uv) <= 1).all()
    np.testing.assert_allclose(lay.uv.min(0), -1, atol=0.05)
    np.testing.assert_allclose(lay.uv.max(0), 1, atol=0.05)
    v = np.asarray(head.vertices, np.float64)
    points = np.einsum("gk,gkd->gd", lay.barycentric, v[head.faces[lay.face_ids]])
    centre = (v.min(0) + v.max(0)) / 2
    d = points - centre
    np.testing.assert_allclose(lay.uv[:, 0], np.arctan2(d[:, 0], d[:, 2]) / np.pi, atol=1e-5)
    # the top of the head reads the top rows of the map (y near -1), the neck cut the bottom ones
    assert lay.uv[points[:, 1].argmax(), 1] < -0.99 and lay.uv[points[:, 1].argmin(), 1] > 0.99
    front = (d[:, 2] > 50) & (np.abs(d[:, 0]) < 5)  # the face looks +z: front is u = 0, the seam behind
    assert front.any() and (np.abs(lay.uv[front, 0]) < 0.1).all()


@pytest.mark.parametrize("change, where", [
    (dict(vertices=np.zeros((4, 2))), "vertices"),
    (dict(vertices=np.array([[0, 0, 0], [1, 0, 0], [0, np.nan, 0]])), "vertices"),
    (dict(faces=np.array([[0, 1, 3]])), "faces"),
    (dict(faces=np.array([[0, 1, -1]])), "faces"),
    (dict(faces=np.array([0, 1, 2])), "faces"),
    (dict(faces=np.array([[0.0, 1.0, 2.0]])), "faces"),
    (dict(count=0), "count"),
    (dict(count=2.5), "count"),
    (dict(vertices=np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]])), "vertices"),  # zero area
    (dict(face_uvs=np.zeros((1, 3))), "face_uvs"),
    (dict(face_uvs=np.full((1, 3, 2), np.inf)), "face_uvs"),
])
def test_sample_layout_rejects_bad_input(change, where):
    args = dict(vertices=np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float), faces=np.array([[0, 1, 2]]),
                count=10, face_uvs=None)
    with pytest.raises(InputError) as e:
        sample_layout(**{**args, **change})
    assert e.value.where == where


def test_sample_maps_is_exact_on_linear_maps_and_differentiable():
    B, H, W, G = 2, 8, 10, 300
    gen = torch.Generator().manual_seed(8)
    # pixel centres with align_corners=False: x_j = (2 j + 1) / W - 1, y_i = (2 i + 1) / H - 1
    xs, ys = (2 * torch.arange(W) + 1) / W - 1, (2 * torch.arange(H) + 1) / H - 1
    coef = torch.randn(B, 3, 3, generator=gen)  # per map and channel: a x + b y + c
    maps = (coef[..., 0, None, None] * xs + coef[..., 1, None, None] * ys[:, None] + coef[..., 2, None, None])
    maps.requires_grad_()
    uv = torch.rand(G, 2, generator=gen) * torch.tensor([2 - 2 / W, 2 - 2 / H]) - torch.tensor([1 - 1 / W, 1 - 1 / H])
    out = sample_maps(maps, uv)
    assert out.shape == (B, G, 3)
    want = uv[:, 0, None] * coef[:, None, :, 0] + uv[:, 1, None] * coef[:, None, :, 1] + coef[:, None, :, 2]
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    out.sum().backward()
    # bilinear weights sum to 1 per read: the gradient of the sum spreads exactly G per channel
    torch.testing.assert_close(maps.grad.sum((-1, -2)), torch.full((B, 3), float(G)))
    # a constant map gives the constant everywhere, borders and beyond included (border padding)
    anywhere = torch.rand(50, 2, generator=gen) * 2.4 - 1.2
    torch.testing.assert_close(sample_maps(torch.full((1, 2, 5, 7), 0.25), anywhere), torch.full((1, 50, 2), 0.25))
    for bad_maps, bad_uv in [(torch.zeros(2, 5, 7), uv), (maps, torch.zeros(3, 3))]:
        with pytest.raises(InputError):
            sample_maps(bad_maps, bad_uv)
