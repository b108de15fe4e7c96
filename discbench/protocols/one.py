"""ONE: On-the-fly Native Ensemble (Lan, Zhu and Gong, NeurIPS 2018): branches of the last module, a gated ensemble
teacher, and its knowledge distilled back into every branch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discbench import seeding
from discbench.api import Backbone, Classifier, LossContext, StepOutput
from discbench.config import ProtocolConfig
from discbench.errors import DiscbenchError
from discbench.functional import at_least_fp32, kd_divergence
from discbench.keys import Term
from discbench.protocols.base import DeployedNetwork, build_backbone
from discbench.ranges import within
from discbench.registry import PROTOCOLS

if TYPE_CHECKING:
    from discbench.config import RunConfig

ENSEMBLE = "ensemble"  # the role of the gated ensemble teacher's classifier


class Branch(nn.Module):
    """One auxiliary branch: a copy of the backbone's last module (module T) and its classifier head, fed the shared
    feature F_{T-1}. Shape: (B, C_{T-1}, H, W) -> (B, classes)."""

    def __init__(self, stage: nn.Module, head: nn.Module):
        super().__init__()
        self.stage = stage
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stage(x))


class Gate(nn.Module):
    """ONE's gate: global average pooling of the shared feature F_{T-1}, a linear layer to one score per branch,
    BatchNorm1d, ReLU and a softmax over the branches (the public code's ``ONE_ResNet.forward``: ``avgpool_c``,
    ``control_v1``, ``bn_v1``, ``F.relu``, ``F.softmax``). Shape: (B, C_{T-1}, H, W) -> (B, branches), rows sum to 1.

    The linear layer has no bias: the code's ``control_v1`` has one, but BatchNorm subtracts it again (in training
    with the batch mean; in evaluation with the running mean, which tracks it), so it does not change the gate and
    its gradient is zero up to rounding: a parameter no step trains.
    """

    def __init__(self, channels: int, branches: int):
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.linear = nn.Linear(channels, branches, bias=False)  # a bias before BatchNorm cancels: dead weight
        self.norm = nn.BatchNorm1d(branches)

    def forward(self, x: Tensor) -> Tensor:
        return F.softmax(at_least_fp32(F.relu(self.norm(self.linear(self.pool(x))))), dim=1)


def rampup(epoch: int, length: float) -> float:
    """The consistency weight's sigmoid-shaped ramp-up, exp(-5 (1 - t)^2) with t = clip(epoch / length, 0, 1)
    (Laine and Aila, "Temporal Ensembling", ICLR 2017; the ONE code's ``utils/ramps.py:sigmoid_rampup``, evaluated
    once per epoch at the 0-based epoch index); 1 when ``length`` is 0."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(epoch / length, 0.0), 1.0)
    return math.exp(-5.0 * phase * phase)


@PROTOCOLS.register()
class OnTheFlyNativeEnsemble(DeployedNetwork):
    """ONE (Lan, Zhu and Gong, "Knowledge Distillation by On-the-Fly Native Ensemble", NeurIPS 2018;
    arXiv:1806.04606; code: github.com/Lan1991Xu/ONE_NeurIPS2018, ``models/cifar/resnet.py:ONE_ResNet``,
    ``cifar_one.py``, ``loss/kl_loss.py``).

    The network's last module (module T) and its classifier head (``Backbone.head``, whatever it holds: VGG-19's
    holds its fifth convolution block) are replicated into ``branches`` = m branches that share modules 1..T-1 (the
    code: ``layer3_1..3`` and ``classfier3_1..3`` over a shared ``layer1``, ``layer2``; m = 3 on CIFAR). Branch i
    maps the shared feature F_{T-1} to logits z_i. The gate (``Gate``: global average
    pooling of F_{T-1}, linear to m, BatchNorm1d, ReLU, softmax) weighs the branches into the ensemble teacher

        z_e = sum_i g_i z_i                                             (paper §3, the gated ensemble, Eq. 2)

    and the objective is

        loss = sum_i CE(z_i, y) + CE(z_e, y) + w(epoch) * T^2 * sum_i KL(softmax(z_e / T) || softmax(z_i / T))

    (paper Eq. 5 with the KL of Eq. 4; the code's ``cifar_one.py:train``). T = ``temperature`` (3: the code's
    ``KLLoss``, ``T=3``). The teacher's soft targets are constants (the code wraps them in a ``Variable`` without
    gradient), so the gate and the branches learn the ensemble only through CE(z_e, y). The paper's Eq. 5 weighs the
    KL term 1; the code multiplies it by a consistency weight ``w(epoch) = kd_weight * exp(-5 (1 - t)^2)``,
    t = min(epoch / (rampup_fraction * epochs), 1) at the 0-based epoch (``get_current_consistency_weight``,
    ``utils/ramps.py:sigmoid_rampup``; the README: "ramp up the KL cost ... until the teacher network starts giving
    good predictions"), which reaches ``kd_weight`` after 80 of the code's 300 epochs (``--consistency_rampup 80``,
    ``scripts/ONE_ResNet32.sh``).

    Where discbench chooses: branch 1 *is* the run's network (role ``net``, built by ``build_backbone`` from the
    ``init.net`` stream, so it starts from the same weights as every other row of a table); branches 2..m are the last
    module and head of full backbones built from their own streams (``init.branch2``, ...), the rest of which is
    dropped; the gate draws from ``init.gate`` with PyTorch's default initialisation (the code defines but never
    applies its ``weights_init_*``). The ramp-up is a fraction of the recipe's epochs (80 / 300) rather than 80
    epochs, so that it ends before the first learning-rate decay as in the code (decay at 150 of 300; MUSE's recipe
    decays at 75 of 200). The code adds 1e-7 to the teacher's probabilities before the KL; discbench computes the
    exact KL (``kd_divergence``). Reported: branch 1 (``net/exit{T}``, ``last``): the paper deploys one branch (Fig. 1:
    the auxiliary branches "can be either discarded or kept") and the code keeps its best checkpoint by branch 1's
    accuracy (``test_acc_1``); branches 2..m (``branch2/exit{T}``,
    ...) and the gated ensemble (``ensemble/exit{T}``) are recorded, not reported.
    """

    name: ClassVar[str] = "one"
    family: ClassVar[str] = "self"

    @dataclass(frozen=True)
    class Config(ProtocolConfig):
        branches: int = field(metadata=within(ge=2))  # m: branches of module T, the run's network's own included
        temperature: float = field(metadata=within(gt=0))
        kd_weight: float = field(metadata=within(ge=0))  # the KL term's weight once ramped up (Eq. 5: 1)
        rampup_fraction: float = field(metadata=within(ge=0, le=1))  # of the recipe's epochs; 0: no ramp-up

    @classmethod
    def inert(cls, config: Config, loss: str) -> dict[str, str]:
        return dict.fromkeys(("temperature", "rampup_fraction"), "kd_weight = 0") if config.kd_weight == 0 else {}

    def __init__(self, cfg: RunConfig, teacher: Backbone | None = None):
        if cfg.recipe.batch_size < 2:
            raise DiscbenchError(f"protocol 'one' needs recipe.batch_size >= 2 (got {cfg.recipe.batch_size}): its "
                                 f"gate normalises the branch scores over the batch (BatchNorm1d)")
        super().__init__(cfg)
        p = cfg.protocol
        specs = self.net.feature_specs
        if len(specs) < 2:
            raise DiscbenchError(f"protocol 'one' branches the last module of a network of at least 2 modules; "
                                 f"'{cfg.backbone}' has {len(specs)}")
        self.branches = nn.ModuleList()
        for k in range(2, p.branches + 1):
            donor = build_backbone(cfg, role=f"branch{k}")
            self.branches.append(Branch(donor.stages[-1], donor.head))
        with seeding.stream("init.gate"):
            self.gate = Gate(specs[-2].channels, p.branches)

    @property
    def roles(self) -> list[str]:
        """The branches' networks, in order: ``net`` (branch 1, reported), ``branch2``, ..., ``branch{m}``."""
        return ["net", *(f"branch{k}" for k in range(2, len(self.branches) + 2))]

    def classifiers(self) -> list[Classifier]:
        t, backbone = self.num_modules, self.cfg.backbone
        return [Classifier(network=role, backbone=backbone, exit=t, last=role == "net")
                for role in [*self.roles, ENSEMBLE]]

    def branch_logits(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The shared feature F_{T-1} and the logits of every branch, branch 1 (the network's own module T and head)
        first."""
        for stage in self.net.stages[:-1]:
            x = stage(x)
        own = self.net.head(self.net.stages[-1](x))
        return x, [own, *(branch(x) for branch in self.branches)]

    @staticmethod
    def ensemble(gate: Tensor, logits: list[Tensor]) -> Tensor:
        """z_e = sum_i g_i z_i, in at least fp32. Shape: gate (B, m), logits m x (B, K) -> (B, K)."""
        z = torch.stack([at_least_fp32(z_i) for z_i in logits], dim=1)
        return (gate.to(z.dtype).unsqueeze(-1) * z).sum(dim=1)

    def kd_weight(self, epoch: int) -> float:
        """w(epoch): ``kd_weight`` times the sigmoid ramp-up over ``rampup_fraction`` of the recipe's epochs."""
        p = self.cfg.protocol
        return p.kd_weight * rampup(epoch, p.rampup_fraction * self.cfg.recipe.epochs)

    def forward(self, x: Tensor, y: Tensor, ctx: LossContext) -> StepOutput:
        p = self.cfg.protocol
        shared, logits = self.branch_logits(x)
        teacher = self.ensemble(self.gate(shared), logits)
        target = teacher.detach()  # the code's KLLoss: soft targets without gradient
        weight = self.kd_weight(ctx.epoch)
        total = torch.zeros((), device=x.device)
        terms: dict[Term, Tensor] = {}
        for role, z in zip(self.roles, logits, strict=True):
            ce = terms[Term("ce", role)] = F.cross_entropy(z, y)
            total = total + ce
            if p.kd_weight:
                kd = terms[Term("kd", role)] = kd_divergence(z, target, p.temperature)
                total = total + weight * kd
        ce_e = terms[Term("ce", ENSEMBLE)] = F.cross_entropy(teacher, y)
        total = total + ce_e
        return StepOutput(total, {k: v.detach() for k, v in terms.items()})

    @torch.no_grad()
    def predict(self, x: Tensor) -> dict[str, Tensor]:
        shared, logits = self.branch_logits(x)
        t = self.num_modules
        out = {f"{role}/exit{t}": z for role, z in zip(self.roles, logits, strict=True)}
        out[f"{ENSEMBLE}/exit{t}"] = self.ensemble(self.gate(shared), logits)
        return out
