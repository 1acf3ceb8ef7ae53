"""Streamed training samples for the implicit families: drawn per item, nothing precomputed on disk.

NPHM precomputes ~320 GB of surface and correspondence chunks; here every item is drawn on the fly from
small in-memory pools, as a pure function of (seed, item index), so the trainer's batches (and a resumed
run) are reproducible without any files.

Per training head (registered heads of the split, in manifest order):

* **Surface pool** — `pool_size` area-uniform points with unit normals on the head's *raw scan* (own
  topology, noise, holes), rigidly aligned onto its registered mesh (landmark Umeyama from
  `<scan>.landmarks.txt` when there is one, then trimmed ICP), or on the registered mesh itself when the
  head has no scan. Each point is labelled face / non-face by whether the nearest registered vertex lies
  in the face regions (`head_model.FACE_REGIONS`), and its normal is flipped where it disagrees with the
  registered surface's normal there (raw scans may be wound either way).
* **Registered meshes** of the head and of its subject's neutral head (shared topology) for the
  correspondence samples.

Per item (head h, draw d):

* `surface` / `surface_normals` / `surface_face`: `surface_points` pool points, a `face_fraction` of them
  from the face pool. Whose surface: the subject's neutral head (`surfaces="neutral"`, for forward
  deformation: the canonical SDF is the neutral shape) or head h itself (`surfaces="own"`, for backward
  deformation, where the SDF is supervised through the warp).
* `near`: other pool points of the same head + N(0, near_sigma_mm) per coordinate (NPHM: 2.5 mm).
* `far`: uniform in `bounds`.
* `space` / `space_sign`: `sign_points` points from a per-head pool (half uniform in `bounds`, half
  within ~`sign_band_mm` of the surface) labelled +1 outside / −1 inside / 0 unsure by the generalised
  winding number of the registered mesh (robust to its open neck: < 0.25 outside, > 0.75 inside). The
  IGR terms never say which side is out, and on scans with holes and an open neck the field is free to
  turn negative where nothing is observed (below the neck, inside the mouth); these labels pin the sign.
* `corr_neutral` / `corr_posed`: correspondence pairs between the neutral head and head h. A barycentric
  point on one mesh (area-uniform, face-weighted) is offset along that mesh's interpolated normal by
  N(0, σ); the same barycentrics and offset on the other mesh give its partner. Half the pairs start on
  the neutral mesh and half on the posed one (both directions, as NPHM), and each half is split between
  σ = corr_sigma_mm and corr_sigma_fine_mm (NPHM: 2.5 and 0.5 mm). For a neutral head both sides are
  the same points: the zero-deformation supervision of neutral scans.
* `anchors`: (A, 3) the subject's neutral registered vertices at the model's anchor ids (local family).
* `subject`, `head`: codebook rows; `neutral`: 1.0 when head h is its subject's neutral.

Everything is float32 in canonical units (`dataset.frame.to_canonical`); sizes are in the config in mm
and converted with `frame.mm_per_unit`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import igl
import numpy as np
import torch
from scipy.spatial import cKDTree

from neuralmorph.config import Config
from neuralmorph.data.dataset import HeadDataset
from neuralmorph.data.head_model import FACE_REGIONS
from neuralmorph.errors import InputError
from neuralmorph.frame import icp_similarity, umeyama
from neuralmorph.geometry.mesh import Mesh, load_mesh
from neuralmorph.geometry.sampling import sample_barycentrics, sample_surface

NEUTRAL_NAME = "neutral"
_POOL_STREAM = 1 << 20     # rng stream tag of the pools, apart from the per-item streams (seed, index)
_SIGN_STREAM = 2 << 20     # ... and of the sign-labelled space pools
_ICP_POINTS = 2000         # scan vertices used to estimate the alignment (then applied to all of them)
_ICP_ITERATIONS = 10       # from a landmark start the residual pose is tiny; 10 steps settle it to < 0.1 mm


@dataclass(frozen=True)
class ImplicitSampleConfig(Config):
    """What one training item holds and how it is drawn (sizes per item; lengths in mm)."""

    surface_points: int = 512
    """Surface points with normals per item."""
    face_fraction: float = 0.75
    """Share of the surface points (and of the correspondences) drawn from the face regions."""
    near_points: int = 512
    """Near-surface points per item (surface points + Gaussian noise)."""
    near_sigma_mm: float = 2.5
    """Std of the near-surface noise per coordinate."""
    far_points: int = 128
    """Points uniform in the bounding box per item (eikonal and far-space terms)."""
    sign_points: int = 256
    """Sign-labelled space points per item (0: none)."""
    sign_pool: int = 8192
    """Sign-labelled points kept in memory per head."""
    sign_band_mm: float = 10.0
    """Std of the offsets of the near half of the sign pool from the registered surface."""
    correspondences: int = 256
    """Neutral/posed correspondence pairs per item (even)."""
    corr_sigma_mm: float = 2.5
    """Wide offset std along the normal for half of the correspondences."""
    corr_sigma_fine_mm: float = 0.5
    """Tight offset std along the normal for the other half."""
    pool_size: int = 50_000
    """Surface points kept in memory per head."""
    draws_per_head: int = 64
    """Items per head in one pass over the dataset (its virtual length is heads × this)."""
    bounds_margin_mm: float = 20.0
    """Margin around the training heads' bounding box (far points, meshing box)."""
    use_scans: bool = True
    """Sample surfaces on the raw scans where a head has one (else always on the registered mesh)."""

    def __post_init__(self):
        where = "implicit samples"
        for name in ("surface_points", "pool_size", "draws_per_head"):
            if getattr(self, name) < 1:
                raise InputError(where, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("near_points", "far_points", "correspondences", "sign_points", "sign_pool"):
            if getattr(self, name) < 0:
                raise InputError(where, f"{name} must be >= 0, got {getattr(self, name)}")
        if self.correspondences % 4:
            raise InputError(where, f"correspondences must be a multiple of 4 (2 directions × 2 sigmas), "
                             f"got {self.correspondences}")
        if not 0.0 <= self.face_fraction <= 1.0:
            raise InputError(where, f"face_fraction must be in [0, 1], got {self.face_fraction}")
        for name in ("near_sigma_mm", "corr_sigma_mm", "corr_sigma_fine_mm", "bounds_margin_mm", "sign_band_mm"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise InputError(where, f"{name} must be a non-negative number, got {v}")


# --- pieces (pure functions) --------------------------------------------------------------------------


def face_vertex_mask(dataset: HeadDataset) -> np.ndarray:
    """(N,) bool: registered vertices in the face regions (FACE_REGIONS or a region named "face"); every
    vertex when the dataset names none of them."""
    names = set(FACE_REGIONS) | {"face"}
    mask = np.zeros(dataset.n_vertices, bool)
    for name, ids in dataset.regions.items():
        if name in names:
            mask[ids] = True
    return mask if mask.any() else np.ones(dataset.n_vertices, bool)


def subject_neutrals(dataset: HeadDataset, split: str | None = "train") -> dict[str, int]:
    """Subject -> manifest index of its neutral registered head: the one named "neutral", else the
    subject's first registered head in manifest order."""
    out: dict[str, int] = {}
    for i, h in enumerate(dataset.heads):
        if h.registered < 0 or (split is not None and h.split != split):
            continue
        if h.subject not in out or (h.expression == NEUTRAL_NAME
                                    and dataset.heads[out[h.subject]].expression != NEUTRAL_NAME):
            out[h.subject] = i
    return out


def align_scan(scan: Mesh, registered: np.ndarray, faces: np.ndarray, landmarks: np.ndarray | None = None,
               landmark_ids: np.ndarray | None = None) -> np.ndarray:
    """A raw scan's vertices moved rigidly onto its registered mesh.

    scan: the raw scan (V, 3) mm in its own pose; registered: (N, 3) mm; faces: (F, 3) int64;
    landmarks: (L, 3) mm landmark positions on the scan (or None), landmark_ids: (L,) registered ids.
    Returns (V, 3) float64 mm. Landmarks give the initial pose (else centroids are matched, which ICP
    corrects for rotations up to ~30°); ICP runs on a fixed subset of scan vertices for speed.
    """
    init = None
    if landmarks is not None and landmark_ids is not None and len(landmark_ids) >= 3 \
            and landmarks.shape == (len(landmark_ids), 3):
        init = umeyama(landmarks, registered[landmark_ids], with_scale=False)
    v = scan.vertices
    sub = v[np.linspace(0, len(v) - 1, min(len(v), _ICP_POINTS)).astype(np.int64)]
    result = icp_similarity(sub, registered, faces, init=init, with_scale=False,
                            max_iterations=_ICP_ITERATIONS if init is not None else 50)
    return result.transform.apply(v)


def surface_pool(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int, reference: np.ndarray,
                 reference_normals: np.ndarray, face_vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area-uniform surface samples labelled by their nearest reference vertex.

    vertices: (V, 3) mm, faces: (F, 3): the surface to sample (a scan or the registered mesh);
    reference: (N, 3) mm registered vertices in the same pose, reference_normals: (N, 3) their unit
    normals, face_vertices: (N,) bool face-region mask. Returns points (n, 3) float64 mm, unit normals
    (n, 3) float64 oriented like the reference surface, and is_face (n,) bool.
    """
    points, normals, _ = sample_surface(vertices, faces, n, seed)
    _, nearest = cKDTree(reference).query(points, k=1, workers=-1)
    flip = np.sum(normals * reference_normals[nearest], axis=1) < 0
    normals[flip] *= -1
    return points, normals, face_vertices[nearest]


def barycentric_pairs(source: np.ndarray, target: np.ndarray, faces: np.ndarray, source_normals: np.ndarray,
                      target_normals: np.ndarray, face_ids: np.ndarray, n: int, sigma: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n correspondences between two meshes of one topology.

    source, target: (N, 3) vertices; faces: (F, 3) int64; *_normals: (N, 3) unit vertex normals;
    face_ids: (F',) int64 faces to draw from, area-weighted on the source; sigma: offset std (same units).
    A uniform barycentric point on a drawn face of `source`, moved along the interpolated source normal
    by t ~ N(0, sigma), pairs with the same barycentrics moved by the same t along the target's normal.
    Returns (n, 3) source points and (n, 3) target points, float64.
    """
    tri = source[faces[face_ids]]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    pick, bary = sample_barycentrics(area, n, rng)
    f = faces[face_ids[pick]]
    bary = bary[:, :, None]      # (n, 3, 1)
    t = rng.normal(0.0, sigma, size=(n, 1))

    def place(v, vn):
        nrm = (vn[f] * bary).sum(1)
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
        return (v[f] * bary).sum(1) + t * nrm

    return place(source, source_normals), place(target, target_normals)


# --- the dataset --------------------------------------------------------------------------------------


class ImplicitSamples(torch.utils.data.Dataset):
    """Training items for the implicit families; see the module docstring for what an item holds.

    dataset: a HeadDataset with registered heads; split: which heads (None: all); seed: pools and items;
    anchor_ids: (A,) registered vertex ids whose neutral positions an item carries as `anchors`;
    surfaces: "neutral" or "own" (whose scan supervises the SDF); heads: optional manifest indices to
    restrict to (e.g. one head for a test). Raw scans are read from the dataset's folder when
    `config.use_scans` is on (off: the registered meshes only).

    Attributes: subjects (names, codebook order), head_ids (manifest indices, expression codebook order),
    head_subject (H,) int64, bounds (2, 3) float32 canonical, frame.
    """

    def __init__(self, dataset: HeadDataset, config: ImplicitSampleConfig = ImplicitSampleConfig(),
                 split: str | None = "train", seed: int = 0, anchor_ids: np.ndarray | None = None,
                 surfaces: str = "neutral", heads: list[int] | None = None):
        if dataset.vertices is None:
            raise InputError(dataset.where, "the implicit families need registered heads (this dataset holds raw scans only)")
        if surfaces not in ("neutral", "own"):
            raise InputError("surfaces", f"must be 'neutral' or 'own', got {surfaces!r}")
        self.config, self.seed, self.surfaces = config, int(seed), surfaces
        self.frame = dataset.frame
        self.unit = float(dataset.frame.mm_per_unit)
        neutrals = subject_neutrals(dataset, split)
        ids = [i for i, h in enumerate(dataset.heads)
               if h.registered >= 0 and (split is None or h.split == split) and (heads is None or i in heads)]
        if not ids:
            raise InputError(dataset.where, f"no registered heads in the {split!r} split")
        self.head_ids = ids
        self.subjects = sorted({dataset.heads[i].subject for i in ids}, key=lambda s: min(
            j for j in ids if dataset.heads[j].subject == s))
        self.head_subject = np.array([self.subjects.index(dataset.heads[i].subject) for i in ids], np.int64)
        self.neutral_of = [neutrals[dataset.heads[i].subject] for i in ids]   # manifest index per head
        self.is_neutral = np.array([float(n == i) for n, i in zip(self.neutral_of, ids)], np.float32)

        faces = np.asarray(dataset.faces, np.int64)
        self.faces = faces
        face_v = face_vertex_mask(dataset)
        self.face_faces = np.flatnonzero(face_v[faces].all(1))
        self.other_faces = np.setdiff1d(np.arange(len(faces)), self.face_faces)
        if len(self.face_faces) == 0:
            self.face_faces = np.arange(len(faces))

        # registered meshes (mm) and their vertex normals, for every head an item may touch
        needed = sorted(set(ids) | set(self.neutral_of))
        self._reg_mm = {i: dataset.vertices[dataset.heads[i].registered].astype(np.float64) for i in needed}
        self._reg_normals = {i: Mesh(v, faces).vertex_normals for i, v in self._reg_mm.items()}
        self._reg = {i: self._canon(v) for i, v in self._reg_mm.items()}

        train_rows = np.array([dataset.heads[i].registered for i in ids])
        v = dataset.vertices[train_rows].reshape(-1, 3)
        lo, hi = self._canon(v.min(0)), self._canon(v.max(0))
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)   # a frame may flip an axis
        m = config.bounds_margin_mm / self.unit
        self.bounds = np.stack([lo - m, hi + m]).astype(np.float32)

        self.anchor_ids = None if anchor_ids is None else np.asarray(anchor_ids, np.int64)
        if self.anchor_ids is not None and (self.anchor_ids.min() < 0 or self.anchor_ids.max() >= dataset.n_vertices):
            raise InputError("anchor_ids", f"must index the {dataset.n_vertices} registered vertices")

        pool_heads = sorted(set(self.neutral_of) if surfaces == "neutral" else set(ids))
        self.pools = {i: self._pool(dataset, i, face_v) for i in pool_heads}

    # --- construction ---------------------------------------------------------------------------------

    def _canon(self, mm: np.ndarray) -> np.ndarray:
        return self.frame.to_canonical(mm)

    def _pool(self, dataset: HeadDataset, i: int, face_v: np.ndarray):
        head = dataset.heads[i]
        reg = self._reg_mm[i]
        surf_v, surf_f = reg, self.faces
        if self.config.use_scans and head.scan:
            path = dataset.scan_path(head)
            scan = load_mesh(path)
            if len(scan.faces):
                lm_path = path.with_suffix(".landmarks.txt")
                lm = np.loadtxt(lm_path, ndmin=2) if lm_path.is_file() else None
                surf_v, surf_f = align_scan(scan, reg, self.faces, lm, dataset.landmark_ids), scan.faces
        p, n, is_face = surface_pool(surf_v, surf_f, self.config.pool_size, _seed(self.seed, _POOL_STREAM, i),
                                     reg, self._reg_normals[i], face_v)
        p = self._canon(p).astype(np.float32)
        n = (n @ self.frame.axes.T).astype(np.float32)   # normals rotate with the frame, no scale
        face_idx, other_idx = np.flatnonzero(is_face), np.flatnonzero(~is_face)
        space, sign = self._sign_pool(i)
        return {"points": p, "normals": n, "face": face_idx, "other": other_idx, "space": space, "space_sign": sign,
                "from_scan": surf_f is not self.faces, "mesh_mm": (surf_v, surf_f), "face_vertices": face_v}

    def _sign_pool(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(S, 3) float32 canonical points and (S,) float32 labels +1 outside / −1 inside / 0 unsure."""
        c = self.config
        rng = np.random.default_rng(_seed(self.seed, _SIGN_STREAM, i))
        lo, hi = self.bounds
        n_uniform = c.sign_pool // 2
        uniform = self.frame.to_mm(lo + (hi - lo) * rng.random((n_uniform, 3)))
        reg = self._reg_mm[i]
        near = reg[rng.integers(0, len(reg), c.sign_pool - n_uniform)]
        near = near + rng.normal(0.0, c.sign_band_mm, near.shape)
        q = np.concatenate([uniform, near])
        w = igl.fast_winding_number(np.ascontiguousarray(reg), np.ascontiguousarray(self.faces), np.ascontiguousarray(q))
        sign = np.where(w < 0.25, 1.0, np.where(w > 0.75, -1.0, 0.0)).astype(np.float32)
        return self._canon(q).astype(np.float32), sign

    # --- items ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.head_ids) * self.config.draws_per_head

    def head_of_item(self, index: int) -> int:
        """Position (expression codebook row) of the head an item belongs to."""
        return index % len(self.head_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        c = self.config
        rng = np.random.default_rng([self.seed, int(index)])
        k = self.head_of_item(index)
        i, neutral = self.head_ids[k], self.neutral_of[k]
        pool = self.pools[neutral if self.surfaces == "neutral" else i]

        n_face = int(round(c.face_fraction * c.surface_points)) if len(pool["other"]) else c.surface_points
        if not len(pool["face"]):
            n_face = 0
        pick = np.concatenate([pool["face"][rng.integers(0, len(pool["face"]), n_face)] if n_face else np.zeros(0, np.int64),
                               pool["other"][rng.integers(0, len(pool["other"]), c.surface_points - n_face)]
                               if c.surface_points - n_face else np.zeros(0, np.int64)])
        is_face = np.zeros(c.surface_points, np.float32)
        is_face[:n_face] = 1.0
        near_pick = rng.integers(0, len(pool["points"]), c.near_points)
        near = pool["points"][near_pick] + rng.normal(0.0, c.near_sigma_mm / self.unit, (c.near_points, 3))
        lo, hi = self.bounds
        far = lo + (hi - lo) * rng.random((c.far_points, 3))

        space_pick = rng.integers(0, len(pool["space"]), c.sign_points)
        src, dst = self._correspondences(neutral, i, rng)
        item = {
            "subject": torch.tensor(int(self.head_subject[k])),
            "head": torch.tensor(k),
            "neutral": torch.tensor(self.is_neutral[k]),
            "surface": torch.from_numpy(pool["points"][pick]),
            "surface_normals": torch.from_numpy(pool["normals"][pick]),
            "surface_face": torch.from_numpy(is_face),
            "near": torch.from_numpy(near.astype(np.float32)),
            "far": torch.from_numpy(far.astype(np.float32)),
            "space": torch.from_numpy(pool["space"][space_pick]),
            "space_sign": torch.from_numpy(pool["space_sign"][space_pick]),
            "corr_neutral": torch.from_numpy(src.astype(np.float32)),
            "corr_posed": torch.from_numpy(dst.astype(np.float32)),
        }
        if self.anchor_ids is not None:
            item["anchors"] = torch.from_numpy(self._reg[neutral][self.anchor_ids].astype(np.float32))
        return item

    def _correspondences(self, neutral: int, posed: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(Nc, 3) neutral-side and (Nc, 3) posed-side canonical points; see the module docstring."""
        c = self.config
        if c.correspondences == 0:
            return np.zeros((0, 3)), np.zeros((0, 3))
        a, b = self._reg[neutral], self._reg[posed]
        # normals in canonical axes (vertex normals of the mm meshes, rotated by the frame)
        na, nb = self._reg_normals[neutral] @ self.frame.axes.T, self._reg_normals[posed] @ self.frame.axes.T
        quarter = c.correspondences // 4
        n_face = int(round(c.face_fraction * quarter)) if len(self.other_faces) else quarter
        src, dst = [], []
        for forward in (True, False):
            for sigma in (c.corr_sigma_mm, c.corr_sigma_fine_mm):
                parts = []
                for ids, n in ((self.face_faces, n_face), (self.other_faces, quarter - n_face)):
                    if n == 0:
                        continue
                    if forward:
                        parts.append(barycentric_pairs(a, b, self.faces, na, nb, ids, n, sigma / self.unit, rng))
                    else:
                        q, p = barycentric_pairs(b, a, self.faces, nb, na, ids, n, sigma / self.unit, rng)
                        parts.append((p, q))
                src += [p for p, _ in parts]
                dst += [q for _, q in parts]
        return np.concatenate(src), np.concatenate(dst)

    # --- views for the model --------------------------------------------------------------------------

    def neutral_vertices(self) -> np.ndarray:
        """(S, N, 3) float32 canonical neutral registered vertices per subject (codebook order)."""
        first = {}
        for k, s in enumerate(self.head_subject):
            first.setdefault(int(s), self.neutral_of[k])
        return np.stack([self._reg[first[s]] for s in range(len(self.subjects))]).astype(np.float32)

    def held_out_surface(self, head: int, n: int, seed: int = 12345) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n fresh surface points of the surface that supervises head position `head` (its scan, or its
        subject's neutral scan with surfaces="neutral"), from a random stream the pools never use:
        points (n, 3) and unit normals (n, 3) float32 canonical, is_face (n,) bool. For evaluation."""
        key = self.neutral_of[head] if self.surfaces == "neutral" else self.head_ids[head]
        pool = self.pools[key]
        v, f = pool["mesh_mm"]
        p, nrm, is_face = surface_pool(v, f, n, _seed(seed, key), self._reg_mm[key], self._reg_normals[key],
                                       pool["face_vertices"])
        return (self._canon(p).astype(np.float32), (nrm @ self.frame.axes.T).astype(np.float32), is_face)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
