"""`pca`: the linear 3DMM, FLAME/BFM-style — the baseline every neural family must beat.

vertices = mean + Σ_k z_id[k] σ_id[k] u_id[k] + Σ_k z_ex[k] σ_ex[k] u_ex[k]

Identity components are the principal components of the subjects' neutral heads (centred on their
mean); expression components are those of expression-minus-neutral residuals (not centred, so z_ex = 0
is exactly the neutral face). Latents are in units of their component's standard deviation, so a
standard normal is the natural scale; the Gaussian prior is fitted to the training latents (the
expression latents of a population that often opens its jaw do not have zero mean).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.errors import InputError
from neuralmorph.frame import Frame, Similarity
from neuralmorph.models.base import Latents, ModelConfig, RegisteredModel, register


@dataclass(frozen=True)
class PCAConfig(ModelConfig):
    identity_dims: int | None = None
    """Identity components (unset, None: the fewest that explain `explained_variance` of the variance)."""
    expression_dims: int | None = None
    """Expression components (unset, None: the fewest that explain `explained_variance` of the variance)."""
    explained_variance: float = 0.98
    """Fraction of the training variance to keep when a size is not given."""

    def __post_init__(self):
        for name in ("identity_dims", "expression_dims"):
            k = getattr(self, name)
            if k is not None and k < 0:
                raise InputError(f"--{name.replace('_', '-')}", f"must be >= 0, got {k}")
        if not 0 < self.explained_variance <= 1:
            raise InputError("--explained-variance", f"must be in (0, 1], got {self.explained_variance}")


def neutral_rows(dataset: HeadDataset, split: str | None = "train") -> dict[str, int]:
    """Subject -> row of its neutral head: the one labelled 'neutral' (any case), else its first head."""
    rows: dict[str, int] = {}
    labelled: set[str] = set()
    for h in dataset.heads:
        if h.registered < 0 or (split is not None and h.split != split) or h.subject in labelled:
            continue
        if h.expression.lower() == "neutral":
            rows[h.subject] = h.registered
            labelled.add(h.subject)
        else:
            rows.setdefault(h.subject, h.registered)
    return rows


def _principal(x: np.ndarray, centre: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x: (S, D) float64 -> mean (D,), components (R, D) orthonormal rows, variances (R,) descending."""
    mean = x.mean(axis=0) if centre else np.zeros(x.shape[1])
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s**2 / max(len(x) - 1 if centre else len(x), 1)
    rank = int((s > s[0] * 1e-9).sum()) if len(s) and s[0] > 0 else 0
    return mean, vt[:rank], var[:rank]


def _choose(var: np.ndarray, k: int | None, fraction: float) -> int:
    if k is not None:
        return min(k, len(var))
    if len(var) == 0:
        return 0
    cum = np.cumsum(var) / var.sum()
    return int(np.searchsorted(cum, fraction - 1e-12) + 1)


@register
class PCAModel(RegisteredModel):
    family = "pca"
    summary = "The linear 3DMM: identity PCA on neutral heads, expression PCA on residuals."
    Config = PCAConfig
    trainable = False      # solved in closed form by `build`
    truncatable = True
    cli_model_prefix = False  # `train pca --identity-dims K`
    projection = "exact projection"

    def __init__(self, config: PCAConfig, n_vertices: int, k_id: int, k_ex: int, n_id_spectrum: int,
                 n_ex_spectrum: int, faces, frame: Frame, **kw):
        super().__init__(config, {"identity": k_id, "expression": k_ex}, faces, frame, **kw)
        self.register_buffer("mean", torch.zeros(n_vertices, 3))
        self.register_buffer("identity_basis", torch.zeros(k_id, n_vertices, 3))    # σ_k u_k, mm
        self.register_buffer("expression_basis", torch.zeros(k_ex, n_vertices, 3))
        # Full variance spectra of the training data (mm²), kept for compactness curves.
        self.register_buffer("identity_spectrum", torch.zeros(n_id_spectrum))
        self.register_buffer("expression_spectrum", torch.zeros(n_ex_spectrum))

    @property
    def n_vertices(self) -> int:
        return self.mean.shape[0]

    def decode(self, latents: Latents) -> torch.Tensor:
        z_id, z_ex = latents["identity"], latents["expression"]
        n = self.n_vertices
        # Flat (K, 3N) matrix products: several times faster than einsum over (K, N, 3) on CPU.
        offsets = z_id @ self.identity_basis.reshape(-1, 3 * n) + z_ex @ self.expression_basis.reshape(-1, 3 * n)
        return self.mean + offsets.reshape(-1, n, 3)

    # --- training ----------------------------------------------------------------------------------

    @classmethod
    def build(cls, dataset: HeadDataset, config: PCAConfig = PCAConfig(), training_set=None, split: str = "train",
              seed: int = 0) -> "PCAModel":
        """Both PCAs (and the priors) fitted to the registered heads of one split of `dataset` (closed form:
        no training set, no seed)."""
        if dataset.vertices is None:
            raise InputError(dataset.where, "the PCA model needs registered heads (this dataset holds raw scans only)")
        neutral = neutral_rows(dataset, split)
        if len(neutral) < 2:
            raise InputError(dataset.where, f"the {split!r} split has {len(neutral)} subject(s); identity PCA needs at least 2")
        n = dataset.n_vertices

        verts = dataset.vertices.reshape(len(dataset.vertices), -1).astype(np.float64)
        subjects = sorted(neutral)
        id_x = verts[[neutral[s] for s in subjects]]
        mean, id_comp, id_var = _principal(id_x, centre=True)
        residual_rows = [(h.registered, neutral[h.subject]) for h in dataset.heads
                         if h.split == split and h.registered >= 0 and h.registered != neutral.get(h.subject, -1)]
        ex_x = (np.stack([verts[r] - verts[nr] for r, nr in residual_rows]) if residual_rows
                else np.zeros((0, verts.shape[1])))
        if len(ex_x):
            _, ex_comp, ex_var = _principal(ex_x, centre=False)
        else:
            ex_comp, ex_var = np.zeros((0, verts.shape[1])), np.zeros(0)
        k_id = _choose(id_var, config.identity_dims, config.explained_variance)
        k_ex = _choose(ex_var, config.expression_dims, config.explained_variance)
        model = cls(config, n, k_id, k_ex, len(id_var), len(ex_var), dataset.faces, dataset.frame,
                    landmark_ids=dataset.landmark_ids, region_names=dataset.region_names,
                    region_weights=dataset.region_weights)
        f32 = lambda a: torch.as_tensor(np.asarray(a, np.float32))  # noqa: E731
        model.mean.copy_(f32(mean.reshape(n, 3)))
        model.identity_basis.copy_(f32((np.sqrt(id_var[:k_id, None]) * id_comp[:k_id]).reshape(k_id, n, 3)))
        model.expression_basis.copy_(f32((np.sqrt(ex_var[:k_ex, None]) * ex_comp[:k_ex]).reshape(k_ex, n, 3)))
        model.identity_spectrum.copy_(f32(id_var))
        model.expression_spectrum.copy_(f32(ex_var))
        # Priors over the training codes (standardised projections).
        z_id = (id_x - mean) @ id_comp[:k_id].T / np.sqrt(id_var[:k_id])
        model.prior["identity"].fit(torch.as_tensor(z_id))
        if k_ex and len(ex_x):
            model.prior["expression"].fit(torch.as_tensor(ex_x @ ex_comp[:k_ex].T / np.sqrt(ex_var[:k_ex])))
        return model

    @classmethod
    def for_benchmark(cls, latent_size: int) -> tuple[PCAConfig, None]:
        half = latent_size // 2  # split evenly between identity and expression
        return PCAConfig(half, latent_size - half), None

    @classmethod
    def smoke_config(cls) -> tuple[PCAConfig, None]:
        return PCAConfig(2, 2), None

    def training_summary(self, training_set=None) -> str:
        spec = self.identity_spectrum
        k = self.latent_sizes["identity"]
        kept = float(spec[:k].sum() / spec.sum()) if len(spec) else 0.0
        return f"identity {k} ({kept:.1%} of variance), expression {self.latent_sizes['expression']} components"

    def variance_spectrum(self, space: str) -> torch.Tensor:
        """The training data's full variance spectrum (mm²) of `space`, not only the kept components."""
        return {"identity": self.identity_spectrum, "expression": self.expression_spectrum}[space]

    @classmethod
    def from_saved(cls, config: PCAConfig, spec: dict, arrays: dict[str, np.ndarray]) -> "PCAModel":
        return cls(config, arrays["mean"].shape[0], spec["latent_sizes"]["identity"], spec["latent_sizes"]["expression"],
                   len(arrays["identity_spectrum"]), len(arrays["expression_spectrum"]), arrays["faces"],
                   Frame.from_dict(spec["frame"]), landmark_ids=arrays["landmark_ids"],
                   region_names=tuple(spec.get("region_names", ())), region_weights=arrays["region_weights"])

    def truncated(self, k_id: int, k_ex: int) -> "PCAModel":
        """The same model with only its first k_id identity and k_ex expression components."""
        k_id, k_ex = min(k_id, self.latent_sizes["identity"]), min(k_ex, self.latent_sizes["expression"])
        cfg = PCAConfig(k_id, k_ex, self.config.explained_variance)
        out = PCAModel(cfg, self.n_vertices, k_id, k_ex, len(self.identity_spectrum), len(self.expression_spectrum),
                       self.faces.cpu().numpy(), self.frame, landmark_ids=self.landmark_ids.cpu().numpy(),
                       region_names=self.region_names, region_weights=self.region_weights.cpu().numpy())
        with torch.no_grad():
            out.mean.copy_(self.mean)
            out.identity_basis.copy_(self.identity_basis[:k_id])
            out.expression_basis.copy_(self.expression_basis[:k_ex])
            out.identity_spectrum.copy_(self.identity_spectrum)
            out.expression_spectrum.copy_(self.expression_spectrum)
            for name, k in (("identity", k_id), ("expression", k_ex)):
                out.prior[name].mean.copy_(self.prior[name].mean[:k])
                # The marginal of a Gaussian over the first k coordinates: Cholesky of the leading block.
                out.prior[name].scale_tril.copy_(self.prior[name].scale_tril[:k, :k])
        return out.to(self.device)

    @torch.no_grad()
    def dataset_latents(self, dataset: HeadDataset, split: str = "train") -> Latents:
        """Each registered head of `split` as `build` codes it: the identity of its subject's neutral head,
        the expression of its residual from that head (zero for the neutral head itself)."""
        if dataset.vertices is None:
            raise InputError(dataset.where, "holds no registered heads to give latents for")
        neutral = neutral_rows(dataset, split)
        heads = [h for h in dataset.heads if h.split == split and h.registered >= 0]
        if not heads:
            raise InputError(dataset.where, f"no registered heads in the {split!r} split")
        if dataset.n_vertices != self.n_vertices:
            raise InputError(dataset.where, f"its heads have {dataset.n_vertices} vertices, the model {self.n_vertices}")
        v = torch.as_tensor(np.asarray(dataset.vertices, np.float64))
        flat = lambda basis: basis.double().reshape(len(basis), -1)  # noqa: E731  (K, 3N)
        own = v[[h.registered for h in heads]].reshape(len(heads), -1)
        base = v[[neutral[h.subject] for h in heads]].reshape(len(heads), -1)
        # z_k = <x, σ_k u_k> / σ_k²: the standardised projection `build` fits its priors to
        z_id = (base - self.mean.double().reshape(1, -1).cpu()) @ flat(self.identity_basis).cpu().T \
            / self.identity_spectrum[:self.latent_sizes["identity"]].double().cpu()
        z_ex = (own - base) @ flat(self.expression_basis).cpu().T \
            / self.expression_spectrum[:self.latent_sizes["expression"]].double().cpu()
        return {"identity": z_id.float().to(self.device), "expression": z_ex.float().to(self.device)}

    # --- closed-form fit -----------------------------------------------------------------------------

    @torch.no_grad()
    def project(self, vertices: torch.Tensor, steps: int = 100, prior_weight: float | None = None) -> Latents:
        """Latents whose decode is closest (least squares, mm²) to registered vertices (B, N, 3) mm.

        prior_weight λ adds λ‖whitened z‖² (ridge towards the prior mean); 0 (or None) is the plain
        projection. Exact: the model is linear, so no iterations are needed (`steps` is unused).
        """
        z, _ = self._solve(vertices.double(), prior_weight or 0.0, rigid=False)
        return z

    @torch.no_grad()
    def project_rigid(self, vertices: np.ndarray, prior_weight: float | None = None) -> tuple[Latents, Similarity]:
        """Like `project` for one mesh (N, 3) mm, also solving a small rigid motion δ of the target
        (linearised about its centroid) so that decode(z) ≈ δ(vertices). One Gauss-Newton step of the
        joint problem; `fitting.fit_registered` iterates it."""
        x = torch.as_tensor(vertices, dtype=torch.float64, device=self.device)[None]
        z, extra = self._solve(x, prior_weight or 0.0, rigid=True)
        w, t = extra[0, :3].cpu().numpy(), extra[0, 3:].cpu().numpy()
        c = x[0].mean(dim=0).cpu().numpy()
        rot = Rotation.from_rotvec(w).as_matrix()
        return z, Similarity(1.0, rot, c + t - rot @ c)

    def _solve(self, x: torch.Tensor, prior_weight: float, rigid: bool) -> tuple[Latents, torch.Tensor]:
        n = self.n_vertices
        cols = torch.cat([self.identity_basis, self.expression_basis]).reshape(-1, n * 3).double()  # (K, 3N)
        k = len(cols)
        if rigid:
            # Moving the target by ω × (x - c) + t: columns -(e_j × (x - c)) and -e_j, in the same equation.
            xc = x[0] - x[0].mean(dim=0)
            eye = torch.eye(3, dtype=torch.float64, device=x.device)
            rot_cols = torch.stack([-torch.linalg.cross(eye[j].expand_as(xc), xc) for j in range(3)]).reshape(3, -1)
            trans_cols = torch.stack([-eye[j].expand(n, 3) for j in range(3)]).reshape(3, -1)
            cols = torch.cat([cols, rot_cols, trans_cols])
        rhs = (x - self.mean.double()).reshape(len(x), -1)
        gram = cols @ cols.T
        target = cols @ rhs.T
        if prior_weight > 0:
            # Prior energies in whitened coordinates: (z - μ)ᵀ Σ⁻¹ (z - μ) per space, block-diagonal.
            prec, mu = [], []
            for name in ("identity", "expression"):
                linv = torch.linalg.inv(self.prior[name].scale_tril.double())
                prec.append(linv.T @ linv)
                mu.append(self.prior[name].mean.double())
            precision = torch.block_diag(*prec)
            gram[:k, :k] += prior_weight * precision
            target[:k] += prior_weight * (precision @ torch.cat(mu))[:, None]
        # A whisper of ridge keeps the solve defined where directions coincide (the bases with each
        # other, or with a rigid motion: PCA of unaligned heads captures some translation too).
        gram = gram + 1e-10 * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
        sol = torch.linalg.solve(gram, target).T
        k_id = self.latent_sizes["identity"]
        z = {"identity": sol[:, :k_id].float().contiguous(), "expression": sol[:, k_id:k].float().contiguous()}
        return z, sol[:, k:]
