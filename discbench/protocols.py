"""Distillation protocols: what a run builds and which terms it sums. One training loop (discbench.train) runs them all.

A protocol is an ``nn.Module`` built from a ``RunConfig``. It owns the network(s), the exits and one discrepancy
plugin per (source, target) pair, so ``protocol.parameters()`` is everything the optimizer trains: plugin heads are
trained because they are submodules, never because a plugin registered them. It implements

- ``forward(x, y, ctx) -> StepOutput``: the weighted total and the unweighted terms, named ``<term>@<module>``;
- ``predict(x) -> {exit name: logits}``: every classifier evaluated at test time;
- ``cost(image_shape) -> dict``: parameters and FLOPs per exit, extra parameters of the losses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from discbench.api import Backbone, Discrepancy, FeatureSpec, LossContext, Tap, classifier_head, count_parameters
from discbench.config import RunConfig
from discbench.errors import DiscbenchError
from discbench.losses.kd import kd_divergence
from discbench.registry import BACKBONES, LOSSES, PROTOCOLS


@dataclass
class StepOutput:
    """The weighted total of a step and its unweighted terms (detached scalars), e.g. ``{"ce@1": ..., "mi@1": ...}``."""

    total: Tensor
    terms: dict[str, Tensor]


def build_backbone(cfg: RunConfig) -> Backbone:
    ds = cfg.dataset
    return BACKBONES.get(cfg.backbone)(in_channels=ds.channels, num_classes=ds.num_classes, image_size=ds.image_size)


def build_discrepancy(cfg: RunConfig, source: FeatureSpec, target: FeatureSpec) -> Discrepancy:
    return LOSSES.get(cfg.loss.name)(source, target, **cfg.loss.hparams)


class ExitBranch(nn.Module):
    """BYOT's exit for module i: a bottleneck that brings F_i to the shape of F_T, then a classifier.

    Bottleneck: 1x1 conv to C_T/4, BN, ReLU; k x k conv with stride k = r_T / r_i (the input is zero-padded at the
    bottom/right to a multiple of k, so odd sizes such as 7x7 -> 4x4 match the backbone's rounding), BN, ReLU;
    1x1 conv to C_T, BN, ReLU. Classifier: global average pooling and a linear layer.
    """

    def __init__(self, source: FeatureSpec, target: FeatureSpec, num_classes: int):
        super().__init__()
        mid = max(target.channels // 4, 1)
        self.stride = max(target.reduction // source.reduction, 1)
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


@PROTOCOLS.register()
class SelfDistillation(nn.Module):
    """Self-distillation with exits after modules 1..T-1 (MUSE Fig. 1 and §4.1; BYOT).

    loss = sum_{i<=T} w_i CE(exit_i, y) + kd_weight * sum_{i<T} KD(exit_i || exit_T) + beta * sum_{i<T} D(src_i, tgt)

    with w_T = 1, w_i = ``exit_ce_weight`` for i < T, KD at ``kd_temperature`` scaled by T^2 with the last exit
    detached (BYOT), and D the discrepancy plugin on the tap it declares: F_i -> F_T (``Tap.FEATURE``), exit
    bottleneck output -> F_T (``Tap.EXIT``) or exit logits -> last logits (``Tap.LOGITS``). With ``exits = false``
    it is the plain network with its one classifier (the papers' "Baseline").
    """

    name: ClassVar[str] = "self"

    @dataclass(frozen=True)
    class Config:
        exits: bool
        exit_ce_weight: float
        kd_weight: float
        kd_temperature: float

    def __init__(self, cfg: RunConfig):
        super().__init__()
        p = cfg.protocol
        self.cfg = cfg
        self.net = build_backbone(cfg)
        specs = self.net.feature_specs
        last = specs[-1]
        num_classes = cfg.dataset.num_classes
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
            self.discrepancies.extend(build_discrepancy(cfg, source_spec(s), target_spec) for s in specs[:-1])

    @property
    def num_modules(self) -> int:
        return len(self.net.feature_specs)

    def exit_names(self) -> list[str]:
        return [f"exit{i + 1}" for i in range(len(self.exits))] + [f"exit{self.num_modules}"]

    def forward(self, x: Tensor, y: Tensor, ctx: LossContext) -> StepOutput:
        p = self.cfg.protocol
        T = self.num_modules
        logits, features = self.net(x)
        ce = F.cross_entropy(logits, y)
        terms = {f"ce@{T}": ce}
        total = ce
        exit_features, exit_logits = [], []
        for i, (branch, feature) in enumerate(zip(self.exits, features, strict=False), start=1):
            feat_i, logits_i = branch(feature)
            exit_features.append(feat_i)
            exit_logits.append(logits_i)
            ce_i = F.cross_entropy(logits_i, y)
            kd_i = kd_divergence(logits_i, logits.detach(), p.kd_temperature)
            terms[f"ce@{i}"], terms[f"kd@{i}"] = ce_i, kd_i
            total = total + p.exit_ce_weight * ce_i + p.kd_weight * kd_i
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
                terms[f"{name}@{i}"] = out.loss
                terms.update({f"{k}@{i}": v for k, v in out.terms.items() if k != name})
        return StepOutput(total, {k: v.detach() for k, v in terms.items()})

    @torch.no_grad()
    def predict(self, x: Tensor) -> dict[str, Tensor]:
        logits, features = self.net(x)
        out = {f"exit{i}": branch(f)[1] for i, (branch, f) in enumerate(zip(self.exits, features, strict=False), 1)}
        out[f"exit{self.num_modules}"] = logits
        return out

    @torch.no_grad()
    def cost(self, image_shape: tuple[int, ...]) -> dict:
        """Parameters and forward FLOPs (one image) of each exit's inference path, and the losses' extra parameters.

        The path of exit i is modules 1..i and exit i's branch (exit T: all modules and the network's head).
        """
        was_training = self.training
        self.eval()
        x = torch.zeros(1, *image_shape, device=next(self.parameters()).device)
        stage_flops, features = [], []
        for stage in self.net.stages:
            flops, x = _counted(stage, x)
            stage_flops.append(flops)
            features.append(x)
        heads = {i: branch for i, branch in enumerate(self.exits, start=1)}
        heads[self.num_modules] = self.net.head
        per_exit = {}
        for i, head in heads.items():
            head_flops, _ = _counted(head, features[i - 1])
            per_exit[f"exit{i}"] = {
                "params": sum(count_parameters(s) for s in self.net.stages[:i]) + count_parameters(head),
                "flops": sum(stage_flops[:i]) + head_flops,
            }
        self.train(was_training)
        return {
            "backbone_params": count_parameters(self.net),
            "exit_params": count_parameters(self.exits),
            "loss_params": count_parameters(self.discrepancies),
            "per_exit": per_exit,
        }


def _counted(module: nn.Module, x: Tensor) -> tuple[int, Tensor]:
    """FLOPs of ``module(x)`` (``FlopCounterMode``: 2 per multiply-add) and its output."""
    with FlopCounterMode(display=False) as counter:
        out = module(x)
    return counter.get_total_flops(), out
