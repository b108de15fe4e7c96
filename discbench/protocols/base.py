"""What the protocols share: building a network, one plugin per paired tap of two networks, and cost counting."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from discbench import seeding
from discbench.api import (
    Backbone,
    Classifier,
    Discrepancy,
    FeatureSpec,
    LossContext,
    Protocol,
    Tap,
    count_parameters,
)
from discbench.errors import DiscbenchError
from discbench.keys import Term
from discbench.registry import BACKBONES, LOSSES

if TYPE_CHECKING:
    from discbench.config import RunConfig


def build_backbone(cfg: RunConfig, name: str | None = None, role: str = "net") -> Backbone:
    """The backbone ``name`` (default: the run's) for the run's dataset (input channels, classes, image size),
    initialised from the run's ``init.<role>`` random stream (``discbench.seeding``): the network of role ``net``
    starts from the same weights in every row of a table, whatever else the row builds."""
    ds = cfg.dataset
    with seeding.stream(f"init.{role}"):
        return BACKBONES.get(name or cfg.backbone)(in_channels=ds.channels, num_classes=ds.num_classes,
                                                   image_size=ds.image_size)


def build_discrepancy(cfg: RunConfig, source: FeatureSpec, target: FeatureSpec) -> Discrepancy:
    """One plugin of the run's loss (its heads draw from the ``init.loss`` stream when built inside
    ``seeding.stream``)."""
    return LOSSES.get(cfg.loss.name)(source, target, **cfg.loss.hparams)


class PairedDiscrepancies(nn.Module):
    """One discrepancy plugin per (source module, target module) pair of two networks.

    The pairs follow the plugin's ``tap`` and ``pairing`` (``discbench.api.Pairing.pairs``): feature taps pair
    module i of the trained network with module j of the other network; ``Tap.LOGITS`` pairs the two networks'
    logits. ``Tap.EXIT`` needs exits, which only self-distillation builds.

    Args:
        cfg: the run (its loss and hyper-parameters).
        source, target: the feature specs of the trained network and of the target network (same module count).
        num_classes: length of the logit vectors.
        network: the trained network's role (its plugins' heads draw from the ``init.loss.<network>`` stream).
    """

    def __init__(self, cfg: RunConfig, source: tuple[FeatureSpec, ...], target: tuple[FeatureSpec, ...],
                 num_classes: int, network: str):
        super().__init__()
        cls = LOSSES.get(cfg.loss.name)
        if len(source) != len(target):
            raise DiscbenchError(f"the two networks have {len(source)} and {len(target)} modules; a pairing needs "
                                 f"networks decomposed into the same number of modules")
        if cls.tap is Tap.EXIT:
            raise DiscbenchError(f"loss '{cfg.loss.name}' compares exit bottlenecks (tap 'exit'), which only the "
                                 f"self protocol builds")
        self.name = cfg.loss.name
        self.tap = cls.tap
        t = len(source)
        self.pairs = [(t, t)] if cls.tap is Tap.LOGITS else cls.pairing.pairs(t)
        vector = FeatureSpec(num_classes, 0)
        with seeding.stream(f"init.loss.{network}"):
            self.plugins = nn.ModuleList(
                build_discrepancy(cfg, vector, vector) if cls.tap is Tap.LOGITS
                else build_discrepancy(cfg, source[i - 1], target[j - 1])
                for i, j in self.pairs
            )

    def forward(self, source: tuple[Tensor, list[Tensor]], target: tuple[Tensor, list[Tensor]], ctx: LossContext,
                network: str) -> tuple[Tensor, dict[Term, Tensor]]:
        """Sum of the plugins' losses and their terms, named by ``network`` and source module.

        Args:
            source, target: ``(logits, [F_1..F_T])`` of the trained network and of the target network.
            network: the trained network's name, for the term names.
        """
        total = torch.zeros((), device=source[0].device)
        terms: dict[Term, Tensor] = {}
        for plugin, (i, j) in zip(self.plugins, self.pairs, strict=True):
            s, t = (source[0], target[0]) if self.tap is Tap.LOGITS else (source[1][i - 1], target[1][j - 1])
            out = plugin(s, t, dataclasses.replace(ctx, source_module=i, target_module=j))
            total = total + out.loss
            terms[Term(self.name, network, i)] = out.loss
            terms.update({Term(k, network, i): v for k, v in out.terms.items() if k != self.name})
        return total, terms


def frozen(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with every parameter's ``requires_grad`` off (a teacher)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def counted(module: nn.Module, x: Tensor) -> tuple[int, Tensor]:
    """FLOPs of ``module(x)`` (``FlopCounterMode``: 2 per multiply-add) and its output."""
    with FlopCounterMode(display=False) as counter:
        out = module(x)
    return counter.get_total_flops(), out


@torch.no_grad()
def classifier_costs(net: Backbone, heads: dict[int, nn.Module], classifiers: list[Classifier],
                     image_shape: tuple[int, ...]) -> dict[str, dict[str, int]]:
    """Parameters and forward FLOPs (one image) of each classifier's inference path through ``net``.

    The path of exit i is modules 1..i and ``heads[i]`` (exit T: every module and the network's own head). The
    network is put in eval mode for the count and restored.
    """
    was_training = net.training
    net.eval()
    for head in heads.values():
        head.eval()
    x = torch.zeros(1, *image_shape, device=next(net.parameters()).device)
    stage_flops, features = [], []
    for stage in net.stages:
        flops, x = counted(stage, x)
        stage_flops.append(flops)
        features.append(x)
    out = {}
    for c in classifiers:
        head = heads[c.exit]
        head_flops, _ = counted(head, features[c.exit - 1])
        out[c.key] = {
            "params": sum(sum(p.numel() for p in s.parameters()) for s in net.stages[:c.exit])
            + sum(p.numel() for p in head.parameters()),
            "flops": sum(stage_flops[:c.exit]) + head_flops,
        }
    net.train(was_training)
    for head in heads.values():
        head.train(was_training)
    return out


class DeployedNetwork(Protocol):
    """Base of protocols that train one network ``net`` (role "net", the run's backbone: the same initial weights as
    every other row of a table) with objectives of their own and deploy it without exits (CS-KD, ONE, DDGSD, FRSKD).

    It reports ``net``'s final classifier; a subclass that evaluates more (ONE's other branches, FRSKD's
    self-teacher) extends ``classifiers`` and ``predict`` with ``last = False`` classifiers. Its cost counts the
    deployed network, and every other trainable parameter the protocol holds as ``loss_params``: what the method
    trains beside the network and never deploys.
    """

    family: ClassVar[str | None] = "self"
    takes_loss: ClassVar[bool] = False

    def __init__(self, cfg: RunConfig, teacher: Backbone | None = None):
        super().__init__()
        self.cfg = cfg
        self.net = build_backbone(cfg)

    @classmethod
    def is_baseline(cls, cfg: RunConfig) -> bool:
        return False

    @property
    def num_modules(self) -> int:
        return len(self.net.feature_specs)

    def networks(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def reported(self) -> Classifier:
        """The deployed network's final classifier: the number a table shows."""
        return network_classifier(self.net, "net", self.cfg.backbone)

    def classifiers(self) -> list[Classifier]:
        return [self.reported()]

    @torch.no_grad()
    def predict(self, x: Tensor) -> dict[str, Tensor]:
        return {self.reported().key: self.net(x)[0]}

    def cost(self, image_shape: tuple[int, ...]) -> dict:
        reported = self.reported()
        return {
            "backbone_params": count_parameters(self.net),
            "exit_params": 0,
            "loss_params": count_parameters(self) - count_parameters(self.net),
            "per_exit": classifier_costs(self.net, {reported.exit: self.net.head}, [reported], image_shape),
        }


def network_classifier(net: Backbone, network: str, backbone: str) -> Classifier:
    """The final classifier of a network without exits."""
    return Classifier(network=network, backbone=backbone, exit=len(net.feature_specs), last=True)

