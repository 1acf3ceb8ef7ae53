"""`appearance`: 3D Gaussians bound to a mesh model's triangles, coloured by an identity field.

Re-derived from the ideas of Identity Field Learning (an identity code drives a generator in UV space
whose maps give each Gaussian its attributes) and GaussianAvatars (each Gaussian lives in its parent
triangle's frame, so the mesh's identity, expression and pose move it), not from their code:

    geometry latents ─ mesh family (pca | regional, trained, copied in) ─ vertices (B, V, 3) mm
    appearance code z (B, D) ─ UVGenerator ─ maps (B, C, R, R) ─ read at each site's UV ─ deltas (B, G, C)
    attributes = per-Gaussian base + deltas:
        offset along the normal, local rotation, log-scale (in units of the triangle's size), opacity, SH colour
    binding (fixed layout: G sites area-uniform on the template) ─ means, rotations, scales in mm

Training (`training_loss`) is an auto-decoder over posed images: one code per training subject, every
image rendered on the registered head it shows (its true geometry, so appearance never absorbs the mesh
family's error) and compared with 3DGS's loss, (1 − w) L1 + w (1 − SSIM), plus an alpha-vs-mask term,
GaussianAvatars' hinges on offsets and scales, and a small pull of the codes to zero. After training a
Gaussian prior is fitted to the codes, so `sample` draws new people: geometry from the mesh family's
prior, appearance from this one.

Latent spaces: the mesh family's (e.g. identity, expression) plus `appearance`. `meshes`, `decode` and
`project` are the mesh family's; `gaussians` and `render` add the appearance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.errors import InputError
from neuralmorph.geometry.camera import Camera
from neuralmorph.geometry.mesh import Mesh
from neuralmorph.models.appearance.binding import bind, sample_layout, sample_maps
from neuralmorph.models.appearance.data import ImageTrainData
from neuralmorph.models.appearance.generator import UVGenerator
from neuralmorph.models.base import Latents, ModelConfig, MorphableModel, RegisteredModel, register
from neuralmorph.splat.optimize import photometric_loss
from neuralmorph.splat.rasterize import rasterize
from neuralmorph.training import TrainerConfig

APPEARANCE = "appearance"
"""The name of the appearance latent space."""


@dataclass(frozen=True)
class AppearanceConfig(ModelConfig):
    """Sizes, losses and learning rates of the appearance family."""

    geometry: str = ""
    """The trained mesh model (a pca or regional model folder) whose heads carry the Gaussians; copied
    into this model, so the folder is not needed afterwards."""
    gaussians: int = 20_000
    """Gaussians on the head: sites drawn area-uniformly on the template surface, fixed."""
    latent_size: int = 32
    """Size of the identity appearance code."""
    uv_resolution: int = 64
    """Side of the generator's UV maps (a power of two >= 8)."""
    generator_channels: int = 64
    """Channels of the generator's widest layer."""
    sh_degree: int = 1
    """Spherical-harmonics degree of the colours (0: one RGB colour per Gaussian, view-independent)."""
    layout_seed: int = 0
    """Seed of the Gaussian sites on the template."""
    ssim_weight: float = 0.2
    """Weight of (1 - SSIM) in the photometric loss; the rest is L1."""
    mask_weight: float = 0.1
    """Weight of the L1 between rendered alpha and the image's mask."""
    offset_weight: float = 0.01
    """Hinge on offsets beyond one triangle size along the normal (GaussianAvatars' position term)."""
    scale_weight: float = 1.0
    """Hinge on scales beyond `scale_limit` times their initial size (GaussianAvatars' scale term, relative
    to each site's start because sites are spread by area, not one per triangle)."""
    scale_limit: float = 2.0
    """How far a Gaussian may grow beyond its initial scale before the hinge acts."""
    code_weight: float = 1e-3
    """Pull of the training codes towards zero (mean squared code), so the prior has a scale."""
    base_lr: float = 5e-3
    """Peak learning rate of the per-Gaussian base attributes (the networks use the trainer's --lr)."""
    code_lr: float = 1e-2
    """Peak learning rate of the training codes."""

    def __post_init__(self):
        def need(ok: bool, flag: str, problem: str):
            if not ok:
                raise InputError(f"--model.{flag}", problem)

        need(self.gaussians >= 16, "gaussians", f"must be at least 16, got {self.gaussians}")
        need(self.latent_size >= 1, "latent-size", f"must be at least 1, got {self.latent_size}")
        need(self.uv_resolution >= 8 and self.uv_resolution & (self.uv_resolution - 1) == 0, "uv-resolution",
             f"must be a power of two >= 8, got {self.uv_resolution}")
        need(self.generator_channels >= 8, "generator-channels", f"must be at least 8, got {self.generator_channels}")
        need(0 <= self.sh_degree <= 3, "sh-degree", f"must be 0..3, got {self.sh_degree}")
        need(0 <= self.ssim_weight <= 1, "ssim-weight", f"must be in [0, 1], got {self.ssim_weight}")
        for name in ("mask_weight", "offset_weight", "scale_weight", "code_weight"):
            v = getattr(self, name)
            need(math.isfinite(v) and v >= 0, name.replace("_", "-"), f"must be a number >= 0, got {v}")
        need(math.isfinite(self.scale_limit) and self.scale_limit > 0, "scale-limit",
             f"must be a number > 0, got {self.scale_limit}")
        for name in ("base_lr", "code_lr"):
            v = getattr(self, name)
            need(math.isfinite(v) and v > 0, name.replace("_", "-"), f"must be a number > 0, got {v}")


class Gaussians(NamedTuple):
    """A batch of heads' Gaussians, ready for `splat.rasterize`."""

    means: torch.Tensor      # (B, G, 3) mm
    quats: torch.Tensor      # (B, G, 4) unit, w x y z
    scales: torch.Tensor     # (B, G, 3) mm, standard deviations
    opacities: torch.Tensor  # (B, G) in (0, 1)
    sh: torch.Tensor         # (B, G, K, 3) SH coefficients, K = (sh_degree + 1)²


@register
class AppearanceModel(RegisteredModel):
    """Gaussians bound to a mesh family's triangles, their attributes from an identity code's UV maps."""

    family = "appearance"
    summary = ("3D Gaussians bound to a trained mesh model's triangles, coloured by an identity field "
               "(Identity Field Learning / GaussianAvatars); trained on posed images (`--model.geometry MODEL`).")
    Config = AppearanceConfig
    has_appearance = True
    identity_spaces = ("identity", APPEARANCE)  # a person's look travels with their identity

    def __init__(self, config: AppearanceConfig, geometry: RegisteredModel, layout_faces: np.ndarray,
                 layout_bary: np.ndarray, layout_uv: np.ndarray, subjects: list[str]):
        sizes = {**geometry.latent_sizes, APPEARANCE: config.latent_size}
        super().__init__(config, sizes, geometry.faces.cpu().numpy(), geometry.frame,
                         geometry.landmark_ids.cpu().numpy(), geometry.region_names,
                         geometry.region_weights.cpu().numpy() if len(geometry.region_weights) else None)
        self.mesh_model = geometry.requires_grad_(False)  # fixed: appearance trains on the images' own heads
        self.projection = geometry.projection
        self.subjects = list(subjects)
        for name in geometry.latent_sizes:  # the mesh family's priors are this model's, shared
            self.prior[name] = geometry.prior[name]
        g = len(layout_faces)
        self.register_buffer("layout_faces", torch.as_tensor(np.array(layout_faces, np.int64)))
        self.register_buffer("layout_bary", torch.as_tensor(np.array(layout_bary, np.float32)))
        self.register_buffer("layout_uv", torch.as_tensor(np.array(layout_uv, np.float32)))
        k = (config.sh_degree + 1) ** 2
        self.sh_coeffs = k
        self.base_offset = nn.Parameter(torch.zeros(g))
        self.base_quat = nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(g, 1))
        self.base_log_scale = nn.Parameter(torch.zeros(g, 3))
        self.register_buffer("initial_log_scale", torch.zeros(g, 3))  # the sites' starting scales (the hinge's)
        self.base_opacity = nn.Parameter(torch.full((g,), math.log(0.9 / 0.1)))
        self.base_sh = nn.Parameter(torch.zeros(g, k, 3))
        self.generator = UVGenerator(config.latent_size, 1 + 4 + 3 + 1 + 3 * k, config.uv_resolution,
                                     config.generator_channels)
        self.codes = nn.Parameter(torch.randn(len(subjects), config.latent_size,
                                              generator=torch.Generator().manual_seed(config.layout_seed)) * 0.01)

    # --- geometry: the mesh family's ---------------------------------------------------------------

    def _geometry_latents(self, latents: Latents) -> Latents:
        return {n: latents[n] for n in self.mesh_model.latent_sizes}

    def decode(self, latents: Latents) -> torch.Tensor:
        return self.mesh_model.decode(self._geometry_latents(latents))

    def meshes(self, latents: Latents, resolution: int = 128) -> list[Mesh]:
        return self.mesh_model.meshes(self._geometry_latents(latents), resolution)

    def project(self, vertices: torch.Tensor, steps: int = 100, prior_weight: float | None = None) -> Latents:
        out = self.mesh_model.project(vertices, steps, prior_weight)
        out[APPEARANCE] = self.prior[APPEARANCE].mean.expand(len(vertices), -1).clone()
        return out

    # --- appearance ----------------------------------------------------------------------------------

    def local_attributes(self, code: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-Gaussian attributes of appearance codes (B, D) in their triangles' frames: offset (B, G)
        along the normal and log-scales (B, G, 3), both in triangle sizes; quaternions (B, G, 4) (any
        norm); opacity logits (B, G); SH coefficients (B, G, K, 3). Base + the generator's deltas."""
        k = self.sh_coeffs
        d = sample_maps(self.generator(code), self.layout_uv)  # (B, G, C)
        offset, quat, log_scale, opacity, sh = torch.split(d, [1, 4, 3, 1, 3 * k], dim=-1)
        return (self.base_offset + offset[..., 0], self.base_quat + quat, self.base_log_scale + log_scale,
                self.base_opacity + opacity[..., 0], self.base_sh + sh.reshape(*sh.shape[:2], k, 3))

    def bound(self, attributes: tuple[torch.Tensor, ...], vertices: torch.Tensor) -> Gaussians:
        """`local_attributes` on heads vertices (B, V, 3) float32 mm -> Gaussians in mm."""
        offset, quat, log_scale, opacity, sh = attributes
        means, quats, scales = bind(vertices, self.faces, self.layout_faces, self.layout_bary, offset, quat, log_scale)
        return Gaussians(means, quats, scales, torch.sigmoid(opacity), sh)

    def gaussians(self, code: torch.Tensor, vertices: torch.Tensor) -> Gaussians:
        """The Gaussians of appearance codes (B, D) float32 on heads vertices (B, V, 3) float32 mm."""
        return self.bound(self.local_attributes(code), vertices)

    def gaussians_of(self, latents: Latents) -> Gaussians:
        """The Gaussians of full latents (every space): geometry decoded, appearance from its code."""
        return self.gaussians(latents[APPEARANCE], self.decode(latents))

    def render(self, gaussians: Gaussians, index: int, viewmat: torch.Tensor, K: torch.Tensor, width: int,
               height: int, background: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One head's Gaussians (row `index`) seen by a camera: `splat.rasterize`'s outputs (rgb (H, W, 3))."""
        g = gaussians
        return rasterize(g.means[index], g.quats[index], g.scales[index], g.opacities[index], g.sh[index],
                         viewmat, K, width, height, background=background)

    def render_cameras(self, gaussians: Gaussians, cameras: list[Camera], background=(0.0, 0.0, 0.0)) -> list[np.ndarray]:
        """Images (H, W, 3) float32 in [0, 1] of the first head of `gaussians` from each camera (no gradients)."""
        with torch.no_grad():
            bg = torch.tensor(background, dtype=torch.float32, device=self.device)
            return [self.render(gaussians, 0, _tensor(cam.world_to_camera, self.device),
                                _tensor(cam.intrinsics, self.device), cam.width, cam.height, bg)["rgb"].clamp(0, 1)
                    .cpu().numpy() for cam in cameras]

    def render_views(self, latents: Latents, cameras: list[Camera], background=(0.0, 0.0, 0.0)) -> list[np.ndarray]:
        """Images (H, W, 3) float32 in [0, 1] of the first head of `latents` from each camera."""
        with torch.no_grad():
            g = self.gaussians_of({n: z[:1] for n, z in latents.items()})
        return self.render_cameras(g, cameras, background)

    def save_ply(self, gaussians: Gaussians, index: int, path, overwrite: bool = False) -> None:
        """Write one head's Gaussians (row `index`) as a standard 3DGS PLY (`splat.ply`), mm."""
        from neuralmorph.splat.ply import save_gaussians_ply

        g = gaussians
        with torch.no_grad():
            save_gaussians_ply(path, g.means[index], g.scales[index], g.quats[index], g.opacities[index], g.sh[index],
                               overwrite=overwrite)

    # --- training ------------------------------------------------------------------------------------

    def photometric_loss(self, rendered: dict, image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """`splat.optimize.photometric_loss` against `image` (H, W, 3) with this model's weights (the
        alpha-vs-mask term when a mask is given)."""
        c = self.config
        return photometric_loss(rendered["rgb"], image, c.ssim_weight, rendered["alpha"], mask, c.mask_weight)

    def regularisers(self, attributes: tuple[torch.Tensor, ...], code: torch.Tensor) -> dict[str, torch.Tensor]:
        """GaussianAvatars' hinges (offsets beyond one triangle size, scales beyond `scale_limit` times their
        start) and the code pull, each already weighted."""
        c = self.config
        offset, _, log_scale = attributes[:3]
        growth = (log_scale - self.initial_log_scale).exp()
        return {"offset": c.offset_weight * torch.relu(offset.abs() - 1).mean(),
                "scale": c.scale_weight * torch.relu(growth - c.scale_limit).mean(),
                "code": c.code_weight * code.square().sum(dim=1).mean()}

    def training_loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        code = self.codes[batch["subject"]]
        attributes = self.local_attributes(code)
        g = self.bound(attributes, batch["vertices"])
        h, w = batch["image"].shape[1:3]
        photo = torch.stack([
            self.photometric_loss(self.render(g, i, batch["viewmat"][i], batch["K"][i], w, h),
                                  batch["image"][i], batch["mask"][i])
            for i in range(len(code))]).mean()
        reg = self.regularisers(attributes, code)
        loss = photo + sum(reg.values())
        return loss, {"photometric": photo.detach(), **{k: v.detach() for k, v in reg.items()}}

    def validation_metrics(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        return {"loss": self.training_loss(batch, step)[0]}

    def preview(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch's first item rendered (its subject's code on its head, as in `training_loss`, clamped to
        [0, 1]) beside its target image: {"appearance/render_vs_target": (H, 2W, 3) float32 in [0, 1]}."""
        g = self.gaussians(self.codes[batch["subject"][:1]], batch["vertices"][:1])
        h, w = batch["image"].shape[1:3]
        rgb = self.render(g, 0, batch["viewmat"][0], batch["K"][0], w, h)["rgb"].clamp(0, 1)
        return {"appearance/render_vs_target": torch.cat([rgb, batch["image"][0].to(rgb)], dim=1).detach()}

    def parameter_groups(self) -> list[dict]:
        """Networks at the trainer's rate; per-Gaussian bases and codes at their own, without weight decay."""
        c = self.config
        base = [self.base_offset, self.base_quat, self.base_log_scale, self.base_opacity, self.base_sh]
        return [{"params": list(self.generator.parameters())},
                {"params": base, "lr": c.base_lr, "weight_decay": 0.0},
                {"params": [self.codes], "lr": c.code_lr, "weight_decay": 0.0}]

    def parameter_count(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if n != "codes" and not n.startswith("mesh_model."))

    def parameter_counts(self) -> dict[str, int]:
        return {"appearance": self.parameter_count(),
                "geometry": sum(p.numel() for p in self.mesh_model.parameters())}

    @classmethod
    def smoke_config(cls) -> tuple[AppearanceConfig, None]:
        return AppearanceConfig(gaussians=400, latent_size=4, uv_resolution=8, generator_channels=8, sh_degree=0), None

    @classmethod
    def smoke_setup(cls, dataset: HeadDataset, workdir: Path) -> tuple[AppearanceConfig, None]:
        """The smoke config on a closed-form PCA model of `dataset`, saved in `workdir/geometry`."""
        from neuralmorph.models.pca import PCAConfig, PCAModel

        folder = Path(workdir) / "geometry"
        PCAModel.build(dataset, PCAConfig(identity_dims=2, expression_dims=2)).save(folder)
        config, _ = cls.smoke_config()
        return replace(config, geometry=str(folder)), None

    @classmethod
    def trainer_defaults(cls) -> TrainerConfig:
        return TrainerConfig(max_steps=3000, batch_size=4, lr=2e-3, warmup_steps=100, grad_clip=None,
                             checkpoint_every=1000, val_every=0)

    @classmethod
    def training_set(cls, dataset: HeadDataset, config: AppearanceConfig, split: str = "train", samples=None,
                     seed: int = 0) -> ImageTrainData:
        return ImageTrainData(dataset, split)

    @classmethod
    def build(cls, dataset: HeadDataset, config: AppearanceConfig, training_set: Any = None, split: str = "train",
              seed: int = 0) -> "AppearanceModel":
        if not config.geometry:
            raise InputError("--model.geometry", "the appearance family needs a trained mesh model to carry its "
                                                 "Gaussians: give its folder (train pca or regional first)")
        geometry = MorphableModel.load(config.geometry)
        if not isinstance(geometry, RegisteredModel) or isinstance(geometry, AppearanceModel):
            raise InputError("--model.geometry", f"holds a {geometry.family!r} model; the Gaussians need a registered "
                                                 "mesh family (pca or regional)")
        data = training_set if training_set is not None else ImageTrainData(dataset, split)
        template = geometry.decode(geometry.zero_latents(1))[0].detach().cpu().numpy()
        data.check_topology(len(template))
        layout = sample_layout(template, geometry.faces.cpu().numpy(), config.gaussians, config.layout_seed,
                               face_uvs=_head_face_uvs(geometry.faces.cpu().numpy()))
        torch.manual_seed(seed)  # the generator's initial weights: the same seed, the same model
        model = cls(config, geometry, layout.face_ids, layout.barycentric, layout.uv, data.subjects)
        model._init_scales(template)
        return model

    def _init_scales(self, template: np.ndarray) -> None:
        """Tangent standard deviations of about the sites' spacing, a fifth of it along the normal, in
        units of each parent triangle's size; colours start grey (SH zero), opacity 0.9."""
        from neuralmorph.models.appearance.binding import triangle_frames

        v = torch.as_tensor(template, dtype=torch.float32)[None]
        _, size, _ = triangle_frames(v, self.faces)
        f = self.faces.cpu().numpy()
        e1, e2 = template[f[:, 1]] - template[f[:, 0]], template[f[:, 2]] - template[f[:, 0]]
        area = 0.5 * np.linalg.norm(np.cross(e1, e2), axis=1).sum()
        spacing = math.sqrt(area / len(self.layout_faces))
        tri = size[0, self.layout_faces].clamp_min(1e-6)
        with torch.no_grad():
            self.base_log_scale.copy_(torch.stack([torch.log(spacing / tri), torch.log(0.2 * spacing / tri),
                                                   torch.log(spacing / tri)], dim=1))
            self.initial_log_scale.copy_(self.base_log_scale)

    def fit_prior(self, dataset: HeadDataset, training_set: Any = None) -> "AppearanceModel":
        self.prior[APPEARANCE].fit(self.codes.detach())
        return self

    def dataset_latents(self, dataset: HeadDataset, split: str = "train") -> Latents:
        """The mesh family's latents of every registered head of `split`, with its subject's trained
        appearance code (every subject must be one this model was trained on)."""
        out = self.mesh_model.dataset_latents(dataset, split)
        subjects = [h.subject for h in dataset.heads if h.split == split and h.registered >= 0]
        index = {s: i for i, s in enumerate(self.subjects)}
        unknown = sorted(set(subjects) - set(index))
        if unknown:
            raise InputError(dataset.where, f"subject(s) {', '.join(unknown[:3])} of the {split!r} split have no "
                                            "trained appearance code (train on them first)")
        out[APPEARANCE] = self.codes.detach()[[index[s] for s in subjects]].clone()
        return out

    def training_latents(self) -> Latents | None:
        return None  # codes are per subject (appearance only); geometry latents come from the mesh family

    def held_out_error(self, dataset: HeadDataset, split: str = "train", training_set: Any = None) -> dict | None:
        return None  # scored by `bench appearance` (single-image fits of held-out identities)

    def training_summary(self, training_set: Any = None) -> str:
        n = len(self.codes)
        return (f"{len(self.layout_faces)} Gaussians on a {self.mesh_model.family} mesh, appearance code "
                f"{self.config.latent_size}, {n} training subjects")

    # --- saving ---------------------------------------------------------------------------------------

    def saved_spec(self) -> dict:
        """The nested mesh model's own config.json object, and the training subjects (one code each)."""
        return {"geometry": self.mesh_model.spec(), "subjects": self.subjects}

    @classmethod
    def from_saved(cls, config: AppearanceConfig, spec: dict, arrays: dict[str, np.ndarray]) -> "AppearanceModel":
        geometry = MorphableModel.from_spec(spec["geometry"], _Prefixed(arrays, "mesh_model."), "config.json: geometry")
        if not isinstance(geometry, RegisteredModel):
            raise InputError("config.json", f"its geometry is a {geometry.family!r} model, not a registered mesh family")
        subjects = spec["subjects"]
        if not isinstance(subjects, list) or not all(isinstance(x, str) for x in subjects):
            raise InputError("config.json", f"'subjects' must be a list of names, got {subjects!r}")
        return cls(config, geometry, arrays["layout_faces"], arrays["layout_bary"], arrays["layout_uv"], subjects)


class _Prefixed(dict):
    """The entries of a saved model's arrays under `prefix`, prefix removed (the nested mesh model's)."""

    def __init__(self, arrays: dict, prefix: str):
        super().__init__({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
        self.parent, self.prefix = arrays, prefix

    def __missing__(self, key):
        return self.parent[self.prefix + key]


def _head_face_uvs(faces: np.ndarray) -> np.ndarray | None:
    """The embedded head's UV layout when `faces` is its topology (else None: a cylindrical layout)."""
    from neuralmorph.data.head_model import HeadModel

    head = HeadModel.load()
    if head.face_uvs is None or head.faces.shape != faces.shape or not np.array_equal(head.faces, faces):
        return None
    return head.face_uvs


def _tensor(a: np.ndarray, device) -> torch.Tensor:
    return torch.as_tensor(np.array(a), dtype=torch.float32, device=device)
