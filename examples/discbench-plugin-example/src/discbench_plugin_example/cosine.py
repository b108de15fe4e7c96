"""A cosine-similarity hint: FitNets' regressor with the L2 replaced by one minus the cosine similarity per location.

FitNets (Romero et al., ICLR 2015, Eq. 3) regress the student's hint layer onto the teacher's guided layer with a
trainable regressor r and penalise ||u_h - r(v_g)||^2. Here the penalty is 1 - cos(r(source), target) at every
spatial location, so it matches the direction of the feature vectors and ignores their norm. Choices of this
example (FitNets is silent on them or uses something else): r is a 1x1 convolution (FitNets uses a convolutional
regressor whose kernel size makes the maps match; discbench matches sizes by pooling instead), the larger map is
adaptive-average-pooled to the size of the smaller one (``discbench.features.match_spatial``, RepDistiller's
choice), and the target is detached (the target is a teacher to mimic).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from discbench.api import Discrepancy, FeatureSpec, LossContext, LossOutput, Pairing, Tap
from discbench.features import match_spatial


class CosineHint(Discrepancy):
    """1 - cos(r(source), target.detach()) averaged over the batch and the locations; r: 1x1 conv C_s -> C_t.

    Shape: source (B, C_s, H_s, W_s), target (B, C_t, H_t, W_t) -> scalar in [0, 2].
    """

    name = "cosine_hint"  # must equal the entry-point name in pyproject.toml: discbench refuses a mismatch
    tap = Tap.FEATURE
    pairing = Pairing.SAME_STAGE
    detaches_target = True

    def __init__(self, source: FeatureSpec, target: FeatureSpec, eps: float = 1e-8):
        super().__init__(source, target)
        self.eps = eps
        self.regressor = nn.Conv2d(source.channels, target.channels, kernel_size=1, bias=False)  # owned: trained

    def forward(self, source: Tensor, target: Tensor, ctx: LossContext) -> LossOutput:
        # Pool before regressing: a bias-free 1x1 conv commutes with average pooling, and the pooled map is smaller.
        source, target = match_spatial(source, target.detach())  # (B, C_s, h, w), (B, C_t, h, w)
        projected = self.regressor(source)  # (B, C_t, h, w)
        cosine = F.cosine_similarity(projected.float(), target.float(), dim=1, eps=self.eps)  # (B, h, w)
        return LossOutput((1.0 - cosine).mean())
