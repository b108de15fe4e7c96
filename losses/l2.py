"""BYOT's feature L2 (Zhang et al., "Be Your Own Teacher", ICCV 2019, §3.2, the "L2 loss from hints")."""

from __future__ import annotations

from torch import Tensor

from discbench.api import Discrepancy, FeatureSpec, LossContext, LossOutput, Tap
from discbench.features import pooled
from discbench.functional import at_least_fp32
from discbench.registry import LOSSES


@LOSSES.register()
class L2(Discrepancy):
    """BYOT's feature loss: || pool(bottleneck_i(F_i)) - pool(F_T).detach() ||_2^2, averaged over the batch.

    The source is module i's exit bottleneck output (``Tap.EXIT``, already shaped like F_T), the target F_T,
    detached, both globally average-pooled as in the BYOT code (luanyunteng ``models/resnet.py``: ``middle*_fea``
    and ``final_fea`` are the pooled vectors). The plugin owns no parameters: the bottleneck belongs to the exit,
    which this loss shapes. Differences from BYOT, chosen so that beta does not depend on the batch size: the sum
    over the batch becomes a mean (BYOT's beta = 1e-6 at batch 128 becomes 1.28e-4 in bench.toml), and BYOT's mask
    ``(F_i > 0) | (F_T > 0)`` is dropped because it is a no-op on post-ReLU features (where both are 0 so is the
    difference).
    """

    name = "l2"
    tap = Tap.EXIT
    detaches_target = True
    protocols = frozenset({"self"})  # exit bottlenecks exist only in self-distillation (FitNets is the two-net L2)

    def __init__(self, source: FeatureSpec, target: FeatureSpec):
        super().__init__(source, target)

    def forward(self, source: Tensor, target: Tensor, ctx: LossContext) -> LossOutput:
        diff = at_least_fp32(pooled(source)) - at_least_fp32(pooled(target).detach())
        return LossOutput(diff.pow(2).sum(dim=1).mean())
