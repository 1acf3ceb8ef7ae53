"""Shaded pictures of heads: ray-cast meshes, splatted point clouds, error heat-maps, PNG and JPEG output.

Frame: +y up, +z where the face looks, +x the subject's left, millimetres (any unit works: framing is
automatic). A view name becomes a camera that frames a bounding box, so two meshes rendered with the
same `frame_bbox` land on the same pixels (a fit and its ground truth line up side by side).

Shading is Lambert with a head-light (so every visible surface is lit), a soft key light from the upper
left and a little ambient, on smooth normals interpolated across each triangle. It is two-sided: the
normal is flipped toward the viewer, so open meshes seen from behind are shaded, not black.
"""

from __future__ import annotations

import os
from types import MappingProxyType
from typing import Sequence

import numpy as np

from .atomic import SIGNATURE, atomic_file
from .errors import InputError
from .geometry.barycentric import barycentric
from .geometry.camera import Camera, look_at
from .geometry.raycast import RayCaster

# direction from the subject toward the camera, and the world direction that is "up" in the image
_VIEWS = {
    "front": ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0)),
    # 35 degrees toward the subject's left (+x): the classic portrait three-quarter view
    "three_quarter": ((np.sin(np.radians(35.0)), 0.0, np.cos(np.radians(35.0))), (0.0, 1.0, 0.0)),
    "side": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # profile seen from the subject's left
    "back": ((0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
    "top": ((0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),  # from above, the face toward the top of the image
}
VIEWS: MappingProxyType = MappingProxyType({
    k: (np.array(d, float) / np.linalg.norm(d), np.array(u, float)) for k, (d, u) in _VIEWS.items()
})
"""View name -> (unit direction from the subject toward the camera (3,), image-up direction (3,))."""

CLAY = (0.80, 0.76, 0.72)
"""Default albedo: a neutral warm clay grey (linear-ish RGB in [0, 1])."""

_AMBIENT, _HEAD, _KEY = 0.16, 0.62, 0.30
# toward the key light in the camera frame (x right, y down, z forward): upper left, in front
_KEY_DIR = np.array([-0.45, -0.55, -0.70]) / np.linalg.norm([-0.45, -0.55, -0.70])
_DISTANCE = 4.0  # camera distance in bounding radii: mild, portrait-lens perspective
_MARGIN = 0.06  # fraction of the half-image left free around the framed box


# ------------------------------------------------------------------------------------------ cameras


def bounding_box(*point_sets: np.ndarray) -> np.ndarray:
    """(2, 3) float64 [min, max] corners over all the given (N_i, 3) point arrays."""
    pts = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 3) for p in point_sets])
    if len(pts) == 0:
        raise ValueError("bounding_box of no points")
    return np.stack([pts.min(axis=0), pts.max(axis=0)])


def view_camera(view: str, frame_bbox: np.ndarray, size: tuple[int, int] = (512, 512)) -> Camera:
    """A camera for a named view that frames the box `frame_bbox` (2, 3) float: [min, max] corners.

    size: (width, height) in pixels. The camera looks at the box centre from `_DISTANCE` bounding radii
    away along the view direction; the focal length is the largest that keeps all eight box corners
    inside the image with a small margin, so the same box always gives the same camera.
    """
    if view not in VIEWS:
        raise InputError("view", f"unknown view {view!r}; expected one of {', '.join(VIEWS)}")
    w, h = int(size[0]), int(size[1])
    if w < 1 or h < 1:
        raise ValueError(f"size must be positive, got {size}")
    box = np.asarray(frame_bbox, dtype=np.float64).reshape(2, 3)
    centre = box.mean(axis=0)
    radius = max(0.5 * float(np.linalg.norm(box[1] - box[0])), 1e-9)  # a single point still frames
    direction, up = VIEWS[view]
    w2c = look_at(centre + _DISTANCE * radius * direction, centre, up)
    corners = np.array([[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    pc = corners @ w2c[:3, :3].T + w2c[:3, 3]
    # every corner is in front of the camera (distance 4 r > r), so x/z and y/z are finite
    ext = max(np.abs(pc[:, 0] / pc[:, 2]).max() / w, np.abs(pc[:, 1] / pc[:, 2]).max() / h, 1e-12)
    f = 0.5 * (1.0 - _MARGIN) / ext
    return Camera(f, f, (w - 1) / 2.0, (h - 1) / 2.0, w, h, w2c)


def turntable_cameras(vertices: np.ndarray, n: int, size: int | tuple[int, int], pitch_deg: float = 5.0,
                      yaw_range: tuple[float, float] = (-90.0, 90.0)) -> list[Camera]:
    """`n` cameras circling a head about +y, each framing the sphere around its bounding box.

    vertices: (V, 3) float, mm (any unit works: framing is automatic). Yaws are spread evenly over
    `yaw_range` in degrees, both ends included (0: from +z, the face; positive: from the subject's left,
    +x; one camera looks from the middle of the range); every camera is `pitch_deg` above the head's
    centre. size: pixels, an int for square images or (width, height). Cameras as
    `neuralmorph.data.textured_render.orbit_camera` makes them.
    """
    from .data.textured_render import orbit_camera

    n = int(n)
    if n < 1:
        raise ValueError(f"need at least one camera, got {n}")
    box = bounding_box(vertices)
    if not np.isfinite(box).all():
        raise ValueError("vertices contain NaN or inf")
    radius = max(0.5 * float(np.linalg.norm(box[1] - box[0])), 1e-9)
    lo, hi = float(yaw_range[0]), float(yaw_range[1])
    yaws = [0.5 * (lo + hi)] if n == 1 else np.linspace(lo, hi, n)
    return [orbit_camera(box.mean(axis=0), radius, float(yaw), float(pitch_deg), size) for yaw in yaws]


def _supersampled(cam: Camera, s: int) -> Camera:
    """The same view at s x s samples per pixel: pixel (i, j) covers samples (s*i..s*i+s-1, s*j..)."""
    if s == 1:
        return cam
    # pixel j spans u in [j - 1/2, j + 1/2]; sample J = s*j + k sits at u = (J + 1/2) / s - 1/2
    return Camera(cam.fx * s, cam.fy * s, s * (cam.cx + 0.5) - 0.5, s * (cam.cy + 0.5) - 0.5,
                  cam.width * s, cam.height * s, cam.world_to_camera)


def _resolve_camera(view: str | Camera, size: tuple[int, int], frame_bbox, fallback: np.ndarray) -> Camera:
    if isinstance(view, Camera):
        return view
    box = bounding_box(fallback) if frame_bbox is None else np.asarray(frame_bbox, dtype=np.float64)
    if box.shape != (2, 3) or not np.isfinite(box).all():
        raise ValueError(f"frame_bbox must be a finite (2, 3) [min, max] array, got shape {box.shape}")
    return view_camera(view, box, size)


def _downsample(img: np.ndarray, s: int) -> np.ndarray:
    """(H*s, W*s, C) float -> (H, W, C) float, the mean of each s x s block (box-filter anti-aliasing)."""
    if s == 1:
        return img
    hs, ws, c = img.shape
    return img.reshape(hs // s, s, ws // s, s, c).mean(axis=(1, 3))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image (any shape) with values in [0, 1] -> uint8 0..255, rounded, out-of-range values clipped."""
    return np.clip(np.rint(np.asarray(image, np.float64) * 255.0), 0, 255).astype(np.uint8)


def _albedo(colors, n: int, name: str) -> np.ndarray:
    """(n, 3) float64 in [0, 1] from (n, 3) uint8 (0..255) or float (0..1) colours, or the clay default."""
    if colors is None:
        return np.broadcast_to(np.array(CLAY), (n, 3))
    c = np.asarray(colors)
    if c.shape != (n, 3):
        raise ValueError(f"{name} must be ({n}, 3), got {c.shape}")
    if c.dtype == np.uint8:
        return c.astype(np.float64) / 255.0
    c = c.astype(np.float64)
    if not np.isfinite(c).all():
        raise ValueError(f"{name} contain NaN or inf")
    return np.clip(c, 0.0, 1.0)


def _background(background) -> np.ndarray:
    b = np.asarray(background, dtype=np.float64).reshape(3)
    return b / 255.0


# ------------------------------------------------------------------------------------------ meshes


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """(V, 3) float64 area-weighted unit vertex normals following the winding; zero where undefined."""
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # |cross| = 2 area: area weights
    ids = f.ravel()
    w = np.repeat(cross, 3, axis=0)
    acc = np.stack([np.bincount(ids, w[:, k], minlength=len(v)) for k in range(3)], axis=1)
    n = np.linalg.norm(acc, axis=1, keepdims=True)
    return np.divide(acc, n, out=np.zeros_like(acc), where=n > 0)


def _shade(normals: np.ndarray, dirs: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """(K,) float64 light intensity for unit normals (K, 3) seen along unit ray directions (K, 3).

    rotation: (3, 3) world-to-camera rotation (the key light is fixed to the camera).
    """
    facing = -np.einsum("ij,ij->i", normals, dirs)  # > 0 when the normal faces the viewer
    key = np.clip((normals * np.sign(facing)[:, None]) @ (rotation.T @ _KEY_DIR), 0.0, None)
    return _AMBIENT + _HEAD * np.abs(facing) + _KEY * key


class MeshRenderer:
    """Shaded renders of one mesh from many views; the acceleration structure is built once.

    vertices: (V, 3) float (any unit); faces: (F, 3) int, at least one face.
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        self.vertices = np.ascontiguousarray(vertices, dtype=np.float64)
        self.faces = np.ascontiguousarray(faces, dtype=np.int64)
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3 or len(self.vertices) == 0:
            raise ValueError(f"vertices must be (V, 3) with V > 0, got {self.vertices.shape}")
        if not np.isfinite(self.vertices).all():
            raise ValueError("vertices contain NaN or inf")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3 or len(self.faces) == 0:
            raise ValueError(f"faces must be (F, 3) with F > 0, got {self.faces.shape}")
        if self.faces.min() < 0 or self.faces.max() >= len(self.vertices):
            raise ValueError(f"face ids must lie in [0, {len(self.vertices)})")
        self._caster = RayCaster(self.vertices, self.faces)
        self._vn = _vertex_normals(self.vertices, self.faces)
        self._radius = 0.5 * float(np.linalg.norm(np.ptp(self.vertices, axis=0)))

    def render(self, view: str | Camera = "front", size: tuple[int, int] = (512, 512),
               vertex_colors: np.ndarray | None = None, background=(255, 255, 255),
               frame_bbox: np.ndarray | None = None, supersample: int = 3) -> np.ndarray:
        """See `render_mesh`."""
        cam = _resolve_camera(view, size, frame_bbox, self.vertices)
        s = int(supersample)
        if s < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        albedo = _albedo(vertex_colors, len(self.vertices), "vertex_colors")
        n_pix = cam.height * cam.width
        # rays only where some triangle's projected bounding rectangle lies: ~3x fewer than the image
        cand = self._coverage(cam)
        pix, fid, t, d = self._caster.cast_rays(cam.position, _pixel_rays(cam, cand, 1))
        pix = cand[pix]
        img = np.empty((n_pix, 3))
        img[:] = _background(background)
        img[pix] = self._colour(fid, t, d, cam, albedo)
        if s > 1:
            # anti-alias only where it shows: silhouettes and occlusion edges get s x s rays, averaged
            depth = np.full(n_pix, np.inf)
            depth[pix] = t
            edge = np.flatnonzero(_edges(depth.reshape(cam.height, cam.width), 0.03 * self._radius))
            if len(edge):
                spix, sfid, st, sd = self._caster.cast_rays(cam.position, _pixel_rays(cam, edge, s))
                sub = np.empty((len(edge) * s * s, 3))
                sub[:] = _background(background)
                sub[spix] = self._colour(sfid, st, sd, cam, albedo)
                img[edge] = sub.reshape(len(edge), s * s, 3).mean(axis=1)
        return to_uint8(img.reshape(cam.height, cam.width, 3))

    def _coverage(self, cam: Camera) -> np.ndarray:
        """(K,) int64 sorted ids of the pixels whose centre may see the mesh (conservative).

        Each triangle's projected pixel rectangle, grown by a pixel for Embree's float32 tolerance, is
        added to a difference image whose 2D cumulative sum counts the rectangles over every pixel.
        Every pixel is a candidate if any vertex is behind the camera (projection is not defined there).
        """
        uv, z = cam.project(self.vertices)
        if not (z > 0).all():
            return np.arange(cam.height * cam.width)
        tri = uv[self.faces]  # (F, 3, 2)
        lo = np.floor(tri.min(axis=1)).astype(np.int64) - 1
        hi = np.ceil(tri.max(axis=1)).astype(np.int64) + 1
        w, h = cam.width, cam.height
        keep = (hi[:, 0] >= 0) & (lo[:, 0] < w) & (hi[:, 1] >= 0) & (lo[:, 1] < h)
        c0, c1 = np.clip(lo[keep, 0], 0, w - 1), np.clip(hi[keep, 0], 0, w - 1) + 1
        r0, r1 = np.clip(lo[keep, 1], 0, h - 1), np.clip(hi[keep, 1], 0, h - 1) + 1
        diff = np.zeros((h + 1) * (w + 1), dtype=np.int64)
        for r, c, sign in ((r0, c0, 1), (r0, c1, -1), (r1, c0, -1), (r1, c1, 1)):
            diff += np.bincount(r * (w + 1) + c, minlength=len(diff)) * sign
        count = diff.reshape(h + 1, w + 1).cumsum(axis=0).cumsum(axis=1)[:h, :w]
        return np.flatnonzero(count.reshape(-1) > 0)

    def _colour(self, fid: np.ndarray, t: np.ndarray, d: np.ndarray, cam: Camera, albedo: np.ndarray) -> np.ndarray:
        """(K, 3) float64 shaded colours of hits: face ids (K,), ray lengths (K,), unit directions (K, 3)."""
        tri = self.faces[fid]  # (K, 3)
        hit = cam.position + t[:, None] * d
        v = self.vertices
        bary = barycentric(hit, v[tri], simplex=True)
        n = np.einsum("kj,kjc->kc", bary, self._vn[tri])
        norm = np.linalg.norm(n, axis=1, keepdims=True)
        # smooth normals cancel on knife edges (a fold seen edge-on): fall back to the flat normal there
        n = np.where(norm > 1e-6, n / np.maximum(norm, 1e-12), self._caster.face_normals[fid])
        return np.einsum("kj,kjc->kc", bary, albedo[tri]) * _shade(n, d, cam.rotation)[:, None]


def _edges(depth: np.ndarray, jump: float) -> np.ndarray:
    """(H, W) bool: pixels next to a hit/miss change or a depth jump > `jump` (depth (H, W), inf = miss)."""
    edge = np.zeros(depth.shape, dtype=bool)
    hit = np.isfinite(depth)
    for a, b in ((np.s_[1:, :], np.s_[:-1, :]), (np.s_[:, 1:], np.s_[:, :-1])):
        with np.errstate(invalid="ignore"):  # inf - inf between two misses
            e = (hit[a] != hit[b]) | (hit[a] & hit[b] & (np.abs(depth[a] - depth[b]) > jump))
        edge[a] |= e
        edge[b] |= e
    return edge.reshape(-1)


def _pixel_rays(cam: Camera, pixels: np.ndarray, s: int) -> np.ndarray:
    """Unit world directions (K*s*s, 3) of s x s sub-pixel rays through chosen pixel ids (K,) int.

    The k-th pixel's samples are rays k*s*s .. k*s*s + s*s - 1 (s = 1: the pixel centre).
    """
    row, col = np.divmod(pixels, cam.width)
    off = (np.arange(s) + 0.5) / s - 0.5  # sub-sample centres inside the pixel
    oy, ox = np.meshgrid(off, off, indexing="ij")
    u = col[:, None] + ox.reshape(1, -1)
    v = row[:, None] + oy.reshape(1, -1)
    dirs = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u)], axis=-1).reshape(-1, 3)
    return (dirs / np.linalg.norm(dirs, axis=1, keepdims=True)) @ cam.rotation


def render_mesh(vertices: np.ndarray, faces: np.ndarray, view: str | Camera = "front",
                size: tuple[int, int] = (512, 512), vertex_colors: np.ndarray | None = None,
                background=(255, 255, 255), frame_bbox: np.ndarray | None = None,
                supersample: int = 3) -> np.ndarray:
    """Ray-cast, smooth-shaded picture of a triangle mesh.

    vertices: (V, 3) float; faces: (F, 3) int.
    view: a name in VIEWS (framed on `frame_bbox`, default the mesh's own bounding box) or a Camera
        (then `size` and `frame_bbox` are ignored).
    size: (width, height) in pixels.
    vertex_colors: (V, 3) uint8 in 0..255 or float in [0, 1], interpolated across triangles; None for clay.
    background: (3,) RGB 0..255.
    frame_bbox: (2, 3) float [min, max] box to frame; pass the same box for renders that must line up.
    supersample: s x s rays per pixel, averaged, on silhouette and occlusion-edge pixels (anti-aliasing
        where it shows, at a fraction of the cost of supersampling everything); 1 for one ray per pixel.
    Returns (H, W, 3) uint8.
    """
    return MeshRenderer(vertices, faces).render(view, size, vertex_colors, background, frame_bbox, supersample)


# ------------------------------------------------------------------------------------------ points

POINT_COLOR = (0.23, 0.40, 0.62)
"""Default point colour: a slate blue that reads well on white."""


def render_points(points: np.ndarray, view: str | Camera = "front", size: tuple[int, int] = (512, 512),
                  colors: np.ndarray | None = None, radius_px: float = 2.0, frame_bbox: np.ndarray | None = None,
                  background=(255, 255, 255), supersample: int = 2) -> np.ndarray:
    """Z-buffered splats of a point cloud, each point a small shaded ball of `radius_px` pixels.

    Farther points fade toward the background (up to half way) so the cloud's depth reads at a glance.

    points: (P, 3) float; colors: (P, 3) uint8 0..255 or float [0, 1], or None for slate blue.
    view, size, frame_bbox, background, supersample: as in `render_mesh`.
    Returns (H, W, 3) uint8.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise ValueError(f"points must be (P, 3) with P > 0, got {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("points contain NaN or inf")
    s = int(supersample)
    if s < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    if colors is None:
        albedo = np.broadcast_to(np.array(POINT_COLOR), (len(pts), 3))
    else:
        albedo = _albedo(colors, len(pts), "colors")
    cam = _supersampled(_resolve_camera(view, size, frame_bbox, pts), s)
    uv, z = cam.project(pts)
    keep = np.flatnonzero(z > 0)
    r = max(float(radius_px) * s, 0.5)
    # disc footprint of one splat: integer pixel offsets and the sphere normal's depth component there
    ri = int(np.ceil(r))
    oy, ox = np.mgrid[-ri : ri + 1, -ri : ri + 1]
    rho2 = (ox**2 + oy**2) / (r * r)
    inside = rho2 <= 1.0
    ox, oy, nz = ox[inside], oy[inside], np.sqrt(1.0 - rho2[inside])
    # ball shading in the camera frame: normal (ox, oy, -nz) / r, lit like a mesh (head-light + key)
    nrm = np.stack([ox / r, oy / r, -nz], axis=1)
    shade = _AMBIENT + _HEAD * nz + _KEY * np.clip(nrm @ _KEY_DIR, 0.0, None)
    cu = np.rint(uv[keep, 0]).astype(np.int64)
    cv = np.rint(uv[keep, 1]).astype(np.int64)
    px = (cu[:, None] + ox[None, :]).ravel()
    py = (cv[:, None] + oy[None, :]).ravel()
    # the ball's front surface is nearer than its centre by nz * (radius in world units at that depth)
    zz = (z[keep][:, None] * (1.0 - nz[None, :] * r / cam.fx)).ravel()
    pid = np.repeat(keep, len(ox))
    sid = np.tile(np.arange(len(ox)), len(keep))
    ok = (px >= 0) & (px < cam.width) & (py >= 0) & (py < cam.height)
    px, py, zz, pid, sid = px[ok], py[ok], zz[ok], pid[ok], sid[ok]
    flat = py * cam.width + px
    order = np.lexsort((pid, zz, flat))  # per pixel nearest first; ties broken by point id (deterministic)
    first = order[np.r_[True, flat[order][1:] != flat[order][:-1]]]
    img = np.empty((cam.height * cam.width, 3))
    img[:] = _background(background)
    # depth cue: farther points fade toward the background, so front and back of a cloud separate
    zk = z[keep]
    fog = 0.5 * (z - zk.min()) / max(float(np.ptp(zk)), 1e-12)
    bg = _background(background)
    p, q = pid[first], sid[first]
    img[flat[first]] = (albedo[p] * shade[q, None]) * (1.0 - fog[p, None]) + bg * fog[p, None]
    return to_uint8(_downsample(img.reshape(cam.height, cam.width, 3), s))


# ------------------------------------------------------------------------------------------ colour maps

# a perceptually ordered sequential ramp (our own anchors, viridis-like): indigo -> blue -> teal ->
# green -> yellow, with CIE lightness rising strictly along it so the error reads as brightness too
ERROR_ANCHORS = np.array([
    [52, 18, 82],
    [56, 70, 148],
    [33, 126, 150],
    [42, 168, 124],
    [128, 200, 78],
    [248, 226, 62],
], dtype=np.float64)
NAN_COLOR = (160, 160, 160)


def _ramp(x: np.ndarray) -> np.ndarray:
    """(N,) float in [0, 1] -> (N, 3) float64 RGB 0..255 along ERROR_ANCHORS (piecewise linear)."""
    pos = np.clip(x, 0.0, 1.0) * (len(ERROR_ANCHORS) - 1)
    i = np.minimum(pos.astype(np.int64), len(ERROR_ANCHORS) - 2)
    f = (pos - i)[:, None]
    return ERROR_ANCHORS[i] * (1.0 - f) + ERROR_ANCHORS[i + 1] * f


def error_colors(values: np.ndarray, vmax_mm: float) -> np.ndarray:
    """Per-vertex error colours: (V,) float mm -> (V, 3) uint8; 0 is dark indigo, >= vmax_mm yellow.

    NaN values get a neutral grey. vmax_mm must be positive.
    """
    if not (vmax_mm > 0 and np.isfinite(vmax_mm)):
        raise ValueError(f"vmax_mm must be positive and finite, got {vmax_mm}")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    good = np.isfinite(v)
    out = np.empty((len(v), 3), dtype=np.uint8)
    out[good] = np.rint(_ramp(v[good] / vmax_mm)).astype(np.uint8)
    out[~good] = NAN_COLOR
    return out


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: scalable built-in font
    except TypeError:  # pragma: no cover - older Pillow: fixed bitmap font
        return ImageFont.load_default()


def colorbar(vmax_mm: float, height: int = 256, label: str = "mm", ticks: int = 5,
             background=(255, 255, 255)) -> np.ndarray:
    """A vertical colour bar for `error_colors`, from 0 (bottom) to vmax_mm (top).

    Ticks fall on round numbers (steps of 1, 2, 2.5 or 5 x 10^k, about `ticks` of them); the top of
    the bar reads "vmax+" because larger errors are clipped to it. Returns (height, W, 3) uint8.
    """
    from PIL import Image, ImageDraw

    if not (vmax_mm > 0 and np.isfinite(vmax_mm)):
        raise ValueError(f"vmax_mm must be positive and finite, got {vmax_mm}")
    height = int(height)
    if height < 40:
        raise ValueError(f"height must be at least 40 px, got {height}")
    font = _font(max(10, min(14, height // 16)))
    pad, bar_w = 12, max(12, height // 14)
    top, bottom = pad + 14, height - pad  # room above the bar for the unit label
    step = _nice_step(vmax_mm / max(int(ticks), 1))
    values = list(np.arange(0.0, vmax_mm * (1 + 1e-9), step))
    # the top of the bar is labelled with vmax itself ("+": larger errors are clipped to it);
    # a regular tick too close below it would collide with that label
    if vmax_mm - values[-1] < 0.4 * step:
        values.pop()
    labels = [_tick_label(x, step) for x in values]
    labels.append(f"{vmax_mm:.{max(_decimals(step), _decimals(vmax_mm))}f}+")
    values.append(vmax_mm)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(probe.textlength(t, font=font) for t in labels + [label])
    width = int(pad + bar_w + 6 + text_w + pad)
    img = Image.new("RGB", (width, height), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(img)
    # the bar itself: one ramp row per pixel, high values on top
    rows = np.linspace(1.0, 0.0, bottom - top)
    bar = np.repeat(_ramp(rows)[:, None, :], bar_w, axis=1)
    img.paste(Image.fromarray(np.rint(bar).astype(np.uint8)), (pad, top))
    draw.rectangle([pad - 1, top - 1, pad + bar_w, bottom], outline=(90, 90, 90))
    for value, text in zip(values, labels):
        y = bottom - 1 - (bottom - 1 - top) * value / vmax_mm
        draw.line([pad + bar_w, y, pad + bar_w + 4, y], fill=(60, 60, 60))
        draw.text((pad + bar_w + 7, y), text, fill=(40, 40, 40), font=font, anchor="lm")
    draw.text((pad, top - 4), label, fill=(40, 40, 40), font=font, anchor="ls")
    return np.asarray(img, dtype=np.uint8)


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= raw (> 0)."""
    k = np.floor(np.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * 10**k >= raw * (1 - 1e-9):
            return float(m * 10**k)
    return float(10 ** (k + 1))  # pragma: no cover - unreachable


def _decimals(x: float, most: int = 3) -> int:
    """Fewest decimals (up to `most`) that write x exactly."""
    for d in range(most + 1):
        if abs(round(x, d) - x) <= 1e-9 * max(abs(x), 1.0):
            return d
    return most


def _tick_label(value: float, step: float) -> str:
    return f"{value:.{_decimals(step)}f}"


# ------------------------------------------------------------------------------------------ images


def _as_rgb(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"images must be (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    return a[:, :, :3]


def hstack_images(images: Sequence[np.ndarray], pad: int = 8, background=(255, 255, 255)) -> np.ndarray:
    """Images (H_i, W_i, 3) uint8 side by side, vertically centred, `pad` pixels apart -> (H, W, 3) uint8."""
    imgs = [_as_rgb(im) for im in images]
    if not imgs:
        raise ValueError("hstack_images needs at least one image")
    h = max(im.shape[0] for im in imgs)
    w = sum(im.shape[1] for im in imgs) + pad * (len(imgs) - 1)
    out = np.empty((h, w, 3), dtype=np.uint8)
    out[:] = np.asarray(background, dtype=np.uint8)
    x = 0
    for im in imgs:
        y = (h - im.shape[0]) // 2
        out[y : y + im.shape[0], x : x + im.shape[1]] = im
        x += im.shape[1] + pad
    return out


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of an (H, W), (H, W, 3) or (H, W, 4) uint8 image; same pixels -> same bytes."""
    import io

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"expected an (H, W[, 3|4]) uint8 image, got {a.shape} {a.dtype}")
    buf = io.BytesIO()
    # one text chunk (the signature that marks the file ours; no time stamps) and a fixed compression
    # level: deterministic bytes
    info = PngInfo()
    info.add_text("Software", SIGNATURE)
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG", compress_level=6, pnginfo=info)
    return buf.getvalue()


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an (H, W[, 3|4]) uint8 image as PNG, atomically; the same pixels always give the same bytes."""
    data = png_bytes(image)
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def gif_bytes(frames: Sequence[np.ndarray], fps: float = 10.0, background=(0, 0, 0)) -> bytes:
    """An animated GIF (looping) of images (H_i, W_i[, 3|4]) uint8, `fps` frames a second, with
    `SIGNATURE` in its comment extension (in the header, what marks the file ours, as the PNG's text
    chunk does); same frames -> same bytes. Frames of different sizes are centred on the largest size over
    `background`. Colours are reduced to each frame's own 256-colour palette (GIF's limit); the writer
    merges identical consecutive frames into one shown for longer."""
    import io

    from PIL import Image

    imgs = [_as_rgb(f) for f in frames]
    if not imgs:
        raise ValueError("a GIF needs at least one frame")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    h, w = max(im.shape[0] for im in imgs), max(im.shape[1] for im in imgs)
    canvas = []
    for im in imgs:
        out = np.empty((h, w, 3), dtype=np.uint8)
        out[:] = np.asarray(background, dtype=np.uint8)
        y, x = (h - im.shape[0]) // 2, (w - im.shape[1]) // 2
        out[y : y + im.shape[0], x : x + im.shape[1]] = im
        canvas.append(Image.fromarray(out))
    buf = io.BytesIO()
    # GIF delays are in hundredths of a second
    canvas[0].save(buf, format="GIF", save_all=True, append_images=canvas[1:], loop=0,
                   duration=max(10, int(round(1000.0 / fps, -1))), comment=SIGNATURE.encode())
    return buf.getvalue()


def save_gif(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: float = 10.0) -> None:
    """Write images (H, W[, 3|4]) uint8 as a looping animated GIF (`gif_bytes`), atomically, signed."""
    data = gif_bytes(frames, fps)
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""What `save_image` writes, by suffix: lossless PNG, or JPEG (smaller, lossy: error colours blur a little)."""


def jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    """JPEG encoding of an (H, W), (H, W, 3) or (H, W, 4) uint8 image (alpha dropped), with `SIGNATURE`
    in a comment segment right after the JFIF header (what marks the file ours); same pixels -> same bytes."""
    import io
    import struct

    from PIL import Image

    a = _as_rgb(image)
    buf = io.BytesIO()
    # fixed quality and 4:2:0 chroma subsampling, no EXIF and no time stamps: deterministic bytes
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="JPEG", quality=int(quality), subsampling=2)
    data = buf.getvalue()
    # SOI (2 bytes), then Pillow's APP0/JFIF segment (marker, 2-byte big-endian length counting itself)
    at = 2 + (2 + struct.unpack(">H", data[4:6])[0] if data[2:4] == b"\xff\xe0" else 0)
    text = SIGNATURE.encode()
    return data[:at] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[at:]


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an (H, W[, 3|4]) uint8 image atomically, as PNG or JPEG by the suffix (`IMAGE_SUFFIXES`)."""
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(path, f"cannot write {suffix or 'a file without a suffix'}; use one of "
                               f"{', '.join(IMAGE_SUFFIXES)}")
    data = png_bytes(image) if suffix == ".png" else jpeg_bytes(image)
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def check_renderable(vertices: np.ndarray, faces: np.ndarray, where: str | os.PathLike) -> None:
    """InputError naming `where` when there is nothing to frame or see: non-finite coordinates, all
    vertices at one point (a bounding box of zero size), or (faces (F, 3) given) no triangle with area.

    vertices: (V, 3) float; faces: (F, 3) int, or (0, 3) for a point cloud.
    """
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    if len(v) == 0 or not np.isfinite(v).all():
        raise InputError(where, "has no vertices or non-finite coordinates; nothing to render")
    with np.errstate(over="ignore", invalid="ignore"):
        extent = float(np.linalg.norm(np.ptp(v, axis=0)))
    if not np.isfinite(extent):
        raise InputError(where, "spans more than floating point can frame; check the coordinates and units")
    if not extent > 0:
        raise InputError(where, f"all {len(v)} vertices coincide (its bounding box has zero size); nothing to render")
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(f) and not (np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1) > 0).any():
        raise InputError(where, "every triangle has zero area (the vertices are collinear); nothing to render")


ERROR_KINDS = ("auto", "vertex", "surface")
"""How `heatmap_errors` compares a shape with its ground truth (see there)."""


def heatmap_errors(vertices: np.ndarray, gt_vertices: np.ndarray, gt_faces: np.ndarray, kind: str = "auto",
                   where: str | os.PathLike = "ground truth") -> tuple[np.ndarray, str]:
    """Per-vertex errors of a shape against a ground truth, in the shape's units, for a heat-map.

    vertex: |v_i - g_i|, for shapes in correspondence (same vertex count, same order); surface: each
    vertex's distance to the ground truth's surface (exact point-to-triangle, `distance_to_mesh`), or to its
    nearest point when the ground truth is a point cloud; auto: vertex when the vertex counts match,
    surface otherwise.

    vertices: (V, 3) float; gt_vertices: (G, 3) float; gt_faces: (F, 3) int, (0, 3) for a point cloud;
    where: what errors name (the ground-truth file).
    Returns errors (V,) float64 and the kind used ("vertex" or "surface").
    """
    from .geometry.distance import distance_to_mesh, nearest_neighbors

    if kind not in ERROR_KINDS:
        raise InputError("error kind", f"unknown {kind!r}; expected one of {', '.join(ERROR_KINDS)}")
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    g = np.asarray(gt_vertices, dtype=np.float64).reshape(-1, 3)
    f = np.asarray(gt_faces, dtype=np.int64).reshape(-1, 3)
    if kind == "auto":
        kind = "vertex" if len(g) == len(v) else "surface"
    if kind == "vertex":
        if len(g) != len(v):
            raise InputError(where, f"has {len(g)} vertices, the rendered shape {len(v)}: per-vertex errors need "
                                    "meshes in correspondence (use the surface error kind)")
        return np.linalg.norm(v - g, axis=1), kind
    return (distance_to_mesh(v, g, f) if len(f) else nearest_neighbors(v, g)[0]), kind


def render_views(vertices: np.ndarray, faces: np.ndarray, views: Sequence[str] = ("front", "three_quarter", "side"),
                 size: int = 512, vertex_colors: np.ndarray | None = None, frame_bbox: np.ndarray | None = None,
                 pad: int = 8) -> np.ndarray:
    """The named views of a mesh ((F, 3) faces) or a point cloud ((0, 3) faces) side by side.

    vertices: (V, 3) float; vertex_colors: (V, 3) uint8 or float in [0, 1], or None; frame_bbox: (2, 3)
    or None for the vertices' own box (shared by all views). Returns (size, W, 3) uint8.
    """
    v = np.asarray(vertices, dtype=np.float64)
    box = bounding_box(v) if frame_bbox is None else frame_bbox
    f = np.asarray(faces).reshape(-1, 3)
    if len(f):
        renderer = MeshRenderer(v, f)
        imgs = [renderer.render(name, (size, size), vertex_colors, frame_bbox=box) for name in views]
    else:
        imgs = [render_points(v, name, (size, size), vertex_colors, frame_bbox=box) for name in views]
    return hstack_images(imgs, pad=pad)
