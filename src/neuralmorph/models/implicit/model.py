"""The implicit families: `implicit-global` (NPMs / DeepSDF) and `implicit-local` (NPHM), one interface.

Both are signed-distance auto-decoders with an expression deformation, trained from raw scans with
IGR-style losses (see `samples.py` for the streams, docs/implicit.md for the numbers):

    identity code z_id ──▶ canonical SDF f(x; z_id)           (neutral shape, canonical units, < 0 inside)
    z_id, expression code z_ex ──▶ deformation D(x; z_id, z_ex)
        forward  (default): canonical point -> posed point   posed mesh = D(canonical mesh vertices)
        backward:           posed point -> canonical point   posed SDF = f(D(x)); + optional hyper-coordinates

* `implicit-global`: f is one DeepSDF-style MLP on [x | z_id] (`networks.SDFNetwork`).
* `implicit-local`: f is NPHM's ensemble of small MLPs around anchors on the face, symmetric pairs sharing
  weights, blended over the K nearest anchors (`networks.LocalEnsemble`); z_id = [global | per-anchor].

Beyond the family contract (`models/base.py`), what the implicit fit and extraction use is `ImplicitModel`'s
public methods: `sdf`, `deform`, `sdf_posed`, `canonical_field`, `code_regularizers`, `meshes`,
`anchors` (local), `bounds`, `deformation`, `latent_sizes`, `prior`. Fields work in canonical units of
`model.frame`; meshes and everything else at the model boundary are millimetres.

Training is one joint stage (identity and expression together, MonoNPHM-style) through the shared
trainer: the codebooks (one identity code per training subject, one expression code per training head)
are parameters of the model, so checkpoints, resume and DDP need nothing special; the SDF terms only
reach the field and the identity codes, the correspondence terms only the deformation, the expression
codes and (through the deformation's conditioning) the identity codes. A second stage would add an
--init round trip for no gain at this scale. The trained codebooks are kept in the saved model (a few
thousand floats: the training heads can be re-decoded), and the priors are fitted to them for sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.errors import InputError
from neuralmorph.frame import Frame
from neuralmorph.geometry.mesh import Mesh
from neuralmorph.geometry.sampling import farthest_point_sampling
from neuralmorph.models.implicit.extraction import Field, extract_coarse_to_fine
from neuralmorph.models.implicit.networks import (BackwardDeformation, ForwardDeformation, LocalEnsemble, SDFNetwork,
                                           count_parameters)
from neuralmorph.models.implicit.samples import ImplicitSampleConfig, ImplicitSamples, face_vertex_mask, subject_neutrals
from neuralmorph.models.base import Latents, ModelConfig, MorphableModel, register
from neuralmorph.training import TrainerConfig

FIELD_CHUNK = 65_536   # points per network call when a field is evaluated for extraction


# --- configuration ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImplicitConfig(ModelConfig):
    """What both implicit families share: deformation, code init, every loss weight."""

    deformation: Literal["forward", "backward"] = "forward"
    """forward: the deformation maps canonical to posed points (one extracted mesh per identity, animated by
    moving its vertices); backward: posed to canonical points."""
    hyper_dims: int = 0
    """Backward only: ambient hyper-coordinates the deformation adds to the canonical SDF's input."""
    expression_size: int = 32
    """Expression code size."""
    deform_hidden: int = 128
    """Width of the deformation MLP."""
    deform_layers: int = 4
    """Hidden layers of the deformation MLP (input re-injected at the middle one)."""
    id_compress: int = 16
    """The deformation sees the identity through a linear bottleneck of this size."""
    init_radius: float = 0.6
    """Radius (canonical units) of the sphere the untrained field starts as."""
    code_init_std: float = 0.01
    """Std of the initial identity codes (expression codes start at zero: no deformation)."""
    code_lr: float | None = 2e-2
    """Learning rate of the codebooks (None: the trainer's --lr); they never get weight decay."""
    # --- losses (IGR / NPHM; distances in canonical units unless the name says mm) ---
    surface_weight: float = 2.0
    """Weight of the mean |SDF| at surface samples."""
    normal_weight: float = 0.3
    """Weight of the mean ‖∇SDF − n‖ at surface samples."""
    nonface_normal_scale: float = 0.5
    """Factor on the normal term at non-face samples (hair, ears and neck are noisier)."""
    nonface_normal_clamp: float = 0.75
    """Clamp of the per-point normal error at non-face samples."""
    eikonal_weight: float = 0.1
    """Weight of the mean |‖∇SDF‖ − 1| at surface, near and far samples."""
    far_weight: float = 0.01
    """Weight of the mean exp(−|SDF| / far_decay) at far samples: no stray surfaces off the head."""
    far_decay_mm: float = 25.0
    """Length scale of the far-space term."""
    sign_weight: float = 1.0
    """Weight of the mean max(0, −label · SDF) at the sign-labelled space samples (winding number of the
    registered mesh): keeps the field positive where nothing is observed outside (below the neck) and
    negative inside."""
    identity_reg: float = 0.01
    """Weight of the identity codes' squared norm (local family: global and local parts)."""
    expression_reg: float = 1e-4
    """Weight of the expression codes' squared norm."""
    corr_weight: float = 100.0
    """Weight of the mean squared error of the deformed correspondences (canonical units²)."""
    zero_deform_weight: float = 1e-3
    """Weight of the mean squared deformation at the far samples (no deformation away from the face)."""
    hyper_weight: float = 0.05
    """Weight of the mean squared hyper-coordinates (backward with hyper_dims > 0)."""

    def _check(self, where: str) -> None:
        if self.deformation not in ("forward", "backward"):
            raise InputError(where, f"deformation must be 'forward' or 'backward', got {self.deformation!r}")
        if self.hyper_dims < 0 or (self.hyper_dims and self.deformation != "backward"):
            raise InputError(where, "hyper_dims must be >= 0, and > 0 only with deformation='backward'")
        for name in ("expression_size", "deform_hidden", "deform_layers", "id_compress"):
            if getattr(self, name) < 1:
                raise InputError(where, f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.init_radius > 0 or not self.far_decay_mm > 0 or self.code_init_std < 0:
            raise InputError(where, "init_radius and far_decay_mm must be positive, code_init_std >= 0")
        if self.code_lr is not None and not self.code_lr > 0:
            raise InputError(where, f"code_lr must be positive, got {self.code_lr}")
        for name in ("surface_weight", "normal_weight", "nonface_normal_scale", "nonface_normal_clamp",
                     "eikonal_weight", "far_weight", "sign_weight", "identity_reg", "expression_reg", "corr_weight",
                     "zero_deform_weight", "hyper_weight"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise InputError(where, f"{name} must be a non-negative number, got {v}")


@dataclass(frozen=True)
class ImplicitGlobalConfig(ImplicitConfig):
    """`implicit-global`: one DeepSDF-style MLP on [x | identity code] + the deformation MLP."""

    identity_size: int = 64
    """Identity code size."""
    sdf_hidden: int = 128
    """Width of the SDF MLP."""
    sdf_layers: int = 5
    """Hidden layers of the SDF MLP (input re-injected at the middle one)."""

    def __post_init__(self):
        self._check("implicit-global config")
        if self.identity_size < 1 or self.sdf_hidden < 1 or self.sdf_layers < 2:
            raise InputError("implicit-global config", "identity_size, sdf_hidden >= 1 and sdf_layers >= 2 needed")


@dataclass(frozen=True)
class ImplicitLocalConfig(ImplicitConfig):
    """`implicit-local`: NPHM's anchored local ensemble + the deformation MLP."""

    anchor_pairs: int = 12
    """Left/right anchor pairs (each pair shares one member MLP)."""
    anchor_midline: int = 6
    """Anchors on the symmetry plane."""
    face_anchor_fraction: float = 0.7
    """Share of the anchors placed in the face regions (the rest cover skull, ears and neck)."""
    global_size: int = 64
    """Global part of the identity code (feeds every member and the anchor MLP)."""
    local_size: int = 8
    """Per-anchor part of the identity code (one per anchor and one for the global member)."""
    member_hidden: int = 54
    """Width of each member MLP."""
    member_layers: int = 3
    """Hidden layers of each member MLP."""
    anchor_hidden: int = 64
    """Width of the anchor-offset MLP."""
    neighbours: int = 8
    """Anchors blended per query (the K nearest; 0: every anchor, a dense softmax blend)."""
    blend_neighbour: int = 6
    """n: the Gaussian blend's width σ is the query's distance to its n-th nearest anchor / blend_divisor."""
    blend_divisor: float = 3.75
    """Divisor of the Gaussian blend's σ (see blend_neighbour)."""
    global_distance_mm: float = 150.0
    """Pseudo-distance of the global (background) member in the blend: it only matters far from every anchor."""
    midline_eps_mm: float = 1.0
    """Smoothing of |x| for the midline and global members (even in x, so the model is mirror-symmetric)."""
    anchor_weight: float = 7.5
    """Weight of the mean squared error of the predicted vs the registered anchors (canonical units²)."""
    symmetry_weight: float = 0.01
    """Weight of the mean distance between the local codes of each left/right pair."""
    local_reg: float | None = None
    """Weight of the local codes' squared norm during training (None: identity_reg)."""

    def __post_init__(self):
        where = "implicit-local config"
        self._check(where)
        if self.anchor_pairs < 1 or self.anchor_midline < 0 or self.global_size < 1 or self.local_size < 1:
            raise InputError(where, "need anchor_pairs >= 1, anchor_midline >= 0, global_size and local_size >= 1")
        if self.member_hidden < 1 or self.member_layers < 1 or self.anchor_hidden < 1:
            raise InputError(where, "member_hidden, member_layers and anchor_hidden must be >= 1")
        if self.neighbours < 0 or self.blend_neighbour < 1 or not self.blend_divisor > 0:
            raise InputError(where, "need neighbours >= 0, blend_neighbour >= 1 and blend_divisor > 0")
        if not 0 <= self.face_anchor_fraction <= 1:
            raise InputError(where, f"face_anchor_fraction must be in [0, 1], got {self.face_anchor_fraction}")
        if not self.global_distance_mm > 0 or not self.midline_eps_mm > 0:
            raise InputError(where, "global_distance_mm and midline_eps_mm must be positive")
        if self.local_reg is not None and not (math.isfinite(self.local_reg) and self.local_reg >= 0):
            raise InputError(where, f"local_reg must be >= 0, got {self.local_reg}")
        for name in ("anchor_weight", "symmetry_weight"):
            if not getattr(self, name) >= 0:
                raise InputError(where, f"{name} must be >= 0")


# --- anchors -------------------------------------------------------------------------------------------------


def pick_anchors(vertices: np.ndarray, face_mask: np.ndarray, pairs: int, midline: int, face_fraction: float,
                 tolerance: float) -> tuple[np.ndarray, int, int]:
    """Anchor vertex ids on a (mean neutral) head: interleaved left/right pairs, then midline vertices.

    vertices: (N, 3) canonical, mirror plane x = 0 (the canonical frame's); face_mask: (N,) bool;
    tolerance: canonical distance within which a vertex counts as on the midline / as its mirror's match.
    Pairs: left (x > 0) vertices whose mirror image has a vertex within `tolerance`, spread by
    farthest-point sampling, `face_fraction` of them among face vertices first, then the rest over the
    other vertices away from those. Midline vertices (|x| < tolerance) likewise.
    Returns ids (2·P + M,) int64 and the counts (P, M) actually found.
    """
    v = np.asarray(vertices, np.float64)
    mirror_d, mirror = cKDTree(v).query(v * np.array([-1.0, 1.0, 1.0]), k=1)
    left = np.flatnonzero((v[:, 0] > 4 * tolerance) & (mirror_d < tolerance))
    mid = np.flatnonzero(np.abs(v[:, 0]) < tolerance)

    def spread(ids: np.ndarray, n: int) -> list[int]:
        n_face = int(round(face_fraction * n))
        face_ids, other_ids = ids[face_mask[ids]], ids[~face_mask[ids]]
        got = [int(face_ids[i]) for i in farthest_point_sampling(v[face_ids], n_face)]
        away = v[got] if got else None
        got += [int(other_ids[i]) for i in farthest_point_sampling(v[other_ids], n - len(got), chosen=away)]
        if len(got) < n:   # too few non-face vertices: top up from the face
            rest = np.setdiff1d(face_ids, got)
            got += [int(rest[i]) for i in farthest_point_sampling(v[rest], n - len(got), chosen=v[got])]
        return got

    left_ids = spread(left, pairs)
    mid_ids = spread(mid, midline) if midline else []
    ids = [i for l_id in left_ids for i in (l_id, int(mirror[l_id]))] + mid_ids
    return np.array(ids, np.int64), len(left_ids), len(mid_ids)


# --- the shared model ----------------------------------------------------------------------------------------


class ImplicitModel(MorphableModel):
    """Base of the implicit families (see the module docstring for the contract)."""

    Config = ImplicitConfig
    Samples = ImplicitSampleConfig
    geometry = "sdf"
    fits = frozenset({"points", "depth"})
    has_anchors: bool = False
    """Whether the field is an ensemble around anchors (sparse K-nearest evaluation; `bench extraction`)."""

    def __init__(self, config: ImplicitConfig, identity_size: int, frame: Frame, bounds: np.ndarray,
                 n_subjects: int, n_heads: int):
        super().__init__(config, {"identity": identity_size, "expression": config.expression_size},
                         np.zeros((0, 3), np.int64), frame)
        self.register_buffer("bounds", torch.as_tensor(np.asarray(bounds, np.float32)).reshape(2, 3).clone())
        # codebooks: identity per training subject, expression per training head (+ its subject's row)
        self.identity_codes = nn.Parameter(torch.randn(n_subjects, identity_size) * config.code_init_std)
        self.expression_codes = nn.Parameter(torch.zeros(n_heads, config.expression_size))
        self.register_buffer("code_subject", torch.zeros(n_heads, dtype=torch.int64))

    # --- what a family provides -------------------------------------------------------------------

    field: nn.Module
    deformer: nn.Module

    def identity_features(self, identity: torch.Tensor) -> torch.Tensor:
        """(B, Ki) -> (B, F) what the deformation is conditioned on."""
        return identity

    def _field(self, x: torch.Tensor, identity: torch.Tensor, neighbours: int | None,
               all_members: bool = False) -> torch.Tensor:
        raise NotImplementedError

    # --- the contract -----------------------------------------------------------------------------

    @property
    def deformation(self) -> str:
        """"forward" (canonical -> posed) or "backward" (posed -> canonical)."""
        return self.config.deformation

    @property
    def field_dims(self) -> int:
        """3 + hyper-coordinates: the dimension of the canonical SDF's domain."""
        return 3 + self.config.hyper_dims

    def _points(self, x: torch.Tensor, where: str = "x") -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] not in (3, self.field_dims):
            raise InputError(where, f"points must have shape (B, P, 3) (or (B, P, {self.field_dims}) with "
                             f"hyper-coordinates), got {tuple(x.shape)}")
        if x.shape[-1] < self.field_dims:   # canonical points without hyper-coordinates: the h = 0 slice
            x = torch.cat([x, x.new_zeros(*x.shape[:-1], self.field_dims - 3)], dim=-1)
        return x

    def sdf(self, x: torch.Tensor, identity: torch.Tensor, neighbours: int | None = None,
            all_members: bool = False) -> torch.Tensor:
        """Canonical signed distance.

        x: (B, P, 3) float32 canonical points — or (B, P, 3 + H) with hyper-coordinates, as `deform`
        returns them for backward models with hyper_dims = H (3-d points are taken at hyper = 0);
        identity: (B, Ki) float32. Local family only: neighbours overrides how many nearest anchors
        blend (0: all, NPHM's dense softmax — a different field); all_members evaluates every member with
        the same weights (the same field, at NPHM's cost: the reference for the sparse path).
        Returns (B, P) float32 in canonical units, negative inside.
        """
        return self._field(self._points(x), identity, neighbours, all_members)

    def deform(self, x: torch.Tensor, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """Deformed positions in the configured direction.

        x: (B, P, 3) float32 canonical units; identity (B, Ki), expression (B, Ke) float32.
        forward: canonical (neutral) points -> posed points x + D(x), (B, P, 3).
        backward: posed points -> canonical points x + D(x), (B, P, 3); with hyper_dims = H > 0 the
        hyper-coordinates are appended: (B, P, 3 + H), ready for `sdf`.
        """
        out = self.deformer(x, self.identity_features(identity), expression)
        moved = x + out[..., :3]
        return torch.cat([moved, out[..., 3:]], dim=-1) if out.shape[-1] > 3 else moved

    def sdf_posed(self, x: torch.Tensor, identity: torch.Tensor, expression: torch.Tensor,
                  neighbours: int | None = None) -> torch.Tensor:
        """Signed distance of posed points (B, P, 3) -> (B, P). Backward: sdf(deform(x)), differentiable.
        Forward: the canonical point is found by Broyden inversion of the deformation (roots.py), with
        implicit-function gradients; points that do not converge are evaluated where they stand."""
        if self.deformation == "backward":
            return self.sdf(self.deform(x, identity, expression), identity, neighbours)
        from neuralmorph.models.implicit.roots import invert_deformation

        b, p, _ = x.shape
        y = x.reshape(b * p, 3)
        xc, ok = invert_deformation(lambda q: self.deform(q.reshape(b, p, 3), identity, expression).reshape(b * p, 3), y)
        xc = torch.where((ok & torch.isfinite(xc).all(-1))[:, None], xc, y)
        return self.sdf(xc.reshape(b, p, 3), identity, neighbours)

    def canonical_field(self, identity: torch.Tensor, neighbours: int | None = None,
                        all_members: bool = False) -> Field:
        """The canonical SDF of one identity (1, Ki) as a function (P, 3) float32 -> (P,) float32 for
        extraction (hyper-coordinates 0); evaluated without gradients, in chunks, on the model's device.
        neighbours, all_members: as in `sdf`."""
        z = identity.detach().reshape(1, -1).to(self.device, torch.float32)

        @torch.no_grad()
        def field(points: torch.Tensor) -> torch.Tensor:
            out = []
            for s in range(0, len(points), FIELD_CHUNK):
                q = points[s:s + FIELD_CHUNK].to(self.device, torch.float32)[None]
                out.append(self.sdf(q, z, neighbours, all_members)[0])
            return torch.cat(out) if out else points.new_zeros(0)

        return field

    def code_regularizers(self, identity: torch.Tensor, expression: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scalar terms a fitter weights: "identity_norm" and "expression_norm", the batch means of the
        squared distance of the codes (B, Ki), (B, Ke) from the prior means (zero before the priors are fitted)."""
        return {"identity_norm": (identity - self.prior["identity"].mean).square().sum(-1).mean(),
                "expression_norm": (expression - self.prior["expression"].mean).square().sum(-1).mean()}

    @torch.no_grad()
    def meshes(self, latents: Latents, resolution: int = 128) -> list[Mesh]:
        """One mesh per head (millimetres).

        latents: {"identity": (B, Ki), "expression": (B, Ke)}. The canonical (neutral) surface is
        extracted once per distinct identity (coarse-to-fine marching cubes at `resolution` cells over
        `bounds`). Forward models move its vertices through the deformation, so every expression of a
        subject shares the canonical mesh's topology. Backward models without hyper-coordinates invert
        the deformation per vertex by Broyden root finding (roots.py; same shared topology, a vertex whose
        root does not converge stays where the last iterate left it); with hyper-coordinates the posed
        field itself is extracted per head (own topology), since the posed surface is then not a warp of
        the hyper = 0 slice.
        """
        latents = self.check_latents(latents)
        zi = latents["identity"].to(self.device, torch.float32)
        ze = latents["expression"].to(self.device, torch.float32)
        canonical: dict[int, Mesh] = {}
        out = []
        for i in range(len(zi)):
            if self.deformation == "backward" and self.config.hyper_dims > 0:
                out.append(self._to_mm(self._extract(self._posed_field(zi[i:i + 1], ze[i:i + 1]), resolution)))
                continue
            key = next(j for j in range(i + 1) if torch.equal(zi[j], zi[i]))
            if key not in canonical:
                canonical[key] = self._extract(self.canonical_field(zi[key:key + 1]), resolution)
            mesh = canonical[key]
            v = torch.tensor(np.array(mesh.vertices), dtype=torch.float32, device=self.device)
            moved = torch.cat([self._pose_vertices(v[s:s + FIELD_CHUNK], zi[i:i + 1], ze[i:i + 1])
                               for s in range(0, len(v), FIELD_CHUNK)])
            out.append(self._to_mm(Mesh(moved.double().cpu().numpy(), mesh.faces)))
        return out

    # --- meshing helpers ----------------------------------------------------------------------------

    def _pose_vertices(self, v: torch.Tensor, zi: torch.Tensor, ze: torch.Tensor) -> torch.Tensor:
        if self.deformation == "forward":
            return self.deform(v[None], zi, ze)[0]
        from neuralmorph.models.implicit.roots import invert_deformation

        with torch.enable_grad():   # the Jacobian at the root is taken by autograd
            x, _ = invert_deformation(lambda q: self.deform(q[None], zi, ze)[0][..., :3], v)
        return x.detach()

    def _posed_field(self, zi: torch.Tensor, ze: torch.Tensor) -> Field:
        @torch.no_grad()
        def field(points: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.sdf_posed(points[s:s + FIELD_CHUNK].to(self.device)[None], zi, ze)[0]
                              for s in range(0, len(points), FIELD_CHUNK)])
        return field

    def _extract(self, field: Field, resolution: int) -> Mesh:
        """Canonical-unit mesh of a field's zero level set over `bounds`."""
        bounds = self.bounds.detach().cpu().numpy().astype(np.float64)
        mesh, _ = extract_coarse_to_fine(field, bounds, resolution, coarse_resolution=min(32, resolution),
                                         device=self.device)
        return mesh

    def _to_mm(self, mesh: Mesh) -> Mesh:
        return Mesh(self.frame.to_mm(mesh.vertices), mesh.faces)

    # --- codebooks and priors ---------------------------------------------------------------------

    def training_latents(self) -> Latents:
        """{"identity": (H, Ki), "expression": (H, Ke)}: the trained codes of every training head
        (rows in the training samples' head order)."""
        return {"identity": self.identity_codes.detach()[self.code_subject].clone(),
                "expression": self.expression_codes.detach().clone()}

    def dataset_latents(self, dataset: HeadDataset, split: str = "train") -> Latents:
        """The trained codes of the training heads (`training_latents`): an auto-decoder has codes only for
        the heads it was trained on, so `split` must be the split it was trained on."""
        trained = (self.training_record or {}).get("split")
        if trained is not None and split != trained:
            raise InputError("--split", f"the implicit model was trained on the {trained!r} split; it has codes "
                                        f"only for those heads, not the {split!r} split's")
        return self.training_latents()

    @torch.no_grad()
    def fit_prior(self, dataset: HeadDataset | None = None, training_set: ImplicitSamples | None = None) -> "ImplicitModel":
        """Full-covariance Gaussians over the trained identity and expression codebooks (the arguments of
        the contract are unused: the codebooks are the training codes)."""
        self.prior["identity"].fit(self.identity_codes.detach().cpu())
        self.prior["expression"].fit(self.expression_codes.detach().cpu())
        for p in self.prior.values():
            p.to(self.device)
        return self

    def parameter_groups(self) -> list[dict]:
        """Networks at the trainer's learning rate; codebooks without weight decay (and at code_lr if set)."""
        codes = [self.identity_codes, self.expression_codes]
        ids = {id(p) for p in codes}
        nets = [p for p in self.parameters() if id(p) not in ids]
        group = {"params": codes, "weight_decay": 0.0}
        if self.config.code_lr is not None:
            group["lr"] = self.config.code_lr
        return [{"params": nets}, group]

    # --- training ---------------------------------------------------------------------------------

    def _identity_losses(self, identity: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Family-specific identity terms (regularisers, anchors); returns (weighted sum, logs)."""
        c = self.config
        reg = self.code_regularizers(identity, identity.new_zeros(len(identity), c.expression_size))
        loss = c.identity_reg * reg["identity_norm"]
        return loss, {"identity_norm": float(reg["identity_norm"].detach())}

    def training_loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """IGR losses on the SDF stream + correspondence losses on the deformation stream (see the config
        for every weight). batch: an `ImplicitSamples` batch (B items). Returns (scalar mean loss, logs)."""
        c = self.config
        zi = self.identity_codes[batch["subject"]]
        ze = self.expression_codes[batch["head"]]
        surface, normals = batch["surface"], batch["surface_normals"]
        ns, nn_ = surface.shape[1], batch["near"].shape[1]
        pts = torch.cat([surface, batch["near"], batch["far"]], dim=1).requires_grad_(True)
        hyper = None
        if self.deformation == "backward":
            # the surfaces are posed scans: warp into canonical space, supervise the composed field
            xc = self.deform(pts, zi, ze)
            hyper = xc[..., 3:]
            far_offset = xc[:, ns + nn_:, :3] - pts[:, ns + nn_:]
        else:
            xc = pts
        f = self.sdf(xc, zi)
        (grad,) = torch.autograd.grad(f.sum(), pts, create_graph=True)
        fs, gs = f[:, :ns], grad[:, :ns]
        surf = fs.abs().mean()
        nerr = (gs - normals).norm(dim=-1)
        face = batch["surface_face"]
        normal = torch.where(face > 0.5, nerr, c.nonface_normal_scale * nerr.clamp(max=c.nonface_normal_clamp)).mean()
        eik = (grad.norm(dim=-1) - 1.0).abs().mean()
        far = torch.exp(-f[:, ns + nn_:].abs() * (self.frame.mm_per_unit / c.far_decay_mm)).mean()
        loss = c.surface_weight * surf + c.normal_weight * normal + c.eikonal_weight * eik + c.far_weight * far
        sign = f.new_zeros(())
        if "space" in batch and batch["space"].shape[1] and c.sign_weight > 0:
            fsp = (self.sdf(batch["space"], zi) if self.deformation == "forward"
                   else self.sdf_posed(batch["space"], zi, ze))
            labels = batch["space_sign"]
            sign = torch.relu(-labels * fsp).sum() / labels.abs().sum().clamp_min(1.0)
            loss = loss + c.sign_weight * sign

        # deformation: correspondences, zero deformation far from the face, expression prior
        if self.deformation == "forward":
            pred = self.deform(batch["corr_neutral"], zi, ze)
            target = batch["corr_posed"]
            far_pts = batch["far"]
            far_offset = self.deform(far_pts, zi, ze) - far_pts
        else:
            moved = self.deform(batch["corr_posed"], zi, ze)
            pred, target = moved[..., :3], batch["corr_neutral"]
            if moved.shape[-1] > 3:
                hyper = torch.cat([hyper, moved[..., 3:]], dim=1)
        corr = (pred - target).square().sum(-1).mean() if target.shape[1] else pred.new_zeros(())
        zero = far_offset.square().sum(-1).mean()
        ereg = (ze - self.prior["expression"].mean).square().sum(-1).mean()
        loss = loss + c.corr_weight * corr + c.zero_deform_weight * zero + c.expression_reg * ereg
        id_loss, logs = self._identity_losses(zi, batch)
        loss = loss + id_loss
        if hyper is not None and hyper.shape[-1]:
            hyp = hyper.square().sum(-1).mean()
            loss = loss + c.hyper_weight * hyp
            logs["hyper"] = float(hyp.detach())
        mm = self.frame.mm_per_unit
        logs.update(surface_mm=float(surf.detach()) * mm, normal=float(normal.detach()), eikonal=float(eik.detach()),
                    far=float(far.detach()), sign_mm=float(sign.detach()) * mm, corr_mm=float(corr.detach().sqrt()) * mm,
                    zero_deform_mm=float(zero.detach().sqrt()) * mm, expression_norm=float(ereg.detach()))
        return loss, logs

    def parameter_count(self) -> int:
        """Field and deformation networks (the codebooks hold the training heads' codes)."""
        counts = self.parameter_counts()
        return counts["field"] + counts["deformation"]

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part: field, deformation, codebooks."""
        return {"field": count_parameters(self.field), "deformation": count_parameters(self.deformer),
                "codebooks": self.identity_codes.numel() + self.expression_codes.numel()}

    # --- construction -------------------------------------------------------------------------------

    @classmethod
    def _new(cls, config, samples: ImplicitSamples, layout: tuple[int, int] | None) -> "ImplicitModel":
        raise NotImplementedError

    @classmethod
    def _anchor_ids(cls, dataset: HeadDataset, config, split: str | None) -> tuple[np.ndarray | None, tuple[int, int] | None]:
        """Anchor vertex ids the samples should carry, and the (pairs, midline) layout (None: no anchors)."""
        return None, None

    @classmethod
    def trainer_defaults(cls) -> TrainerConfig:
        # Items are whole point sets (~1,400 points each), so a batch of 4 heads is already ~5,600 SDF
        # queries with second derivatives; lr 2e-3 (docs/implicit.md).
        return TrainerConfig(max_steps=2000, batch_size=4, lr=2e-3, checkpoint_every=500)

    @classmethod
    def training_set(cls, dataset: HeadDataset, config: ImplicitConfig, split: str | None = "train",
                     samples: ImplicitSampleConfig | None = None, seed: int = 0,
                     heads: list[int] | None = None) -> ImplicitSamples:
        """The streamed training items (`samples.py`) of `split` (`heads`: only these manifest indices).
        Raw scans are read from the dataset's folder when `samples.use_scans` is on."""
        anchor_ids, _ = cls._anchor_ids(dataset, config, split)
        return ImplicitSamples(dataset, samples or ImplicitSampleConfig(), split, seed, anchor_ids=anchor_ids,
                               surfaces="neutral" if config.deformation == "forward" else "own", heads=heads)

    @classmethod
    def build(cls, dataset: HeadDataset, config: ImplicitConfig | None = None,
              training_set: ImplicitSamples | None = None, split: str | None = "train",
              seed: int = 0) -> "ImplicitModel":
        """A fresh model for `training_set` (made from `dataset` when not given): its codebooks have one
        row per subject / head of the stream, its bounds are the stream's bounds. Seeded by `seed`."""
        config = config if config is not None else cls.Config()
        stream = training_set if training_set is not None else cls.training_set(dataset, config, split, seed=seed)
        _, layout = cls._anchor_ids(dataset, config, split)
        torch.manual_seed(seed)
        model = cls._new(config, stream, layout)
        with torch.no_grad():
            model.code_subject.copy_(torch.as_tensor(stream.head_subject))
        return model

    def held_out_error(self, dataset: HeadDataset, split: str | None = "train",
                       training_set: ImplicitSamples | None = None) -> dict | None:
        """Mean |SDF| (mm) at held-out surface points of the training heads (`held_out_surface_error`: points
        never in the training pools) with each head's trained codes, next to the same with every head
        given the prior's mean codes (the mean head). An auto-decoder has no code for an unseen head until
        it is fitted, so its held-out data are unseen points of the training surfaces. None without the
        training set."""
        if training_set is None:
            return None
        own = held_out_surface_error(self, training_set)
        n = len(training_set.head_ids)
        mean = {name: self.prior[name].mean.expand(n, -1) for name in ("identity", "expression")}
        average = held_out_surface_error(self, training_set, latents=mean)
        return {"metric": "surface_sdf_mm", "value": own["mean_mm"], "mean_head": average["mean_mm"],
                "items": own["heads"],
                "data": f"held-out surface points of {own['heads']} training heads"}

    def training_summary(self, training_set: ImplicitSamples | None = None) -> str:
        counts = self.parameter_counts()
        line = (f"{self.deformation} deformation; field {counts['field']:,}, deformation {counts['deformation']:,} "
                f"parameters")
        if training_set is not None:
            err = held_out_surface_error(self, training_set)
            line += (f"; {len(training_set.subjects)} subjects, {len(training_set.head_ids)} heads; held-out scan "
                     f"surface |sdf| mean {err['mean_mm']:.2f} mm, p90 {err['p90_mm']:.2f} mm")
        return line


@torch.no_grad()
def held_out_surface_error(model: ImplicitModel, samples: ImplicitSamples, points: int = 5000,
                           seed: int = 12345, latents: Latents | None = None) -> dict[str, float]:
    """Mean and 90th percentile |SDF| in mm at fresh surface points (never in the training pools) of every
    training head's supervising surface (its subject's neutral scan for forward models, its own scan for
    backward ones), with the trained codes (or `latents`: {"identity": (H, Ki), "expression": (H, Ke)},
    one row per training head). Forward models are measured in canonical space, backward ones through the
    warp. Returns {"mean_mm", "p90_mm", "face_mean_mm", "heads"}."""
    was = model.training
    model.eval()
    lat = model.training_latents() if latents is None else latents
    errs, face = [], []
    heads = [k for k in range(len(samples.head_ids)) if model.deformation == "backward" or samples.is_neutral[k] > 0]
    for k in heads:
        p, _, is_face = samples.held_out_surface(k, points, seed)
        x = torch.as_tensor(p, device=model.device)[None]
        zi, ze = lat["identity"][k:k + 1].to(model.device), lat["expression"][k:k + 1].to(model.device)
        f = model.sdf(x, zi) if model.deformation == "forward" else model.sdf_posed(x, zi, ze)
        errs.append(f[0].abs().cpu().numpy() * model.frame.mm_per_unit)
        face.append(is_face)
    model.train(was)
    e, m = np.concatenate(errs), np.concatenate(face)
    return {"mean_mm": float(e.mean()), "p90_mm": float(np.percentile(e, 90)),
            "face_mean_mm": float(e[m].mean()) if m.any() else float("nan"), "heads": len(heads)}


SMOKE_SAMPLES = ImplicitSampleConfig(surface_points=128, near_points=128, far_points=32, correspondences=32,
                                     pool_size=4000, draws_per_head=2)
"""Training items of the smoke configs: a few hundred points per item."""


# --- the families --------------------------------------------------------------------------------------------


@register
class ImplicitGlobalModel(ImplicitModel):
    """`implicit-global`: NPMs / DeepSDF — one SDF MLP on [x | z_id] plus the deformation MLP."""

    family = "implicit-global"
    summary = "NPMs / DeepSDF: one SDF MLP + a deformation MLP, trained from scans."
    Config = ImplicitGlobalConfig

    @classmethod
    def smoke_config(cls) -> tuple[ImplicitGlobalConfig, ImplicitSampleConfig]:
        return (ImplicitGlobalConfig(identity_size=8, sdf_hidden=32, sdf_layers=2, expression_size=4, deform_hidden=16,
                                     deform_layers=2, id_compress=4), SMOKE_SAMPLES)

    @classmethod
    def for_benchmark(cls, latent_size: int) -> tuple[ImplicitGlobalConfig, TrainerConfig]:
        # widened so its SDF network has about as many parameters as the local ensemble's field
        # (5 × 240; comparable size)
        return ImplicitGlobalConfig(sdf_hidden=240), cls.trainer_defaults()

    def __init__(self, config: ImplicitGlobalConfig, frame: Frame, bounds: np.ndarray, n_subjects: int, n_heads: int):
        super().__init__(config, config.identity_size, frame, bounds, n_subjects, n_heads)
        self.field = SDFNetwork(config.identity_size, config.sdf_hidden, config.sdf_layers, 3 + config.hyper_dims,
                                config.init_radius)
        deformer = ForwardDeformation if config.deformation == "forward" else BackwardDeformation
        kwargs = {} if config.deformation == "forward" else {"hyper": config.hyper_dims}
        self.deformer = deformer(config.identity_size, config.expression_size, config.id_compress,
                                 config.deform_hidden, config.deform_layers, **kwargs)

    def _field(self, x, identity, neighbours, all_members=False):
        return self.field(x, identity)

    @classmethod
    def _new(cls, config, samples, layout):
        return cls(config, samples.frame, samples.bounds, len(samples.subjects), len(samples.head_ids))

    @classmethod
    def from_saved(cls, config, spec, arrays):
        return cls(config, Frame.from_dict(spec["frame"]), arrays["bounds"], arrays["identity_codes"].shape[0],
                   arrays["expression_codes"].shape[0])


@register
class ImplicitLocalModel(ImplicitModel):
    """`implicit-local`: NPHM — anchored local ensemble (symmetric pairs, sparse K-nearest blending)
    plus the deformation MLP, conditioned on the identity code and the predicted anchors."""

    has_anchors = True
    family = "implicit-local"
    summary = "NPHM: anchored local SDF ensemble + a deformation MLP, trained from scans."
    Config = ImplicitLocalConfig

    @classmethod
    def smoke_config(cls) -> tuple[ImplicitLocalConfig, ImplicitSampleConfig]:
        return (ImplicitLocalConfig(anchor_pairs=4, anchor_midline=2, global_size=8, local_size=4, member_hidden=16,
                                    member_layers=2, expression_size=4, deform_hidden=16, deform_layers=2,
                                    neighbours=4, blend_neighbour=3), SMOKE_SAMPLES)

    def __init__(self, config: ImplicitLocalConfig, frame: Frame, bounds: np.ndarray, n_subjects: int, n_heads: int,
                 mean_anchors: np.ndarray, anchor_ids: np.ndarray, pairs: int, midline: int):
        unit = frame.mm_per_unit
        field = LocalEnsemble(torch.as_tensor(np.asarray(mean_anchors, np.float32)), pairs, midline,
                              config.global_size, config.local_size, config.member_hidden, config.member_layers,
                              config.hyper_dims, config.neighbours, config.blend_neighbour, config.blend_divisor,
                              config.global_distance_mm / unit, config.anchor_hidden, config.init_radius,
                              config.midline_eps_mm / unit)
        super().__init__(config, field.code_size, frame, bounds, n_subjects, n_heads)
        self.field = field
        self.register_buffer("anchor_ids", torch.as_tensor(np.asarray(anchor_ids, np.int64)).clone())
        self.register_buffer("anchor_layout", torch.tensor([pairs, midline], dtype=torch.int64))
        deformer = ForwardDeformation if config.deformation == "forward" else BackwardDeformation
        kwargs = {} if config.deformation == "forward" else {"hyper": config.hyper_dims}
        self.deformer = deformer(field.code_size + 3 * field.n_anchors, config.expression_size, config.id_compress,
                                 config.deform_hidden, config.deform_layers, **kwargs)

    def _field(self, x, identity, neighbours, all_members=False):
        return self.field(x, identity, neighbours, all_members)

    def anchors(self, identity: torch.Tensor) -> torch.Tensor:
        """(B, Ki) identity codes -> (B, A, 3) anchor positions, canonical units (mirror-symmetric)."""
        return self.field.anchors(identity)

    def mirror_identity(self, identity: torch.Tensor) -> torch.Tensor:
        """(B, Ki) -> (B, Ki): the code of the mirrored head (paired local codes swapped):
        sdf(x·(−1, 1, 1), mirror_identity(z)) == sdf(x, z) exactly."""
        return self.field.mirror_codes(identity)

    def identity_features(self, identity: torch.Tensor) -> torch.Tensor:
        return torch.cat([identity, self.anchors(identity).flatten(1)], dim=-1)

    def code_regularizers(self, identity: torch.Tensor, expression: torch.Tensor) -> dict[str, torch.Tensor]:
        """"identity_norm" (global part), "local_norm" (all local codes), "expression_norm": batch means of
        squared distances from the prior means; "symmetry": mean distance between the local codes of
        each left/right pair; "anchors": mean squared distance of the anchors from the mean anchors."""
        dz = identity - self.prior["identity"].mean
        g, loc = self.field.split_code(dz)
        _, raw_loc = self.field.split_code(identity)
        p = self.field.pairs
        pair = raw_loc[:, :2 * p].reshape(len(identity), p, 2, -1)
        return {"identity_norm": g.square().sum(-1).mean(),
                "local_norm": loc.square().sum((-1, -2)).mean(),
                "expression_norm": (expression - self.prior["expression"].mean).square().sum(-1).mean(),
                "symmetry": (pair[:, :, 0] - pair[:, :, 1]).norm(dim=-1).mean(),
                "anchors": (self.anchors(identity) - self.field.mean_anchors).square().sum(-1).mean()}

    def _identity_losses(self, identity, batch):
        c = self.config
        reg = self.code_regularizers(identity, identity.new_zeros(len(identity), c.expression_size))
        local_reg = c.identity_reg if c.local_reg is None else c.local_reg
        loss = (c.identity_reg * reg["identity_norm"] + local_reg * reg["local_norm"]
                + c.symmetry_weight * reg["symmetry"])
        logs = {"identity_norm": float(reg["identity_norm"].detach()), "local_norm": float(reg["local_norm"].detach()),
                "symmetry": float(reg["symmetry"].detach())}
        if "anchors" in batch:
            err = (self.anchors(identity) - batch["anchors"]).square().sum(-1).mean()
            loss = loss + c.anchor_weight * err
            logs["anchors_mm"] = float(err.detach().sqrt()) * self.frame.mm_per_unit
        return loss, logs

    @classmethod
    def _anchor_ids(cls, dataset, config, split):
        neutral = [dataset.heads[i].registered for i in subject_neutrals(dataset, split).values()]
        if not neutral:
            raise InputError(dataset.where, f"no registered heads in the {split!r} split")
        mean = dataset.frame.to_canonical(dataset.vertices[neutral].astype(np.float64).mean(0))
        ids, p, m = pick_anchors(mean, face_vertex_mask(dataset), config.anchor_pairs, config.anchor_midline,
                                 config.face_anchor_fraction, tolerance=1.0 / dataset.frame.mm_per_unit)
        return ids, (p, m)

    @classmethod
    def _new(cls, config, samples, layout):
        ids = samples.anchor_ids
        mean = samples.neutral_vertices()[:, ids].mean(0)         # (A, 3) canonical; symmetrised by the field
        return cls(config, samples.frame, samples.bounds, len(samples.subjects), len(samples.head_ids), mean, ids,
                   *layout)

    @classmethod
    def from_saved(cls, config, spec, arrays):
        p, m = (int(v) for v in arrays["anchor_layout"])
        return cls(config, Frame.from_dict(spec["frame"]), arrays["bounds"], arrays["identity_codes"].shape[0],
                   arrays["expression_codes"].shape[0], arrays["field.mean_anchors"], arrays["anchor_ids"], p, m)
