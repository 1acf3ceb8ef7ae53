"""`neuralmorph sample`, `interpolate` and `transfer`: new heads from a model's latent spaces.

`sample` of a model whose family has appearance (`has_appearance`) also writes each head's 3D Gaussians
(`sample_NNN.gaussians.ply`, the 3DGS layout) and a strip of their renders (`sample_NNN.png`: front,
three-quarter and side, `APPEARANCE_VIEW_SIZE`² each, on black), in the same folder, committed together."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from neuralmorph.atomic import atomic_dir, output_files
from neuralmorph.errors import InputError
from neuralmorph.geometry.mesh import check_mesh_suffix, save_mesh
from neuralmorph.models.base import MAX_TEMPERATURE, Latents, MorphableModel
from neuralmorph.models.latents import load_latents, save_latents
from neuralmorph.outputs import Output, Verb

APPEARANCE_VIEWS = ("front", "three_quarter", "side")
"""The views of each sample's render strip (`sample_NNN.png`) when the model has appearance."""
APPEARANCE_VIEW_SIZE = 256
"""Width and height in pixels of each view of that strip."""


@dataclass(frozen=True)
class SampleConfig(Verb):
    """Draw new heads from a model's fitted prior."""

    out_kind = "set of heads"

    model: Path
    """Model folder."""
    out: Path
    """Output folder: sample_000.ply, sample_000.json, ... (and, for a model with appearance,
    sample_000.gaussians.ply, its 3D Gaussians, and sample_000.png, their front, three-quarter and side
    renders)."""
    n: int = 8
    """Number of heads."""
    temperature: float = 1.0
    """Spread of the draws (0: the mean head, 1: the prior, <1 more typical heads)."""
    seed: int = 0
    """Random seed (same seed, same heads, on any device)."""
    device: str = "cpu"
    """Torch device."""
    resolution: int = 128
    """Grid cells per axis when the model is an implicit (SDF) family; unused by mesh families."""
    prior: Path | None = None
    """A diffusion prior trained for this model (`train prior`: its run folder or out/prior); unset: the
    model's own Gaussian prior."""
    condition: tuple[str, ...] = ()
    """SPACE=LATENTS.json: keep latent space SPACE at the code in that latents file (e.g.
    identity=fit/latents.json: expressions for one person) and draw the others given it; repeatable."""
    steps: int | None = None
    """Diffusion prior: DDIM sampling steps (unset: the prior's own default)."""

    def __post_init__(self):
        if self.n < 1:
            raise InputError("--n", f"need at least 1 head, got {self.n}")
        if self.steps is not None and self.steps < 1:
            raise InputError("--steps", f"must be at least 1, got {self.steps}")
        for item in self.condition:
            if "=" not in item or not item.split("=", 1)[0] or not item.split("=", 1)[1]:
                raise InputError("--condition", f"expected SPACE=LATENTS.json, got {item!r}")
        if not 0 <= self.temperature <= MAX_TEMPERATURE:  # NaN fails too
            raise InputError("--temperature", f"must be a finite number in [0, {MAX_TEMPERATURE:g}], got {self.temperature}")
        _check_resolution(self.resolution)


@dataclass(frozen=True)
class InterpolateConfig(Verb):
    """Heads along the straight latent path between two latents files (from fit or sample)."""

    out_kind = "set of heads"

    model: Path
    """Model folder."""
    start: Path
    """Latents file of the first head."""
    end: Path
    """Latents file of the last head."""
    out: Path
    """Output folder: interp_000.ply ... (and their latents)."""
    steps: int = 5
    """Heads along the path, both ends included."""
    device: str = "cpu"
    """Torch device."""
    resolution: int = 128
    """Grid cells per axis when the model is an implicit (SDF) family; unused by mesh families."""

    def __post_init__(self):
        if self.steps < 2:
            raise InputError("--steps", f"need at least 2 (the two ends), got {self.steps}")
        _check_resolution(self.resolution)


@dataclass(frozen=True)
class TransferConfig(Verb):
    """Put the expression of one head onto the identity of another."""

    model: Path
    """Model folder."""
    identity: Path
    """Latents file whose identity is kept."""
    expression: Path
    """Latents file whose expression is taken."""
    out: Path
    """Output mesh (.ply or .obj); its latents go next to it as .json."""
    device: str = "cpu"
    """Torch device."""
    resolution: int = 128
    """Grid cells per axis when the model is an implicit (SDF) family; unused by mesh families."""

    def __post_init__(self):
        _check_resolution(self.resolution)
        check_mesh_suffix("--out", self.out)

    def outputs(self) -> list[Output]:
        return [Output("--out", self.out, None), Output("--out (its latents)", self.out.with_suffix(".json"), None)]


@dataclass(frozen=True)
class ExportConfig(Verb):
    """Decode a latents file (or the average head) to a mesh: .ply, .obj, .stl, .off or .glb."""

    model: Path
    """Model folder."""
    out: Path
    """Mesh file; the format follows the suffix (.glb is written in metres, as glTF requires)."""
    latents: Path | None = None
    """Latents file (from fit or sample); unset: the model's average head (the prior mean)."""
    device: str = "cpu"
    """Torch device."""
    resolution: int = 128
    """Grid cells per axis when the model is an implicit (SDF) family; unused by mesh families."""

    def __post_init__(self):
        _check_resolution(self.resolution)
        check_mesh_suffix("--out", self.out)


def _check_resolution(resolution: int) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise InputError("--resolution", f"must be an integer >= 2, got {resolution!r}")


def _write_heads(model: MorphableModel, latents: Latents, folder: Path, stem: str, resolution: int,
                 overwrite: bool, appearance: bool = False) -> None:
    """Each head's mesh and latents in `folder` (a set of heads), written together; with `appearance` (a
    model that has it) also its Gaussians (`STEM_NNN.gaussians.ply`) and their render strip (`STEM_NNN.png`)."""
    meshes = model.meshes(latents, resolution=resolution)
    with atomic_dir(folder, "set of heads", overwrite) as tmp:
        for i, mesh in enumerate(meshes):
            one = {k: z[i:i + 1] for k, z in latents.items()}
            save_mesh(tmp / f"{stem}_{i:03d}.ply", mesh)
            save_latents(tmp / f"{stem}_{i:03d}.json", model, one)
            if appearance:
                _write_appearance(model, one, mesh.vertices, tmp / f"{stem}_{i:03d}")


def _write_appearance(model: MorphableModel, latents: Latents, vertices, stem: Path) -> None:
    """One head's (latents: space -> (1, K)) Gaussians as `STEM.gaussians.ply` and their renders from
    `APPEARANCE_VIEWS`, framing its mesh `vertices` (V, 3) mm, as `STEM.png`."""
    from neuralmorph.commands.render import gaussian_frames, gaussian_strip
    from neuralmorph.render import bounding_box, save_png, view_camera

    with torch.no_grad():
        gaussians = model.gaussians_of(latents)
    model.save_ply(gaussians, 0, stem.with_name(stem.name + ".gaussians.ply"))
    box = bounding_box(vertices)
    size = (APPEARANCE_VIEW_SIZE, APPEARANCE_VIEW_SIZE)
    frames = gaussian_frames(model, latents, [view_camera(v, box, size) for v in APPEARANCE_VIEWS])
    save_png(stem.with_name(stem.name + ".png"), gaussian_strip(frames))


def interpolate(a: Latents, b: Latents, steps: int) -> Latents:
    """(steps, K) codes per space on the segment from a to b (each (1, K)), ends included."""
    t = torch.linspace(0.0, 1.0, steps, device=next(iter(a.values())).device)[:, None]
    return {k: (1 - t) * a[k] + t * b[k] for k in a}


def transfer(identity_of: Latents, expression_of: Latents, identity_spaces: tuple[str, ...] = ("identity",)) -> Latents:
    """The codes of one head's `identity_spaces` (the family's: `MorphableModel.identity_spaces`) with every
    other space's codes from another."""
    return {k: (identity_of[k] if k in identity_spaces else expression_of[k]).clone() for k in identity_of}


def run_sample(cfg: SampleConfig) -> None:
    from neuralmorph.prior.latent import load_prior

    model = MorphableModel.load(cfg.model, device=cfg.device)
    prior = load_prior(model, cfg.prior)
    condition = {}
    for item in cfg.condition:
        space, path = item.split("=", 1)
        code = load_latents(path, model)
        if space not in code:
            raise InputError("--condition", f"{path} holds no {space!r} latent (it has {', '.join(code)})")
        condition[space] = code[space]
    latents = prior.sample(cfg.n, cfg.temperature, cfg.seed, condition or None, steps=cfg.steps)
    _write_heads(model, latents, cfg.out, "sample", cfg.resolution, cfg.overwrite, appearance=model.has_appearance)
    extra = " with their Gaussians and renders" if model.has_appearance else ""
    given = f", {', '.join(condition)} fixed" if condition else ""
    print(f"sampled {cfg.n} heads{extra} from the {prior.kind} prior (temperature {cfg.temperature}, seed {cfg.seed}"
          f"{given}) -> {cfg.out}")


def run_interpolate(cfg: InterpolateConfig) -> None:
    model = MorphableModel.load(cfg.model, device=cfg.device)
    path = interpolate(load_latents(cfg.start, model), load_latents(cfg.end, model), cfg.steps)
    _write_heads(model, path, cfg.out, "interp", cfg.resolution, cfg.overwrite)
    print(f"wrote {cfg.steps} heads from {cfg.start} to {cfg.end} -> {cfg.out}")


def run_transfer(cfg: TransferConfig) -> None:
    model = MorphableModel.load(cfg.model, device=cfg.device)
    if "identity" not in model.latent_sizes or len(model.latent_sizes) < 2:
        raise InputError(cfg.model, "transfer needs a model with an identity space and an expression space")
    latents = transfer(load_latents(cfg.identity, model), load_latents(cfg.expression, model), model.identity_spaces)
    mesh = model.meshes(latents, resolution=cfg.resolution)[0]
    with output_files(cfg.out, cfg.out.with_suffix(".json"), overwrite=cfg.overwrite) as (mesh_tmp, latents_tmp):
        save_mesh(mesh_tmp, mesh)
        save_latents(latents_tmp, model, latents)
    print(f"identity of {cfg.identity} + expression of {cfg.expression} -> {cfg.out}")


def run_export(cfg: ExportConfig) -> None:
    model = MorphableModel.load(cfg.model, device=cfg.device)
    latents = load_latents(cfg.latents, model) if cfg.latents else model.zero_latents(1)
    mesh = model.meshes(latents, resolution=cfg.resolution)[0]
    with output_files(cfg.out, overwrite=cfg.overwrite) as (tmp,):
        save_mesh(tmp, mesh)
    print(f"{'the average head' if cfg.latents is None else cfg.latents} -> {cfg.out}")
