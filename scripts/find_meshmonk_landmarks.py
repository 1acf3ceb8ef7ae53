"""Derive iBUG-68 landmark vertex ids on the MeshMonk face topology (SIMPOP / autofacemonker template).

Run once, after `neuralmorph data fetch simpop` and `neuralmorph data fetch james`:

    python scripts/find_meshmonk_landmarks.py [--cache DIR] [--out src/neuralmorph/assets/meshmonk_landmarks.json]
        [--render DIR]

Method (all geometry, no learned detector):
1. Scale: the template ships in normalised units; its mm scale is the median similarity (Umeyama) scale
   from the template onto the 45 SIMPOP faces (same topology, so every vertex corresponds).
2. Reference landmarks: menpo3d's real "james" scan has 68 hand-placed iBUG 3D landmarks. The template
   (in mm) is fitted to the james surface by similarity ICP (trimmed point-to-point, started by matching
   the nose tips), then by a smooth non-rigid refinement (each template vertex pulled towards its closest
   james point, displacements averaged over mesh neighbours), so the template takes james's face shape.
   Each james landmark then goes to its nearest template vertex. Landmarks farther than `--max-dist` mm
   from the fitted template surface, or on the template's boundary, are outside the face mask and dropped.
3. Midline points (27 nose bridge, 30 nose tip, 33 subnasale, 51/57 lip midpoints, 62/66 inner lip
   midpoints, 8 chin) are then snapped onto the template's midline vertex nearest to the transferred
   point (the symmetry plane is fitted by reflecting the template and matching it to itself), and the
   nose tip is the most anterior midline vertex.
4. The picks are rendered on the template and on the SIMPOP mean (PNG, --render) for a visual check.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from neuralmorph.data.fetch import _fetched, load_james
from neuralmorph.geometry.mesh import load_mesh

MIDLINE = (8, 27, 28, 29, 30, 33, 51, 57, 62, 66)


def umeyama(src: np.ndarray, dst: np.ndarray, scale: bool = True):
    """Similarity (s, R, t) minimising |s R src + t - dst|^2."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, d, vt = np.linalg.svd(b.T @ a / len(src))
    e = np.eye(3)
    if np.linalg.det(u @ vt) < 0:
        e[2, 2] = -1
    r = u @ e @ vt
    s = (d * np.diag(e)).sum() / (a ** 2).sum(1).mean() if scale else 1.0
    return s, r, mu_d - s * r @ mu_s


def similarity_icp(src, dst_tree, dst, iters=60, trim=0.8):
    x = src.copy()
    total = (1.0, np.eye(3), np.zeros(3))
    for _ in range(iters):
        d, j = dst_tree.query(x)
        keep = d <= np.quantile(d, trim)
        s, r, t = umeyama(x[keep], dst[j[keep]])
        x = s * x @ r.T + t
        s0, r0, t0 = total
        total = (s * s0, r @ r0, s * r @ t0 + t)
    return x, total


def neighbours(faces, n):
    import scipy.sparse as sp
    i = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    j = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    a = sp.coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)).tocsr()
    a.data[:] = 1.0
    a = a + sp.eye(n)
    deg = np.asarray(a.sum(1)).ravel()
    return sp.diags(1 / deg) @ a


def nonrigid(x, faces, dst_tree, dst, iters=30, smooth=10, step=0.5):
    avg = neighbours(faces, len(x))
    for _ in range(iters):
        d, j = dst_tree.query(x)
        disp = dst[j] - x
        disp[d > np.quantile(d, 0.9)] = 0
        for _ in range(smooth):
            disp = avg @ disp
        x = x + step * disp
    return x


def boundary_vertices(faces):
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    u, c = np.unique(e, axis=0, return_counts=True)
    return np.unique(u[c == 1])


def render(V, F, right, up, size, points, labels, path):
    """Orthographic z-buffer render (numpy + PIL), landmarks drawn red (blue where hidden)."""
    from PIL import Image, ImageDraw

    right, up = np.asarray(right, float), np.asarray(up, float)
    fwd = np.cross(right, up)  # towards the viewer
    uv = np.stack([V @ right, V @ up], 1)
    depth = V @ fwd
    lo, hi = uv.min(0), uv.max(0)
    scale = (size - 20) / (hi - lo).max()

    def to_px(p2):
        q = (p2 - lo) * scale + 10
        return np.stack([q[..., 0], size - q[..., 1]], -1)

    xy = to_px(uv)
    n = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    shade = np.abs(n @ fwd) / (np.linalg.norm(n, axis=1) + 1e-12)
    zbuf = np.full((size, size), -np.inf)
    img = np.full((size, size, 3), 40, np.uint8)
    for t in range(len(F)):
        a, b, c = xy[F[t]]
        x0, y0 = np.maximum(0, np.floor(np.minimum(np.minimum(a, b), c))).astype(int)
        x1, y1 = np.minimum(size - 1, np.ceil(np.maximum(np.maximum(a, b), c))).astype(int)
        det = (b[1] - c[1]) * (a[0] - c[0]) + (c[0] - b[0]) * (a[1] - c[1])
        if x1 < x0 or y1 < y0 or abs(det) < 1e-12:
            continue
        gx, gy = np.meshgrid(np.arange(x0, x1 + 1) + 0.5, np.arange(y0, y1 + 1) + 0.5)
        l1 = ((b[1] - c[1]) * (gx - c[0]) + (c[0] - b[0]) * (gy - c[1])) / det
        l2 = ((c[1] - a[1]) * (gx - c[0]) + (a[0] - c[0]) * (gy - c[1])) / det
        l3 = 1 - l1 - l2
        inside = (l1 >= -1e-6) & (l2 >= -1e-6) & (l3 >= -1e-6)
        z = l1 * depth[F[t, 0]] + l2 * depth[F[t, 1]] + l3 * depth[F[t, 2]]
        iy, ix = (gy - 0.5).astype(int), (gx - 0.5).astype(int)
        upd = inside & (z > zbuf[iy, ix])
        zbuf[iy[upd], ix[upd]] = z[upd]
        img[iy[upd], ix[upd]] = int(60 + 190 * shade[t])
    im = Image.fromarray(img)
    draw = ImageDraw.Draw(im)
    for k, p in enumerate(np.asarray(points)):
        qx, qy = to_px(np.array([p @ right, p @ up]))
        seen = zbuf[int(np.clip(qy, 0, size - 1)), int(np.clip(qx, 0, size - 1))] <= p @ fwd + 0.02 * (hi - lo).max()
        draw.ellipse([qx - 3, qy - 3, qx + 3, qy + 3], fill=(255, 0, 0) if seen else (0, 120, 255))
        draw.text((qx + 4, qy - 5), str(labels[k]), fill=(255, 255, 0))
    im.save(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("src/neuralmorph/assets/meshmonk_landmarks.json"))
    ap.add_argument("--render", type=Path, default=None)
    ap.add_argument("--max-dist", type=float, default=6.0)
    args = ap.parse_args(argv)

    raw = load_mesh(_fetched("meshmonk-template", args.cache) / "template.ply")
    # SIMPOP without the landmark asset (which this script writes)
    folder = _fetched("simpop", args.cache)
    faces_mm = np.stack([load_mesh(folder / f"SIMPOP_{i:02d}.obj").vertices for i in range(1, 46)])
    scales = np.array([umeyama(raw.vertices, f)[0] for f in faces_mm])
    mm_per_unit = float(np.median(scales))
    print(f"template scale to mm: median {mm_per_unit:.4f} (range {scales.min():.4f}..{scales.max():.4f})")
    tv = raw.vertices * mm_per_unit
    F = raw.faces
    n = len(tv)

    # axes of the template as shipped: principal directions + nose direction
    c = tv - tv.mean(0)
    axes = np.linalg.svd(c, full_matrices=False)[2]
    print("template principal axes (rows):", np.round(axes, 3).tolist())

    jm, jl = load_james(args.cache)
    jv = jm.vertices
    tree = cKDTree(jv)
    # start: nose tips together (template: most anterior vertex, +z forward in both)
    x0 = tv - tv[np.argmax(tv[:, 2])] + jl[30]
    xs, (s, r, t) = similarity_icp(x0, tree, jv)
    d_sim = tree.query(xs)[0]
    print(f"similarity ICP to james: scale {s:.3f}, residual median {np.median(d_sim):.2f} mm, "
          f"rotation angle {np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))):.1f} deg")
    xn = nonrigid(xs, F, tree, jv)
    d_nr = tree.query(xn)[0]
    print(f"non-rigid: residual median {np.median(d_nr):.2f} mm, 90% {np.quantile(d_nr, .9):.2f} mm")

    ttree = cKDTree(xn)
    dist, vid = ttree.query(jl)
    bnd = set(boundary_vertices(F).tolist())
    keep = [(k, int(vid[k]), float(dist[k])) for k in range(68)
            if dist[k] <= args.max_dist and int(vid[k]) not in bnd]
    dropped = [k for k in range(68) if k not in {a for a, _, _ in keep}]
    print("dropped (outside mask / boundary):", dropped)

    # symmetry plane of the template: reflect across x, match to itself, fit the plane
    mirror = tv * np.array([-1, 1, 1])
    _, (sm, rm, tm) = similarity_icp(mirror, cKDTree(tv), tv, iters=40, trim=0.9)
    mir = sm * mirror @ rm.T + tm
    pair = cKDTree(tv).query(mir)[1]
    mids = 0.5 * (tv + tv[pair])
    nrm = tv - tv[pair]
    nrm = nrm[np.linalg.norm(nrm, axis=1) > 20]
    nrm = (nrm / np.linalg.norm(nrm, axis=1, keepdims=True))
    nrm = nrm * np.sign(nrm[:, :1])
    normal = nrm.mean(0)
    normal /= np.linalg.norm(normal)
    offset = float(np.median(mids @ normal))
    side = tv @ normal - offset
    print(f"symmetry plane normal {np.round(normal, 3).tolist()}, offset {offset:.2f} mm")
    midline = np.flatnonzero(np.abs(side) < 1.0)

    ids = dict((k, v) for k, v, _ in keep)
    how = {k: "james transfer" for k in ids}
    mtree = cKDTree(tv[midline])
    for k in MIDLINE:
        if k in ids:
            ids[k] = int(midline[mtree.query(tv[ids[k]])[1]])
            how[k] = "james transfer, snapped to midline"
    # nose tip: most anterior midline vertex (along the face direction = +z of the template)
    ids[30] = int(midline[np.argmax(tv[midline, 2])])
    how[30] = "most anterior midline vertex"

    # jaw contour points other than the chin (iBUG 8) are silhouette points whose 3D position is
    # ill-defined, and on this mask they sit at its edge: drop them
    for k in [k for k in ids if k <= 16 and k != 8]:
        del ids[k]
    # the template's mouth is closed (no opening), so the inner-lip points 65-67 land on the same
    # vertices as 61-63 (the lip contact line): keep the first of any repeated vertex
    taken: dict[int, int] = {}
    for k in sorted(ids):
        if ids[k] in taken:
            print(f"  ibug {k} repeats ibug {taken[ids[k]]}'s vertex {ids[k]}: dropped")
            del ids[k]
        else:
            taken[ids[k]] = k
    order = sorted(ids)
    result = {
        "source": "MeshMonk face template, autofacemonker 0.2.0 autofacemonker/data/template.ply "
                  "(MIT); same 7,160-vertex / 14,050-triangle topology as the SIMPOP faces of "
                  "python-shape-stats 1.0.0",
        "num_vertices": n,
        "ibug_index": order,
        "vertex_id": [ids[k] for k in order],
        "how": [how[k] for k in order],
        "method": ("iBUG-68 landmarks of menpo3d's real 'james' scan transferred to the template: "
                   "template scaled to mm, similarity ICP (trimmed) then smooth non-rigid fit onto the "
                   "james surface, nearest template vertex per landmark; points farther than "
                   f"{args.max_dist} mm or on the mask boundary dropped, jaw contour points other "
                   "than 8 dropped (silhouette points, at the mask edge), repeated vertices on the "
                   "closed mouth (65-67 = 61-63) dropped; midline points snapped to "
                   "the template's symmetry plane, nose tip = most anterior midline vertex. "
                   "scripts/find_meshmonk_landmarks.py; checked by rendering."),
        "template_mm_per_unit": round(mm_per_unit, 6),
        "template_axes": {"up": "+y", "forward": "+z (where the face looks)", "x": "+x is the subject's left",
                          "units": "normalised (multiply by template_mm_per_unit for mm)",
                          "note": "SIMPOP faces: same axis convention in mm, but each with its own pose "
                                  "and position"},
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {len(order)} landmarks to {args.out}")
    for k in order:
        print(f"  ibug {k:2d} -> vertex {ids[k]:5d}  ({how[k]})")

    if args.render:
        args.render.mkdir(parents=True, exist_ok=True)
        pts = tv[[ids[k] for k in order]]
        render(tv, F, [1, 0, 0], [0, 1, 0], 700, pts, order, args.render / "template_front.png")
        render(tv, F, [0, 0, 1], [0, 1, 0], 700, pts, order, args.render / "template_side.png")
        render(xn, F, [1, 0, 0], [0, 1, 0], 700, jl, list(range(68)), args.render / "fit_james.png")
        ref = faces_mm[0]
        mean = np.mean([(lambda srt: srt[0] * f @ srt[1].T + srt[2])(umeyama(f, ref, scale=False))
                        for f in faces_mm], axis=0)
        render(mean, F, [1, 0, 0], [0, 1, 0], 700, mean[[ids[k] for k in order]], order,
               args.render / "simpop_mean_front.png")
        render(jv, jm.faces, [1, 0, 0], [0, 1, 0], 700, jl, list(range(68)), args.render / "james.png")
    return result


if __name__ == "__main__":
    main()
