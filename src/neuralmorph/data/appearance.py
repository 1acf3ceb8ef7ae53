"""Synthetic skin: a deterministic albedo texture per identity, on the embedded head's UV layout.

Why: the appearance half (textured heads, the Gaussian rasterizer, image-based fitting) needs faces whose
colour varies the way real faces do, with known causes. A few low-dimensional factors (`AppearanceFactors`,
each in [0, 1]) drive most of the variation; procedural noise adds the high-frequency detail no factor
describes. `generate_appearance(seed)` returns the texture and the factors, so a learned appearance latent
can be checked against them.

Colour model (linear RGB reflectance):
    skin(m, h) = base * exp(-m * a_mel - h * a_hb): m the epidermal melanin, h the dermal blood
    (haemoglobin) factor, a_mel and a_hb per-channel absorbances. Melanin absorbs all channels (blue most),
    blood mostly green and blue. a_mel and base are set so that m = 0 gives a very fair skin (sRGB about
    (231, 200, 182) at h = 0.5) and m = 1 a very dark one (about (66, 46, 35)); uniform m spreads the
    population evenly in log reflectance. Hair (brows, stubble, short scalp hair) mixes blond, red and
    black in log space by `hair_darkness` and `hair_redness`.
Regions (fixed in UV space, so they follow any identity's shape): every texel knows its point on the
    template surface (the UV layout rasterised, barycentrics interpolating the template), and masks there
    come from the model's landmarks and region labels: lips (inside the outer lip contour, landmarks 48-59),
    brows (bands along landmarks 17-26, wider at the inner ends), the eye region (around each eye's six
    landmarks), cheeks (between the outer eye corner and the mouth corner), the beard area (below the nose
    and in front of the ears, down under the chin), the scalp (above a hairline), the eye sockets (behind
    the lids: sclera, iris, pupil) and the mouth's inside.
Noise: 3-D value noise (a hashed lattice of random values, smoothly interpolated, summed over octaves)
    evaluated at each texel's template point in millimetres, not at its (u, v): scales are then in mm on
    the face whatever the UV stretch, and the noise is continuous across UV seams.

Textures are (S, S, 3) float32 linear RGB in [0, 1], row 0 the top (texture coordinates: u right, v up),
the layout of `HeadModel.face_uvs` (MakeHuman's skin atlas; the head covers about a third of it, so
empty texels are filled with the nearest painted one to keep bilinear reads at island borders clean).
"""

from __future__ import annotations

import functools
from dataclasses import astuple, dataclass, fields
from typing import Sequence

import numpy as np

from neuralmorph.data.head_model import HeadModel
from neuralmorph.errors import InputError

__all__ = ["AppearanceFactors", "Appearance", "HeadTexturer", "generate_appearance", "sample_factors",
           "uv_islands", "skin_color", "hair_color", "ValueNoise", "uv_atlas", "DEFAULT_TEXTURE_SIZE"]

DEFAULT_TEXTURE_SIZE = 1024
"""Texels per side: the face then gets about 0.8 mm per texel (about a pixel of a 512-pixel portrait)."""


@dataclass(frozen=True)
class AppearanceFactors:
    """What drives one identity's appearance; every factor lies in [0, 1]."""

    melanin: float
    """Epidermal melanin: 0 very fair .. 1 very dark skin."""
    haemoglobin: float
    """Dermal blood: 0 sallow .. 1 ruddy (the whole face's redness)."""
    hair_darkness: float
    """Hair eumelanin (brows, stubble, scalp): 0 blond .. 1 black."""
    hair_redness: float
    """Hair pheomelanin: 0 none .. 1 red (shows in light hair)."""
    lip_tint: float
    """Lip colour strength: 0 close to the skin .. 1 deep red."""
    brow_density: float
    """Eyebrow cover: 0 bare .. 1 thick."""
    cheek_flush: float
    """Extra blood on the cheeks: 0 none .. 1 strong."""
    eye_shadow: float
    """Periorbital darkening: 0 none .. 1 strong."""
    stubble: float
    """Beard stubble cover; 0 (clean-shaven) for most identities."""
    scalp_hair: float
    """Short hair over the scalp: 0 bald .. 1 full cover."""
    freckles: float
    """Freckle density on nose, cheeks and forehead; 0 for most identities."""
    iris: float
    """Iris colour: 0 blue .. 0.5 hazel .. 1 dark brown."""

    def __post_init__(self):
        for f in fields(self):
            v = float(getattr(self, f.name))
            if not 0.0 <= v <= 1.0:  # rejects NaN too
                raise InputError(f"appearance factor {f.name}", f"must be in [0, 1], got {v}")
            object.__setattr__(self, f.name, v)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Factor names in `vector` order."""
        return tuple(f.name for f in fields(cls))

    def vector(self) -> np.ndarray:
        """(K,) float64, `names()` order."""
        return np.array(astuple(self), dtype=np.float64)

    @classmethod
    def from_vector(cls, v: Sequence[float]) -> "AppearanceFactors":
        v = [float(x) for x in v]
        if len(v) != len(fields(cls)):
            raise InputError("appearance factors", f"need {len(fields(cls))} values, got {len(v)}")
        return cls(*v)


@dataclass(frozen=True, eq=False)
class Appearance:
    """One identity's albedo texture (S, S, 3) float32 linear RGB in [0, 1] and the factors behind it."""

    texture: np.ndarray
    factors: AppearanceFactors


# ------------------------------------------------------------------------------------------ colours

# linear-RGB reflectance of skin: very fair at m = 0, very dark at m = 1 (both at h = 0.5)
_FAIR = np.array([0.80, 0.58, 0.47])
_DARK = np.array([0.055, 0.028, 0.017])
_A_MEL = np.log(_FAIR / _DARK)             # melanin absorbance per unit m: (2.68, 3.03, 3.32)
_A_HB = np.array([0.05, 0.55, 0.40])       # blood absorbance per unit h: green and blue
_BASE = _FAIR * np.exp(0.5 * _A_HB)

_BLOND = np.array([0.62, 0.45, 0.24])
_RED_HAIR = np.array([0.42, 0.12, 0.04])
_BLACK_HAIR = np.array([0.016, 0.013, 0.011])
_IRIS = (np.array([0.17, 0.24, 0.32]), np.array([0.14, 0.13, 0.06]), np.array([0.05, 0.025, 0.012]))
_SCLERA = np.array([0.60, 0.56, 0.52])
_MOUTH_INSIDE = np.array([0.10, 0.025, 0.025])


def skin_color(melanin, haemoglobin) -> np.ndarray:
    """Linear-RGB skin reflectance (..., 3) float64 for melanin and haemoglobin factors (broadcast)."""
    m = np.asarray(melanin, dtype=np.float64)[..., None]
    h = np.asarray(haemoglobin, dtype=np.float64)[..., None]
    return _BASE * np.exp(-m * _A_MEL - h * _A_HB)


def hair_color(darkness: float, redness: float) -> np.ndarray:
    """Linear-RGB hair reflectance (3,): blond mixed towards red by `redness`, then towards black by
    `darkness`, both in log reflectance."""
    light = np.exp((1 - redness) * np.log(_BLOND) + redness * np.log(_RED_HAIR))
    return np.exp((1 - darkness) * np.log(light) + darkness * np.log(_BLACK_HAIR))


def iris_color(iris: float) -> np.ndarray:
    """Linear-RGB iris colour (3,): blue (0), hazel (0.5), dark brown (1), interpolated in log space."""
    blue, hazel, brown = (np.log(c) for c in _IRIS)
    t = 2 * iris
    return np.exp(blue + t * (hazel - blue) if t <= 1 else hazel + (t - 1) * (brown - hazel))


# ------------------------------------------------------------------------------------------ factors


def sample_factors(rng: np.random.Generator, stubble_probability: float = 0.35,
                   freckle_probability: float = 0.3) -> AppearanceFactors:
    """Draw one identity's factors from `rng` (13 uniform draws, always the same number).

    Skin melanin is uniform over [0, 1]; hair and iris darken with it (dark skin rarely comes with blond
    hair or blue eyes); freckles appear with probability `freckle_probability` x (1 - melanin); stubble
    with `stubble_probability` (a caller may tie it to the head's phenotype).
    """
    u = rng.uniform(size=13)
    melanin = u[0]
    beta = lambda x, a, b: _beta_ppf(x, a, b)
    hair_dark = max(u[2] ** 0.7, 0.9 * melanin + 0.1 * u[3])
    stubble = (0.25 + 0.75 * u[9] / max(stubble_probability, 1e-12)) if u[9] < stubble_probability else 0.0
    freckle_p = freckle_probability * (1.0 - melanin)
    freckles = (0.2 + 0.8 * u[11] / max(freckle_p, 1e-12)) if u[11] < freckle_p else 0.0
    return AppearanceFactors(
        melanin=melanin,
        haemoglobin=beta(u[1], 2.5, 2.5),
        hair_darkness=hair_dark,
        hair_redness=beta(u[4], 0.8, 3.0),
        lip_tint=beta(u[5], 2.0, 2.0),
        brow_density=beta(u[6], 3.0, 2.0),
        cheek_flush=beta(u[7], 1.5, 3.0),
        eye_shadow=beta(u[8], 2.0, 3.0),
        stubble=min(stubble, 1.0),
        scalp_hair=beta(u[10], 3.0, 1.5),
        freckles=min(freckles, 1.0),
        iris=min(1.0, melanin + (1.0 - melanin) * u[12] ** 0.8),
    )


def _beta_ppf(x: float, a: float, b: float) -> float:
    """Inverse CDF of Beta(a, b) at x: turns one uniform draw into a Beta draw (scipy's, deterministic)."""
    from scipy.stats import beta

    return float(np.clip(beta.ppf(x, a, b), 0.0, 1.0))


# ------------------------------------------------------------------------------------------ noise


class ValueNoise:
    """3-D value noise: random values on the integer lattice (period 256 per axis, hashed through a
    permutation), interpolated with the quintic fade 6t^5 - 15t^4 + 10t^3; values in [-1, 1].

    rng: draws the permutation, the lattice values and a random offset (different tables, different noise).
    """

    def __init__(self, rng: np.random.Generator):
        self.perm = np.concatenate([rng.permutation(256)] * 2).astype(np.int64)
        self.values = rng.uniform(-1.0, 1.0, size=256)
        self.offset = rng.uniform(0.0, 256.0, size=3)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """(P,) float64 noise at (P, 3) points in lattice units."""
        p = np.asarray(points, dtype=np.float64) + self.offset
        i = np.floor(p).astype(np.int64)
        f = p - i
        w = f * f * f * (f * (f * 6 - 15) + 10)
        i &= 255
        out = np.zeros(len(p))
        for dx in (0, 1):
            wx = w[:, 0] if dx else 1 - w[:, 0]
            hx = self.perm[i[:, 0] + dx]
            for dy in (0, 1):
                wy = w[:, 1] if dy else 1 - w[:, 1]
                hy = self.perm[hx + i[:, 1] + dy]
                for dz in (0, 1):
                    wz = w[:, 2] if dz else 1 - w[:, 2]
                    out += wx * wy * wz * self.values[self.perm[hy + i[:, 2] + dz]]
        return out

    def fbm(self, points: np.ndarray, scale_mm: float, octaves: int = 3, gain: float = 0.5) -> np.ndarray:
        """Fractal sum over `octaves`, the first with features about `scale_mm` apart, each next twice as
        fine and `gain` times as strong; normalised so the amplitudes sum to 1 (values in [-1, 1])."""
        p = np.asarray(points, dtype=np.float64) / scale_mm
        out, amp, total = np.zeros(len(p)), 1.0, 0.0
        for k in range(octaves):
            out += amp * self(p * 2.0**k + 17.0 * k)
            total += amp
            amp *= gain
        return out / total


# ------------------------------------------------------------------------------------------ UV atlas


def uv_atlas(face_uvs: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise a UV layout: which triangle covers each texel centre, with what barycentrics.

    face_uvs: (F, 3, 2) float (u right, v up); size: texels per side. Texel (row i, column j) has its
    centre at u = (j + 0.5) / size, v = 1 - (i + 0.5) / size. Returns the covered texels' flat ids
    (P,) int64 (row-major, sorted), their face ids (P,) int64 and barycentrics (P, 3) float64. A texel on an
    edge shared by two triangles goes to the one with the higher id (any choice is exact there).
    """
    uv = np.asarray(face_uvs, dtype=np.float64)
    x = uv[..., 0] * size - 0.5                      # texel-centre coordinates: column j at x = j
    y = (1.0 - uv[..., 1]) * size - 0.5              # row i at y = i
    x0 = np.clip(np.ceil(x.min(axis=1) - 1e-9), 0, size - 1).astype(np.int64)
    x1 = np.clip(np.floor(x.max(axis=1) + 1e-9), 0, size - 1).astype(np.int64)
    y0 = np.clip(np.ceil(y.min(axis=1) - 1e-9), 0, size - 1).astype(np.int64)
    y1 = np.clip(np.floor(y.max(axis=1) + 1e-9), 0, size - 1).astype(np.int64)
    nx, ny = np.maximum(x1 - x0 + 1, 0), np.maximum(y1 - y0 + 1, 0)
    n = nx * ny
    tri = np.repeat(np.arange(len(uv)), n)
    k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)  # index inside each triangle's box
    col = x0[tri] + k % nx[tri]
    row = y0[tri] + k // nx[tri]
    ax, ay = x[tri, 0], y[tri, 0]
    e1x, e1y = x[tri, 1] - ax, y[tri, 1] - ay
    e2x, e2y = x[tri, 2] - ax, y[tri, 2] - ay
    px, py = col - ax, row - ay
    det = e1x * e2y - e1y * e2x
    ok = np.abs(det) > 1e-12
    det = np.where(ok, det, 1.0)
    b1 = (px * e2y - py * e2x) / det
    b2 = (e1x * py - e1y * px) / det
    b0 = 1.0 - b1 - b2
    eps = -1e-9
    inside = ok & (b0 >= eps) & (b1 >= eps) & (b2 >= eps)
    texel = (row * size + col)[inside]
    bary = np.clip(np.stack([b0, b1, b2], axis=1)[inside], 0.0, 1.0)
    bary /= bary.sum(axis=1, keepdims=True)
    tri = tri[inside]
    # one triangle per texel: the last occurrence in (texel, triangle) order, i.e. the highest face id
    order = np.lexsort((tri, texel))
    texel, tri, bary = texel[order], tri[order], bary[order]
    last = np.r_[texel[1:] != texel[:-1], True]
    return texel[last], tri[last], bary[last]


def uv_islands(faces: np.ndarray, face_uvs: np.ndarray) -> np.ndarray:
    """(F,) int64 UV island of every face: faces are connected when they share an edge whose two corners
    carry the same texture coordinates in both (a seam, where they differ, separates islands). Islands
    are numbered by their first face."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    f = np.asarray(faces, dtype=np.int64)
    q = np.round(np.asarray(face_uvs, dtype=np.float64).reshape(-1, 2) * 2**20).astype(np.int64)
    _, corner = np.unique(np.stack([f.ravel(), q[:, 0], q[:, 1]], axis=1), axis=0, return_inverse=True)
    corner = corner.reshape(-1, 3)
    edges = np.sort(np.concatenate([corner[:, [0, 1]], corner[:, [1, 2]], corner[:, [2, 0]]]), axis=1)
    owner = np.tile(np.arange(len(f)), 3)
    order = np.lexsort((edges[:, 1], edges[:, 0]))
    edges, owner = edges[order], owner[order]
    same = (edges[1:] == edges[:-1]).all(axis=1)
    a, b = owner[:-1][same], owner[1:][same]
    _, label = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(len(f), len(f))), directed=False)
    first = np.full(label.max() + 1, len(f))
    np.minimum.at(first, label, np.arange(len(f)))
    rank = np.argsort(np.argsort(first))
    return rank[label].astype(np.int64)


def _pocket_islands(model: HeadModel, islands: np.ndarray) -> tuple[list[int], int | None]:
    """The UV islands of the two eye sockets and of the mouth's inside: the small islands (not the largest)
    whose vertex centroid lies nearest a point 15 mm behind each eye's landmarks / behind the lip contact,
    within 30 mm; an island not found is left out."""
    v = model.vertices.astype(np.float64)
    L = v[model.landmark_ids]
    sizes = np.bincount(islands)
    cands = [k for k in range(len(sizes)) if k != int(np.argmax(sizes))]
    centroid = {k: v[np.unique(model.faces[islands == k])].mean(axis=0) for k in cands}
    back = np.array([0.0, 0.0, -15.0])

    def nearest(point):
        best = min(cands, key=lambda k: np.linalg.norm(centroid[k] - point), default=None)
        return best if best is not None and np.linalg.norm(centroid[best] - point) < 30.0 else None

    eyes = [nearest(L[36:42].mean(axis=0) + back), nearest(L[42:48].mean(axis=0) + back)]
    return [k for k in eyes if k is not None], nearest(L[60:68].mean(axis=0) + back)


# ------------------------------------------------------------------------------------------ regions


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _polygon_signed_distance(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Signed distance (P,) of 2-D points (P, 2) to a closed polygon (K, 2): positive inside."""
    a, b = poly, np.roll(poly, -1, axis=0)
    ab = b - a
    d = np.full(len(pts), np.inf)
    inside = np.zeros(len(pts), dtype=bool)
    for k in range(len(poly)):
        ap = pts - a[k]
        t = np.clip(ap @ ab[k] / max(ab[k] @ ab[k], 1e-12), 0.0, 1.0)
        d = np.minimum(d, np.linalg.norm(ap - t[:, None] * ab[k], axis=1))
        # crossing number: the edge straddles the point's height and lies to its right
        cond = (a[k, 1] > pts[:, 1]) != (b[k, 1] > pts[:, 1])
        with np.errstate(divide="ignore", invalid="ignore"):
            xc = a[k, 0] + (pts[:, 1] - a[k, 1]) * ab[k, 0] / ab[k, 1]
        inside ^= cond & (pts[:, 0] < xc)
    return np.where(inside, d, -d)


def _polyline_distance(pts: np.ndarray, line: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance (P,) of points (P, 3) to an open polyline (K, 3) and the arc-length fraction (P,) in [0, 1]
    of the nearest point along it."""
    seg = np.diff(line, axis=0)
    lengths = np.linalg.norm(seg, axis=1)
    start = np.r_[0.0, np.cumsum(lengths)]
    best, where = np.full(len(pts), np.inf), np.zeros(len(pts))
    for k in range(len(seg)):
        ap = pts - line[k]
        t = np.clip(ap @ seg[k] / max(seg[k] @ seg[k], 1e-12), 0.0, 1.0)
        d = np.linalg.norm(ap - t[:, None] * seg[k], axis=1)
        closer = d < best
        best = np.where(closer, d, best)
        where = np.where(closer, (start[k] + t * lengths[k]) / start[-1], where)
    return best, where


def _region_masks(model: HeadModel, pos: np.ndarray, nrm: np.ndarray, label: np.ndarray,
                  island: np.ndarray) -> dict[str, np.ndarray]:
    """Soft masks (P,) float64 in [0, 1] at texel template points pos (P, 3) mm with normals nrm (P, 3),
    region labels (P,) and UV islands (P,): see the module docstring for what each covers."""
    L = model.vertices[model.landmark_ids].astype(np.float64)
    x, y, z, nz = pos[:, 0], pos[:, 1], pos[:, 2], nrm[:, 2]
    names = model.region_names
    is_region = lambda *rs: np.isin(label, [names.index(r) for r in rs])
    eye_islands, mouth_island = _pocket_islands(model, uv_islands(model.faces, model.face_uvs))
    masks = {}

    # the eye sockets and the mouth's inside (pockets behind the lids and lips) are UV islands of their own
    masks["mouth_inside"] = (island == mouth_island).astype(np.float64)
    pocket = np.isin(island, eye_islands) | (island == mouth_island)

    # lips: inside the outer lip contour seen from the front, the lower contour 2.5 mm lower (landmarks
    # 55-59 sit on the lower lip's face rather than its lower border), not in the pockets
    poly = L[48:60, :2].copy()
    poly[7:12, 1] -= 2.5
    sd = _polygon_signed_distance(pos[:, :2], poly)
    masks["lips"] = _smoothstep(-0.8, 0.8, sd) * ~pocket

    # brows: bands along landmarks 17-21 (subject's right, outer -> inner) and 26-22 (left, outer -> inner),
    # about 4.5 mm half-height at the inner end tapering to 2 mm at the outer end
    brow = np.zeros(len(pos))
    for ids in (range(17, 22), range(26, 21, -1)):
        line = L[list(ids)] + np.array([0.0, 1.0, 0.0])
        d, t = _polyline_distance(pos, line)
        half = 2.0 + 2.5 * t
        brow = np.maximum(brow, 1.0 - _smoothstep(half - 1.2, half + 1.2, d))
    masks["brows"] = brow * (nz > 0.0)

    # eyes: around each eye's six landmarks (below a little more than above: the lower lids darken);
    # the socket behind the lids (no eyeball in the mesh) is painted as an eye: sclera, iris, pupil
    around, socket, iris, pupil = (np.zeros(len(pos)) for _ in range(4))
    for ids in (range(36, 42), range(42, 48)):
        e = L[list(ids)]
        c = e.mean(axis=0)
        half_w = 0.5 * np.linalg.norm(e[3] - e[0])
        dx, dy = (x - c[0]) / (1.3 * half_w), (y - (c[1] - 2.0)) / (0.9 * half_w)
        front = _smoothstep(c[2] - 12.0, c[2] - 6.0, z)
        around = np.maximum(around, np.exp(-(dx * dx + dy * dy)) * front * (nz > -0.2))
        inside = (np.isin(island, eye_islands) & (np.sign(x) == np.sign(c[0]))).astype(np.float64)
        socket = np.maximum(socket, inside)
        r = np.hypot(x - 0.5 * (e[0, 0] + e[3, 0]), y - c[1])  # iris centred between the eye corners
        iris = np.maximum(iris, inside * (1.0 - _smoothstep(5.0, 5.8, r)))
        pupil = np.maximum(pupil, inside * (1.0 - _smoothstep(1.8, 2.4, r)))
    masks["eye_region"] = around * (1.0 - socket)
    masks["eye_socket"], masks["iris"], masks["pupil"] = socket, iris, pupil

    # cheeks: between the outer eye corner and the mouth corner, pushed outwards
    cheek = np.zeros(len(pos))
    for eye, mouth in ((36, 48), (45, 54)):
        cx = 0.5 * (L[eye, 0] + L[mouth, 0]) * 1.3
        cy = 0.5 * (L[eye, 1] + L[mouth, 1])
        cheek = np.maximum(cheek, np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 13.0**2)))
    masks["cheeks"] = cheek * _smoothstep(0.1, 0.4, nz) * (1.0 - masks["lips"])

    # the nose tip and the ears carry a little more blood
    masks["nose_tip"] = np.exp(-np.sum((pos - L[30]) ** 2, axis=1) / (2 * 7.0**2))
    masks["ears"] = is_region("ears").astype(np.float64)

    # beard: below a line from under the nose out to the sideburns in front of the ears, down under the
    # chin; not on the lips or inside the mouth
    ax = np.abs(x)
    y_top = np.interp(ax, [0.0, abs(L[48, 0]) + 6.0, 50.0, abs(L[0, 0]) - 2.0],
                      [L[33, 1] - 1.5, L[33, 1] - 3.0, L[31, 1] + 2.0, L[0, 1] - 10.0])
    beard = _smoothstep(y_top + 2.0, y_top - 2.0, y)
    beard *= _smoothstep(L[8, 1] - 58.0, L[8, 1] - 45.0, y)      # down to under the chin
    beard *= _smoothstep(L[0, 2] + 2.0, L[0, 2] + 10.0, z)       # in front of the ears
    beard *= (1.0 - _smoothstep(-2.5, -0.5, sd)) * ~pocket * (1.0 - masks["ears"])
    masks["beard"] = beard

    # scalp: above a hairline that runs from the forehead (30 mm above the brows) over the ears to the nape
    brow_top = L[17:27, 1].max()
    y_hair = np.interp(z, [-60.0, 0.0, 40.0, 75.0, 105.0, 130.0],
                       [L[8, 1] + 45.0, L[8, 1] + 55.0, L[0, 1] + 5.0, L[0, 1] + 15.0, brow_top + 22.0,
                        brow_top + 30.0])
    masks["scalp"] = _smoothstep(y_hair - 3.0, y_hair + 3.0, y) * (1.0 - masks["ears"])

    # freckles: the sun-exposed middle of the face
    c = L[28]
    masks["freckle_area"] = (np.exp(-((x - c[0]) ** 2 / (2 * 30.0**2) + (y - c[1]) ** 2 / (2 * 28.0**2)))
                             * _smoothstep(0.2, 0.5, nz) * (1.0 - masks["lips"]) * (1.0 - around)
                             * (1.0 - brow))
    return masks


# ------------------------------------------------------------------------------------------ painter


class HeadTexturer:
    """Paints albedo textures on a head model's UV layout; the layout and region masks are computed once.

    model: default the embedded head; size: texels per side.
    """

    def __init__(self, model: HeadModel | None = None, size: int = DEFAULT_TEXTURE_SIZE):
        model = model or HeadModel.load()
        if model.face_uvs is None:
            raise InputError("head model", "has no texture coordinates (face_uvs); rebuild its asset")
        if not 16 <= int(size) <= 8192:
            raise InputError("texture size", f"must be in [16, 8192] texels, got {size}")
        self.model, self.size = model, int(size)
        texel, fid, bary = uv_atlas(model.face_uvs, self.size)
        tri = model.faces[fid]
        v = model.vertices.astype(np.float64)
        self.texels = texel
        self.positions = np.einsum("pk,pkc->pc", bary, v[tri])
        n = np.einsum("pk,pkc->pc", bary, _vertex_normals(v, model.faces)[tri])
        self.normals = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        labels = model.region_labels[tri[np.arange(len(tri)), bary.argmax(axis=1)]]
        island = uv_islands(model.faces, model.face_uvs)[fid]
        self.masks = _region_masks(model, self.positions, self.normals, labels, island)
        # every empty texel copies its nearest painted texel (bilinear reads at island borders stay clean)
        from scipy.ndimage import distance_transform_edt

        empty = np.ones(self.size * self.size, dtype=bool)
        empty[texel] = False
        _, (ri, ci) = distance_transform_edt(empty.reshape(self.size, self.size), return_indices=True)
        nearest = (ri * self.size + ci).reshape(-1)
        slot = np.full(self.size * self.size, -1, dtype=np.int64)
        slot[texel] = np.arange(len(texel))
        self._fill = slot[nearest]

    def generate(self, seed: int | Sequence[int], stubble_probability: float = 0.35,
                 factors: AppearanceFactors | None = None) -> Appearance:
        """The appearance of identity `seed` (an int or a sequence of ints, as numpy's default_rng takes):
        factors drawn first (unless given), then the noise tables, from one generator."""
        rng = np.random.default_rng(seed)
        drawn = sample_factors(rng, stubble_probability)
        return Appearance(self.paint(factors or drawn, rng), factors or drawn)

    def paint(self, f: AppearanceFactors, rng: np.random.Generator) -> np.ndarray:
        """(S, S, 3) float32 texture for factors `f`, the noise drawn from `rng`."""
        p, mk = self.positions, self.masks
        blotch, pores, fine, strands, freckle_noise, lip_lines = (ValueNoise(rng) for _ in range(6))
        # blood and pigment vary slowly over the face; the nose tip, cheeks and ears are redder
        slow = blotch.fbm(p, 30.0, octaves=3)
        h = f.haemoglobin + 0.12 * slow + 0.55 * f.cheek_flush * mk["cheeks"] + 0.25 * mk["nose_tip"] + 0.2 * mk["ears"]
        m = f.melanin + 0.03 * blotch.fbm(p + 500.0, 12.0, octaves=2)
        skin = skin_color(np.clip(m, 0.0, 1.0), np.clip(h, 0.0, 1.3))
        # pores and fine texture: a few per cent of multiplicative detail at the texel scale
        skin *= np.exp(0.06 * pores.fbm(p, 1.6, octaves=2) + 0.03 * fine.fbm(p, 5.0, octaves=2))[:, None]
        # periorbital darkening
        skin *= np.exp(-f.eye_shadow * mk["eye_region"][:, None] * np.array([0.35, 0.42, 0.30]))
        if f.freckles > 0:
            spots = _smoothstep(0.55 - 0.45 * f.freckles, 0.75 - 0.45 * f.freckles, freckle_noise.fbm(p, 2.2, octaves=2))
            skin *= np.exp(-(spots * mk["freckle_area"])[:, None] * np.array([0.25, 0.45, 0.6]))
        # lips: redder and darker than the skin, with faint vertical lines
        lip = skin * np.exp(-(0.15 + 0.55 * f.lip_tint) * np.array([0.15, 1.0, 0.75]))
        lip *= np.exp(0.05 * lip_lines(p / np.array([0.6, 4.0, 0.6])))[:, None]
        out = skin + mk["lips"][:, None] * (lip - skin)
        # hair: brows, stubble, short scalp hair, all in the identity's hair colour
        hair = hair_color(f.hair_darkness, f.hair_redness)
        strand = 0.5 + 0.5 * strands(p / np.array([2.5, 0.5, 2.5]))
        cover = np.clip(f.brow_density * mk["brows"] * (0.45 + 0.7 * strand), 0.0, 1.0)
        if f.stubble > 0:
            dots = _smoothstep(0.1 - 0.6 * f.stubble, 0.4 - 0.6 * f.stubble, fine.fbm(p * 2.0 + 300.0, 1.0, octaves=1))
            cover = np.maximum(cover, 0.85 * f.stubble * mk["beard"] * dots)
        cover = np.maximum(cover, np.clip(f.scalp_hair**0.6 * mk["scalp"] * (0.6 + 0.6 * strand), 0.0, 1.0))
        out += cover[:, None] * (hair - out)
        # the eye sockets: sclera, iris, pupil (in the lids' shade); the mouth's dark inside
        eye = _SCLERA + mk["iris"][:, None] * (iris_color(f.iris) - _SCLERA)
        eye = eye * (1.0 - 0.95 * mk["pupil"])[:, None] * 0.8
        out += mk["eye_socket"][:, None] * (eye - out)
        out += mk["mouth_inside"][:, None] * (_MOUTH_INSIDE - out)
        tex = np.clip(out, 0.0, 1.0)[self._fill]
        return tex.reshape(self.size, self.size, 3).astype(np.float32)


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    w = np.repeat(cross, 3, axis=0)
    acc = np.stack([np.bincount(f.ravel(), w[:, k], minlength=len(v)) for k in range(3)], axis=1)
    return acc / np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-12)


@functools.lru_cache(maxsize=4)
def _embedded_texturer(size: int) -> HeadTexturer:
    return HeadTexturer(None, size)


def generate_appearance(seed: int | Sequence[int], size: int = DEFAULT_TEXTURE_SIZE,
                        stubble_probability: float = 0.35, model: HeadModel | None = None) -> Appearance:
    """One identity's albedo texture and factors on the embedded head's UV layout (or `model`'s); the
    same seed always gives the same arrays. The layout and masks are cached per size."""
    texturer = _embedded_texturer(int(size)) if model is None else HeadTexturer(model, size)
    return texturer.generate(seed, stubble_probability)
