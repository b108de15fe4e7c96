"""Attention transfer (Zagoruyko and Komodakis, "Paying More Attention to Attention", ICLR 2017)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from discbench.api import Discrepancy, FeatureSpec, LossContext, LossOutput, Pairing, Range, Tap
from discbench.features import match_spatial
from discbench.functional import at_least_fp32
from discbench.registry import LOSSES


def attention_map(feature: Tensor, p: float) -> Tensor:
    """Activation-based spatial attention, L2-normalised: Q / ||Q||_2 with Q = vec(mean_c |A_c|^p).

    Zagoruyko and Komodakis §3.1 use F^p_sum(A) = sum_c |A_c|^p; the mean over channels differs by the factor C,
    which the normalisation removes. Computed in at least fp32.

    Shape: (B, C, H, W) -> (B, H*W).
    """
    q = at_least_fp32(feature).abs().pow(p).mean(dim=1).flatten(1)  # (B, H*W)
    return F.normalize(q, dim=1)


@LOSSES.register()
class AT(Discrepancy):
    """Attention transfer: mean((Q_s / ||Q_s|| - Q_t / ||Q_t||)^2) over batch and locations, target detached.

    The paper's Eq. 2 adds beta/2 sum_j || Q_S^j / ||Q_S^j||_2 - Q_T^j / ||Q_T^j||_2 ||_p over the paired layers j,
    with attention maps F^p_sum (§3.1) and p = 2. discbench follows RepDistiller's ``distiller_zoo/AT.py``
    (github.com/HobbitLong/RepDistiller), with which the published AT numbers were run and whose weight beta = 1000
    bench.toml uses:
    the *mean of squared* differences over B x H*W instead of the (unsquared) norm per sample.

    Choices where the paper is silent:

    - spatial mismatch: the larger *feature map* is adaptive-average-pooled to the smaller before the attention map
      is taken (``discbench.features.match_spatial``, RepDistiller's order); the channel counts may differ freely,
      attention maps have no channels;
    - |A|^p (the paper's definition) rather than RepDistiller's A^p: equal for p = 2 and for post-ReLU maps;
    - the target is detached (attention *transfer*: in self-distillation F_T is not pulled to F_i);
    - ``Pairing.SAME_STAGE``: the paper transfers attention between the ends of corresponding groups of blocks,
      which have the same resolution.

    Args:
        p: the exponent of F^p_sum (the paper's experiments and RepDistiller use 2).

    Shape: source (B, C_s, H_s, W_s), target (B, C_t, H_t, W_t) -> scalar. The plugin owns no parameters.
    """

    name = "at"
    tap = Tap.FEATURE
    pairing = Pairing.SAME_STAGE
    detaches_target = True

    ranges = {"p": Range(gt=0)}

    def __init__(self, source: FeatureSpec, target: FeatureSpec, p: float = 2.0):
        super().__init__(source, target)
        self.p = p

    def forward(self, source: Tensor, target: Tensor, ctx: LossContext) -> LossOutput:
        s, t = match_spatial(source, target.detach())
        diff = attention_map(s, self.p) - attention_map(t, self.p)  # (B, H*W)
        return LossOutput(diff.pow(2).mean())
