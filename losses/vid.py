"""Variational information distillation (Ahn, Hu, Damianou, Lawrence and Dai, CVPR 2019).

VID maximises a variational lower bound on the mutual information between a target (teacher) feature t and a source
(student) feature s, I(t; s) >= H(t) + E[log q(t | s)] (Eq. 2). H(t) does not depend on the student, so the loss
is the negative log-likelihood of t under q (Eq. 3-4). q is a Gaussian with a heteroscedastic mean mu(s) from a
regressor and a homoscedastic, per-channel variance (Eq. 5-6):

    -log q(t | s) = sum_{c,h,w} [ log sigma_c + (t_chw - mu_chw(s))^2 / (2 sigma_c^2) ] + const,
    sigma_c^2 = log(1 + exp(alpha_c)) + eps.

Equation numbers follow the arXiv version (1904.05835); they were written from
the published formulas and RepDistiller's implementation (``distiller_zoo/VID.py``, credited to the authors' code),
not re-checked against the PDF.

The pitfall this module exists to avoid (mdistiller's ``distillers/VID.py``): in mdistiller the alpha_c
(``log_scales``) sit in a plain
Python list, are never optimised, and sigma^2 stays 5 forever. Here alpha is a registered ``nn.Parameter``, so it is
in ``plugin.parameters()`` and the runner trains it with everything else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discbench.api import Discrepancy, FeatureSpec, LossContext, LossOutput, Pairing, Range, Tap
from discbench.features import match_spatial
from discbench.functional import at_least_fp32
from discbench.registry import LOSSES


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, bias=False)


@LOSSES.register()
class VID(Discrepancy):
    """VID's Gaussian NLL: the mean over (B, C_t, H, W) of 1/2 [(mu(s) - t)^2 / sigma_c^2 + log sigma_c^2].

    - mu: three bias-free 1x1 convs C_s -> mid -> mid -> C_t with ReLU between them (RepDistiller; mid defaults to
      C_t, RepDistiller's ``VIDLoss(s, t, t)``);
    - sigma_c^2 = softplus(alpha_c) + eps per target channel (Eq. 6), alpha initialised so that sigma^2 = 5.0 and
      eps = 1e-5 (RepDistiller's values; the paper's choice for CIFAR);
    - the mean over all elements instead of the paper's sum, and without the constant 1/2 log 2 pi (RepDistiller):
      bench.toml's beta = 1 is RepDistiller's weight;
    - spatial mismatch: the larger map is adaptive-average-pooled to the smaller before the regressor
      (``discbench.features.match_spatial``, RepDistiller's choice);
    - the target is detached: the bound of Eq. 2 holds for a fixed teacher; letting gradient into t would let the
      loss shrink by collapsing the target (MUSE §4.3 makes the same point about VID in self-distillation);
    - ``Pairing.SAME_STAGE`` (RepDistiller applies it to each pair of corresponding stage outputs).

    Logged term: ``sigma2``, the mean variance over channels, so a run shows that the variance trains.

    Args:
        mid_channels: width of the regressor's hidden layers; 0 means the target's channel count.
        init_variance: sigma^2 at initialisation.
        eps: the floor of sigma^2.

    Shape: source (B, C_s, H_s, W_s), target (B, C_t, H_t, W_t) -> scalar.
    """

    name = "vid"
    tap = Tap.FEATURE
    pairing = Pairing.SAME_STAGE
    detaches_target = True

    ranges = {"mid_channels": Range(ge=0), "init_variance": Range(gt=0), "eps": Range(gt=0)}

    @classmethod
    def problems(cls, hparams: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
        if hparams["init_variance"] <= hparams["eps"]:
            return [("init_variance", hparams["init_variance"], f"must exceed eps ({hparams['eps']:g})")]
        return []

    def __init__(self, source: FeatureSpec, target: FeatureSpec, mid_channels: int = 0, init_variance: float = 5.0,
                 eps: float = 1e-5):
        super().__init__(source, target)
        if init_variance <= eps:
            raise ValueError(f"VID: init_variance ({init_variance}) must exceed eps ({eps})")
        mid = mid_channels or target.channels
        self.regressor = nn.Sequential(conv1x1(source.channels, mid), nn.ReLU(inplace=True), conv1x1(mid, mid),
                                       nn.ReLU(inplace=True), conv1x1(mid, target.channels))
        self.eps = eps
        inverse_softplus = math.log(math.expm1(init_variance - eps))
        self.log_scale = nn.Parameter(torch.full((target.channels,), inverse_softplus))  # alpha_c, (C_t,)

    def variance(self) -> Tensor:
        """sigma_c^2 = softplus(alpha_c) + eps (Eq. 6). Shape: (C_t,)."""
        return F.softplus(self.log_scale) + self.eps

    def forward(self, source: Tensor, target: Tensor, ctx: LossContext) -> LossOutput:
        s, t = match_spatial(source, target.detach())
        mean = at_least_fp32(self.regressor(s))  # (B, C_t, H, W)
        variance = self.variance().view(1, -1, 1, 1)  # (1, C_t, 1, 1)
        nll = 0.5 * ((mean - at_least_fp32(t)).pow(2) / variance + variance.log())
        return LossOutput(nll.mean(), {"sigma2": variance.detach().mean()})
