"""The contracts between discbench and its plugins: feature specs, the loss context and the discrepancy base class.

A *discrepancy* is a trainable penalty between a source tensor (a student's feature, an early module's feature, or
logits) and a target tensor. It is one ``nn.Module`` that owns every head it needs (critics, regressors,
discriminators); the runner puts its parameters into the optimizer, so a plugin author never registers them anywhere.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from discbench.keys import Classifier, Term  # torch-free: run records and leaderboards read them too
from discbench.ranges import Range  # torch-free: config.py checks hyper-parameters with it

if TYPE_CHECKING:
    from discbench.config import RunConfig


@dataclass(frozen=True)
class FeatureSpec:
    """What one tap of a network produces.

    Args:
        channels: channels of the map (or length of the vector when ``reduction == 0``).
        reduction: stride relative to the input image; 0 means a vector without spatial dims (logits).
    """

    channels: int
    reduction: int

    @property
    def is_vector(self) -> bool:
        return self.reduction == 0

    def spatial(self, image_size: int) -> int:
        """Side of the map for a square input of side ``image_size`` (stride-2 stages round up)."""
        if self.is_vector:
            return 1
        side = image_size
        r = self.reduction
        while r > 1:
            side, r = -(-side // 2), r // 2
        return side


class Tap(str, Enum):  # noqa: UP042 (a StrEnum would change str() of the members)
    """Which tensor of a module a discrepancy compares.

    FEATURE: the module's output map F_i (the target is the last module's F_T).
    EXIT: the output of module i's exit bottleneck, already shaped like F_T (BYOT's feature loss).
    LOGITS: the exit's logits (the target is the last exit's logits): KD-style methods.
    """

    FEATURE = "feature"
    EXIT = "exit"
    LOGITS = "logits"


class Pairing(str, Enum):  # noqa: UP042 (as Tap)
    """Which (source module, target module) pairs a two-network protocol (online, offline) feeds to the plugin.

    TO_LAST: every earlier module i < T of the trained network to the other network's last module T (MUSE §4
        "Extension to Offline / Online Distillation", BYOT, MIMKD).
    SAME_STAGE: module i to the other network's module i, for i = 2..T: every stage output after the first
        module, the taps RepDistiller's AT, NST and VID compare (its ``feat[1:-1]``; module 1 of its CIFAR networks
        is the stem).
    HINT: module T-1 to module T-1 only: FitNets' single hint (RepDistiller's ``--hint_layer 2``, the second stage of
        a CIFAR network, module 3 of 4).
    LAST: only module T to module T (CRD on the penultimate embedding, AFD on the last map, logit methods).

    Self-distillation always pairs i -> T within one network; the pairing matters for online and offline runs.
    """

    TO_LAST = "to_last"
    SAME_STAGE = "same_stage"
    HINT = "hint"
    LAST = "last"

    def pairs(self, num_modules: int) -> list[tuple[int, int]]:
        """The 1-based (source module, target module) pairs for networks of ``num_modules`` modules."""
        t = num_modules
        return {
            Pairing.TO_LAST: [(i, t) for i in range(1, t)],
            Pairing.SAME_STAGE: [(i, i) for i in range(2, t + 1)],
            Pairing.HINT: [(t - 1, t - 1)],
            Pairing.LAST: [(t, t)],
        }[self]


@dataclass(frozen=True)
class LossContext:
    """What a loss may need beyond its two tensors. Built by the trainer once per step; read-only.

    Shape:
        labels: (B,) int64 class indices.
        indices: (B,) int64 indices of the samples in the training set (for memory banks such as CRD's).
    """

    step: int
    epoch: int
    protocol: str
    labels: Tensor
    indices: Tensor
    dataset_size: int
    num_classes: int
    source_module: int = 0  # 1-based index of the source module of this pair
    target_module: int = 0  # 1-based index of the target module of this pair
    critic_impl: str | None = None  # MI critic implementation resolved once per run (None: discbench.kernels decides)
    views: Mapping[str, Tensor] = field(default_factory=dict)  # the step's extra inputs (``Protocol.views``)


@dataclass
class LossOutput:
    """A scalar loss and named terms (detached) that the trainer logs, e.g. ``{"mi": ..., "si": ...}``."""

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


class Discrepancy(nn.Module):
    """Base class of every discrepancy plugin.

    Subclasses set ``name`` (the registry key), bump ``version`` whenever their numbers could change, declare
    which tensors they compare (``tap``), which module pairs two networks feed them (``pairing``), whether gradient
    flows into the target (``detaches_target``) and, when the method is defined only under some protocols, those
    (``protocols``; another protocol refuses the loss in one line; None, the default, is every registered protocol),
    and implement ``forward``. Keyword arguments of ``__init__`` after the
    two specs are the plugin's hyper-parameters:
    ``bench.toml`` sets them under ``[losses.<name>]`` and ``--set loss.<key>=...`` overrides them, type-checked
    against the defaults and range-checked against ``ranges`` (``{"dim": Range(ge=1)}``; discbench.ranges).

    A plugin that is itself a logit-distillation term (KD, DML, KDCL) declares ``replaces_kd``: under a protocol with a
    KD term of its own (``Protocol.kd_field``) the plugin *replaces* that term, whose weight is resolved to 0, so that
    no distillation term is counted twice; a ``--set`` that asks for both is refused.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    tap: ClassVar[Tap] = Tap.FEATURE
    pairing: ClassVar[Pairing] = Pairing.TO_LAST
    detaches_target: ClassVar[bool] = True
    protocols: ClassVar[frozenset[str] | None] = None  # where the method is defined; None: under every protocol
    replaces_kd: ClassVar[bool] = False  # a logit-distillation term: it replaces the protocol's own KD term
    ranges: ClassVar[Mapping[str, Range]] = {}  # valid range of each numeric hyper-parameter (floats: finite anyway)

    def __init__(self, source: FeatureSpec, target: FeatureSpec):
        super().__init__()
        self.source_spec = source
        self.target_spec = target

    def forward(self, source: Tensor, target: Tensor, ctx: LossContext) -> LossOutput:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def problems(cls, hparams: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
        """Constraints between hyper-parameters (each already within its range): (key, value, what is wrong)."""
        return []

    @classmethod
    def hparams(cls) -> dict[str, Any]:
        """The plugin's hyper-parameters with their defaults, read from the signature of ``__init__``."""
        params = list(inspect.signature(cls.__init__).parameters.values())[3:]
        missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.kind is p.KEYWORD_ONLY]
        if missing:
            raise TypeError(f"{cls.__name__}: hyper-parameters need defaults: {missing}")
        return {
            p.name: p.default
            for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not inspect.Parameter.empty
        }


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class Backbone(nn.Module):
    """A CNN decomposed into T modules (stages); ``forward`` returns ``(logits, [F_1, ..., F_T])``.

    Subclasses fill ``stages`` (module 1 includes the stem), ``head`` (pooling and classifier) and
    ``feature_specs``, one ``FeatureSpec`` per stage, which a test checks against real shapes.

    Args (of every registered backbone): in_channels, num_classes, image_size.
    """

    name: ClassVar[str]
    stages: nn.ModuleList
    head: nn.Module
    feature_specs: tuple[FeatureSpec, ...]

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return self.head(x), features


def classifier_head(channels: int, num_classes: int) -> nn.Sequential:
    """Global average pooling, then a linear classifier."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


@dataclass
class StepOutput:
    """The weighted total of a step and its unweighted terms (detached scalars) by typed name, e.g.
    ``{Term("ce", module=4): ..., Term("mi", module=1): ...}`` in one network, ``Term("mi", "net1", 2)`` when a
    protocol trains several (``discbench.keys.Term``).
    """

    total: Tensor
    terms: dict[Term, Tensor]


class Protocol(nn.Module):
    """Base class of distillation protocols. One training loop (``discbench.train``) runs every protocol.

    A protocol is built from a ``RunConfig`` (and, for protocols with ``needs_teacher``, the verified teacher
    network). It owns the network(s) it trains, their exits and one discrepancy plugin per (source, target) pair, so
    ``parameters()`` is everything the optimizer trains. It implements

    - ``forward(x, y, ctx) -> StepOutput``: the weighted total and the unweighted named terms;
    - ``networks() -> {role: module}``: the trained networks (their initial weights are the run's fingerprint);
    - ``classifiers() -> [Classifier]`` and ``predict(x) -> {classifier key: logits}``: every evaluated classifier;
    - ``cost(image_shape) -> dict``: parameters and FLOPs per classifier, the losses' extra parameters;
    - ``train(mode)``: a frozen teacher stays in eval mode whatever the loop asks.

    - ``views(data, batch, generator) -> {name: tensor}`` (optional): extra inputs of a step drawn from the training
      data, which ``forward`` reads as ``ctx.views``: a second distorted view of each image (DDGSD), a sample of the
      same class (CS-KD). A method that changes the data is one protocol file, not a change of the loop;
    - ``check_data(cfg, data)`` (optional, a classmethod): refuses, in one line, training data the method cannot use
      (called once the data is open, before anything trains).

    Class attributes: ``name`` (registry key), ``Config`` (the frozen dataclass of ``[protocols.<name>]`` in
    bench.toml, a ``discbench.config.ProtocolConfig``), ``partner`` (the Config field naming the second network:
    ``"peer"`` or ``"teacher"``; None for one network), ``needs_teacher``, ``kd_field``, ``family`` (the protocol
    whose tables its rows join: a self-distillation method with its own objective, such as CS-KD or ONE, is of family
    ``self``; None: its own) and ``takes_loss`` (False: the protocol's objective is the method itself and it runs no
    discrepancy plugin; its methods are the ``[methods]`` tables that name it).
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    partner: ClassVar[str | None] = None
    needs_teacher: ClassVar[bool] = False
    kd_field: ClassVar[str | None] = None  # the Config field weighing the protocol's own logit-KD term
    family: ClassVar[str | None] = None  # the protocol whose tables its rows join (None: its own)
    takes_loss: ClassVar[bool] = True  # False: the objective is the protocol's own, no discrepancy plugin runs

    @classmethod
    def table_protocol(cls) -> str:
        """The protocol whose tables this protocol's rows join (``family``, else its own name)."""
        return cls.family or cls.name

    @classmethod
    def check_data(cls, cfg: RunConfig, data: Any) -> None:
        """Refuse (``DiscbenchError``, one line) training data that a run of ``cfg`` cannot use; default: any."""

    @classmethod
    def draws_views(cls) -> bool:
        """Whether the protocol draws extra views (it overrides ``views``): they need a dataset held in memory."""
        return cls.views is not Protocol.views

    def views(self, data: Any, batch: Any, generator: torch.Generator) -> dict[str, Tensor]:
        """Extra inputs of the step on ``batch`` (``discbench.data.Batch``) drawn from the training ``data`` with
        ``generator`` (the run's data stream, so that a resumed run draws the same); default: none. Under torchrun
        each rank draws for its own slice of the global batch with its own copy of the stream: the draws stay in
        step across ranks, but differ from a one-process run's (which a one-process run's records say)."""
        return {}

    @classmethod
    def is_baseline(cls, cfg: RunConfig) -> bool:  # pragma: no cover - every protocol overrides it
        """Whether ``cfg`` trains its network(s) without any distillation term (the papers' "Baseline" row)."""
        raise NotImplementedError

    @classmethod
    def inert(cls, config: Any, loss: str) -> dict[str, str]:
        """The Config fields that have no effect on a run with this ``config`` and loss (``loss``: the plugin's name,
        "" for none), each with the reason: the resolver sets them to their default values, so that two runs that
        compute the same thing have one configuration hash."""
        return {}

    @classmethod
    def uses_teacher(cls, cfg: RunConfig) -> bool:
        """Whether a run of ``cfg`` reads its teacher (protocols with ``needs_teacher``); a run that never does
        trains without one in the store."""
        return cls.needs_teacher

    def networks(self) -> dict[str, nn.Module]:  # pragma: no cover
        """The trained networks by role (``net``; ``net1``, ``net2``; ``student``): what a record fingerprints as
        the run's starting point."""
        raise NotImplementedError

    def classifiers(self) -> list[Classifier]:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: Tensor, y: Tensor, ctx: LossContext) -> StepOutput:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: Tensor) -> dict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def cost(self, image_shape: tuple[int, ...]) -> dict:  # pragma: no cover
        raise NotImplementedError
