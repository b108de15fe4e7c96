"""The local/global MI critic losses (JSD and InfoNCE), written the obvious way: the oracles of every other
implementation.

Never imports triton. Materialises the full (B, B, N) score tensor, like Deep InfoMax's ``fenchel_dual_loss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def jsd_mi_loss_ref(local: Tensor, global_: Tensor) -> Tensor:
    """MUSE Eq. 5 over DIM's local/global views, negated into a loss (>= 0).

    s[b, c, n] = <local[b, n], global_[c]>; positives are c == b, negatives every c != b (all locations n):

        loss = mean_{b, n} softplus(-s[b, b, n]) + mean_{b != c, n} softplus(s[b, c, n])

    It equals DIM's JSD loss plus 2 log 2. With B = 1 there are no negatives and the second mean is 0.

    Shape: local (B, N, D), global_ (B, D) -> scalar (fp32).
    """
    b = local.shape[0]
    scores = torch.einsum("bnd,cd->bcn", local.float(), global_.float())  # (B, B, N)
    eye = torch.eye(b, dtype=torch.bool, device=local.device)
    loss = F.softplus(-scores[eye]).mean()
    if b > 1:
        loss = loss + F.softplus(scores[~eye]).mean()
    return loss


def nce_mi_loss_ref(local: Tensor, global_: Tensor) -> Tensor:
    """InfoNCE over DIM's local/global views (van den Oord et al. 2018; DIM's ``nce`` mode).

    For every local vector (b, n) the candidates are the global vectors of all B images, the positive is c == b:

        loss = mean_{b, n} [ logsumexp_c s[b, c, n] - s[b, b, n] ]

    log B - loss is a lower bound on the MI between the local and the global view (it cannot exceed log B).

    Shape: local (B, N, D), global_ (B, D) -> scalar (fp32).
    """
    b = local.shape[0]
    scores = torch.einsum("bnd,cd->bcn", local.float(), global_.float())  # (B, B, N)
    positives = scores[torch.arange(b), torch.arange(b)]  # (B, N)
    return (torch.logsumexp(scores, dim=1) - positives).mean()
