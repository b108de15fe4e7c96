"""MUSE: mutual information and self-information between features (Gong, Yu, Mittal, Mori and Chen).

No public code exists; this is the first implementation, derived from the paper's equations:

- Eq. 3: I(F_i; F_T), the MI between an early module's feature and the last one.
- Eq. 2: the self-information H(F_i) = I(F_i; F_i), estimated with the same MI estimator.
- Eq. 5: every MI or SI term is estimated with the Jensen-Shannon bound and its *loss* (always >= 0) is minimised:
  L_JSD = E_{p x p~}[sp(T(f'_i, f_T))] + E_p[sp(-T(f_i, f_T))], sp = softplus (discbench.kernels.jsd_mi_loss).
- Eq. 4 (Additive Information, ``mi_plus_si``): L = L_MI + L_SI.
- Eq. 6 (Multiplicative Information, ``mi_x_si``): L = L_MI * L_SI ("we still use Eq. 5 as the loss of MI and SI";
  both are positive, so minimising the product minimises each, and SI weighs MI, §4.3).
- Table 5 rows ``mi`` and ``si``: one term alone.

Choices where the paper is silent (its supplementary material is not public), after Deep InfoMax (Hjelm et al.,
ICLR 2019), whose global/local views §3.2 says MUSE follows:

- Views: the *local* view is the locations of the source map F_i; the *global* view is the globally average-
  pooled target F_T (MI) or the pooled F_i itself (SI), over every location. Positives pair a location with the
  global vector of the same image; negatives pair it with the global vectors of every other image in the batch
  (DIM's all-pairs, no bank).
- Locations (``locations`` = K = 32, version 2): each step, each image's local view is K of its H*W locations, drawn
  uniformly without replacement (torch's generator, so seeded, checkpointed and resumed like every other draw);
  ``locations = 0`` takes every location, as version 1 did. Eq. 5's expectations run over (image, location) pairs, and
  for given codes a uniform draw per image estimates both means without bias (tests/test_muse.py), so this is the same
  loss estimated with fewer locations, not another loss (MI x SI multiplies two estimates from one draw, and BatchNorm
  in the local encoder normalises over the B*K drawn rows: both add a small bias). Why: the local encoder and the
  critic cost in proportion to the locations: with every location a SmallNet MI x SI step took 3.1x a ``ce_kd`` step
  at batch 32 on 28x28 (module 1 alone has 784 locations per image; CIFAR ResNets have 1 024), with K = 32 1.4x
  (benchmarks/profile_muse_step.py; docs/costs.md). What it costs in noise (benchmarks/muse_locations_noise.py:
  Fashion-MNIST, SmallNet MI x SI after 150 steps, batch 32): the gradient of the MUSE terms with K = 32 has cosine
  0.93 with the every-location gradient of the same batch (0.98 at K = 64, 0.84 at K = 16), while the every-location
  gradients of two different batches have cosine 0.75; in the step's whole gradient (CE, KD and MUSE) the difference
  is 2.1% of its norm. MI and SI share the draw (one local encoder).
- Critic T(l, g) = <E_L(l), E_G(g)> / sqrt(D): a scaled dot product of encoded local and global features in
  ``dim`` = D = 64 dimensions. The 1/sqrt(D) (AMDIM, Bachman et al. 2019, the paper's [2]) matters: the codes are
  LayerNorm'd, so an unscaled score is O(D) and the loss starts near 30 instead of 2 log 2 and diverges within a
  few SGD steps at lr 0.05 (observed on Fashion-MNIST); scaled, random codes give scores of unit variance.
- D = 64: the local encoder's D x D layer on every location dominated the cost of the loss when every location
  was encoded (at batch 32 on 28x28 maps, D = 128 cost 89 ms per step for the three module pairs on 2 CPU cores,
  D = 64 cost 49 ms).
- Encoders: DIM's ``MI1x1ConvNet`` applied per location (a 1x1-conv MLP, written as linear layers on (B*H*W, C)):
  Linear(C, D, no bias) -> BatchNorm -> ReLU -> Linear(D, D), plus a linear shortcut initialised near identity,
  then LayerNorm over D. The global encoders are the same MLP on the pooled vector.
- One local encoder per module pair serves both terms (as one DIM local encoder serves all its global views); MI
  and SI have separate global encoders, so they are separate critics.
- The target is *not* detached: §3.2 says F_T "can be aware of more local information", so MI trains F_T too.
- Loss values are logged per module as ``mi@i`` and ``si@i`` (JSD losses: lower means more information).

Memory: with the critic streamed (discbench.kernels), the local encoder's activations on the M = B*K locations (B*H*W
with ``locations = 0``) dominate the loss's memory (four (M, D) tensors saved for backward). Unless the critic
implementation is ``ref``, the local encoder saves only its input and recomputes its activations in row chunks during
backward (``RecomputedInfoMax``) once they are big (M*D >= 2^22; smaller ones cost more time than they save memory);
its forward runs the very same modules, so values and BatchNorm running statistics are bit-identical to the plain
path, and gradients agree to float rounding (tests/test_muse_memory.py).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discbench.api import Discrepancy, FeatureSpec, LossContext, LossOutput, Range, Tap
from discbench.features import pooled, sampled_locations
from discbench.kernels import jsd_mi_loss, select_impl
from discbench.registry import LOSSES

# The local encoder recomputes once its (M, D) activations reach 16 MiB in fp32; below that, recomputing costs more
# time than the memory is worth (SmallNet smoke runs, B = 32, D = 64: +18% step time for < 30 MiB saved).
RECOMPUTE_MIN_ELEMENTS = 1 << 22


def biased(x: Tensor, layer: nn.Linear) -> Tensor:
    """``layer(x)`` with the same bits, one pass over the (M, D) output fewer on CPU: F.linear's addmm first copies
    the broadcast bias into its output, then accumulates the GEMM onto it; here the GEMM writes it and the bias is
    added in place (fl(acc + bias) either way)."""
    return torch.mm(x, layer.weight.T).add_(layer.bias)


class InfoMaxEncoder(nn.Module):
    """DIM's 1x1-conv MI encoder as an MLP on vectors. Shape: (M, C) -> (M, D).

    ``recompute``: in training, unless the critic implementation is ``ref``, keep only the input for backward and
    recompute the activations there (``RecomputedInfoMax``) once they are big (``recomputes``); worth it for the
    local encoder, whose M = B*H*W rows dominate memory.
    """

    def __init__(self, in_features: int, dim: int, recompute: bool = False):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(in_features, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                                   nn.Linear(dim, dim))
        self.shortcut = nn.Linear(in_features, dim, bias=False)
        with torch.no_grad():  # DIM: a shortcut that starts close to the identity on the first min(C, D) units
            self.shortcut.weight.uniform_(-0.01, 0.01)
            n = min(in_features, dim)
            self.shortcut.weight[torch.arange(n), torch.arange(n)] = 1.0
        self.norm = nn.LayerNorm(dim)
        self.recompute = recompute

    def forward(self, x: Tensor, impl: str | None = None) -> Tensor:
        if self.recomputes(x, impl):
            return RecomputedInfoMax.apply(x, self, *self.weights())
        first, bn, relu, second = self.block
        u = biased(relu(bn(first(x))), second)
        u += self.shortcut(x)  # in place: the same float additions as block(x) + shortcut(x), one (M, D) fewer
        return self.norm(u)

    def recomputes(self, x: Tensor, impl: str | None = None) -> bool:
        """Whether this call recomputes in backward: a training step of an encoder built with ``recompute``, big
        activations (M * D >= RECOMPUTE_MIN_ELEMENTS) and a critic implementation other than ``ref`` (``impl``, the
        run's; None: ``select_impl``)."""
        return (self.recompute and self.training and torch.is_grad_enabled()
                and x.shape[0] * self.norm.normalized_shape[0] >= RECOMPUTE_MIN_ELEMENTS
                and (impl or select_impl(x.device)) != "ref")

    def weights(self) -> tuple[Tensor, ...]:
        """(W1, gamma, beta, W2, b2, W_shortcut, ln_weight, ln_bias): the order ``RecomputedInfoMax`` takes them."""
        first, bn, _, second = self.block
        return first.weight, bn.weight, bn.bias, second.weight, second.bias, self.shortcut.weight, self.norm.weight, \
            self.norm.bias


class RecomputedInfoMax(torch.autograd.Function):
    """``InfoMaxEncoder`` in training mode, saving only its input x (M, C) and the BatchNorm's batch statistics.

    Forward runs the encoder's own modules under no_grad (same values, same running-statistics update as the plain
    path) and keeps mean and 1/std of the pre-activation a = x W1^T over all M rows (2 D floats). Backward walks
    chunks of CHUNK_ELEMENTS / D rows twice:

    1. recompute the chunk with mean and 1/std as leaf inputs and let autograd give d x (direct and shortcut paths),
       every weight's gradient and d mean, d(1/std) of the chunk (summed over chunks);
    2. add the batch statistics' share to d a: with s = 1/std = (var + eps)^-1/2 over the biased variance,
       d a_r += d mean / M - d s * s^3 (a_r - mean) / M, then d x += d a W1 and d W1 += d a^T x.

    Memory: O(M C + M D) for the incoming gradient and d x, plus one chunk's activations, instead of four (M, D)
    activations held from forward to backward.
    """

    CHUNK_ELEMENTS = 1 << 18

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")  # backward recomputes under forward's autocast state
    def forward(ctx, x: Tensor, encoder: InfoMaxEncoder, *weights: Tensor) -> Tensor:
        first, bn, relu, second = encoder.block
        a = first(x)  # (M, D)
        mean = a.mean(dim=0)  # the statistics BatchNorm normalises with (var_mean over dim 0 is 20x slower on CPU)
        centered = a - mean
        var = centered.square_().mean(dim=0)
        del centered
        h = relu(bn(a))
        del a
        u = biased(h, second)
        del h
        u += encoder.shortcut(x)  # in place: the same float additions as block(x) + shortcut(x), one (M, D) fewer
        ctx.save_for_backward(x, mean, torch.rsqrt(var + bn.eps), *weights)
        ctx.eps = encoder.norm.eps
        return encoder.norm(u)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: Tensor):
        x, mean, inv_std, *weights = ctx.saved_tensors
        w1, gamma, beta, w2, b2, ws, ln_w, ln_b = weights
        m, d = grad.shape
        leaves = [t.detach().requires_grad_() for t in (w1, mean, inv_std, gamma, beta, w2, b2, ws, ln_w, ln_b)]
        lw1, lmean, linv, lgamma, lbeta, lw2, lb2, lws, lln_w, lln_b = leaves
        sums = [torch.zeros_like(t) for t in leaves]  # gradients of the leaves, summed over chunks
        d_x = torch.empty_like(x)
        chunk = max(1, RecomputedInfoMax.CHUNK_ELEMENTS // d)
        for r0 in range(0, m, chunk):  # pass 1: the chunk's own graph
            xc = x[r0:r0 + chunk].detach().requires_grad_()
            with torch.enable_grad():
                h = F.relu((F.linear(xc, lw1) - lmean) * linv * lgamma + lbeta)
                out = F.layer_norm(F.linear(h, lw2, lb2) + F.linear(xc, lws), (d,), lln_w, lln_b, ctx.eps)
                d_xc, *d_leaves = torch.autograd.grad(out, [xc, *leaves], grad[r0:r0 + chunk])
            del h, out  # before the next chunk's graph exists
            d_x[r0:r0 + chunk] = d_xc
            for total, part in zip(sums, d_leaves, strict=True):
                total += part
        d_w1, d_mean, d_inv = sums[:3]
        coef_mean, coef_centered = d_mean / m, -d_inv * inv_std.pow(3) / m  # (D,) each
        for r0 in range(0, m, chunk):  # pass 2: the batch statistics' share of d a
            xc = x[r0:r0 + chunk]
            d_a = (F.linear(xc, w1) - mean).mul_(coef_centered).add_(coef_mean)  # (chunk, D)
            d_x[r0:r0 + chunk].addmm_(d_a, w1)
            d_w1.addmm_(d_a.T, xc)
        return d_x, None, d_w1, *sums[3:]


def local_codes(encoder: InfoMaxEncoder, feature: Tensor, impl: str | None = None, sample: int = 0) -> Tensor:
    """The local view: ``sample`` locations of every map drawn uniformly (every location when ``sample`` is 0 or at
    least H*W), encoded. Shape: (B, C, H, W) -> (B, n, D), n = min(sample, H*W) or H*W."""
    b = feature.shape[0]
    return encoder(sampled_locations(feature, sample), impl).view(b, -1, encoder.norm.normalized_shape[0])


def global_codes(encoder: InfoMaxEncoder, feature: Tensor) -> Tensor:
    """The global view: the pooled map, encoded and scaled by 1/sqrt(D), so that <local, global> is the critic's
    scaled dot product (folded into the small global codes). Shape: (B, C, H, W) -> (B, D)."""
    codes = encoder(pooled(feature))
    return codes * codes.shape[1] ** -0.5


class MUSE(Discrepancy):
    """Base of the four MUSE variants: which JSD terms they estimate and how they combine them.

    ``dim``: D, the codes' size; ``locations``: K, the locations of each image's local view per step (0: every
    location; version 1 always used every location)."""

    version = 2
    tap = Tap.FEATURE
    uses_mi: ClassVar[bool] = True
    uses_si: ClassVar[bool] = True

    ranges = {"dim": Range(ge=1), "locations": Range(ge=0)}

    def __init__(self, source: FeatureSpec, target: FeatureSpec, dim: int = 64, locations: int = 32):
        super().__init__(source, target)
        self.dim = dim
        self.locations = locations
        self.local_encoder = InfoMaxEncoder(source.channels, dim, recompute=True)
        self.mi_global_encoder = InfoMaxEncoder(target.channels, dim) if self.uses_mi else None
        self.si_global_encoder = InfoMaxEncoder(source.channels, dim) if self.uses_si else None

    @staticmethod
    def combine(mi: Tensor | None, si: Tensor | None) -> Tensor:  # pragma: no cover - every variant overrides it
        raise NotImplementedError

    def forward(self, source: Tensor, target: Tensor, ctx: LossContext) -> LossOutput:
        impl = ctx.critic_impl
        local = local_codes(self.local_encoder, source, impl, self.locations)  # (B, n, D)
        terms = {}
        if self.uses_mi:  # Eq. 5 on (F_i, F_T)
            terms["mi"] = jsd_mi_loss(local, global_codes(self.mi_global_encoder, target), impl)
        if self.uses_si:  # Eq. 5 on (F_i, F_i)
            terms["si"] = jsd_mi_loss(local, global_codes(self.si_global_encoder, source), impl)
        loss = self.combine(terms.get("mi"), terms.get("si"))
        return LossOutput(loss, {k: v.detach() for k, v in terms.items()})


@LOSSES.register()
class MI(MUSE):
    """MI alone (MUSE Table 5 "MI"): L = L_JSD(F_i; F_T), Eq. 3 estimated by Eq. 5."""

    name = "mi"
    uses_si = False
    detaches_target = False

    @staticmethod
    def combine(mi: Tensor, si: None) -> Tensor:
        return mi


@LOSSES.register()
class SI(MUSE):
    """SI alone (MUSE Table 5 "SI"): L = L_JSD(F_i; F_i), Eq. 2 estimated by Eq. 5. The target is not used."""

    name = "si"
    uses_mi = False
    detaches_target = True  # F_T does not enter the loss at all

    @staticmethod
    def combine(mi: None, si: Tensor) -> Tensor:
        return si


@LOSSES.register()
class MIPlusSI(MUSE):
    """MUSE Additive Information (Eq. 4): L = L_JSD(F_i; F_T) + L_JSD(F_i; F_i)."""

    name = "mi_plus_si"
    detaches_target = False

    @staticmethod
    def combine(mi: Tensor, si: Tensor) -> Tensor:
        return mi + si


@LOSSES.register()
class MIxSI(MUSE):
    """MUSE Multiplicative Information (Eq. 6): L = L_JSD(F_i; F_T) * L_JSD(F_i; F_i)."""

    name = "mi_x_si"
    detaches_target = False

    @staticmethod
    def combine(mi: Tensor, si: Tensor) -> Tensor:
        return mi * si
