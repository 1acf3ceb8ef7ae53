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
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.errors import InputError
from neuralmorph.frame import Frame
from neuralmorph.models.base import GaussianPrior, Latents, ModelConfig, MorphableModel, register

# --- configuration ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegionalConfig(ModelConfig):
    """Every size, weight and schedule of the regional model."""

    latent_size: int = 32
    """Size of the one global latent (the bottleneck)."""
    dim: int = 128
    """Token width of both transformers."""
    heads: int = 4
    """Attention heads."""
    encoder_depth: int = 2
    """Transformer layers mixing the region tokens in the encoder."""
    decoder_depth: int = 2
    """Transformer layers of the decoder."""
    ffn_mult: int = 2
    """Feed-forward width of the transformers, × dim."""
    embed_size: int = 32
    """D: per-vertex embedding size of the point-wise encoder and decoder (coefficients per region)."""
    decoder_attention: Literal["full", "local"] = "local"
    """'local' (default): a region token attends only to the latent token and itself, so a control token
    cannot reach another region at all (locality by construction, measured 0 change outside the region);
    'full': every decoder token attends to every token (LAMM; locality must then be learned in stage 2)."""
    normalise: Literal["global", "vertex"] = "global"
    """Scale of the normalised offsets: one global σ, or a σ per vertex (LAMM)."""
    control_per_region: int = 6
    """Control vertices per region (farthest-point samples of the region's interior; 0: no control)."""
    control_hidden: int = 64
    """Hidden width of the bias-free control MLPs."""
    n_regions: int = 9
    """Regions of the automatic segmentation, used only when a dataset has no regions."""
    pca_init: bool = True
    """Initialise the per-vertex embeddings from a per-region PCA of the training heads."""
    # training
    stage: int = 1
    """1: autoencoding; 2: manipulation (initialise from a stage-1 model)."""
    loss: Literal["euclidean", "l1"] = "euclidean"
    """Per-vertex reconstruction loss: Euclidean distance (the metric) or L1 of the coordinates."""
    deep_supervision: bool = False
    """Also decode every intermediate decoder layer and supervise it."""
    deep_supervision_weight: float = 0.25
    """Weight of each intermediate layer's loss (the last layer has weight 1)."""
    ae_weight: float = 1.0
    """Stage 2: weight of the autoencoding half."""
    manip_weight: float = 1.0
    """Stage 2: weight of the manipulation half."""
    locality_weight: float = 1.0
    """Stage 2: weight of the change outside the edited regions."""
    region_prob: float = 0.5
    """Stage 2: probability that a region is edited in a manipulation sample (≥ 1 region always)."""
    alpha_min: float = 0.25
    """Stage 2: smallest α."""
    alpha_max_start: float = 0.25
    """Stage 2: largest α at step 0 ..."""
    alpha_max_end: float = 1.0
    """... ramped linearly to this ..."""
    alpha_ramp_steps: int = 1000
    """... over this many steps."""
    augment_noise_mm: float = 0.0
    """Std of Gaussian noise added to encoder inputs during training (0: none)."""

    def __post_init__(self):
        if self.latent_size < 1 or self.dim < 1 or self.embed_size < 1:
            raise InputError("regional config", "latent_size, dim and embed_size must be >= 1")
        if self.dim % self.heads:
            raise InputError("regional config", f"dim {self.dim} must be divisible by heads {self.heads}")
        if self.stage not in (1, 2):
            raise InputError("regional config", f"stage must be 1 or 2, got {self.stage}")
        if not 0 <= self.alpha_min <= self.alpha_max_start <= self.alpha_max_end:
            raise InputError("regional config", "need 0 <= alpha_min <= alpha_max_start <= alpha_max_end")
        if not 0 < self.region_prob <= 1:
            raise InputError("regional config", f"region_prob must be in (0, 1], got {self.region_prob}")
        for name in ("decoder_attention", "normalise", "loss"):
            allowed = {"decoder_attention": ("full", "local"), "normalise": ("global", "vertex"),
                       "loss": ("euclidean", "l1")}[name]
            if getattr(self, name) not in allowed:
                raise InputError("regional config", f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


# --- regions: segmentation, rings, control vertices -------------------------------------------------


def vertex_neighbours(faces: np.ndarray, n: int) -> list[np.ndarray]:
    """Vertex -> its 1-ring neighbours (from the triangle edges)."""
    f = np.asarray(faces, np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    e = np.unique(e, axis=0)
    split = np.searchsorted(e[:, 0], np.arange(n + 1))
    return [e[split[i]:split[i + 1], 1] for i in range(n)]


def _adjacency(faces: np.ndarray, n: int):
    from scipy.sparse import coo_matrix

    f = np.asarray(faces, np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    a = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)).tocsr()
    a = ((a + a.T) > 0).astype(np.float64)
    return a


def farthest_points(points: np.ndarray, k: int, start: int = 0) -> np.ndarray:
    """k indices into points (M, 3) by farthest-point sampling from `start`."""
    k = min(k, len(points))
    chosen = [start]
    d = np.linalg.norm(points - points[start], axis=1)
    for _ in range(1, k):
        i = int(d.argmax())
        chosen.append(i)
        d = np.minimum(d, np.linalg.norm(points - points[i], axis=1))
    return np.array(chosen, np.int64)


def segment_template(vertices: np.ndarray, n_regions: int, iterations: int = 20) -> np.ndarray:
    """Automatic hard segmentation of a template (N, 3) into n_regions by k-means of the vertex positions
    (farthest-point start, deterministic). Returns (N, R) float32 one-hot region weights."""
    v = np.asarray(vertices, np.float64)
    if not 1 <= n_regions <= len(v):
        raise InputError("regions", f"need 1 <= n_regions <= {len(v)}, got {n_regions}")
    start = int(np.linalg.norm(v - v.mean(0), axis=1).argmin())
    centres = v[farthest_points(v, n_regions, start)]
    for _ in range(iterations):
        label = ((v[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        for r in range(n_regions):
            if (label == r).any():
                centres[r] = v[label == r].mean(0)
    label = ((v[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
    w = np.zeros((len(v), n_regions), np.float32)
    w[np.arange(len(v)), label] = 1
    return w[:, w.sum(0) > 0]


def region_weights_from_labels(labels: np.ndarray, n_regions: int | None = None) -> np.ndarray:
    """User regions as one label per vertex (N,) -> (N, R) one-hot weights."""
    labels = np.asarray(labels, np.int64)
    r = int(labels.max()) + 1 if n_regions is None else n_regions
    if labels.min() < 0 or labels.max() >= r:
        raise InputError("regions", f"labels must lie in [0, {r})")
    w = np.zeros((len(labels), r), np.float32)
    w[np.arange(len(labels)), labels] = 1
    return w


def soften_weights(weights: np.ndarray, faces: np.ndarray, hops: int) -> np.ndarray:
    """Blend region weights over `hops` rings of neighbours (rows keep summing to 1)."""
    w = np.asarray(weights, np.float64)
    if hops <= 0:
        return w.astype(np.float32)
    a = _adjacency(faces, len(w))
    a = a + __import__("scipy.sparse", fromlist=["eye"]).eye(len(w))
    deg = np.asarray(a.sum(1)).ravel()
    for _ in range(hops):
        w = (a @ w) / deg[:, None]
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def check_region_weights(weights: np.ndarray, n: int, where: str = "regions") -> np.ndarray:
    w = np.asarray(weights, np.float32)
    if w.ndim != 2 or w.shape[0] != n or w.shape[1] < 1:
        raise InputError(where, f"region weights must be (N={n}, R>=1), got {w.shape}")
    if (w < 0).any() or not np.isfinite(w).all():
        raise InputError(where, "region weights must be finite and non-negative")
    if not np.allclose(w.sum(1), 1.0, atol=1e-4):
        raise InputError(where, "region weights must sum to 1 per vertex")
    if (w.sum(0) <= 0).any():
        raise InputError(where, "every region needs at least one vertex")
    return w


def boundary_ring(weights: np.ndarray, faces: np.ndarray, region: int, hops: int = 1) -> np.ndarray:
    """Vertex ids of region `region`'s boundary ring: vertices of faces that have vertices both with
    and without a share in the region, grown by hops-1 further rings (both sides of the boundary)."""
    w = np.asarray(weights)
    inside = w[:, region] > 0
    f = np.asarray(faces, np.int64)
    fin = inside[f]
    mixed = fin.any(1) & ~fin.all(1)
    ring = np.zeros(len(w), bool)
    ring[f[mixed].ravel()] = True
    # vertices whose weight is shared with other regions are boundary too
    ring |= inside & (w[:, region] < 1 - 1e-6)
    if hops > 1:
        a = _adjacency(f, len(w))
        for _ in range(hops - 1):
            ring = ring | (a @ ring.astype(np.float64) > 0)
    return np.flatnonzero(ring)


def pick_control_vertices(template: np.ndarray, weights: np.ndarray, faces: np.ndarray,
                          per_region: int) -> list[np.ndarray]:
    """Per region: `per_region` control vertex ids, farthest-point samples of the region's interior (its
    vertices with weight ≥ 0.5 off its boundary ring), starting at the interior vertex nearest the
    region's centroid. Regions too small to have an interior use all their weighted vertices."""
    out = []
    for r in range(weights.shape[1]):
        if per_region <= 0:
            out.append(np.zeros(0, np.int64))
            continue
        members = np.flatnonzero(weights[:, r] >= 0.5)
        interior = np.setdiff1d(members, boundary_ring(weights, faces, r))
        pool = interior if len(interior) >= per_region else (members if len(members) else np.flatnonzero(weights[:, r] > 0))
        p = template[pool]
        start = int(np.linalg.norm(p - p.mean(0), axis=1).argmin())
        out.append(np.sort(pool[farthest_points(p, per_region, start)]))
    return out


# --- data ---------------------------------------------------------------------------------------------


class RegionalTrainData(torch.utils.data.Dataset):
    """One split of a dataset's registered heads as training items {"vertices": (N, 3) float32 mm}."""

    def __init__(self, dataset: HeadDataset, split: str | None = "train"):
        if dataset.vertices is None:
            raise InputError("dataset", "the regional model needs registered heads (this dataset holds raw scans only)")
        self.rows = dataset.registered_rows(split)
        if len(self.rows) == 0:
            raise InputError("dataset", f"no registered heads in the {split!r} split")
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
class RegionalModel(MorphableModel):
    family = "regional"
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
    def build(cls, dataset: HeadDataset, config: RegionalConfig = RegionalConfig(), split: str = "train",
              region_weights: np.ndarray | None = None, region_names: tuple[str, ...] | None = None,
              seed: int = 0) -> "RegionalModel":
        """A fresh model for `dataset`: normalisation, regions (the dataset's, the given ones, or an automatic
        segmentation of the training mean head), control vertices and the PCA initialisation from `split`."""
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

    def with_config(self, **changes) -> "RegionalModel":
        """The same weights under a changed config (e.g. stage=2 for manipulation training from stage 1).
        Sizes that shape the weights cannot change."""
        fixed = ("latent_size", "dim", "heads", "encoder_depth", "decoder_depth", "ffn_mult", "embed_size",
                 "control_per_region", "control_hidden")
        bad = [k for k in changes if k in fixed and changes[k] != getattr(self.config, k)]
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

    def _tokens_to_vertices(self, tokens: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.head_hidden(self.dec_norm(tokens)))
        coef = torch.einsum("bre,red->brd", h, self.head_w) + self.head_b          # (B, R, D)
        coef = coef + self._skip_coef                                                # linear path
        per_vertex = torch.matmul(self.region_weights, coef)                         # (B, N, D) blended
        offsets = (self.dec_embed * per_vertex[:, :, None, :]).sum(-1)             # (B, N, 3)
        return self.mean + self.scale * offsets

    def decode(self, latents: Latents, control: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """{"global": (B, K)} (+ control displacements name -> (B, C_r, 3) mm) -> vertices (B, N, 3) mm."""
        z = latents["global"]
        ctrl = self.control_tokens(control, len(z))
        return self._tokens_to_vertices(self._decode_tokens(z, ctrl)[-1])

    def forward(self, vertices: torch.Tensor, control: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.decode(self.encode(vertices), control)

    # --- editing and sampling ----------------------------------------------------------------------

    @torch.no_grad()
    def edit(self, vertices: torch.Tensor | np.ndarray, control: dict[str, torch.Tensor | np.ndarray],
             latents: Latents | None = None) -> torch.Tensor:
        """One head (N, 3) mm and control displacements name -> (C_r, 3) mm -> the edited head (N, 3) mm.
        The head is encoded (or `latents` used as given) and decoded with the displacements."""
        v = torch.as_tensor(np.asarray(vertices, np.float32) if not torch.is_tensor(vertices) else vertices,
                            device=self.device, dtype=self.mean.dtype)
        z = latents if latents is not None else self.encode(v[None])
        ctl = {k: torch.as_tensor(np.asarray(d, np.float32) if not torch.is_tensor(d) else d,
                                  device=self.device)[None] for k, d in control.items()}
        return self.decode(z, ctl)[0]

    def sample_control(self, region: str, n: int = 1, temperature: float = 1.0, seed: int = 0) -> torch.Tensor:
        """(n, C_r, 3) mm draws from the region's control-displacement Gaussian (deterministic by seed)."""
        r = self._region_index(region)
        if str(r) not in self.control_prior:
            raise InputError("region", f"region {region!r} has no control vertices")
        gen = torch.Generator(device="cpu").manual_seed(seed)
        return self.control_prior[str(r)].sample(n, temperature, gen).reshape(n, -1, 3)

    @torch.no_grad()
    def resample_region(self, vertices: torch.Tensor | np.ndarray, region: str, seed: int = 0,
                        temperature: float = 1.0) -> torch.Tensor:
        """A head (N, 3) mm with one region redrawn from its region-swap prior (other regions kept)."""
        delta = self.sample_control(region, 1, temperature, seed)[0]
        return self.edit(vertices, {region: delta})

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
    def validation_metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
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
    def fit_prior(self, dataset: HeadDataset, split: str = "train", batch_size: int = 64) -> "RegionalModel":
        """Full-covariance Gaussian over the training codes of the global latent."""
        data = RegionalTrainData(dataset, split).vertices
        was = self.training
        self.eval()
        codes = torch.cat([self.encode(data[i:i + batch_size].to(self.device))["global"].cpu()
                           for i in range(0, len(data), batch_size)])
        self.train(was)
        self.prior["global"].fit(codes)
        return self


# --- a small training loop (the generic trainer in neuralmorph.training supersedes it) ------------------


def quick_train(model: RegionalModel, data: RegionalTrainData, steps: int, batch_size: int = 32, lr: float = 2e-3,
                weight_decay: float = 0.0, warmup: int = 50, seed: int = 0, log_every: int = 0,
                val: RegionalTrainData | None = None) -> dict[str, float]:
    """AdamW with linear warm-up and cosine decay; deterministic by seed. Returns the last logs."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * min(s / max(steps, 1), 1.0))))
    model.train()
    logs: dict[str, float] = {}
    t0 = time.perf_counter()
    n = len(data)
    perm = torch.randperm(n, generator=gen)
    pos = 0
    for step in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + min(batch_size, n)]
        pos += batch_size
        loss, logs = model.training_loss({"vertices": data.vertices[idx]}, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            msg = " ".join(f"{k}={v:.4f}" for k, v in logs.items())
            if val is not None:
                model.eval()
                msg += f" val={model.validation_metrics({'vertices': val.vertices})['vertex_error_mm']:.3f}mm"
                model.train()
            print(f"step {step} {msg} ({time.perf_counter() - t0:.0f}s)", flush=True)
    model.eval()
    return logs
