"""Self-distillation: one network with exits after modules 1..T-1 (MUSE Fig. 1 and §4.1; BYOT)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discbench import seeding
from discbench.api import (
    Backbone,
    Classifier,
    FeatureSpec,
    LossContext,
    Protocol,
    StepOutput,
    Tap,
    classifier_head,
    count_parameters,
)
from discbench.config import ProtocolConfig
from discbench.errors import DiscbenchError
from discbench.functional import kd_divergence
from discbench.keys import Term
from discbench.protocols.base import build_backbone, build_discrepancy, classifier_costs
from discbench.ranges import within
from discbench.registry import LOSSES, PROTOCOLS

if TYPE_CHECKING:
    from discbench.config import RunConfig


class ExitBranch(nn.Module):
    """BYOT's exit for module i: a bottleneck that brings F_i to the shape of F_T, then a classifier.

    Bottleneck: 1x1 conv to C_T/4, BN, ReLU; k x k conv with stride k = r_T / r_i (the input is zero-padded at the
    bottom/right to a multiple of k, so odd sizes such as 7x7 -> 4x4 match the backbone's rounding), BN, ReLU;
    1x1 conv to C_T, BN, ReLU. Classifier: global average pooling and a linear layer.
    """

    def __init__(self, source: FeatureSpec, target: FeatureSpec, num_classes: int):
        super().__init__()
        mid = max(target.channels // 4, 1)
        self.stride = max(target.reduction // max(source.reduction, 1), 1)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(source.channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, self.stride, stride=self.stride, bias=False), nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, target.channels, 1, bias=False), nn.BatchNorm2d(target.channels), nn.ReLU(inplace=True),
        )
        self.classifier = classifier_head(target.channels, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = self.stride
        x = F.pad(x, (0, -x.shape[-1] % s, 0, -x.shape[-2] % s))
        feature = self.bottleneck(x)
        return feature, self.classifier(feature)


class ExitClassifier(nn.Module):
    """An exit's inference path from F_i: its bottleneck and classifier (for cost counting)."""

    def __init__(self, branch: ExitBranch):
        super().__init__()
        self.branch = branch

    def forward(self, x: Tensor) -> Tensor:
        return self.branch(x)[1]


@PROTOCOLS.register()
class SelfDistillation(Protocol):
    """Self-distillation with exits after modules 1..T-1 (MUSE Fig. 1 and §4.1; BYOT).

    loss = (1 - a) sum_{i<=T} w_i CE(exit_i, y) + a sum_{i<T} KD(exit_i || exit_T) + beta sum_{i<T} D(src_i, tgt)

    BYOT's objective (Zhang et al., ICCV 2019, §3.2; its ``train.py`` weighs every cross-entropy by 1 - alpha and
    every KD term by alpha): a = ``kd_weight`` (alpha, 0.1), w_T = 1, w_i = ``exit_ce_weight`` for i < T (a switch
    for MUSE Table 5's rows without CE at the exits), KD at ``kd_temperature`` (3) scaled by T^2 with the last exit
    detached, and D the discrepancy plugin on the tap it declares: F_i -> F_T (``Tap.FEATURE``), exit bottleneck
    output -> F_T (``Tap.EXIT``) or exit logits -> last logits (``Tap.LOGITS``). Without KD (a = 0) the
    cross-entropies weigh 1. With ``exits = false`` it is the plain network with its one classifier and loss
    CE(exit_T, y) (the papers' "Baseline"). The plugin's ``pairing`` is not used: one network always pairs module i
    with module T.
    """

    name: ClassVar[str] = "self"

    kd_field: ClassVar[str] = "kd_weight"

    @dataclass(frozen=True)
    class Config(ProtocolConfig):
        exits: bool
        exit_ce_weight: float = field(metadata=within(ge=0))
        kd_weight: float = field(metadata=within(ge=0, lt=1))  # BYOT's alpha: CE terms weigh 1 - alpha
        kd_temperature: float = field(metadata=within(gt=0))

    @classmethod
    def is_baseline(cls, cfg: RunConfig) -> bool:
        return not cfg.protocol.exits and not cfg.loss.name

    @classmethod
    def inert(cls, config: Config, loss: str) -> dict[str, str]:
        if not config.exits:
            return dict.fromkeys(("exit_ce_weight", "kd_weight", "kd_temperature"), "exits = false")
        return {"kd_temperature": "kd_weight = 0"} if config.kd_weight == 0 else {}

    def __init__(self, cfg: RunConfig, teacher: Backbone | None = None):
        super().__init__()
        p = cfg.protocol
        self.cfg = cfg
        self.net = build_backbone(cfg)
        specs = self.net.feature_specs
        last = specs[-1]
        num_classes = cfg.dataset.num_classes
        with seeding.stream("init.exits"):
            self.exits = nn.ModuleList([ExitBranch(s, last, num_classes) for s in specs[:-1]] if p.exits else [])
        self.discrepancies = nn.ModuleList()
        self.beta = cfg.loss.beta
        if cfg.loss.name:
            tap = LOSSES.get(cfg.loss.name).tap
            if tap in (Tap.EXIT, Tap.LOGITS) and not p.exits:
                raise DiscbenchError(f"loss '{cfg.loss.name}' compares exit outputs (tap '{tap.value}') and needs "
                                     f"protocol.exits = true")
            source_spec = {Tap.FEATURE: lambda s: s, Tap.EXIT: lambda s: last,
                           Tap.LOGITS: lambda s: FeatureSpec(num_classes, 0)}[tap]
            target_spec = source_spec(last)
            with seeding.stream("init.loss"):
                self.discrepancies.extend(build_discrepancy(cfg, source_spec(s), target_spec) for s in specs[:-1])

    def networks(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    @property
    def num_modules(self) -> int:
        return len(self.net.feature_specs)

    def classifiers(self) -> list[Classifier]:
        t = self.num_modules
        exits = [*range(1, len(self.exits) + 1), t]
        return [Classifier(network="net", backbone=self.cfg.backbone, exit=i, last=i == t) for i in exits]

    def forward(self, x: Tensor, y: Tensor, ctx: LossContext) -> StepOutput:
        p = self.cfg.protocol
        T = self.num_modules
        logits, features = self.net(x)
        ce = F.cross_entropy(logits, y)
        terms = {Term("ce", module=T): ce}
        ce_weight = 1 - p.kd_weight if self.exits else 1.0  # BYOT: (1 - alpha) on every cross-entropy
        total = ce_weight * ce
        exit_features, exit_logits = [], []
        for i, (branch, feature) in enumerate(zip(self.exits, features, strict=False), start=1):
            feat_i, logits_i = branch(feature)
            exit_features.append(feat_i)
            exit_logits.append(logits_i)
            ce_i = F.cross_entropy(logits_i, y)
            kd_i = kd_divergence(logits_i, logits.detach(), p.kd_temperature)
            terms[Term("ce", module=i)], terms[Term("kd", module=i)] = ce_i, kd_i
            total = total + ce_weight * p.exit_ce_weight * ce_i + p.kd_weight * kd_i
        if self.discrepancies:
            tap = type(self.discrepancies[0]).tap
            sources, target = {
                Tap.FEATURE: (features[:-1], features[-1]),
                Tap.EXIT: (exit_features, features[-1]),
                Tap.LOGITS: (exit_logits, logits),
            }[tap]
            name = self.cfg.loss.name
            for i, (plugin, source) in enumerate(zip(self.discrepancies, sources, strict=True), start=1):
                out = plugin(source, target, dataclasses.replace(ctx, source_module=i, target_module=T))
                total = total + self.beta * out.loss
                terms[Term(name, module=i)] = out.loss
                terms.update({Term(k, module=i): v for k, v in out.terms.items() if k != name})
        return StepOutput(total, {k: v.detach() for k, v in terms.items()})

    @torch.no_grad()
    def predict(self, x: Tensor) -> dict[str, Tensor]:
        logits, features = self.net(x)
        out = {f"net/exit{i}": branch(f)[1] for i, (branch, f) in enumerate(zip(self.exits, features, strict=False),
                                                                            1)}
        out[f"net/exit{self.num_modules}"] = logits
        return out

    def cost(self, image_shape: tuple[int, ...]) -> dict:
        """Parameters and forward FLOPs (one image) of each exit's inference path, and the losses' extra parameters.

        The path of exit i is modules 1..i and exit i's branch (exit T: all modules and the network's head).
        """
        heads: dict[int, nn.Module] = {i: ExitClassifier(b) for i, b in enumerate(self.exits, start=1)}
        heads[self.num_modules] = self.net.head
        return {
            "backbone_params": count_parameters(self.net),
            "exit_params": count_parameters(self.exits),
            "loss_params": count_parameters(self.discrepancies),
            "per_exit": classifier_costs(self.net, heads, self.classifiers(), image_shape),
        }
