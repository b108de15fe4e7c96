"""Online distillation: two networks trained jointly from scratch, each taught by the other (MUSE Table 7(a))."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discbench.api import Backbone, Classifier, LossContext, Protocol, StepOutput, count_parameters
from discbench.config import ProtocolConfig
from discbench.functional import kd_divergence
from discbench.keys import Term
from discbench.protocols.base import PairedDiscrepancies, build_backbone, classifier_costs, network_classifier
from discbench.ranges import within
from discbench.registry import PROTOCOLS

if TYPE_CHECKING:
    from discbench.config import RunConfig


@PROTOCOLS.register()
class OnlineDistillation(Protocol):
    """Two networks, ``net1`` (the run's backbone) and ``net2`` (``peer``; the same architecture when omitted), trained
    jointly from scratch by one optimizer:

    loss = sum_k CE(z_k, y) + kd_weight * sum_k KD(z_k || z_j) + beta * sum_k sum_{(i, i') in pairs} D(F_i^k, F_i'^j)

    for k in {1, 2} and j its peer. KD (Hinton et al. 2015, scaled by T^2) pulls each network's last logits towards
    its peer's, which are a constant target (detached), as in DML (Zhang et al., CVPR 2018) and Table 7(a)'s "KD" row.
    Each network gets its own plugin per pair, source = that network, target = its peer: the pairs follow the
    plugin's pairing (MUSE: F_i of one network with the peer's last feature F_T, MUSE §4 "Extension to Offline /
    Online Distillation"), and whether the peer's tensor receives gradient is the plugin's ``detaches_target``
    (MUSE's MI lets the target feature learn, §3.2). No exits: MUSE computes only the feature term on intermediate
    features and "KD loss on the last layer" in this setting.
    """

    name: ClassVar[str] = "online"
    partner: ClassVar[str | None] = "peer"

    kd_field: ClassVar[str] = "kd_weight"

    @dataclass(frozen=True)
    class Config(ProtocolConfig):
        kd_weight: float = field(metadata=within(ge=0))
        kd_temperature: float = field(metadata=within(gt=0))
        peer: str = ""  # backbone of net2; resolved to the run's backbone when empty

    @classmethod
    def is_baseline(cls, cfg: RunConfig) -> bool:
        return not cfg.loss.name and cfg.protocol.kd_weight == 0

    @classmethod
    def inert(cls, config: Config, loss: str) -> dict[str, str]:
        return {"kd_temperature": "kd_weight = 0"} if config.kd_weight == 0 else {}

    def __init__(self, cfg: RunConfig, teacher: Backbone | None = None):
        super().__init__()
        self.cfg = cfg
        self.names = {"net1": cfg.backbone, "net2": cfg.protocol.peer}
        self.net1 = build_backbone(cfg, role="net1")
        self.net2 = build_backbone(cfg, cfg.protocol.peer, role="net2")
        self.beta = cfg.loss.beta
        self.discrepancies = torch.nn.ModuleDict()
        if cfg.loss.name:
            k = cfg.dataset.num_classes
            s1, s2 = self.net1.feature_specs, self.net2.feature_specs
            self.discrepancies["net1"] = PairedDiscrepancies(cfg, s1, s2, k, "net1")  # net1 taught by net2
            self.discrepancies["net2"] = PairedDiscrepancies(cfg, s2, s1, k, "net2")  # net2 taught by net1

    def networks(self) -> dict[str, nn.Module]:
        return {"net1": self.net1, "net2": self.net2}

    def classifiers(self) -> list[Classifier]:
        return [network_classifier(self.net1, "net1", self.names["net1"]),
                network_classifier(self.net2, "net2", self.names["net2"])]

    def forward(self, x: Tensor, y: Tensor, ctx: LossContext) -> StepOutput:
        p = self.cfg.protocol
        outputs = {"net1": self.net1(x), "net2": self.net2(x)}
        peer_of = {"net1": "net2", "net2": "net1"}
        total = torch.zeros((), device=x.device)
        terms: dict[Term, Tensor] = {}
        for net, (logits, _) in outputs.items():
            ce = terms[Term("ce", net)] = F.cross_entropy(logits, y)
            total = total + ce
            if p.kd_weight:
                kd = terms[Term("kd", net)] = kd_divergence(logits, outputs[peer_of[net]][0].detach(), p.kd_temperature)
                total = total + p.kd_weight * kd
        for net, pairs in self.discrepancies.items():
            loss, pair_terms = pairs(outputs[net], outputs[peer_of[net]], ctx, net)
            total = total + self.beta * loss
            terms.update(pair_terms)
        return StepOutput(total, {k: v.detach() for k, v in terms.items()})

    @torch.no_grad()
    def predict(self, x: Tensor) -> dict[str, Tensor]:
        return {c.key: net(x)[0] for c, net in zip(self.classifiers(), (self.net1, self.net2), strict=True)}

    def cost(self, image_shape: tuple[int, ...]) -> dict:
        per_exit = {}
        for c, net in zip(self.classifiers(), (self.net1, self.net2), strict=True):
            per_exit.update(classifier_costs(net, {c.exit: net.head}, [c], image_shape))
        return {
            "backbone_params": count_parameters(self.net1) + count_parameters(self.net2),
            "exit_params": 0,
            "loss_params": count_parameters(self.discrepancies),
            "per_exit": per_exit,
        }
