"""Ground-truth images of textured meshes: ray casting (Embree), texture lookup and simple shading.

What the appearance half is checked against: a textured head (vertices, per-corner texture coordinates,
an albedo texture) seen by a pinhole `Camera` becomes an RGB image with its coverage mask, depth (camera
z, mm) and normals. It is slow and exact where the Gaussian rasterizer (`neuralmorph.splat`) is fast and
approximate; the two never share code, so one can test the other.

Per sample ray: Embree finds the first triangle hit (`geometry.raycast.RayCaster`), its barycentrics
interpolate the corner texture coordinates, and the texture is read bilinearly (from a mip level chosen
per triangle when the texture is much finer than the samples: no sparkle from a 2400-pixel scan texture
on a 256-pixel image). The shading is

    colour = albedo * E(n) + specular * key_colour * max(0, n.h)^shininess * [n.l > 0]

E(n): irradiance from 9 spherical-harmonic coefficients per channel (bands 0-2, real basis), scaled so
that an ambient level of 1 shows the albedo as is; the second term: a Blinn-Phong highlight of the key
light (direction l, half vector h between l and the direction to the camera). n is the smooth
(vertex-interpolated) normal, turned towards the camera when a triangle is seen from behind. Anti-aliasing
by supersampling: s x s rays per pixel on a regular grid, averaged (colour, coverage) with the background
where they miss. Colours are linear RGB in [0, 1]; `srgb_encode` makes 8-bit display values.

Textures are (H, W, 3) arrays whose row 0 is the top of the image; texture coordinates follow the OBJ
convention (u to the right, v up), so (u, v) = (0, 0) is the bottom-left corner of the texture.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neuralmorph.errors import InputError
from neuralmorph.geometry.barycentric import barycentric
from neuralmorph.geometry.camera import Camera, look_at
from neuralmorph.geometry.raycast import RayCaster

__all__ = ["TexturedMesh", "Lighting", "Rendering", "TexturedRenderer", "render_textured", "orbit_camera",
           "sh_basis", "srgb_encode", "srgb_decode", "read_obj_face_uvs", "load_textured_obj", "load_james_textured", "render_james"]

# ------------------------------------------------------------------------------------------ colour


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Linear RGB (any shape) in [0, 1] (clipped) -> sRGB-encoded uint8 (IEC 61966-2-1 transfer curve)."""
    x = np.clip(np.asarray(linear, dtype=np.float64), 0.0, 1.0)
    s = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.clip(np.rint(s * 255.0), 0, 255).astype(np.uint8)


def srgb_decode(encoded: np.ndarray) -> np.ndarray:
    """sRGB-encoded values (uint8 0..255, or float in [0, 1]) -> linear float32 in [0, 1]."""
    e = np.asarray(encoded)
    s = e.astype(np.float64) / 255.0 if e.dtype == np.uint8 else np.clip(e.astype(np.float64), 0.0, 1.0)
    return np.where(s <= 0.04045, s / 12.92, ((s + 0.055) / 1.055) ** 2.4).astype(np.float32)


# ------------------------------------------------------------------------------------------ lighting

_SH_NORM = (0.282095, 0.488603, 1.092548, 0.315392, 0.546274)
# The clamped cosine max(0, n.l) in spherical harmonics: band l carries A_l * Y_lm(l) Y_lm(n) with
# A = (pi, 2 pi / 3, pi / 4) (Ramamoorthi and Hanrahan 2001); bands 0-2 keep ~99% of its energy.
_COSINE_BANDS = np.array([np.pi, 2 * np.pi / 3, 2 * np.pi / 3, 2 * np.pi / 3] + [np.pi / 4] * 5)


def sh_basis(directions: np.ndarray) -> np.ndarray:
    """Real spherical harmonics of bands 0-2 at unit `directions` (K, 3) -> (K, 9) float64.

    Order: Y00; Y1-1 (y), Y10 (z), Y11 (x); Y2-2 (xy), Y2-1 (yz), Y20 (3z^2 - 1), Y21 (xz), Y22 (x^2 - y^2).
    """
    d = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    c0, c1, c2, c3, c4 = _SH_NORM
    return np.stack([np.full_like(x, c0), c1 * y, c1 * z, c1 * x, c2 * x * y, c2 * y * z,
                     c3 * (3 * z * z - 1), c2 * x * z, c4 * (x * x - y * y)], axis=1)


def _rgb(value, name: str) -> np.ndarray:
    c = np.broadcast_to(np.asarray(value, dtype=np.float64), (3,)).copy()
    if not np.isfinite(c).all() or (c < 0).any():
        raise ValueError(f"{name} must be finite and non-negative, got {value}")
    return c


def _unit3(v, name: str) -> np.ndarray:
    d = np.asarray(v, dtype=np.float64).reshape(3)
    n = np.linalg.norm(d)
    if not (np.isfinite(n) and n > 0):
        raise ValueError(f"{name} must be a non-zero direction, got {v}")
    return d / n


@dataclass(frozen=True, eq=False)
class Lighting:
    """Distant lighting in world coordinates: diffuse irradiance as 9 SH coefficients per channel, plus
    one key light for the specular highlight.

    sh: (9, 3) float64: E(n) = sh_basis(n) @ sh per channel, in units where E = 1 shows the albedo as is.
    key_direction: (3,) unit vector from the surface towards the key light (world frame).
    key_color: (3,) the key light's colour and strength (the highlight's scale).
    specular: Blinn-Phong strength (0 for a matte surface); shininess: its exponent.
    """

    sh: np.ndarray
    key_direction: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    key_color: np.ndarray = field(default_factory=lambda: np.zeros(3))
    specular: float = 0.0
    shininess: float = 20.0

    def __post_init__(self):
        sh = np.array(self.sh, dtype=np.float64)
        if sh.shape != (9, 3) or not np.isfinite(sh).all():
            raise ValueError(f"Lighting.sh must be a finite (9, 3) array, got shape {sh.shape}")
        object.__setattr__(self, "sh", sh)
        object.__setattr__(self, "key_direction", _unit3(self.key_direction, "Lighting.key_direction"))
        object.__setattr__(self, "key_color", _rgb(self.key_color, "Lighting.key_color"))
        if not (self.specular >= 0 and self.shininess > 0):
            raise ValueError(f"Lighting.specular must be >= 0 and shininess > 0, got {self.specular}, {self.shininess}")

    @classmethod
    def ambient(cls, level=1.0) -> "Lighting":
        """Uniform light from every direction: E(n) = level (a float or an RGB triple) everywhere."""
        sh = np.zeros((9, 3))
        sh[0] = _rgb(level, "ambient level") / _SH_NORM[0]
        return cls(sh)

    @classmethod
    def from_lights(cls, ambient=0.3, lights=(), specular: float = 0.0, shininess: float = 20.0) -> "Lighting":
        """Ambient light plus distant lights `lights`: (direction towards the light (3,), RGB strength).

        Each light adds strength * max(0, n.l) to E, in its 9-coefficient approximation (exact up to a few
        per cent; slightly negative sums behind a light are clamped at render time). The strongest light
        (largest summed strength) is the key light of the highlight.
        """
        base = cls.ambient(ambient)
        sh = base.sh.copy()
        key_dir, key_col = np.array([0.0, 0.0, 1.0]), np.zeros(3)
        for direction, strength in lights:
            d = _unit3(direction, "light direction")
            c = _rgb(strength, "light strength")
            sh += (sh_basis(d[None])[0] * _COSINE_BANDS)[:, None] * c[None, :]
            if c.sum() > key_col.sum():
                key_dir, key_col = d, c
        return cls(sh, key_dir, key_col, float(specular), float(shininess))

    @classmethod
    def studio(cls) -> "Lighting":
        """A fixed portrait set-up: soft ambient, a key light high on the subject's right front, a weaker
        fill from the left, a mild highlight. World frame: +y up, +z where the face looks, +x subject's left."""
        key = (_direction(-35.0, 30.0), (0.85, 0.82, 0.78))
        fill = (_direction(50.0, 10.0), (0.30, 0.31, 0.33))
        return cls.from_lights(ambient=0.32, lights=(key, fill), specular=0.06, shininess=24.0)

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Lighting":
        """A random but plausible set-up drawn from `rng`: tinted ambient 0.15-0.45, a key light anywhere
        within 110 degrees of the face's direction and -15..65 degrees of elevation (strength 0.5-1.1, warm
        to cool), with probability 0.7 a fill light from the other side (0.1-0.4), highlight 0.02-0.12."""
        tint = lambda: 1.0 + rng.uniform(-0.08, 0.08, size=3)
        ambient = rng.uniform(0.15, 0.45) * tint()
        az = rng.uniform(-110.0, 110.0)
        lights = [(_direction(az, rng.uniform(-15.0, 65.0)), rng.uniform(0.5, 1.1) * tint())]
        if rng.uniform() < 0.7:
            fill_az = -np.sign(az or 1.0) * rng.uniform(20.0, 100.0)
            lights.append((_direction(fill_az, rng.uniform(-10.0, 40.0)), rng.uniform(0.1, 0.4) * tint()))
        return cls.from_lights(ambient, lights, specular=rng.uniform(0.02, 0.12), shininess=rng.uniform(12.0, 40.0))

    def irradiance(self, normals: np.ndarray) -> np.ndarray:
        """(K, 3) float64 E(n) >= 0 at unit normals (K, 3)."""
        return np.maximum(sh_basis(normals) @ self.sh, 0.0)

    def as_dict(self) -> dict:
        """JSON-ready numbers (what a dataset records about each scene's light)."""
        return {"sh": self.sh.tolist(), "key_direction": self.key_direction.tolist(),
                "key_color": self.key_color.tolist(), "specular": self.specular, "shininess": self.shininess}


def _direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Unit vector at `azimuth_deg` about +y from +z (positive towards +x) and `elevation_deg` above the xz plane."""
    a, e = np.radians(azimuth_deg), np.radians(elevation_deg)
    return np.array([np.sin(a) * np.cos(e), np.sin(e), np.cos(a) * np.cos(e)])


# ------------------------------------------------------------------------------------------ meshes


@dataclass(frozen=True, eq=False)
class TexturedMesh:
    """A triangle mesh with per-corner texture coordinates and an albedo texture.

    vertices: (V, 3) float64 (mm); faces: (F, 3) int64; face_uvs: (F, 3, 2) float64, corner k of face t
    belongs to vertex faces[t, k] (u right, v up; values outside [0, 1] are clamped to the border);
    texture: (H, W, 3) float32 linear RGB in [0, 1], row 0 the top.
    """

    vertices: np.ndarray
    faces: np.ndarray
    face_uvs: np.ndarray
    texture: np.ndarray

    def __post_init__(self):
        v = np.ascontiguousarray(self.vertices, dtype=np.float64)
        f = np.ascontiguousarray(self.faces, dtype=np.int64)
        uv = np.ascontiguousarray(self.face_uvs, dtype=np.float64)
        tex = np.ascontiguousarray(self.texture, dtype=np.float32)
        if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0 or not np.isfinite(v).all():
            raise ValueError(f"vertices must be finite (V, 3) with V > 0, got {v.shape}")
        if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0 or f.min() < 0 or f.max() >= len(v):
            raise ValueError(f"faces must be (F, 3) ids into the {len(v)} vertices, got {f.shape}")
        if uv.shape != (len(f), 3, 2) or not np.isfinite(uv).all():
            raise ValueError(f"face_uvs must be finite ({len(f)}, 3, 2), got {uv.shape}")
        if tex.ndim != 3 or tex.shape[2] != 3 or min(tex.shape[:2]) < 1 or not np.isfinite(tex).all():
            raise ValueError(f"texture must be a finite (H, W, 3) array, got {tex.shape}")
        for name, a in (("vertices", v), ("faces", f), ("face_uvs", uv), ("texture", tex)):
            object.__setattr__(self, name, a)


@dataclass(frozen=True, eq=False)
class Rendering:
    """One rendered view.

    rgb: (H, W, 3) float32 linear RGB in [0, 1], composited over the background by coverage.
    mask: (H, W) float32 coverage in [0, 1]: the fraction of the pixel's samples that hit the mesh.
    depth: (H, W) float32 camera z (mm) averaged over the pixel's hitting samples; NaN where none hit.
    normals: (H, W, 3) float32 unit world-frame shading normals (facing the camera), averaged over the
        hitting samples; NaN where none hit.
    """

    rgb: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    normals: np.ndarray


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """(V, 3) float64 area-weighted unit vertex normals following the winding; zero where undefined."""
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    w = np.repeat(cross, 3, axis=0)
    ids = f.ravel()
    acc = np.stack([np.bincount(ids, w[:, k], minlength=len(v)) for k in range(3)], axis=1)
    n = np.linalg.norm(acc, axis=1, keepdims=True)
    return np.divide(acc, n, out=np.zeros_like(acc), where=n > 0)


def _mip_pyramid(texture: np.ndarray, min_size: int = 4) -> list[np.ndarray]:
    """Level 0 is the texture; each next level averages 2 x 2 texels (an odd last row/column is dropped)."""
    levels = [texture]
    while min(levels[-1].shape[:2]) >= 2 * min_size:
        t = levels[-1]
        h, w = t.shape[0] // 2 * 2, t.shape[1] // 2 * 2
        t = t[:h, :w]
        levels.append(0.25 * (t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]))
    return levels


def _bilinear(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """(K, 3) float64 bilinear lookups of texture (H, W, 3) at uv (K, 2), clamped to the border texels."""
    h, w = texture.shape[:2]
    x = np.clip(uv[:, 0] * w - 0.5, 0.0, w - 1.0)
    y = np.clip((1.0 - uv[:, 1]) * h - 0.5, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros(len(x), np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros(len(y), np.int64)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    t = texture
    top = t[y0, x0] * (1 - fx) + t[y0, x1] * fx
    bottom = t[y1, x0] * (1 - fx) + t[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


class TexturedRenderer:
    """Renders one textured mesh from many cameras; the ray-casting structure is built once."""

    def __init__(self, mesh: TexturedMesh):
        self.mesh = mesh
        self._caster = RayCaster(mesh.vertices, mesh.faces)
        self._vn = _vertex_normals(mesh.vertices, mesh.faces)
        self._mips = _mip_pyramid(mesh.texture.astype(np.float64))
        h, w = mesh.texture.shape[:2]
        e1 = mesh.face_uvs[:, 1] - mesh.face_uvs[:, 0]
        e2 = mesh.face_uvs[:, 2] - mesh.face_uvs[:, 0]
        self._uv_area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) * (w * h)  # texels^2

    def render(self, camera: Camera, lighting: Lighting | None = None, supersample: int = 2,
               background=(0.0, 0.0, 0.0)) -> Rendering:
        """Render the mesh as `camera` sees it.

        lighting: default `Lighting.ambient(1.0)` (the albedo as is).
        supersample: s x s rays per pixel on a regular grid (1: the pixel centres only).
        background: linear RGB (3,) in [0, 1] where rays miss.
        """
        lighting = Lighting.ambient(1.0) if lighting is None else lighting
        s = int(supersample)
        if s < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        bg = _rgb(background, "background")
        h, w = camera.height, camera.width
        pixels = self._candidates(camera)                        # only where some triangle may be seen
        dirs = _sample_dirs(camera, s, pixels) @ camera.rotation  # (K*s*s, 3), pixel-major
        ray, fid, t, d = self._caster.cast_rays(camera.position, dirs)
        per = s * s
        ray = pixels[ray // per] * per + ray % per                # sample id in the whole image
        n_samples = h * w * per
        colour = np.empty((n_samples, 3))
        colour[:] = bg
        normals = np.zeros((n_samples, 3))
        depth = np.zeros(n_samples)
        hit = np.zeros(n_samples, dtype=bool)
        if len(ray):
            c, n = self._shade(camera, s, fid, t, d, lighting)
            colour[ray], normals[ray], hit[ray] = c, n, True
            depth[ray] = t * (d @ camera.rotation[2])
        count = hit.reshape(-1, per).sum(axis=1)
        rgb = np.clip(colour.reshape(-1, per, 3).mean(axis=1), 0.0, 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.where(count > 0, depth.reshape(-1, per).sum(axis=1) / count, np.nan)
            nsum = normals.reshape(-1, per, 3).sum(axis=1)
            nlen = np.linalg.norm(nsum, axis=1, keepdims=True)
            nrm = np.where(count[:, None] > 0, nsum / np.maximum(nlen, 1e-12), np.nan)
        return Rendering(rgb=rgb.reshape(h, w, 3).astype(np.float32),
                         mask=(count / per).reshape(h, w).astype(np.float32),
                         depth=z.reshape(h, w).astype(np.float32),
                         normals=nrm.reshape(h, w, 3).astype(np.float32))

    def _candidates(self, camera: Camera) -> np.ndarray:
        """(K,) int64 sorted ids of the pixels that may see the mesh (conservative): the union of every
        triangle's projected bounding rectangle grown by one pixel, counted over a difference image and
        its 2-D cumulative sum. All pixels when a vertex lies behind the camera."""
        uv, z = camera.project(self.mesh.vertices)
        w, h = camera.width, camera.height
        if not (z > 0).all():
            return np.arange(w * h)
        tri = uv[self.mesh.faces]
        lo = np.floor(tri.min(axis=1)).astype(np.int64) - 1
        hi = np.ceil(tri.max(axis=1)).astype(np.int64) + 1
        keep = (hi[:, 0] >= 0) & (lo[:, 0] < w) & (hi[:, 1] >= 0) & (lo[:, 1] < h)
        c0, c1 = np.clip(lo[keep, 0], 0, w - 1), np.clip(hi[keep, 0], 0, w - 1) + 1
        r0, r1 = np.clip(lo[keep, 1], 0, h - 1), np.clip(hi[keep, 1], 0, h - 1) + 1
        diff = np.zeros((h + 1) * (w + 1), dtype=np.int64)
        for r, c, sign in ((r0, c0, 1), (r0, c1, -1), (r1, c0, -1), (r1, c1, 1)):
            diff += sign * np.bincount(r * (w + 1) + c, minlength=len(diff))
        count = diff.reshape(h + 1, w + 1).cumsum(axis=0).cumsum(axis=1)[:h, :w]
        return np.flatnonzero(count.reshape(-1) > 0)

    def _shade(self, camera: Camera, s: int, fid, t, d, lighting: Lighting) -> tuple[np.ndarray, np.ndarray]:
        """Shaded linear colours (K, 3) and unit shading normals (K, 3) of hits on faces fid at ray lengths t."""
        m = self.mesh
        tri = m.faces[fid]
        hit = camera.position + t[:, None] * d
        bary = barycentric(hit, m.vertices[tri], simplex=True)
        uv = np.einsum("kj,kjc->kc", bary, m.face_uvs[fid])
        albedo = self._lookup(uv, fid, camera, s)
        n = np.einsum("kj,kjc->kc", bary, self._vn[tri])
        norm = np.linalg.norm(n, axis=1, keepdims=True)
        n = np.where(norm > 1e-6, n / np.maximum(norm, 1e-12), self._caster.face_normals[fid])
        # two-sided: a surface seen from behind (the inside of an open neck, a fold) faces the camera
        n = n * np.where(np.einsum("ij,ij->i", n, d) > 0, -1.0, 1.0)[:, None]
        colour = albedo * lighting.irradiance(n)
        if lighting.specular > 0 and lighting.key_color.any():
            l = lighting.key_direction
            half = l[None, :] - d
            half /= np.maximum(np.linalg.norm(half, axis=1, keepdims=True), 1e-12)
            nh = np.clip(np.einsum("ij,ij->i", n, half), 0.0, None)
            lit = (n @ l) > 0
            colour += (lighting.specular * np.where(lit, nh ** lighting.shininess, 0.0))[:, None] * lighting.key_color
        return colour, n

    def _lookup(self, uv: np.ndarray, fid: np.ndarray, camera: Camera, s: int) -> np.ndarray:
        """Bilinear texture reads; each triangle reads the mip level where a sample covers ~1 texel."""
        if len(self._mips) == 1:
            return _bilinear(self._mips[0], uv)
        faces_hit = np.unique(fid)
        corners, _ = camera.project(self.mesh.vertices[self.mesh.faces[faces_hit]].reshape(-1, 3))
        p = corners.reshape(-1, 3, 2) * s  # image positions in sample-grid units
        e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
        screen = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = self._uv_area[faces_hit] / screen
        lod = np.floor(0.5 * np.log2(np.where(np.isfinite(ratio) & (ratio > 0), ratio, 1.0)))
        lod = np.clip(np.nan_to_num(lod, nan=0.0), 0, len(self._mips) - 1).astype(np.int64)
        level = lod[np.searchsorted(faces_hit, fid)]
        out = np.empty((len(uv), 3))
        for k in np.unique(level):
            sel = level == k
            out[sel] = _bilinear(self._mips[k], uv[sel])
        return out


def _sample_dirs(camera: Camera, s: int, pixels: np.ndarray) -> np.ndarray:
    """Unit camera-frame directions (K*s*s, 3) of s x s regular sub-pixel samples of the pixels (K,)
    (row-major ids), the samples of a pixel consecutive (row-major inside the pixel)."""
    off = (np.arange(s) + 0.5) / s - 0.5
    row, col = np.divmod(np.asarray(pixels, dtype=np.int64), camera.width)
    v = (row[:, None, None] + off[None, :, None]) * np.ones((1, 1, s))
    u = (col[:, None, None] + off[None, None, :]) * np.ones((1, s, 1))
    d = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones_like(u)], axis=-1)
    d = d.reshape(-1, 3)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def render_textured(mesh: TexturedMesh, camera: Camera, lighting: Lighting | None = None, supersample: int = 2,
                    background=(0.0, 0.0, 0.0)) -> Rendering:
    """One view of a textured mesh (see `TexturedRenderer.render`; build a renderer for many views)."""
    return TexturedRenderer(mesh).render(camera, lighting, supersample, background)


def orbit_camera(centre, radius: float, yaw_deg: float, pitch_deg: float, size: int | tuple[int, int],
                 fov_deg: float = 30.0, fill: float = 0.92) -> Camera:
    """A camera looking at `centre` (3,) from `yaw_deg` about +y (0: from +z, the face's side; positive:
    from the subject's left, +x) and `pitch_deg` above, far enough that a sphere of `radius` around the
    centre spans `fill` of the image's smaller side. Square pixels, `fov_deg` across the smaller side,
    centred principal point; world +y is up in the image.

    size: pixels, an int for a square image or (width, height).
    """
    w, h = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if not (0 < fov_deg < 180 and 0 < fill <= 1 and radius > 0):
        raise ValueError(f"need 0 < fov_deg < 180, 0 < fill <= 1 and radius > 0, got {fov_deg}, {fill}, {radius}")
    half = np.radians(fov_deg) / 2
    f = 0.5 * min(w, h) / np.tan(half)
    # the sphere's silhouette subtends asin(r / dist); it must reach fill * the half field of view
    dist = radius / np.sin(np.arctan(fill * np.tan(half)))
    c = np.asarray(centre, dtype=np.float64).reshape(3)
    eye = c + dist * _direction(yaw_deg, pitch_deg)
    return Camera(f, f, (w - 1) / 2.0, (h - 1) / 2.0, w, h, look_at(eye, c, (0.0, 1.0, 0.0)))


# ------------------------------------------------------------------------------------------ OBJ files


def read_obj_face_uvs(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Faces and per-corner texture coordinates of an OBJ file.

    Returns faces (F, 3) int64 (position ids, 0-based; polygons split into fans exactly as
    `geometry.mesh.load_mesh` splits them, so the rows line up with its faces) and face_uvs (F, 3, 2)
    float64 from the `f v/vt` records. InputError naming the file when it cannot be read or a face
    corner has no texture coordinate.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, OSError) as e:
        raise InputError(path, f"cannot read as OBJ text ({e.__class__.__name__})") from None
    n_v, vts, faces, corner_uv = 0, [], [], []
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            n_v += 1
        elif parts[0] == "vt":
            try:
                vts.append((float(parts[1]), float(parts[2]) if len(parts) > 2 else 0.0))
            except (ValueError, IndexError):
                raise InputError(path, f"line {n}: bad texture coordinate {line.strip()!r}") from None
        elif parts[0] == "f":
            ids, tids = [], []
            for tok in parts[1:]:
                fields = tok.split("/")
                if len(fields) < 2 or not fields[1]:
                    raise InputError(path, f"line {n}: face corner {tok!r} has no texture coordinate (f v/vt)")
                try:
                    i, ti = int(fields[0]), int(fields[1])
                except ValueError:
                    raise InputError(path, f"line {n}: bad face {line.strip()!r}") from None
                ids.append(i - 1 if i > 0 else n_v + i)
                tids.append(ti - 1 if ti > 0 else len(vts) + ti)
            if len(ids) < 3:
                raise InputError(path, f"line {n}: a face needs at least 3 vertices")
            for k in range(1, len(ids) - 1):
                faces.append((ids[0], ids[k], ids[k + 1]))
                corner_uv.append((tids[0], tids[k], tids[k + 1]))
    if not faces:
        raise InputError(path, "no faces")
    vt = np.asarray(vts, dtype=np.float64).reshape(-1, 2)
    tid = np.asarray(corner_uv, dtype=np.int64)
    if tid.min() < 0 or tid.max() >= len(vt):
        raise InputError(path, f"texture coordinate id out of range [1, {len(vt)}]")
    uv = vt[tid]
    if not np.isfinite(uv).all():
        raise InputError(path, "a texture coordinate is not finite")
    return np.asarray(faces, dtype=np.int64), uv


def _mtl_texture(obj: Path) -> Path | None:
    """The diffuse texture (map_Kd) named by the OBJ's first material library, if any."""
    for line in obj.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("mtllib "):
            mtl = obj.parent / line.split(None, 1)[1].strip()
            if mtl.is_file():
                for m in mtl.read_text(encoding="utf-8", errors="replace").splitlines():
                    if m.strip().startswith("map_Kd "):
                        return mtl.parent / m.strip().split(None, 1)[1].strip()
            return None
    return None


def load_texture(path: str | os.PathLike, max_size: int | None = None) -> np.ndarray:
    """An sRGB image file as a linear float32 (H, W, 3) texture in [0, 1]; larger than `max_size` on its
    long side: box-downsampled by the smallest integer factor that fits (averaged in linear light)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB"))
    except (FileNotFoundError, UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(path, f"cannot read the texture image ({e.__class__.__name__})") from None
    tex = srgb_decode(a)
    if max_size is not None and max(tex.shape[:2]) > max_size:
        k = int(np.ceil(max(tex.shape[:2]) / max_size))
        h, w = tex.shape[0] // k * k, tex.shape[1] // k * k
        tex = tex[:h, :w].reshape(h // k, k, w // k, k, 3).mean(axis=(1, 3)).astype(np.float32)
    return tex


def load_textured_obj(path: str | os.PathLike, texture: str | os.PathLike | None = None,
                      units: str = "mm") -> TexturedMesh:
    """A textured OBJ (positions, `f v/vt` faces) with its texture: `texture`, else the map_Kd of its
    material library. Vertices come from `geometry.mesh.load_mesh` (file order, scaled to mm)."""
    from neuralmorph.geometry.mesh import load_mesh

    path = Path(path)
    mesh = load_mesh(path, units=units)
    faces, uv = read_obj_face_uvs(path)
    if not np.array_equal(faces, mesh.faces):
        raise InputError(path, "faces read with texture coordinates differ from the mesh's faces")
    tex_path = Path(texture) if texture is not None else _mtl_texture(path)
    if tex_path is None:
        raise InputError(path, "no texture given and its material library names no map_Kd image")
    return TexturedMesh(mesh.vertices, mesh.faces, uv, load_texture(tex_path))


def load_james_textured(cache=None) -> TexturedMesh:
    """menpo3d's textured "james" scan (after `neuralmorph data fetch james`) in mm, axes as shipped (+y up,
    +z where the face looks); InputError when the set is not fetched."""
    from neuralmorph.data.fetch import JAMES_MM_PER_UNIT, _fetched

    folder = _fetched("james", cache)
    m = load_textured_obj(folder / "james.obj", folder / "james.jpg")
    return TexturedMesh(m.vertices * JAMES_MM_PER_UNIT, m.faces, m.face_uvs, m.texture)


def render_james(camera: Camera | None = None, size: int = 256, lighting: Lighting | None = None,
                 supersample: int = 2, yaw_deg: float = 0.0, pitch_deg: float = 0.0, cache=None,
                 background=(0.0, 0.0, 0.0)) -> Rendering:
    """menpo3d's textured "james" scan (after `neuralmorph data fetch james`), rendered with this module.

    camera: any Camera in the scan's frame (mm; +y up, +z where the face looks); None: `orbit_camera` at
    `yaw_deg` / `pitch_deg` around the scan's bounding-box centre, framing its bounding sphere in a
    `size` x `size` image. lighting: default `Lighting.studio()`. InputError when the set is not fetched.
    """
    mesh = load_james_textured(cache)
    if camera is None:
        lo, hi = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
        centre = 0.5 * (lo + hi)
        radius = float(np.linalg.norm(mesh.vertices - centre, axis=1).max())
        camera = orbit_camera(centre, radius, yaw_deg, pitch_deg, size)
    return TexturedRenderer(mesh).render(camera, Lighting.studio() if lighting is None else lighting,
                                         supersample, background)
