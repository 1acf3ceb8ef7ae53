"""`regional`: a registered-mesh autoencoder with region tokens and control-vertex editing (LAMM's idea).

Re-derived from the idea of LAMM (Tarasiou et al., CVPR 2024), not from its code:

    vertices (B, N, 3) mm
      └─ normalise: x = (v - μ_v) / σ            (training mean per vertex, one global scale σ)
      └─ point-wise encoder: f_v = E_vᵀ x_v       (E_v: a learned (3, D) embedding per vertex)
      └─ region pooling: F_r = Σ_v w_vr f_v       (soft region weights; a shared vertex counts once per
                                                  region with its weight, never twice)
      └─ region tokens: per-region linear D → dim, + region embedding; + a global (ID) token
      └─ transformer encoder → global token → one global latent z (default 32)
    decoder:
      z → latent token; learned per-region query tokens (+ control tokens, see below)
      └─ transformer decoder over [latent token, region tokens]
      └─ per-region head: token → coefficients c_r (D)
      └─ point-wise decoder: o_v = B_v Σ_r w_vr c_r  (B_v: a learned (3, D) embedding per vertex;
                                                  outputs blended over regions by weights summing to 1)
      └─ vertices = μ + σ o

Parameters: the shared networks do not grow with the vertex count; the only per-vertex parameters are
the two (3, D) embeddings (6·D per vertex, ~0.85 M at 4,452 vertices and D = 32) — LAMM's dense
per-region layers instead hold 3·n_r·dim each (~39 M at 12k vertices). Both embeddings are initialised
from a per-region PCA of the training heads, so training starts from a sensible region basis.

Control tokens: each region with control vertices (picked by farthest-point sampling in the region's
interior, stored in the checkpoint) has a bias-free MLP (GELU(0) = 0) mapping its control-vertex
displacements (mm, divided by σ) to a token **added** to that region's query before the decoder
transformer. Zero displacements therefore give exactly the autoencoder.

Training (`training_loss`): stage 1 autoencodes (per-vertex Euclidean or L1 loss, optional deep
supervision over every decoder layer); stage 2 (initialised from stage 1) doubles the batch: one copy
autoencodes, the other moves each source toward the next head in the batch through control
displacements α·(V_t − V_s) at the control vertices of a random subset of regions, with target
V_s + α·m ⊙ (V_t − V_s) (m: the subset's region weights; with every region selected this is LAMM's
α·V_t + (1 − α)·V_s), α ~ U[α_min, α_max(step)] on a linear curriculum. A locality term keeps the
edited output equal to the (detached) autoencoded output outside the edited regions.

Editing (`edit`, `resample_region`) adds the decoded change of the edited regions' coefficients to the
given head rather than returning the model's reconstruction of it, carried over a blend band of a few
mesh-edge rings around the edited regions with a linear falloff, so it fades to zero instead of stopping
at the region border; vertices outside the edited regions and their blend bands keep their input coordinates
exactly.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.errors import InputError
from neuralmorph.frame import Frame
from neuralmorph.geometry.adjacency import k_ring, vertex_adjacency
from neuralmorph.models.base import GaussianPrior, Latents, RegisteredModel, register
from neuralmorph.models.regional.config import RegionalConfig
from neuralmorph.models.regional.regions import (BLEND_RINGS, blend_into_rings, check_blend_rings,
                                                 check_region_weights, pick_control_vertices, segment_template)
from neuralmorph.training import TrainerConfig

# --- data ---------------------------------------------------------------------------------------------


class RegionalTrainData(torch.utils.data.Dataset):
    """One split of a dataset's registered heads as training items {"vertices": (N, 3) float32 mm}."""

    def __init__(self, dataset: HeadDataset, split: str | None = "train"):
        if dataset.vertices is None:
            raise InputError(dataset.where, "the regional model needs registered heads (this dataset holds raw scans only)")
        self.rows = dataset.registered_rows(split)
        if len(self.rows) == 0:
            raise InputError(dataset.where, f"no registered heads in the {split!r} split")
        self.vertices = torch.as_tensor(np.ascontiguousarray(dataset.vertices[self.rows], np.float32))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"vertices": self.vertices[i]}


# --- the model ----------------------------------------------------------------------------------------


def _rank(singular_values: torch.Tensor, rel: float = 1e-5) -> int:
    """Numerical rank: singular values above rel × the largest (the rest are round-off of absent variance)."""
    s = singular_values
    return int((s > rel * s[0]).sum()) if len(s) and s[0] > 0 else 0


def _layer(dim: int, heads: int, ffn_mult: int) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(dim, heads, dim * ffn_mult, dropout=0.0, activation="gelu",
                                      batch_first=True, norm_first=True)


@register
class RegionalModel(RegisteredModel):
    family = "regional"
    summary = "The regional model (LAMM family): stage 1 autoencodes, stage 2 learns control-vertex edits."
    Config = RegionalConfig

    def __init__(self, config: RegionalConfig, n_vertices: int, control_counts: list[int], faces, frame: Frame,
                 region_names: tuple[str, ...], region_weights: np.ndarray, landmark_ids=None):
        super().__init__(config, {"global": config.latent_size}, faces, frame, landmark_ids=landmark_ids,
                         region_names=region_names, region_weights=region_weights)
        n, r, d, dim = n_vertices, len(region_names), config.embed_size, config.dim
        self.n_regions = r
        self.register_buffer("mean", torch.zeros(n, 3))       # μ_v, mm
        self.register_buffer("scale", torch.ones(n, 3))       # σ (global: constant), mm
        self.register_buffer("control_ids", torch.zeros(int(sum(control_counts)), dtype=torch.int64))
        self.register_buffer("control_counts", torch.as_tensor(np.array(control_counts, np.int64)))
        # point-wise encoder / decoder embeddings (per vertex, (3, D)), initialised small; `build` sets PCA
        self.enc_embed = nn.Parameter(torch.randn(n, 3, d) / math.sqrt(3 * n / max(r, 1)))
        self.dec_embed = nn.Parameter(torch.randn(n, 3, d) * 0.1)
        # region tokens
        self.enc_in_w = nn.Parameter(torch.randn(r, d, dim) / math.sqrt(d))
        self.enc_in_b = nn.Parameter(torch.zeros(r, dim))
        self.region_embed = nn.Parameter(torch.randn(r, dim) * 0.02)
        self.id_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.encoder = nn.ModuleList([_layer(dim, config.heads, config.ffn_mult) for _ in range(config.encoder_depth)])
        self.enc_norm = nn.LayerNorm(dim)
        self.to_latent = nn.Linear(dim, config.latent_size)
        # linear skips around both transformers (pooled features -> z -> coefficients); `build`
        # initialises them with a global PCA of the pooled features, and the transformer paths start at
        # zero, so training starts from a linear model and learns the non-linear part as a residual
        self.enc_skip = nn.Linear(r * d, config.latent_size)
        self.dec_skip = nn.Linear(config.latent_size, r * d)
        # decoder
        self.from_latent = nn.Linear(config.latent_size, dim)
        self.queries = nn.Parameter(torch.randn(r, dim) * 0.02)
        self.query_from_latent = nn.Linear(config.latent_size, dim)
        self.decoder = nn.ModuleList([_layer(dim, config.heads, config.ffn_mult) for _ in range(config.decoder_depth)])
        self.dec_norm = nn.LayerNorm(dim)
        self.head_hidden = nn.Linear(dim, dim)
        self.head_w = nn.Parameter(torch.randn(r, dim, d) / math.sqrt(dim))
        self.head_b = nn.Parameter(torch.zeros(r, d))
        # control MLPs (bias-free, so zero displacements give a zero token exactly)
        self.control_mlp = nn.ModuleDict({
            str(i): nn.Sequential(nn.Linear(3 * c, config.control_hidden, bias=False), nn.GELU(),
                                  nn.Linear(config.control_hidden, config.control_hidden, bias=False), nn.GELU(),
                                  nn.Linear(config.control_hidden, dim, bias=False))
            for i, c in enumerate(control_counts) if c > 0})
        for mlp in self.control_mlp.values():   # start as a no-op: stage 2 learns it
            nn.init.zeros_(mlp[-1].weight)
        # Stage 1 never feeds displacements, so the control MLPs get no gradient: freeze them (DDP
        # insists that every trainable parameter takes part in the loss).
        self.control_mlp.requires_grad_(config.stage >= 2)
        # per-region Gaussians over control displacements in mm (regional_prior.fit_control_prior)
        self.control_prior = nn.ModuleDict({str(i): GaussianPrior(3 * c) for i, c in enumerate(control_counts) if c > 0})
        mask = torch.zeros(r + 1, r + 1, dtype=torch.bool)
        if config.decoder_attention == "local":
            mask[:] = True
            mask[torch.arange(r + 1), torch.arange(r + 1)] = False
            mask[1:, 0] = False
        self.register_buffer("decoder_mask", mask, persistent=False)

    # --- construction ------------------------------------------------------------------------------

    @classmethod
    def training_set(cls, dataset: HeadDataset, config: RegionalConfig, split: str = "train", samples=None,
                     seed: int = 0) -> "RegionalTrainData":
        return RegionalTrainData(dataset, split)

    @classmethod
    def validation_set(cls, dataset: HeadDataset, config: RegionalConfig, samples=None) -> "RegionalTrainData | None":
        """The val split's registered heads, when the dataset has any (else no validation)."""
        return RegionalTrainData(dataset, "val") if len(dataset.registered_rows("val")) else None

    @classmethod
    def test_set(cls, dataset: HeadDataset, config: RegionalConfig, samples=None) -> "RegionalTrainData | None":
        """The test split's registered heads, when the dataset has any: scored once, after the last step."""
        return RegionalTrainData(dataset, "test") if len(dataset.registered_rows("test")) else None

    @classmethod
    def build(cls, dataset: HeadDataset, config: RegionalConfig = RegionalConfig(), training_set=None,
              split: str = "train", seed: int = 0, region_weights: np.ndarray | None = None,
              region_names: tuple[str, ...] | None = None) -> "RegionalModel":
        """A fresh model for `dataset`: normalisation, regions (the dataset's, the given ones, or an automatic
        segmentation of the training mean head), control vertices and the PCA initialisation from `split`.
        Stage 2 continues a stage-1 model (`continue_with`), so it is never built fresh."""
        if config.stage == 2:
            raise InputError("--model.stage", "stage 2 starts from a trained stage-1 model: pass --init")
        data = RegionalTrainData(dataset, split).vertices.double()
        n = data.shape[1]
        mean = data.mean(0)
        if region_weights is None and dataset.region_weights is not None and len(dataset.region_names):
            region_weights, region_names = dataset.region_weights, dataset.region_names
        if region_weights is None:
            region_weights = segment_template(mean.numpy(), config.n_regions)
        region_weights = check_region_weights(region_weights, n)
        if region_names is None or len(region_names) != region_weights.shape[1]:
            region_names = tuple(f"region_{i:02d}" for i in range(region_weights.shape[1]))
        controls = pick_control_vertices(mean.numpy(), region_weights, dataset.faces, config.control_per_region)
        torch.manual_seed(seed)
        model = cls(config, n, [len(c) for c in controls], dataset.faces, dataset.frame, tuple(region_names),
                    region_weights, landmark_ids=dataset.landmark_ids)
        with torch.no_grad():
            model.mean.copy_(mean.float())
            off = data - mean
            if config.normalise == "vertex":
                std = off.std(0).clamp_min(0.05 * float(off.std()) + 1e-6)
            else:
                std = torch.full((n, 3), float(off.std()) + 1e-6, dtype=torch.float64)
            model.scale.copy_(std.float())
            model.control_ids.copy_(torch.as_tensor(np.concatenate(controls) if controls else np.zeros(0, np.int64)))
            if config.pca_init:
                model._pca_init((off / std).float())
        return model

    def _pca_init(self, x: torch.Tensor) -> None:
        """Per region: top-D principal directions of the normalised training offsets as both embeddings
        (encoder: projections with unit variance; decoder: the matching directions × std)."""
        d = self.config.embed_size
        owner = self.region_weights.argmax(1)
        enc = torch.zeros_like(self.enc_embed)
        dec = torch.zeros_like(self.dec_embed)
        feat_std = torch.ones(self.n_regions, d, dtype=torch.float64)   # mm-space scale of each feature
        for r in range(self.n_regions):
            ids = torch.nonzero(owner == r).flatten()
            if len(ids) == 0:
                continue
            xr = x[:, ids].reshape(len(x), -1).double()
            _, s, vt = torch.linalg.svd(xr - xr.mean(0), full_matrices=False)
            k = min(d, _rank(s))  # directions without variance (fewer heads than D) must not be whitened
            std = (s[:k] / math.sqrt(max(len(x) - 1, 1))).clamp_min(1e-3 * float(s[0]) / math.sqrt(len(x)) + 1e-8)
            comp = vt[:k].reshape(k, len(ids), 3).permute(1, 2, 0)   # (n_r, 3, k)
            w = self.region_weights[ids, r].double()[:, None, None]
            enc[ids, :, :k] = (comp / std / w.clamp_min(1e-6)).float()  # pooled Σ w f = projection / std
            dec[ids, :, :k] = (comp * std).float()
            feat_std[r, :k] = std
            if k < d:
                enc[ids, :, k:] = torch.randn(len(ids), 3, d - k) * 1e-3
                dec[ids, :, k:] = torch.randn(len(ids), 3, d - k) * 1e-3
        self.enc_embed.copy_(enc)
        self.dec_embed.copy_(dec)
        # global PCA of the pooled region features -> the linear skips; transformer outputs start at zero
        # (done where distances are millimetres: features × their scale)
        pooled = torch.einsum("snd,nr->srd", torch.einsum("snc,ncd->snd", x, enc), self.region_weights).flatten(1)
        fs = feat_std.flatten()
        mu = pooled.double().mean(0)
        _, s, vt = torch.linalg.svd((pooled.double() - mu) * fs, full_matrices=False)
        k = min(self.config.latent_size, _rank(s))
        sd = (s[:k] / math.sqrt(max(len(x) - 1, 1))).clamp_min(1e-6)
        w_enc = torch.zeros(self.config.latent_size, pooled.shape[1], dtype=torch.float64)
        w_enc[:k] = vt[:k] * fs / sd[:, None]
        w_dec = torch.zeros(pooled.shape[1], self.config.latent_size, dtype=torch.float64)
        w_dec[:, :k] = (vt[:k] * sd[:, None] / fs).T
        self.enc_skip.weight.copy_(w_enc.float())
        self.enc_skip.bias.copy_((-w_enc @ mu).float())
        self.dec_skip.weight.copy_(w_dec.float())
        self.dec_skip.bias.copy_(mu.float())
        nn.init.zeros_(self.to_latent.weight)
        nn.init.zeros_(self.to_latent.bias)
        nn.init.zeros_(self.head_w)

    @classmethod
    def from_saved(cls, config: RegionalConfig, spec: dict, arrays: dict[str, np.ndarray]) -> "RegionalModel":
        return cls(config, arrays["mean"].shape[0], [int(c) for c in arrays["control_counts"]], arrays["faces"],
                   Frame.from_dict(spec["frame"]), tuple(spec.get("region_names", ())), arrays["region_weights"],
                   landmark_ids=arrays["landmark_ids"])

    def continue_with(self, config: RegionalConfig) -> "RegionalModel":
        """This model with `config`'s run fields (`RegionalConfig.RUN_FIELDS`: stage, losses, schedules,
        decoder attention), e.g. stage 2 from a stage-1 model. A weight-shaping field set to something
        other than its default and the saved model's value is refused: it would be silently ignored."""
        default = RegionalConfig()
        for name, value in config.to_dict().items():
            if name not in RegionalConfig.RUN_FIELDS and value != getattr(default, name) \
                    and value != getattr(self.config, name):
                raise InputError(f"--model.{name.replace('_', '-')}", f"comes from the --init model "
                                 f"({getattr(self.config, name)!r}); a further run cannot change it")
        return self.with_config(**{k: getattr(config, k) for k in RegionalConfig.RUN_FIELDS})

    def with_config(self, **changes) -> "RegionalModel":
        """The same weights under a changed config (e.g. stage=2 for manipulation training from stage 1).
        Only `RegionalConfig.RUN_FIELDS` can change: the others shape the weights or built them."""
        bad = [k for k in changes if k not in RegionalConfig.RUN_FIELDS and changes[k] != getattr(self.config, k)]
        if bad:
            raise InputError("regional config", f"cannot change {', '.join(bad)} of a trained model")
        self.config = replace(self.config, **changes)
        self.control_mlp.requires_grad_(self.config.stage >= 2)
        r = self.n_regions
        mask = torch.zeros(r + 1, r + 1, dtype=torch.bool, device=self.device)
        if self.config.decoder_attention == "local":
            mask[:] = True
            mask[torch.arange(r + 1), torch.arange(r + 1)] = False
            mask[1:, 0] = False
        self.decoder_mask = mask
        return self

    # --- region views ------------------------------------------------------------------------------

    @property
    def control_vertices(self) -> dict[str, np.ndarray]:
        """Region name -> control vertex ids (regions with control vertices only)."""
        ids = self.control_ids.cpu().numpy()
        out, start = {}, 0
        for name, c in zip(self.region_names, self.control_counts.cpu().tolist()):
            if c:
                out[name] = ids[start:start + c]
            start += c
        return out

    def _region_index(self, region: str) -> int:
        if region not in self.region_names:
            raise InputError("region", f"unknown region {region!r} (known: {', '.join(self.region_names)})")
        return self.region_names.index(region)

    # --- encoder -----------------------------------------------------------------------------------

    def normalise(self, vertices: torch.Tensor) -> torch.Tensor:
        return (vertices - self.mean) / self.scale

    def encode(self, vertices: torch.Tensor) -> Latents:
        """Registered vertices (B, N, 3) mm -> {"global": (B, K)}."""
        if vertices.ndim != 3 or vertices.shape[1:] != self.mean.shape:
            raise InputError("vertices", f"expected shape (B, {self.mean.shape[0]}, 3), got {tuple(vertices.shape)}")
        x = self.normalise(vertices.to(self.mean.dtype))
        # point-wise features f_v = E_vᵀ x_v, pooled per region with the soft weights
        f = torch.einsum("bnc,ncd->bnd", x, self.enc_embed)
        pooled = torch.einsum("bnd,nr->brd", f, self.region_weights)
        tokens = torch.einsum("brd,rde->bre", pooled, self.enc_in_w) + self.enc_in_b + self.region_embed
        tokens = torch.cat([self.id_token.expand(len(x), 1, -1), tokens], dim=1)
        for layer in self.encoder:
            tokens = layer(tokens)
        return {"global": self.to_latent(self.enc_norm(tokens[:, 0])) + self.enc_skip(pooled.flatten(1))}

    # --- decoder -----------------------------------------------------------------------------------

    def control_tokens(self, control: dict[str, torch.Tensor] | None, batch: int) -> torch.Tensor | None:
        """Control displacements (name -> (B, C_r, 3) mm) -> (B, R, dim) additive tokens, or None."""
        if not control:
            return None
        counts = self.control_counts.tolist()
        starts = np.concatenate([[0], np.cumsum(counts)])
        out = torch.zeros(batch, self.n_regions, self.config.dim, device=self.device, dtype=self.mean.dtype)
        for name, delta in control.items():
            r = self._region_index(name)
            if counts[r] == 0:
                raise InputError("control", f"region {name!r} has no control vertices")
            delta = torch.as_tensor(delta, dtype=self.mean.dtype, device=self.device)
            if delta.ndim == 2:
                delta = delta[None].expand(batch, -1, -1)
            if delta.shape != (batch, counts[r], 3):
                raise InputError("control", f"region {name!r} takes ({batch}, {counts[r]}, 3) displacements, "
                                 f"got {tuple(delta.shape)}")
            if not torch.isfinite(delta).all():
                raise InputError("control", f"region {name!r} displacements contain NaN or infinite values")
            ids = self.control_ids[starts[r]:starts[r + 1]]
            d = delta / self.scale[ids]
            out[:, r] = out[:, r] + self.control_mlp[str(r)](d.reshape(batch, -1))
        return out

    def _decode_tokens(self, z: torch.Tensor, ctrl: torch.Tensor | None, all_layers: bool = False) -> list[torch.Tensor]:
        self._skip_coef = self.dec_skip(z).reshape(len(z), self.n_regions, -1)
        q = self.queries + self.query_from_latent(z)[:, None]
        if ctrl is not None:
            q = q + ctrl
        tokens = torch.cat([self.from_latent(z)[:, None], q], dim=1)
        mask = self.decoder_mask if self.config.decoder_attention == "local" else None
        outs = []
        for layer in self.decoder:
            tokens = layer(tokens, src_mask=mask)
            if all_layers:
                outs.append(tokens[:, 1:])
        if not all_layers:
            outs.append(tokens[:, 1:])
        return outs

    def _coefficients(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decoder region tokens (B, R, dim) -> per-region coefficients c_r (B, R, D): the per-region head
        plus the linear skip of the latent that `_decode_tokens` just decoded."""
        h = F.gelu(self.head_hidden(self.dec_norm(tokens)))
        coef = torch.einsum("bre,red->brd", h, self.head_w) + self.head_b          # (B, R, D)
        return coef + self._skip_coef                                                # linear path

    def _offsets(self, coef: torch.Tensor) -> torch.Tensor:
        """Per-region coefficients (B, R, D) -> normalised offsets (B, N, 3): o_v = B_v Σ_r w_vr c_r."""
        per_vertex = torch.matmul(self.region_weights, coef)                         # (B, N, D) blended
        return (self.dec_embed * per_vertex[:, :, None, :]).sum(-1)                # (B, N, 3)

    def _tokens_to_vertices(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mean + self.scale * self._offsets(self._coefficients(tokens))

    def decode(self, latents: Latents, control: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """{"global": (B, K)} (+ control displacements name -> (B, C_r, 3) mm) -> vertices (B, N, 3) mm."""
        z = latents["global"]
        ctrl = self.control_tokens(control, len(z))
        return self._tokens_to_vertices(self._decode_tokens(z, ctrl)[-1])

    def forward(self, vertices: torch.Tensor, control: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.decode(self.encode(vertices), control)

    # --- editing and sampling ----------------------------------------------------------------------

    def check_editable(self, where: str = "model") -> None:
        if self.config.stage < 2:
            raise InputError(where, "was trained in stage 1 only, so its control pathway is untrained; train stage 2 "
                                    "from it first: neuralmorph train regional --init MODEL --model.stage 2 ...")

    def edit_support(self, regions, blend_rings: int = BLEND_RINGS) -> torch.Tensor:
        """(N,) bool: the vertices an edit of `regions` (names) may move — every vertex with a soft weight
        > 0 in one of them (the regions, including the overlap where soft weights fall from 1 to 0;
        one-hot regions have none), grown by `blend_rings` rings of mesh edges: the blend band over which
        `edit` fades the change to zero. blend_rings=0: the regions only."""
        idx = torch.as_tensor([self._region_index(name) for name in regions], dtype=torch.int64, device=self.device)
        region = (self.region_weights[:, idx] > 0).any(dim=1)
        blend_rings = check_blend_rings(blend_rings)
        if blend_rings == 0:
            return region
        grown = k_ring(vertex_adjacency(self.faces.cpu().numpy(), len(region)), region.cpu().numpy(), blend_rings)
        return torch.as_tensor(grown, device=self.device)

    @torch.no_grad()
    def edit(self, vertices: torch.Tensor | np.ndarray, control: dict[str, torch.Tensor | np.ndarray],
             latents: Latents | None = None, blend_rings: int = BLEND_RINGS) -> torch.Tensor:
        """One head (N, 3) mm and control displacements name -> (C_r, 3) mm -> the edited head (N, 3)
        float64 mm, on the CPU.

        The edit is applied to the given head, never replaced by the model's reconstruction of it: the
        head is encoded (or `latents` (1, K) used as given), its per-region decoder coefficients are
        computed without and with the displacements, and only the edited regions' changes Δc_r are
        decoded, blended by their soft weights through the model's own point-wise decoder:

            edited_v = input_v + σ_v · B_v Σ_{r edited} w_vr Δc_r        (v with w_vr > 0 for an edited r)

        Regions from `data synth`/`data ingest` are one-hot, so this change would stop dead at the region
        border and leave a crease; it is therefore carried outwards over a blend band of `blend_rings`
        rings of mesh edges around the edited regions, falling linearly to zero just beyond the band
        (`blend_into_rings`). The movable vertices are
        `edit_support(control, blend_rings)`: the edited regions (soft weight > 0, where soft weights
        still scale the change) plus the band. Every other vertex is returned with its input
        coordinates, bit for bit. blend_rings=0: the regions only, no band. With 'local' decoder
        attention the other regions' coefficients do not change anyway; with 'full' attention their
        learned leakage is discarded. Empty `control`: the input head itself."""
        v = (vertices.detach().to("cpu", torch.float64) if torch.is_tensor(vertices)
             else torch.as_tensor(np.array(vertices, np.float64)))
        if v.ndim != 2 or v.shape != self.mean.shape:
            raise InputError("vertices", f"expected shape ({self.mean.shape[0]}, 3), got {tuple(v.shape)}")
        blend_rings = check_blend_rings(blend_rings)
        if not control:
            return v.clone()
        z = latents["global"] if latents is not None else self.encode(v[None].to(self.device, self.mean.dtype))["global"]
        ctl = {k: torch.as_tensor(d, dtype=self.mean.dtype, device=self.device)[None] for k, d in control.items()}
        tokens = self.control_tokens(ctl, len(z))    # validates names, shapes and values first
        base = self._coefficients(self._decode_tokens(z, None)[-1])
        moved = self._coefficients(self._decode_tokens(z, tokens)[-1])
        edited = torch.zeros(self.n_regions, dtype=torch.bool, device=self.device)
        edited[[self._region_index(k) for k in ctl]] = True
        delta_c = torch.where(edited[None, :, None], moved - base, torch.zeros_like(base))
        delta = (self.scale * self._offsets(delta_c))[0].to("cpu", torch.float64)
        region = self.edit_support(ctl, blend_rings=0).cpu().numpy()
        blended, support = blend_into_rings(delta.numpy(), region, self.faces.cpu().numpy(), blend_rings)
        return torch.where(torch.as_tensor(support)[:, None], v + torch.as_tensor(blended), v)

    def sample_control(self, region: str, n: int = 1, temperature: float = 1.0, seed: int = 0) -> torch.Tensor:
        """(n, C_r, 3) mm draws from the region's control-displacement Gaussian (deterministic by seed);
        temperature scales the spread (0: the mean)."""
        if not (math.isfinite(temperature) and temperature >= 0):
            raise InputError("temperature", f"must be a finite number >= 0, got {temperature}")
        r = self._region_index(region)
        if str(r) not in self.control_prior:
            raise InputError("region", f"region {region!r} has no control vertices")
        gen = torch.Generator(device="cpu").manual_seed(seed)
        return self.control_prior[str(r)].sample(n, temperature, gen).reshape(n, -1, 3)

    @torch.no_grad()
    def resample_region(self, vertices: torch.Tensor | np.ndarray, region: str, seed: int = 0,
                        temperature: float = 1.0, blend_rings: int = BLEND_RINGS) -> torch.Tensor:
        """A head (N, 3) mm with one region redrawn: `edit` with control displacements drawn from the
        region's region-swap prior (`sample_control`), so only the region and its blend band
        (`blend_rings` rings of mesh edges) move."""
        delta = self.sample_control(region, 1, temperature, seed)[0]
        return self.edit(vertices, {region: delta}, blend_rings=blend_rings)

    projection = "encode, then refine the latents"

    def project(self, vertices: torch.Tensor, steps: int = 100, prior_weight: float | None = None) -> Latents:
        """Encode, then `refine` for `steps` (prior_weight None: refine's default), 64 heads at a time."""
        pw = {} if prior_weight is None else {"prior_weight": prior_weight}
        with torch.enable_grad():  # refine optimises the latents, whatever the caller's grad mode
            return {"global": torch.cat([self.refine(c, steps=steps, **pw)["global"] for c in vertices.split(64)])}

    def refine(self, vertices: torch.Tensor | np.ndarray, steps: int = 100, lr: float = 0.05,
               prior_weight: float = 1e-3) -> Latents:
        """Encode registered heads, then optimise each one's latent against its own vertices.

        vertices: (N, 3) or (B, N, 3) float mm. Returns {"global": (B, K)} (B = 1 for one head).
        Per head it minimises the fitting loop's objective with a vertex term and no pose — mean vertex
        distance + prior_weight · ‖whitened latent‖² — with Adam on the whitened latent; the heads of a
        batch are optimised together (their losses are summed, so each latent sees its own gradient).
        """
        v = torch.as_tensor(np.asarray(vertices, np.float32) if not torch.is_tensor(vertices) else vertices,
                            device=self.device, dtype=torch.float32)
        v = v[None] if v.ndim == 2 else v
        prior = self.prior["global"]
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                w = prior.whiten(self.encode(v)["global"])
            w.requires_grad_(True)
            opt = torch.optim.Adam([w], lr=lr)
            for _ in range(steps):
                opt.zero_grad()
                pred = self.decode({"global": prior.mean + w @ prior.scale_tril.T})
                loss = ((pred - v).norm(dim=-1).mean(dim=1) + prior_weight * w.square().sum(dim=1)).sum()
                loss.backward()
                opt.step()
        finally:
            self.train(was_training)
        return {"global": (prior.mean + w.detach() @ prior.scale_tril.T)}

    # --- training ----------------------------------------------------------------------------------

    def _loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-vertex loss in units of the global scale (≈ mm / σ), averaged (weighted by mask (B, N))."""
        s = self.scale.mean()
        diff = (pred - target) / s
        per = (diff.square().sum(-1) + 1e-8).sqrt() if self.config.loss == "euclidean" else diff.abs().sum(-1)
        if mask is None:
            return per.mean()
        return (per * mask).sum() / mask.sum().clamp_min(1.0)

    def alpha_max(self, step: int) -> float:
        c = self.config
        t = min(1.0, step / max(c.alpha_ramp_steps, 1))
        return c.alpha_max_start + (c.alpha_max_end - c.alpha_max_start) * t

    def _decode_all(self, z, ctrl) -> list[torch.Tensor]:
        layers = self._decode_tokens(z, ctrl, all_layers=self.config.deep_supervision)
        return [self._tokens_to_vertices(t) for t in layers]

    def _supervised(self, outs: list[torch.Tensor], target: torch.Tensor, mask=None) -> torch.Tensor:
        loss = self._loss(outs[-1], target, mask)
        for o in outs[:-1]:
            loss = loss + self.config.deep_supervision_weight * self._loss(o, target, mask)
        return loss

    def training_loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        v = batch["vertices"].to(self.device, self.mean.dtype)
        x_in = v
        if c.augment_noise_mm > 0:
            x_in = v + c.augment_noise_mm * torch.randn_like(v)
        z = self.encode(x_in)["global"]
        outs = self._decode_all(z, None)
        ae = self._supervised(outs, v)
        logs = {"ae": float(ae.detach())}
        if c.stage == 1 or len(v) < 2:
            return ae, logs
        # stage 2: move each source toward the next head in the batch in a random subset of regions
        b = len(v)
        vt = torch.roll(v, 1, dims=0)
        gen_dev = v.device
        amax = self.alpha_max(step)
        alpha = c.alpha_min + (amax - c.alpha_min) * torch.rand(b, 1, 1, device=gen_dev)
        has_ctrl = (self.control_counts > 0)
        pick = (torch.rand(b, self.n_regions, device=gen_dev) < c.region_prob) & has_ctrl
        forced = torch.multinomial(has_ctrl.float().expand(b, -1), 1).flatten()
        pick[torch.arange(b), forced] = True
        pickf = pick.to(v.dtype)
        m = pickf @ self.region_weights.T                                            # (B, N) edited share
        target = v + alpha * m[..., None] * (vt - v)
        control = {}
        starts = np.concatenate([[0], np.cumsum(self.control_counts.tolist())])
        for r, name in enumerate(self.region_names):
            if has_ctrl[r]:
                ids = self.control_ids[starts[r]:starts[r + 1]]
                control[name] = alpha * pickf[:, r, None, None] * (vt[:, ids] - v[:, ids])
        ctrl = self.control_tokens(control, b)
        outs_m = self._decode_all(z, ctrl)
        manip = self._supervised(outs_m, target)
        outside = (1 - m).clamp_min(0)
        # outside the edited regions the edit must leave the autoencoder's output as it was
        local = self._loss(outs_m[-1], outs[-1].detach(), outside * (m == 0))
        loss = c.ae_weight * ae + c.manip_weight * manip + c.locality_weight * local
        logs.update(manip=float(manip.detach()), local=float(local.detach()), alpha_max=amax)
        return loss, logs

    @torch.no_grad()
    def validation_metrics(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, float]:
        v = batch["vertices"].to(self.device, self.mean.dtype)
        pred = self.decode(self.encode(v))
        return {"vertex_error_mm": float((pred - v).norm(dim=-1).mean())}

    def preview(self, batch: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """TensorBoard meshes: the first validation head and its reconstruction (mm)."""
        v = batch["vertices"][:1].to(self.device, self.mean.dtype)
        faces = self.faces[None]
        return {"val/target": (v, faces), "val/reconstruction": (self.decode(self.encode(v)), faces)}

    # --- priors ------------------------------------------------------------------------------------

    @torch.no_grad()
    def fit_prior(self, dataset: HeadDataset, training_set: "RegionalTrainData | None" = None,
                  batch_size: int = 64, control: bool = True) -> "RegionalModel":
        """Full-covariance Gaussian over the training codes of the global latent, then (`control`) every
        controlled region's Gaussian over control displacements from region swaps (`prior.py`)."""
        from neuralmorph.models.regional.prior import fit_control_prior

        data = (training_set or RegionalTrainData(dataset, "train")).vertices
        self.prior["global"].fit(self._codes(data, batch_size).cpu())
        if control:
            fit_control_prior(self, dataset)
        return self

    @torch.no_grad()
    def dataset_latents(self, dataset: HeadDataset, split: str = "train", batch_size: int = 64) -> Latents:
        """The encoded global code of every registered head of `split` (what `fit_prior` fits)."""
        return {"global": self._codes(RegionalTrainData(dataset, split).vertices, batch_size)}

    def _codes(self, vertices: torch.Tensor, batch_size: int) -> torch.Tensor:
        """(N, V, 3) mm -> (N, K) encoded global codes, in eval mode, `batch_size` heads at a time."""
        was = self.training
        self.eval()
        codes = torch.cat([self.encode(vertices[i:i + batch_size].to(self.device))["global"]
                           for i in range(0, len(vertices), batch_size)])
        self.train(was)
        return codes

    @classmethod
    def for_benchmark(cls, latent_size: int) -> tuple[RegionalConfig, TrainerConfig]:
        # lr 3e-4: the embeddings start from a per-region PCA, which a larger step size throws away
        # (docs/benchmarks.md: 1e-3 climbs from 0.53 to 1.55 mm in the first 250 steps).
        return RegionalConfig(latent_size=latent_size), TrainerConfig(batch_size=32, lr=3e-4, weight_decay=0.01)

    @classmethod
    def smoke_config(cls) -> tuple[RegionalConfig, None]:
        return RegionalConfig(latent_size=8, dim=32, heads=2, encoder_depth=1, decoder_depth=1, embed_size=8,
                              control_per_region=4, control_hidden=16), None

    def training_summary(self, training_set=None) -> str:
        return f"stage {self.config.stage}, latent {self.latent_sizes['global']}"
