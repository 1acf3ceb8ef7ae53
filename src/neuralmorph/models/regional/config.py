"""The regional family's config: every size, weight and schedule, and which of them a further run may change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from neuralmorph.errors import InputError
from neuralmorph.models.base import ModelConfig


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
    """local: each region token attends only to the latent token and itself, so a control token cannot
    change another region (locality by construction); full: every decoder token attends to every token
    (locality must then be learned in stage 2)."""
    normalise: Literal["global", "vertex"] = "global"
    """Scale of the normalised offsets: one global σ, or one σ per vertex."""
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
    """Stage 2: largest α at step 0."""
    alpha_max_end: float = 1.0
    """Stage 2: largest α after the ramp (alpha_ramp_steps)."""
    alpha_ramp_steps: int = 1000
    """Stage 2: steps over which the largest α ramps linearly from alpha_max_start to alpha_max_end."""
    augment_noise_mm: float = 0.0
    """Std of Gaussian noise added to encoder inputs during training (0: none)."""

    RUN_FIELDS: ClassVar[tuple[str, ...]] = (
        "decoder_attention", "stage", "loss", "deep_supervision", "deep_supervision_weight", "ae_weight",
        "manip_weight", "locality_weight", "region_prob", "alpha_min", "alpha_max_start", "alpha_max_end",
        "alpha_ramp_steps", "augment_noise_mm")
    """The fields a run may set anew when it trains further from a saved model (`--init`); every other
    field shapes the weights or was used to build them, and comes from the saved model."""

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
