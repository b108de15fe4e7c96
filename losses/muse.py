"""MUSE: mutual information and self-information between features (Gong, Yu, Mittal, Mori and Chen).

No public code exists; this is the first implementation, derived from the paper (shared/papers/muse-paper.md):

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

- Views: the *local* view is every location of the source map F_i; the *global* view is the globally average-
  pooled target F_T (MI) or the pooled F_i itself (SI). Positives pair a location with the global vector of the same
  image; negatives pair it with the global vectors of every other image in the batch (DIM's all-pairs, no bank).
- Critic T(l, g) = <E_L(l), E_G(g)> / sqrt(D): a scaled dot product of encoded local and global features in
  ``dim`` = D = 64 dimensions. The 1/sqrt(D) (AMDIM, Bachman et al. 2019, the paper's [2]) matters: the codes are
  LayerNorm'd, so an unscaled score is O(D) and the loss starts near 30 instead of 2 log 2 and diverges within a
  few SGD steps at lr 0.05 (observed on Fashion-MNIST); scaled, random codes give scores of unit variance.
- D = 64: the local encoder's D x D layer on every location dominates the cost of the loss (at batch 32 on
  28x28 maps, D = 128 costs 89 ms per step for the three module pairs on 2 CPU cores, D = 64 costs 49 ms).
- Encoders: DIM's ``MI1x1ConvNet`` applied per location (a 1x1-conv MLP, written as linear layers on (B*H*W, C)):
  Linear(C, D, no bias) -> BatchNorm -> ReLU -> Linear(D, D), plus a linear shortcut initialised near identity,
  then LayerNorm over D. The global encoders are the same MLP on the pooled vector.
- One local encoder per module pair serves both terms (as one DIM local encoder serves all its global views); MI
  and SI have separate global encoders, so they are separate critics.
- The target is *not* detached: §3.2 says F_T "can be aware of more local information", so MI trains F_T too.
- Loss values are logged per module as ``mi@i`` and ``si@i`` (JSD losses: lower means more information).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from discbench.api import Discrepancy, FeatureSpec, LossContext, LossOutput, Tap
from discbench.features import locations, pooled
from discbench.kernels import jsd_mi_loss
from discbench.registry import LOSSES


class InfoMaxEncoder(nn.Module):
    """DIM's 1x1-conv MI encoder as an MLP on vectors. Shape: (M, C) -> (M, D)."""

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(in_features, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                                   nn.Linear(dim, dim))
        self.shortcut = nn.Linear(in_features, dim, bias=False)
        with torch.no_grad():  # DIM: a shortcut that starts close to the identity on the first min(C, D) units
            self.shortcut.weight.uniform_(-0.01, 0.01)
            n = min(in_features, dim)
            self.shortcut.weight[torch.arange(n), torch.arange(n)] = 1.0
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.block(x) + self.shortcut(x))


class MUSE(Discrepancy):
    """Base of the four MUSE variants: which JSD terms they estimate and how they combine them."""

    tap = Tap.FEATURE
    uses_mi: ClassVar[bool] = True
    uses_si: ClassVar[bool] = True

    def __init__(self, source: FeatureSpec, target: FeatureSpec, dim: int = 64):
        super().__init__(source, target)
        self.dim = dim
        self.local_encoder = InfoMaxEncoder(source.channels, dim)
        self.mi_global_encoder = InfoMaxEncoder(target.channels, dim) if self.uses_mi else None
        self.si_global_encoder = InfoMaxEncoder(source.channels, dim) if self.uses_si else None

    @staticmethod
    def combine(mi: Tensor | None, si: Tensor | None) -> Tensor:  # pragma: no cover - every variant overrides it
        raise NotImplementedError

    def forward(self, source: Tensor, target: Tensor, ctx: LossContext) -> LossOutput:
        b, _, h, w = source.shape
        local = self.local_encoder(locations(source)).view(b, h * w, self.dim)  # (B, N, D)
        scale = self.dim**-0.5  # folded into the (small) global codes: the critic is <l, g> / sqrt(D)
        terms = {}
        if self.uses_mi:
            terms["mi"] = jsd_mi_loss(local, self.mi_global_encoder(pooled(target)) * scale)  # Eq. 5, (F_i, F_T)
        if self.uses_si:
            terms["si"] = jsd_mi_loss(local, self.si_global_encoder(pooled(source)) * scale)  # Eq. 5, (F_i, F_i)
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
