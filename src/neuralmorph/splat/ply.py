"""3D Gaussian Splatting PLY files: the layout of Kerbl et al.'s reference code, which every 3DGS viewer
and tool reads.

One binary little-endian `vertex` element, one float32 property per number, in this order:

    x y z                      the means (mm, the dataset's frame)
    nx ny nz                   zeros (unused; kept because the layout has them)
    f_dc_0 f_dc_1 f_dc_2       SH band-0 coefficient of R, G, B
    f_rest_0 .. f_rest_{3(K-1)-1}   the other K - 1 coefficients, channel-major: all of R, then G, then B
    opacity                    logit(opacity)
    scale_0 scale_1 scale_2    log(scale) per axis (mm)
    rot_0 rot_1 rot_2 rot_3    the quaternion w x y z (rot_0 = w), as given (renderers normalise it)

K = (degree + 1)^2 coefficients per channel (1, 4, 9 or 16 for degrees 0-3), in the SH order of
`neuralmorph.splat.sh` (3DGS's): colour = 0.5 + SH . coefficients. The header carries the comment
`written by neuralmorph` (`neuralmorph.atomic.SIGNATURE`), so `--overwrite` may replace our files and never
anyone else's.

`save_gaussians_ply` and `load_gaussians_ply` work on activated values by default (scales in mm,
opacities in (0, 1)), converting to and from log / logit; with `activated=False` they take and return
the stored log-scales and logits themselves, which round-trip bit for bit (the activated values
round-trip to float32 precision: exp(log(s)) may move the last bit).
"""

from __future__ import annotations

import math
import os
import sys
from typing import NamedTuple

import numpy as np

from neuralmorph.atomic import SIGNATURE, output_files
from neuralmorph.errors import InputError


class GaussianArrays(NamedTuple):
    """Gaussians as arrays, float32, N of them (the argument order of `save_gaussians_ply`)."""

    means: np.ndarray       # (N, 3) mm
    scales: np.ndarray      # (N, 3) mm (activated) or log mm (raw)
    quats: np.ndarray       # (N, 4) w x y z
    opacities: np.ndarray   # (N,) in (0, 1) (activated) or logits (raw)
    sh: np.ndarray          # (N, K, 3) SH coefficients, K = (degree + 1)^2; sh[:, 0] is the DC band


_FLOAT_TYPES = {"float": "<f4", "float32": "<f4"}


def _numpy(x) -> np.ndarray:
    """float64 numpy of a numpy array, a list or a torch tensor on any device."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _array(name: str, x, shape_tail: tuple[int, ...]) -> np.ndarray:
    a = _numpy(x)
    if a.ndim != 1 + len(shape_tail) or a.shape[1:] != shape_tail:
        want = "(N" + "".join(f", {d}" for d in shape_tail) + ")"
        raise InputError(name, f"must have shape {want}, got {a.shape}")
    if not np.isfinite(a).all():
        raise InputError(name, f"holds {int((~np.isfinite(a)).sum())} NaN or infinite numbers")
    return a


def _columns(k: int) -> list[str]:
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(3 * (k - 1))]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def save_gaussians_ply(path: str | os.PathLike, means, scales, quats, opacities, sh, *, activated: bool = True,
                       overwrite: bool = False) -> None:
    """Write N Gaussians as a 3DGS PLY at `path`, atomically (see the module for the layout).

    means (N, 3) mm; scales (N, 3) mm (> 0), or log-scales when not `activated`; quats (N, 4) w x y z, not
    all zero; opacities (N,) or (N, 1) in [0, 1] (0 and 1 are stored as the nearest float32 inside the
    interval, whose logits are finite), or logits when not `activated`; sh (N, K, 3) with K a square
    (1, 4, 9, 16), or (N, 3) for degree 0. numpy or torch. `overwrite`: replace an earlier PLY of ours at
    `path` (never a file of someone else's).
    """
    means = _array("means", means, (3,))
    n = len(means)
    scales = _array("scales", scales, (3,))
    quats = _array("quats", quats, (4,))
    opacities = _numpy(opacities)
    if opacities.ndim == 2 and opacities.shape[1] == 1:
        opacities = opacities[:, 0]
    opacities = _array("opacities", opacities, ())
    sh = _numpy(sh)
    sh = _array("sh", sh[:, None, :] if sh.ndim == 2 else sh, (sh.shape[1] if sh.ndim == 3 else 1, 3))
    for name, a in (("scales", scales), ("quats", quats), ("opacities", opacities), ("sh", sh)):
        if len(a) != n:
            raise InputError(name, f"holds {len(a)} Gaussians, the means {n}")
    k = sh.shape[1]
    if k < 1 or math.isqrt(k) ** 2 != k:
        raise InputError("sh", f"holds {k} coefficients per channel; expected a square number (1, 4, 9, 16)")
    if (np.abs(quats).max(axis=1) == 0).any():
        raise InputError("quats", "a quaternion is all zeros (no rotation)")
    if activated:
        if not (scales > 0).all():
            raise InputError("scales", "must be positive (activated scales, mm); pass activated=False for log-scales")
        if not ((opacities >= 0) & (opacities <= 1)).all():
            raise InputError("opacities", "must lie in [0, 1] (activated); pass activated=False for logits")
        o = opacities.astype(np.float32)
        o = np.clip(o, np.nextafter(np.float32(0), np.float32(1)), np.nextafter(np.float32(1), np.float32(0)))
        o = o.astype(np.float64)
        stored_opacity, stored_scales = np.log(o) - np.log1p(-o), np.log(scales)
    else:
        stored_opacity, stored_scales = opacities, scales

    columns = _columns(k)
    table = np.zeros((n, len(columns)), dtype="<f4")
    table[:, 0:3] = means
    table[:, 6:9] = sh[:, 0, :]
    # channel-major: f_rest_{c * (K - 1) + j} = coefficient j + 1 of channel c
    table[:, 9:9 + 3 * (k - 1)] = sh[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * (k - 1))
    at = 9 + 3 * (k - 1)
    table[:, at] = stored_opacity
    table[:, at + 1:at + 4] = stored_scales
    table[:, at + 4:at + 8] = quats
    if not np.isfinite(table).all():
        raise InputError(path, "some numbers overflow float32 (beyond 3.4e38); check the units")
    header = ["ply", "format binary_little_endian 1.0", f"comment {SIGNATURE}, units mm",
              f"element vertex {n}", *[f"property float {c}" for c in columns], "end_header"]
    with output_files(path, overwrite=overwrite) as (tmp,):
        with open(tmp, "wb") as fh:
            fh.write(("\n".join(header) + "\n").encode("ascii"))
            fh.write(table.tobytes())


def _header(path, fh) -> tuple[int, list[tuple[str, str]]]:
    """(vertex count, [(property, numpy dtype)]) of a 3DGS PLY header; one-line InputError otherwise."""
    if fh.readline() != b"ply\n":
        raise InputError(path, "not a PLY file (it must start with the line 'ply')")
    count, props, fmt, elements = None, [], None, []
    for _ in range(10_000):
        raw = fh.readline()
        if not raw:
            raise InputError(path, "PLY header has no end_header line (truncated?)")
        try:
            words = raw.decode("ascii").split()
        except UnicodeDecodeError:
            raise InputError(path, "PLY header is not ASCII text (damaged file?)") from None
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            fmt = " ".join(words[1:])
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise InputError(path, f"bad PLY element line {' '.join(words)!r}")
            elements.append(words[1])
            if words[1] == "vertex":
                count = int(words[2])
        elif words[0] == "property":
            if elements[-1:] != ["vertex"]:
                raise InputError(path, f"PLY element {elements[-1] if elements else '(none)'} is not a 3DGS vertex "
                                       "element; a Gaussian splat file has only 'vertex'")
            if len(words) != 3 or words[1] not in _FLOAT_TYPES:
                raise InputError(path, f"property {' '.join(words[1:])!r}: every 3DGS property is a float32 scalar")
            props.append((words[2], _FLOAT_TYPES[words[1]]))
        else:
            raise InputError(path, f"unknown PLY header line {' '.join(words)!r}")
    else:
        raise InputError(path, "PLY header has no end_header line")
    if fmt != "binary_little_endian 1.0":
        raise InputError(path, f"PLY format {fmt!r}: 3DGS files are 'binary_little_endian 1.0'")
    if elements != ["vertex"] or count is None:
        raise InputError(path, f"PLY elements {elements}: a 3DGS file has one 'vertex' element")
    return count, props


def load_gaussians_ply(path: str | os.PathLike, activated: bool = True) -> GaussianArrays:
    """Read a 3DGS PLY (ours or any 3DGS tool's): float32 arrays, activated (scales in mm, opacities in
    (0, 1)) or, with `activated=False`, exactly as stored (log-scales, logits). Properties outside the
    layout (normals aside) are ignored with one warning line; a missing one, a bad header, a short or
    long body, or NaN/infinite numbers are refused with one line naming the file."""
    try:
        with open(path, "rb") as fh:
            n, props = _header(path, fh)
            body = fh.read()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a folder, not a PLY file") from None
    names = [p for p, _ in props]
    if len(set(names)) != len(names):
        raise InputError(path, "a property name repeats")
    rest = sorted((p for p in names if p.startswith("f_rest_")), key=lambda p: int(p[7:]) if p[7:].isdigit() else -1)
    if [p for p in rest] != [f"f_rest_{i}" for i in range(len(rest))]:
        raise InputError(path, f"f_rest properties must be f_rest_0..f_rest_{len(rest) - 1} without gaps")
    if len(rest) % 3 or math.isqrt(len(rest) // 3 + 1) ** 2 != len(rest) // 3 + 1:
        raise InputError(path, f"{len(rest)} f_rest properties: expected 3 (K - 1) with K a square (0, 9, 24, 45)")
    needed = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
              "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [p for p in needed if p not in names]
    if missing:
        word = "property" if len(missing) == 1 else "properties"
        raise InputError(path, f"not a 3DGS file: lacks {word} {', '.join(missing)}")
    extra = [p for p in names if p not in needed and p not in rest and p not in ("nx", "ny", "nz")]
    if extra:
        print(f"neuralmorph: warning: {path}: ignoring propert{'y' if len(extra) == 1 else 'ies'} {', '.join(extra)}",
              file=sys.stderr)
    dtype = np.dtype([(p, t) for p, t in props])
    if len(body) != n * dtype.itemsize:
        raise InputError(path, f"holds {len(body)} bytes of data; {n} Gaussians of {dtype.itemsize} bytes need "
                               f"{n * dtype.itemsize} (truncated or damaged?)")
    rec = np.frombuffer(body, dtype=dtype, count=n)

    def cols(*ps) -> np.ndarray:
        return np.stack([rec[p] for p in ps], axis=1).astype(np.float32) if ps else np.zeros((n, 0), np.float32)

    k = len(rest) // 3 + 1
    means = cols("x", "y", "z")
    sh = np.empty((n, k, 3), np.float32)
    sh[:, 0, :] = cols("f_dc_0", "f_dc_1", "f_dc_2")
    sh[:, 1:, :] = cols(*rest).reshape(n, 3, k - 1).transpose(0, 2, 1)
    opacity = rec["opacity"].astype(np.float32)
    scales = cols("scale_0", "scale_1", "scale_2")
    quats = cols("rot_0", "rot_1", "rot_2", "rot_3")
    for name, a in (("x y z", means), ("f_dc/f_rest", sh), ("opacity", opacity), ("scale", scales), ("rot", quats)):
        if not np.isfinite(a).all():
            raise InputError(path, f"{int((~np.isfinite(a)).sum())} NaN or infinite {name} values")
    if activated:
        with np.errstate(over="ignore"):
            scales = np.exp(scales.astype(np.float64)).astype(np.float32)
            opacity = (1.0 / (1.0 + np.exp(-opacity.astype(np.float64)))).astype(np.float32)
    return GaussianArrays(means, scales, quats, opacity, sh)
