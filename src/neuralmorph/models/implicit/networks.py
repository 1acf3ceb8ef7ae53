"""The networks of the implicit families: a DeepSDF-style field, forward / backward deformation MLPs, and
NPHM's anchored local ensemble with sparse K-nearest blending — plain PyTorch, sized for a CPU.

Shapes follow one convention: points `x (B, P, D)` float32 with D = 3 canonical coordinates (+ H
hyper-coordinates for backward deformation with ambient dimensions), codes `(B, K)` float32, outputs
`(B, P)` signed distances (negative inside) or `(B, P, 3[+H])` positions. Everything is in the
canonical frame's units (a head spans about [-1, 1]).

Activation: Softplus with β = 100 throughout (IGR / NPHM): a smooth ReLU, so the field's gradient (the
normal, and the eikonal term's target) is continuous and second derivatives exist for training on it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

BETA = 100.0
FLOOR = -20.0 / BETA
"""Inputs are clamped here first. Below β·x ≈ −87, exp(β·x) and the log1p series inside softplus (and the
sigmoid of its gradient) pass through denormal floats, which x86 CPUs handle in microcode: with hidden
activations of order 1 that made softplus ~7× slower than the matmuls around it (measured, 2,000 × 240
float32, one thread: 12.8 ms -> 1.8 ms). At β·x = −20 softplus is 2e−11 and its slope 2e−9, so nothing
measurable is lost."""


def softplus(x: torch.Tensor) -> torch.Tensor:
    return F.softplus(x.clamp_min(FLOOR), beta=BETA)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- a DeepSDF-style MLP -------------------------------------------------------------------------------


class SkipMLP(nn.Module):
    """[x (D) | code (K)] -> hidden × layers (Softplus) -> out, re-injecting the input at layer `skip`.

    forward(x: (B, P, D) float32, code: (B, K) float32) -> (B, P, out) float32.
    The layers that see the input are split into a point part and a code part: W [x; z] = W_x x + W_z z,
    and W_z z is computed once per batch element instead of once per point (the code is the same for
    every point of an element), which saves the concatenated copy and the code columns' matmul per point.
    The skip layer sees [h, input] and scales the sum by 1/√2 so re-injection does not double the
    activations' variance (DeepSDF's concatenation, IGR's scaling).
    """

    def __init__(self, in_dims: int, code_size: int, hidden: int, layers: int, out_dims: int, skip: int | None):
        super().__init__()
        if layers < 1:
            raise ValueError("layers must be >= 1")
        self.in_dims, self.code_size = in_dims, code_size
        self.skip = skip if skip is not None and 0 < skip < layers else None
        self.hidden = nn.ModuleList()
        for i in range(layers):
            self.hidden.append(nn.Linear(in_dims if i == 0 else hidden, hidden))
        fan0 = in_dims + code_size
        # the code part of layer 0 and the re-injected input of the skip layer (no biases of their own)
        self.code_in = nn.Linear(code_size, hidden, bias=False)
        self.skip_x = nn.Linear(in_dims, hidden, bias=False) if self.skip else None
        self.skip_code = nn.Linear(code_size, hidden, bias=False) if self.skip else None
        with torch.no_grad():   # PyTorch's default init, but with the fan-in of the whole concatenated input
            for lin, fan in [(self.hidden[0], fan0), (self.code_in, fan0)] + (
                    [(self.hidden[self.skip], hidden + fan0), (self.skip_x, hidden + fan0),
                     (self.skip_code, hidden + fan0)] if self.skip else []):
                bound = 1.0 / math.sqrt(fan)
                lin.weight.uniform_(-bound, bound)
                if lin.bias is not None:
                    lin.bias.uniform_(-bound, bound)
        self.out = nn.Linear(hidden, out_dims)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        h = softplus(self.hidden[0](x) + self.code_in(code)[:, None])
        for i in range(1, len(self.hidden)):
            pre = self.hidden[i](h)
            if i == self.skip:
                pre = (pre + self.skip_x(x) + self.skip_code(code)[:, None]) / math.sqrt(2.0)
            h = softplus(pre)
        return self.out(h)


class SDFNetwork(nn.Module):
    """The DeepSDF / NPMs auto-decoder field: (x, identity code) -> signed distance.

    forward(x: (B, P, D), code: (B, K)) -> (B, P) float32, negative inside.

    Geometric initialisation (SAL / IGR): hidden weights ~ N(0, 2 / fan_out), biases 0, the code's
    input columns 0, and the last layer's weights ≈ √π / √hidden (tiny spread) with bias −radius. Why:
    with ReLU-like units and that variance, every layer keeps the norm of its input in expectation, so the
    mean of the last layer's inputs grows like ‖x‖; equal positive output weights then give
    f(x) ≈ ‖x‖ − radius, a sphere's signed distance for every code. Training starts from a valid,
    closed, eikonal field around the head instead of a random one, which keeps spurious surfaces out of
    the far space and makes the normal and eikonal terms meaningful from step 0. (Zero code columns do
    not stall the codes: the weights get gradient δ zᵀ from the randomly initialised codes first.)
    """

    def __init__(self, code_size: int, hidden: int = 128, layers: int = 5, in_dims: int = 3,
                 radius: float = 0.6, skip: int | None = None):
        super().__init__()
        skip = layers // 2 if skip is None else skip
        self.mlp = SkipMLP(in_dims, code_size, hidden, layers, 1, skip)
        self.in_dims, self.code_size = in_dims, code_size
        self._geometric_init(radius)

    @torch.no_grad()
    def _geometric_init(self, radius: float) -> None:
        mlp = self.mlp
        for i, layer in enumerate(mlp.hidden):
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0) / math.sqrt(layer.out_features))
            nn.init.zeros_(layer.bias)
        if mlp.skip_x is not None:
            nn.init.normal_(mlp.skip_x.weight, 0.0, math.sqrt(2.0) / math.sqrt(mlp.skip_x.out_features))
        # the code starts out of the field: every identity begins as the same sphere
        nn.init.zeros_(mlp.code_in.weight)
        if mlp.skip_code is not None:
            nn.init.zeros_(mlp.skip_code.weight)
        out = mlp.out
        nn.init.normal_(out.weight, math.sqrt(math.pi) / math.sqrt(out.in_features), 1e-5)
        nn.init.constant_(out.bias, -radius)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.mlp(x, code)[..., 0]


# --- deformation ----------------------------------------------------------------------------------------


class DeformationNetwork(nn.Module):
    """Offsets of points conditioned on identity and expression: x -> x + offset (or the raw output).

    forward(x: (B, P, 3), identity: (B, F), expression: (B, Ke)) -> (B, P, 3 + hyper) float32: the 3-d
    offset (+ `hyper` ambient coordinates). Identity features are compressed to `id_compress` dims by a
    linear layer first (NPHM's "compress" mode): the expression should not need the full identity code,
    and a small bottleneck keeps the deformation from re-learning identity.
    The last layer starts at ~1e-4 so the initial deformation is (almost) the identity map; exactly zero
    would block the gradient into the expression codes.
    """

    def __init__(self, id_features: int, expression_size: int, id_compress: int = 16, hidden: int = 128,
                 layers: int = 4, hyper: int = 0):
        super().__init__()
        self.compress = nn.Linear(id_features, id_compress)
        self.mlp = SkipMLP(3, id_compress + expression_size, hidden, layers, 3 + hyper, layers // 2)
        self.hyper = hyper
        with torch.no_grad():
            nn.init.uniform_(self.mlp.out.weight, -1e-4, 1e-4)
            nn.init.zeros_(self.mlp.out.bias)

    def forward(self, x: torch.Tensor, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        return self.mlp(x, torch.cat([self.compress(identity), expression], dim=-1))


class ForwardDeformation(DeformationNetwork):
    """NPHM / NPMs: canonical (neutral) point -> offset to its posed position (3-d output)."""

    def __init__(self, id_features: int, expression_size: int, id_compress: int = 16, hidden: int = 128,
                 layers: int = 4):
        super().__init__(id_features, expression_size, id_compress, hidden, layers, hyper=0)


class BackwardDeformation(DeformationNetwork):
    """MonoNPHM: posed point -> offset to its canonical position, plus `hyper` ambient coordinates
    (HyperNeRF) that extend the canonical SDF's domain to 3 + hyper dimensions, so topology changes
    (mouth opening) need not be explained by the 3-d warp alone."""


# --- the local ensemble -----------------------------------------------------------------------------------


class LocalEnsemble(nn.Module):
    """NPHM's anchored ensemble of small SDF MLPs, evaluated sparsely over the K nearest anchors.

    Anchors: `mean_anchors` (A, 3) canonical, ordered as `pairs` interleaved left/right pairs (slot 2p the
    subject's left, +x; 2p+1 its mirror) followed by `midline` anchors on x = 0. Identity-dependent
    anchors = mean + offsets predicted from the global code by a small MLP; the offsets are predicted for
    the left anchors and mirrored onto the right ones, and midline anchors move only in y and z, so the
    anchors are mirror-symmetric for every code.

    Members: one per anchor plus a global/background member (slot A) — A + 1 code slots. A member sees
    [local coordinates (3 + H) | global code (G) | its local code (L)] and is a Softplus MLP with the input
    re-injected at the middle layer. Weight sets: each left/right pair shares one, and the right member
    sees mirrored local coordinates (x negated); each midline anchor and the global member have their own
    and see a smooth |x| (√(x² + ε²)), i.e. are even in x. Hence mirroring the query (x -> −x) and
    swapping each pair's local codes gives exactly the same SDF (`mirror_codes`): the mirror image of any
    head is in the model. Asymmetry is carried by the paired members' codes.

    Blending (MonoNPHM): σ = (distance to the `blend_neighbour`-th nearest anchor) / `blend_divisor` per
    query; weights exp(−d²/(2σ²)) over the K nearest anchors plus the global member at the fixed
    pseudo-distance `global_distance`, normalised, minus the first left-out anchor's kernel value so the
    field is continuous where the neighbour set changes (`blend`). With K = 0 every anchor takes part
    (NPHM's dense evaluation). A sphere of radius `radius` is added to the blend, and the members' last layers start
    near zero, so the initial field is that sphere (the role geometric init plays in `SDFNetwork`).

    Sparse evaluation is a gather plus a grouped matmul: every (query, neighbour) row is tagged with its
    weight set, rows are sorted by set, and each set's MLP runs once on its contiguous block (S small
    matmuls per layer, S = pairs + midline + 1) — no PyG, no custom kernels.
    """

    def __init__(self, mean_anchors: torch.Tensor, pairs: int, midline: int, global_size: int, local_size: int,
                 hidden: int = 64, layers: int = 3, hyper: int = 0, neighbours: int = 12, blend_neighbour: int = 8,
                 blend_divisor: float = 3.75, global_distance: float = 1.0, anchor_hidden: int = 64,
                 radius: float = 0.6, midline_eps: float = 0.01):
        super().__init__()
        a = 2 * pairs + midline
        if mean_anchors.shape != (a, 3):
            raise ValueError(f"mean_anchors must be ({a}, 3), got {tuple(mean_anchors.shape)}")
        self.pairs, self.midline, self.n_anchors = pairs, midline, a
        self.global_size, self.local_size, self.hyper = global_size, local_size, hyper
        self.neighbours, self.blend_neighbour, self.blend_divisor = neighbours, blend_neighbour, blend_divisor
        self.global_distance, self.radius, self.midline_eps = global_distance, radius, midline_eps
        self.register_buffer("mean_anchors", symmetrise_anchors(mean_anchors.float(), pairs))
        slots = torch.arange(a + 1)
        sets = torch.where(slots < 2 * pairs, slots // 2, slots - pairs)          # pair p -> p, midline/global after
        self.register_buffer("slot_set", sets, persistent=False)
        self.register_buffer("slot_mirror", (slots < 2 * pairs) & (slots % 2 == 1), persistent=False)
        self.register_buffer("slot_even", slots >= 2 * pairs, persistent=False)
        self.n_sets = pairs + midline + 1

        # anchor offsets from the global code: 3 per pair (left), 2 per midline anchor (y, z)
        self.anchor_mlp = nn.Sequential(nn.Linear(global_size, anchor_hidden), nn.ReLU(),
                                        nn.Linear(anchor_hidden, anchor_hidden), nn.ReLU(),
                                        nn.Linear(anchor_hidden, 3 * pairs + 2 * midline))
        with torch.no_grad():
            nn.init.zeros_(self.anchor_mlp[-1].weight)
            nn.init.zeros_(self.anchor_mlp[-1].bias)

        s, d = self.n_sets, 3 + hyper
        self.layers, self.hidden_size = layers, hidden
        self.skip = layers // 2 if layers > 1 else None

        def stack(fan_in: int, *shape: int) -> nn.Parameter:
            bound = 1.0 / math.sqrt(fan_in)        # PyTorch's default Linear init, per set
            return nn.Parameter(torch.empty(s, *shape).uniform_(-bound, bound))

        fan0 = d + global_size + local_size
        self.w_x = nn.ParameterList([stack(fan0, d, hidden)])
        self.w_g = nn.ParameterList([stack(fan0, global_size, hidden)])
        self.w_l = nn.ParameterList([stack(fan0, local_size, hidden)])
        self.b = nn.ParameterList([stack(fan0, hidden)])
        self.w_h = nn.ParameterList()                    # w_h[i - 1]: hidden layer i's (hidden, hidden)
        for i in range(1, layers):
            fan = hidden + (fan0 if i == self.skip else 0)
            self.w_h.append(stack(fan, hidden, hidden))
            self.b.append(stack(fan, hidden))
            if i == self.skip:
                self.w_x.append(stack(fan, d, hidden))
                self.w_g.append(stack(fan, global_size, hidden))
                self.w_l.append(stack(fan, local_size, hidden))
        self.w_out = nn.Parameter(torch.empty(s, hidden).uniform_(-1e-3, 1e-3))
        self.b_out = nn.Parameter(torch.zeros(s))

    # --- codes and anchors ------------------------------------------------------------------------

    @property
    def code_size(self) -> int:
        return self.global_size + (self.n_anchors + 1) * self.local_size

    def split_code(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, G + (A+1)·L) -> global (B, G) and local (B, A+1, L) codes."""
        return code[:, :self.global_size], code[:, self.global_size:].reshape(len(code), self.n_anchors + 1, -1)

    def mirror_codes(self, code: torch.Tensor) -> torch.Tensor:
        """The identity code of the mirrored head: each left/right pair's local codes swapped."""
        g, loc = self.split_code(code)
        perm = torch.arange(self.n_anchors + 1, device=code.device)
        perm[:2 * self.pairs] = perm[:2 * self.pairs].reshape(-1, 2).flip(1).reshape(-1)
        return torch.cat([g, loc[:, perm].flatten(1)], dim=1)

    def anchors(self, code: torch.Tensor) -> torch.Tensor:
        """(B, K) identity codes -> (B, A, 3) anchor positions, mirror-symmetric by construction."""
        g = code[:, :self.global_size]
        off = self.anchor_mlp(g)
        p, m = self.pairs, self.midline
        mean = self.mean_anchors
        left = mean[0:2 * p:2] + off[:, :3 * p].reshape(-1, p, 3)
        right = left * left.new_tensor([-1.0, 1.0, 1.0])
        paired = torch.stack([left, right], dim=2).reshape(-1, 2 * p, 3)
        mid_yz = mean[2 * p:, 1:] + off[:, 3 * p:].reshape(-1, m, 2)
        mid = torch.cat([torch.zeros_like(mid_yz[..., :1]), mid_yz], dim=-1)
        return torch.cat([paired, mid], dim=1)

    # --- blending ---------------------------------------------------------------------------------

    def blend(self, x: torch.Tensor, anchors: torch.Tensor, neighbours: int | None = None,
              all_members: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Neighbour slots (B, P, K+1) int64 (the global member last) and their normalised weights
        (B, P, K+1) for points x (B, P, D) and anchors (B, A, 3); K = neighbours (None: the default,
        0 or >= A: every anchor). all_members: the same weights spread over every slot (B, P, A+1),
        zero outside the K nearest — NPHM's evaluate-everything pattern, the sparse path's reference.

        Kernel values g = exp(−d²/(2σ²)) (the global member at its pseudo-distance). The sparse path
        subtracts the first left-out anchor's value from every anchor's, w ∝ max(g − g_(K+1), 0) (the global
        member, part of both paths, keeps its g): an anchor entering or
        leaving the K nearest then has weight 0 at that moment, so the blended field stays continuous
        across the boundaries where the neighbour set changes (plain truncation jumps there). Where
        g_(K+1) is negligible this is the dense blend; with every anchor there is nothing to subtract.
        """
        k = self.neighbours if neighbours is None else neighbours
        a = self.n_anchors
        k = a if k <= 0 or k >= a else k
        sq = (x[:, :, None, :3] - anchors[:, None]).square().sum(-1)              # (B, P, A)
        ref = min(self.blend_neighbour, a)
        # σ² from the ref-th nearest anchor's squared distance (the same for the sparse and dense paths)
        near = torch.topk(sq, min(max(ref, k + 1), a), dim=-1, largest=False)
        var = (near.values[..., ref - 1] / self.blend_divisor**2).clamp_min(1e-8)
        glob = torch.full_like(sq[..., :1], self.global_distance**2)
        if k == a:
            idx = torch.arange(a, device=x.device).expand(sq.shape)
            logits = -torch.cat([sq, glob], dim=-1) / (2 * var[..., None])
            w = torch.softmax(logits, dim=-1)
        else:
            idx, sel = near.indices[..., :k], near.values[..., :k]
            logits = -torch.cat([sel, glob], dim=-1) / (2 * var[..., None])
            cut = -near.values[..., k:k + 1] / (2 * var[..., None])              # the first left-out anchor
            # g·max(1 − g_cut/g, 0) in log space, then renormalised
            # (clamping the exponent, not the result: exp(cut − logit) overflows for the global member far
            # below the cut, and inf · 0 would poison the gradient)
            keep = 1.0 - torch.exp((cut - logits).clamp_max(0.0))
            # the global member takes part in both paths, so it is never cut (cutting it would drop it
            # wherever the (K+1)-th anchor is nearer than its pseudo-distance, i.e. almost everywhere)
            keep = torch.cat([keep[..., :-1], torch.ones_like(keep[..., -1:])], dim=-1)
            w = torch.softmax(logits, dim=-1) * keep
            w = w / w.sum(-1, keepdim=True).clamp_min(1e-30)
        slots = torch.cat([idx, torch.full_like(idx[..., :1], a)], dim=-1)
        if all_members and k < a:
            w = w.new_zeros(*w.shape[:-1], a + 1).scatter(-1, slots, w)
            slots = torch.arange(a + 1, device=x.device).expand(w.shape)
        return slots, w

    # --- evaluation ---------------------------------------------------------------------------------

    def _local_coordinates(self, x: torch.Tensor, anchors: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """(B, P, K+1, D) member inputs: x − anchor (global member: x itself), mirrored for right members,
        smooth |x| for midline and global members; hyper-coordinates pass through."""
        b, p, k1 = slots.shape
        padded = torch.cat([anchors, anchors.new_zeros(b, 1, 3)], dim=1)            # slot A: the origin
        pos = torch.gather(padded[:, None].expand(b, p, -1, -1), 2, slots[..., None].expand(-1, -1, -1, 3))
        loc = x[:, :, None, :3] - pos
        lx = loc[..., 0]
        lx = torch.where(self.slot_mirror[slots], -lx, lx)
        lx = torch.where(self.slot_even[slots], torch.sqrt(lx.square() + self.midline_eps**2) - self.midline_eps, lx)
        loc = torch.cat([lx[..., None], loc[..., 1:]], dim=-1)
        if x.shape[-1] > 3:
            loc = torch.cat([loc, x[:, :, None, 3:].expand(-1, -1, k1, -1)], dim=-1)
        return loc

    def _code_terms(self, g: torch.Tensor, loc: torch.Tensor, layer: int) -> torch.Tensor:
        """(B, A+1, hidden): the code part of a layer that sees the input, per batch element and slot."""
        i = 0 if layer == 0 else 1
        wg, wl = self.w_g[i][self.slot_set], self.w_l[i][self.slot_set]            # (A+1, G|L, hidden)
        return torch.einsum("bg,agh->bah", g, wg) + torch.einsum("bal,alh->bah", loc, wl)

    def members(self, x: torch.Tensor, code: torch.Tensor, slots: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """(B, P, K+1) member SDFs at x (B, P, D) for the given slots (B, P, K+1)."""
        b, p, k1 = slots.shape
        g, loc = self.split_code(code)
        xin = self._local_coordinates(x, anchors, slots).reshape(b * p * k1, -1)
        sets = self.slot_set[slots].reshape(-1)
        code_row = (torch.arange(b, device=x.device)[:, None, None] * (self.n_anchors + 1) + slots).reshape(-1)
        c0 = self._code_terms(g, loc, 0).reshape(b * (self.n_anchors + 1), -1)
        cs = self._code_terms(g, loc, self.skip).reshape(b * (self.n_anchors + 1), -1) if self.skip else None

        order = torch.argsort(sets, stable=True)
        counts = torch.bincount(sets, minlength=self.n_sets).tolist()
        xs, rows = xin[order], code_row[order]
        outs, start = [], 0
        for s, n in enumerate(counts):
            xi, ri = xs[start:start + n], rows[start:start + n]
            start += n
            h = softplus(xi @ self.w_x[0][s] + c0[ri] + self.b[0][s])
            for i in range(1, self.layers):
                pre = h @ self.w_h[i - 1][s] + self.b[i][s]
                if i == self.skip:
                    pre = (pre + xi @ self.w_x[1][s] + cs[ri]) / math.sqrt(2.0)
                h = softplus(pre)
            outs.append(h @ self.w_out[s] + self.b_out[s])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        return torch.cat(outs)[inverse].reshape(b, p, k1)

    def forward(self, x: torch.Tensor, code: torch.Tensor, neighbours: int | None = None,
                all_members: bool = False) -> torch.Tensor:
        """x: (B, P, 3 + H) canonical points, code: (B, G + (A+1)·L) identity codes -> (B, P) SDF.
        all_members: evaluate every member and blend with the same weights (the slow reference)."""
        anchors = self.anchors(code)
        slots, w = self.blend(x, anchors, neighbours, all_members)
        f = self.members(x, code, slots, anchors)
        return (w * f).sum(-1) + (x[..., :3].square().sum(-1) + 1e-12).sqrt() - self.radius


def symmetrise_anchors(anchors: torch.Tensor, pairs: int) -> torch.Tensor:
    """(A, 3) anchors with the first 2·pairs interleaved left/right -> exactly mirror-symmetric anchors:
    each pair's left is the mean of the left and the mirrored right, the right its mirror; midline x = 0."""
    a = anchors.clone()
    flip = a.new_tensor([-1.0, 1.0, 1.0])
    left = 0.5 * (a[0:2 * pairs:2] + a[1:2 * pairs:2] * flip)
    a[0:2 * pairs:2] = left
    a[1:2 * pairs:2] = left * flip
    a[2 * pairs:, 0] = 0.0
    return a
