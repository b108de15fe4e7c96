"""FitNets' hint loss with its convolutional regressor (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

Eq. 3 of the paper: L_HT = 1/2 || u_h(x) - r(v_g(x); W_r) ||^2, with u_h the teacher's hint layer, v_g the student's
guided layer and r a convolutional regressor (§2.2) that brings the guided layer to the hint's shape. discbench follows
RepDistiller (``distiller_zoo/FitNet.py``, ``models/util.py:ConvReg``), which is what the
published FitNet numbers of the CRD paper were run with: a mean squared error (not the paper's 1/2 sum) to the
detached hint, trained in one stage together with the task loss (not the paper's two-stage hint pre-training).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from discbench.api import Discrepancy, FeatureSpec, LossContext, LossOutput, Pairing, Tap
from discbench.functional import at_least_fp32
from discbench.registry import LOSSES


class ConvRegressor(nn.Module):
    """FitNets' regressor r(.) (§2.2) as RepDistiller's ``ConvReg``: a conv layer, BN and ReLU mapping the source map
    to the target's channels and spatial size.

    The layer is chosen by the relative spatial size of the two maps, k = r_target / r_source (ratio of reductions):

    - k = 1 (same size): 1x1 conv (RepDistiller's kernel 1 + s_H - t_H = 1);
    - k = 2 (target half as large): 3x3 conv, stride 2, padding 1;
    - k = 1/2 (target twice as large): 4x4 transposed conv, stride 2, padding 1;
    - k = 2^n > 2 (RepDistiller's kernel 1 + s_H - t_H, which needs absolute sizes the specs do not give and grows to
      a 29x29 kernel for 32 -> 4): a k x k conv with stride k ("patchify"), on the input zero-padded at the
      bottom/right to a multiple of k, as discbench's exit bottlenecks do;
    - k = 1/2^n < 1/2 (RepDistiller raises): a 2k x 2k transposed conv, stride k, padding k/2.

    Every case is followed by BN and ReLU (RepDistiller's ``use_relu=True``). The conv has no bias: BN removes it in
    training, so it would never receive gradient (RepDistiller keeps a dead bias). Stages with odd sizes round up
    (7 -> 4); the output is cropped at the bottom/right to the target's size (8 -> 7 for a 2x transposed conv).

    Shape: (B, C_s, H_s, W_s) -> (B, C_t, H_t, W_t), with (H_t, W_t) given at call time.
    """

    def __init__(self, source: FeatureSpec, target: FeatureSpec):
        super().__init__()
        if source.is_vector or target.is_vector:
            raise ValueError(f"FitNet's regressor maps feature maps, got {source} -> {target}")
        cs, ct, rs, rt = source.channels, target.channels, source.reduction, target.reduction
        self.pad_multiple = 1
        if rs == rt:
            conv = nn.Conv2d(cs, ct, 1, bias=False)
        elif rt == 2 * rs:
            conv = nn.Conv2d(cs, ct, 3, stride=2, padding=1, bias=False)
        elif rs == 2 * rt:
            conv = nn.ConvTranspose2d(cs, ct, 4, stride=2, padding=1, bias=False)
        elif rt % rs == 0:
            k = rt // rs
            conv = nn.Conv2d(cs, ct, k, stride=k, bias=False)
            self.pad_multiple = k
        elif rs % rt == 0:
            k = rs // rt
            conv = nn.ConvTranspose2d(cs, ct, 2 * k, stride=k, padding=k // 2, bias=False)
        else:
            raise ValueError(f"FitNet's regressor needs reductions that divide each other, got {rs} and {rt}")
        self.conv = conv
        self.bn = nn.BatchNorm2d(ct)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        m = self.pad_multiple
        if m > 1:
            x = F.pad(x, (0, -x.shape[-1] % m, 0, -x.shape[-2] % m))
        y = self.relu(self.bn(self.conv(x)))  # (B, C_t, >= H_t, >= W_t)
        h, w = size
        if y.shape[-2] < h or y.shape[-1] < w:
            raise ValueError(f"FitNet's regressor produced {tuple(y.shape[-2:])}, smaller than the target {size}: "
                             f"the maps do not have the sizes their FeatureSpecs declare")
        return y[..., :h, :w]


@LOSSES.register()
class FitNet(Discrepancy):
    """FitNets' hint loss: mean((r(F_s) - F_t.detach())^2) with r the ``ConvRegressor`` (Romero et al. Eq. 3).

    Differences from BYOT's ``l2``: this loss compares whole maps (not pooled vectors) through an owned regressor,
    and pairs a student's middle layer with the teacher's middle layer (``Pairing.HINT``, module T-1: the paper's
    hint is the teacher's middle layer, RepDistiller's ``hint_layer = 2``, the second stage of a CIFAR network).

    Choices where the paper is silent or discbench departs from it (all RepDistiller's unless noted):

    - mean over B x C_t x H_t x W_t instead of 1/2 the sum (so beta = 100, RepDistiller's weight, is per element);
    - one stage: the regressor trains with the network (it is a submodule; the runner optimises it);
    - the target is detached (FitNets trains only the student; in self-distillation F_T is not pulled to F_i);
    - regressor layers and the crop for odd sizes as documented in ``ConvRegressor``;
    - computed in at least fp32 (the regressor may run under bf16 autocast).

    Shape: source (B, C_s, H_s, W_s), target (B, C_t, H_t, W_t) -> scalar.
    """

    name = "fitnet"
    tap = Tap.FEATURE
    pairing = Pairing.HINT
    detaches_target = True

    def __init__(self, source: FeatureSpec, target: FeatureSpec):
        super().__init__(source, target)
        self.regressor = ConvRegressor(source, target)

    def forward(self, source: Tensor, target: Tensor, ctx: LossContext) -> LossOutput:
        hint = self.regressor(source, tuple(target.shape[-2:]))  # (B, C_t, H_t, W_t)
        return LossOutput(F.mse_loss(at_least_fp32(hint), at_least_fp32(target.detach())))
