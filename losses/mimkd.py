"""MIMKD: mutual information maximisation knowledge distillation (Shrivastava et al., "Estimating and Maximizing
Mutual Information for Knowledge Distillation", arXiv, October 2021)."""

from __future__ import annotations

import math

from torch import Tensor

from discbench.api import Discrepancy, FeatureSpec, LossContext, LossOutput, Pairing, Range, Tap
from discbench.kernels import nce_mi_loss
from discbench.losses.muse import InfoMaxEncoder, global_codes, local_codes
from discbench.registry import LOSSES


@LOSSES.register()
class MIMKD(Discrepancy):
    """InfoNCE between every location of a student feature map and the teacher's global feature (MIMKD).

    The abstract (Rashid et al., "MIMKD: Mutual Information Maximization for Knowledge Distillation") is all that is
    public: a *contrastive* objective that estimates
    and maximises a *lower bound* on the MI between the student's intermediate (local) features and the teacher's
    global feature, for arbitrary architectures. No public code or equations exist; this first implementation
    derives the rest from Deep InfoMax (Hjelm et al., ICLR 2019, §3.1-3.2: the local objective, Eq. 6 with the
    InfoNCE estimator of Eq. 5) with the student's map in the role of DIM's local features and the teacher's pooled
    last map in the role of DIM's global feature:

        s[b, c, n] = <E_L(F_i^S[b, n]), E_G(pool(F_T^T[c]))> / sqrt(D)
        loss = mean_{b, n} [ logsumexp_c s[b, c, n] - s[b, b, n] ]        (``discbench.kernels.nce_mi_loss``)

    and log B - loss <= I(F_i^S at a location; pool(F_T^T)) is InfoNCE's bound (van den Oord et al. 2018; Poole
    et al. 2019), logged as the term ``mi_lower_bound`` (in nats; it can never exceed log B).

    Choices where the abstract is silent:

    - Views: local = every location of the student's module-i map (``Pairing.TO_LAST``: modules i < T of the
      student, each against the teacher's last module T); global = the teacher's globally average-pooled F_T,
      detached (offline: the teacher is frozen, and the bound is maximised over the student and the critic only).
      Positives pair a location with the teacher's vector of the same image, negatives with the teacher's vectors of
      the other B - 1 images of the batch (DIM's all-pairs, no memory bank).
    - Bound: InfoNCE, the "contrastive" estimator (DIM's ``nce`` mode), not DIM's default JSD; it is a true lower
      bound on the KL mutual information, which the abstract's "lower bound" asks for (JSD is not).
    - No global-global term: the abstract names local and global features, DIM's local objective alone carried its
      results, and a global term between pool(F_i^S) and pool(F_T^T) would re-weight, with a second critic, the
      same locations the local term already contrasts (CRD is the global-global contrastive baseline).
    - Encoders and critic: MUSE's (``losses/muse.py``), so that ``mimkd`` and ``mi`` differ only in the bound and in
      the teacher being detached: E_L is DIM's 1x1-conv encoder per location (``InfoMaxEncoder``), E_G the same MLP on
      the pooled teacher vector, D = ``dim`` = 64, scores scaled by 1/sqrt(D) (LayerNorm'd codes, unit-variance
      scores at initialisation).

    Shape: source (B, C_s, H, W), target (B, C_t, H', W') -> scalar.
    Parameters: ``InfoMaxEncoder(C_s, D)`` and ``InfoMaxEncoder(C_t, D)``.
    """

    name = "mimkd"
    tap = Tap.FEATURE
    pairing = Pairing.TO_LAST
    detaches_target = True

    ranges = {"dim": Range(ge=1)}

    def __init__(self, source: FeatureSpec, target: FeatureSpec, dim: int = 64):
        super().__init__(source, target)
        self.dim = dim
        self.local_encoder = InfoMaxEncoder(source.channels, dim, recompute=True)  # as MUSE's: recomputed in backward
        self.global_encoder = InfoMaxEncoder(target.channels, dim)

    def forward(self, source: Tensor, target: Tensor, ctx: LossContext) -> LossOutput:
        local = local_codes(self.local_encoder, source, ctx.critic_impl)  # (B, H*W, D)
        global_ = global_codes(self.global_encoder, target.detach())  # (B, D), scaled by 1/sqrt(D) like MUSE's
        loss = nce_mi_loss(local, global_, ctx.critic_impl)
        return LossOutput(loss, {"mi_lower_bound": math.log(source.shape[0]) - loss.detach()})
