"""Logit distillation (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015)."""

from __future__ import annotations

from torch import Tensor

from discbench.api import Discrepancy, FeatureSpec, LossContext, LossOutput, Pairing, Range, Tap
from discbench.functional import kd_divergence
from discbench.registry import LOSSES


@LOSSES.register()
class KD(Discrepancy):
    """Hinton's KD between logits: ``kd_divergence(source, target.detach(), T)``, T = 4 (RepDistiller, mdistiller).

    Source: the student's (or an exit's) logits; target: the teacher's (or the last exit's) logits, detached. It
    replaces a protocol's own KD term (``replaces_kd``): offline, ``--loss kd`` is RepDistiller's ``--distill kd``
    (0.1 CE + 0.9 KD, bench.toml ``[methods.kd]``), not the protocol's KD plus this one.
    """

    name = "kd"
    tap = Tap.LOGITS
    pairing = Pairing.LAST
    detaches_target = True
    replaces_kd = True  # the protocol's own KD term is this one's: it is never counted twice

    ranges = {"temperature": Range(gt=0)}

    def __init__(self, source: FeatureSpec, target: FeatureSpec, temperature: float = 4.0):
        super().__init__(source, target)
        self.temperature = temperature

    def forward(self, source: Tensor, target: Tensor, ctx: LossContext) -> LossOutput:
        return LossOutput(kd_divergence(source, target.detach(), self.temperature))
