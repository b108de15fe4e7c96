"""FRSKD: feature refinement via self-knowledge distillation, an auxiliary self-teacher on the backbone's features."""

from __future__ import annotations

import math
from collections.abc import Sequence
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
    StepOutput,
)
from discbench.config import ProtocolConfig
from discbench.errors import DiscbenchError
from discbench.functional import at_least_fp32, kd_divergence
from discbench.keys import Term
from discbench.protocols.base import DeployedNetwork
from discbench.ranges import within
from discbench.registry import PROTOCOLS

if TYPE_CHECKING:
    from discbench.config import RunConfig

FUSION_EPS = 1e-6  # the code's BiFPN_layer.epsilon (fast normalised fusion)


def fusion_weights(raw: Tensor) -> Tensor:
    """Fast normalised fusion (EfficientDet's, as FRSKD's BiFPNc computes it): ReLU(w) / (sum ReLU(w) + 1e-6)."""
    w = F.relu(raw)
    return w / (w.sum() + FUSION_EPS)


def attention(feature: Tensor) -> Tensor:
    """Attention map of the feature distillation: vec(mean_c A_c^2), L2-normalised per sample (the code's
    ``Attention.at``, p = 2; Zagoruyko and Komodakis' activation-based attention). Computed in at least fp32.

    Shape: (B, C, H, W) -> (B, H*W).
    """
    return F.normalize(at_least_fp32(feature).pow(2).mean(dim=1).flatten(1), dim=1)


def attention_loss(source: Tensor, target: Tensor) -> Tensor:
    """mean over batch and locations of (Q(source) - Q(target))^2, the target detached (the code's ``at_loss`` on
    ``f_t.detach()``). Shape: two (B, C_s, H, W), (B, C_t, H, W) maps of one spatial size -> scalar."""
    return (attention(source) - attention(target.detach())).pow(2).mean()


def pointwise(cin: int, cout: int) -> nn.Sequential:
    """1x1 convolution (no bias), BN, ReLU: the code's ``DepthConvBlock`` with kernel 1 (its depth is unused)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def separable(channels: int, depth: int) -> nn.Sequential:
    """``depth`` depthwise-separable 3x3 convolutions (depthwise 3x3 with zero padding 1, pointwise 1x1, both without
    bias, then BN), a ReLU between two of them and none after the last: the code's ``DepthConvBlock`` with kernel 3."""
    layers: list[nn.Module] = []
    for k in range(depth):
        layers += [nn.ReLU()] if k else []
        layers += [nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                   nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels)]
    return nn.Sequential(*layers)


def resize_nearest(x: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest-neighbour resampling to ``size`` (the code's 2x upsampling where the sizes differ by 2; a 4x4 map goes
    to 7x7, not 8x8, below a 7x7 level)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=tuple(size), mode="nearest")


class Downsample(nn.Module):
    """The bottom-up path's resampling of level i - 1 to level i: max pooling with stride k = r_i / r_{i-1} and
    kernel k + 1 under TensorFlow "same" padding (zeros: its input is post-ReLU), which gives ceil(H / k) as the
    backbones' stride-k stages do (the code: ``MaxPool2dStaticSamePadding(3, 2)``), then nearest resampling to the
    level's actual size should the two still differ; then 1x1 convolution, BN, ReLU to the level's width."""

    def __init__(self, stride: int, cin: int, cout: int):
        super().__init__()
        self.stride = stride
        self.kernel = stride + 1
        self.project = pointwise(cin, cout)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        if self.stride > 1:
            k, s = self.kernel, self.stride
            pads = []
            for side in (x.shape[-1], x.shape[-2]):  # F.pad's order: last dim first
                extra = max((math.ceil(side / s) - 1) * s + k - side, 0)
                pads += [extra // 2, extra - extra // 2]
            x = F.max_pool2d(F.pad(x, pads), k, s)
        return self.project(resize_nearest(x, size))


class Upsample(nn.Module):
    """The top-down path's resampling of level i + 1 to level i: nearest to the level's size, then 1x1 convolution,
    BN, ReLU to the level's width (the code: ``nn.Upsample(scale_factor=2)`` and a ``DepthConvBlock`` of kernel 1)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.project = pointwise(cin, cout)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        return self.project(resize_nearest(x, size))


class SelfTeacher(nn.Module):
    """FRSKD's self-teacher network for CIFAR (the code's ``BiFPNc`` with one layer): a BiFPN over the backbone's
    stage features F_1..F_n, width d_i = ``width`` * C_i at level i, and a classifier on its top level.

    With phi(x) = ReLU(BN(Conv1x1(x))) and w-hat the fast normalised fusion weights (``fusion_weights``):

        L_i = phi_i(ReLU(F_i)) (i = 1..n),   L'_i = phi'_i(ReLU(F_i)) (i = 2..n: the code's second lateral convolution)
        P_n = L_n,   P_i = C^P_i(w^P_i1 L_i + w^P_i2 U_i(ReLU(P_i+1)))                              (top-down)
        T_1 = P_1,   T_i = C^T_i(w^T_i1 L'_i + w^T_i2 ReLU(P_i) + w^T_i3 D_i(ReLU(T_i-1)))  (1 < i < n; bottom-up)
                     T_n = C^T_n(w^T_n1 L'_n + w^T_n2 D_n(ReLU(T_n-1)))
        outputs ReLU(T_1)..ReLU(T_n),   logits = Linear(GAP(ReLU(T_n)))

    U_i: ``Upsample`` (nearest to level i's size, phi to d_i); D_i: ``Downsample`` (same-padded max pooling, phi to
    d_i); C_i: ``separable`` (``depth`` depthwise-separable 3x3 convolutions, BN last). Fusion weights start at 1.

    Shape: features [(B, C_i, H_i, W_i)] -> ([(B, d_i, H_i, W_i)], (B, num_classes)).
    """

    def __init__(self, specs: Sequence[FeatureSpec], num_classes: int, width: int, depth: int):
        super().__init__()
        n = len(specs)
        d = [width * s.channels for s in specs]
        self.lateral = nn.ModuleList(pointwise(s.channels, c) for s, c in zip(specs, d, strict=True))
        self.lateral_up = nn.ModuleList(pointwise(s.channels, c) for s, c in zip(specs[1:], d[1:], strict=True))
        # top-down, index i - 1 for level i = 1..n-1; bottom-up, index i - 2 for level i = 2..n
        self.up_resample = nn.ModuleList(Upsample(d[i + 1], d[i]) for i in range(n - 1))
        self.up_conv = nn.ModuleList(separable(d[i], depth) for i in range(n - 1))
        self.up_weight = nn.ParameterList(nn.Parameter(torch.ones(2)) for _ in range(n - 1))
        strides = [max(specs[i].reduction // max(specs[i - 1].reduction, 1), 1) for i in range(1, n)]
        self.down_resample = nn.ModuleList(Downsample(strides[i - 1], d[i - 1], d[i]) for i in range(1, n))
        self.down_conv = nn.ModuleList(separable(d[i], depth) for i in range(1, n))
        self.down_weight = nn.ParameterList(nn.Parameter(torch.ones(3 if i < n - 1 else 2)) for i in range(1, n))
        self.classifier = nn.Linear(d[-1], num_classes)
        self.widths = tuple(d)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        n = len(features)
        feats = [F.relu(f) for f in features]
        sizes = [f.shape[-2:] for f in feats]
        lateral = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        lateral_up = [None, *(conv(f) for conv, f in zip(self.lateral_up, feats[1:], strict=True))]
        top_down: list[Tensor] = [lateral[-1]]  # P_n, ..., P_1 as built; reversed below
        for i in range(n - 2, -1, -1):
            w = fusion_weights(self.up_weight[i])
            fused = w[0] * F.relu(lateral[i]) + w[1] * self.up_resample[i](F.relu(top_down[-1]), sizes[i])
            top_down.append(self.up_conv[i](fused))
        p = top_down[::-1]
        refined = [p[0]]
        for i in range(1, n):
            w = fusion_weights(self.down_weight[i - 1])
            down = self.down_resample[i - 1](F.relu(refined[-1]), sizes[i])
            fused = (w[0] * F.relu(lateral_up[i]) + w[1] * F.relu(p[i]) + w[2] * down if i < n - 1
                     else w[0] * F.relu(lateral_up[i]) + w[1] * down)
            refined.append(self.down_conv[i - 1](fused))
        refined = [F.relu(t) for t in refined]
        logits = self.classifier(F.adaptive_avg_pool2d(refined[-1], 1).flatten(1))
        return refined, logits


@dataclass(frozen=True)
class FrskdTerms:
    """The unweighted terms of FRSKD's objective and its weighted total."""

    total: Tensor
    ce: Tensor            # CE of the backbone's classifier
    ce_teacher: Tensor    # CE of the self-teacher's classifier
    kd: Tensor            # T^2 KL(softmax(z_t / T) || softmax(z / T)), z_t detached
    att: list[Tensor]     # attention loss between F_i and the detached ReLU(T_i), i = 1..n


def frskd_objective(logits: Tensor, teacher_logits: Tensor, features: Sequence[Tensor], refined: Sequence[Tensor],
                    y: Tensor, kd_weight: float, feature_weight: float, temperature: float) -> FrskdTerms:
    """CE(z, y) + CE(z_t, y) + kd_weight * KD(z || z_t) + feature_weight * sum_i AT(ReLU(F_i), T_i).

    The backbone's features enter after a ReLU, as the code's networks return them (``relu(out_i)``; a no-op for
    backbones whose stages end in one). The self-teacher's logits and refined maps are targets (detached); its own CE
    reaches it and, through F_1..F_n, the backbone.
    """
    ce = F.cross_entropy(logits, y)
    ce_teacher = F.cross_entropy(teacher_logits, y)
    kd = kd_divergence(logits, teacher_logits.detach(), temperature)
    att = [attention_loss(F.relu(f), t) for f, t in zip(features, refined, strict=True)]
    total = ce + ce_teacher + kd_weight * kd + feature_weight * sum(att)
    return FrskdTerms(total, ce, ce_teacher, kd, att)


@PROTOCOLS.register()
class Frskd(DeployedNetwork):
    """FRSKD (Ji, Shin, Hwang, Park and Moon, "Refine Myself by Teaching Myself: Feature Refinement via
    Self-Knowledge Distillation", CVPR 2021; code github.com/MingiJi/FRSKD, ``classification/``).

    An auxiliary self-teacher network (``SelfTeacher``; §3.2 of the paper, the code's ``models/bifpnc.py``) refines
    the backbone's stage features F_1..F_T with a BiFPN (lateral convolutions, a top-down then a bottom-up path with
    fast normalised fusion) and classifies its refined top level. Both train jointly (§3.3; the code's
    ``utils.train`` and ``distill_loss/AT.py``, ``KD.py``):

        loss = CE(z, y) + CE(z_t, y) + alpha * KD(z || z_t) + beta * sum_{i=1..T} || Q(F_i) - Q(T_i) ||^2

    z: the backbone's logits (its last classifier, the reported one); z_t: the self-teacher's; KD =
    T^2 KL(softmax(z_t / T) || softmax(z / T)) with z_t detached (``DistillKL``); Q(A) = vec(mean_c A_c^2) / ||.||_2
    (``Attention.at``), the squared difference averaged over batch and locations (``at_loss``), T_i detached. alpha
    = ``kd_weight``, beta = ``feature_weight``, T = ``kd_temperature``, ``width`` and ``depth`` of the self-teacher:
    the CIFAR-100 setting (README: ``--alpha 2 --beta 100``; ``main.py`` defaults ``--temperature 4 --width 2
    --depth 2 --bifpn BiFPNc --repeat 1``, every stage's feature: ``--num_features -1``).

    Choices where the paper and code are silent or CIFAR-specific:

    - resampling to the level's actual size (nearest up, same-padded max pooling down, then nearest if still
      different), not a fixed factor 2: 7x7 -> 4x4 on 28x28 inputs, and stride-1 gaps (RepDistiller's ResNets have
      two levels at 1/1) need no pooling. The stride of a gap is r_i / r_{i-1} from the backbone's feature specs;
    - the features enter after a ReLU (the code's networks return ``relu(out_i)``): a no-op for backbones whose
      stages end in a ReLU; DenseNet's first three stages do not;
    - the self-teacher's CE reaches the backbone through F_i (the code does not detach the features), as in the
      paper's joint training; the self-teacher's weights draw from their own seeding stream ``init.self_teacher``
      (PyTorch's default initialisation, as the code's), so the backbone starts as in every other row;
    - the self-teacher is not deployed: its classifier is evaluated and recorded (``self_teacher/exitT``, last =
      False) and its parameters count as ``loss_params``.
    """

    name: ClassVar[str] = "frskd"
    family: ClassVar[str] = "self"

    @dataclass(frozen=True)
    class Config(ProtocolConfig):
        kd_weight: float = field(metadata=within(ge=0))        # alpha
        feature_weight: float = field(metadata=within(ge=0))   # beta
        kd_temperature: float = field(metadata=within(gt=0))   # T
        width: int = field(metadata=within(ge=1))              # d_i = width * C_i
        depth: int = field(metadata=within(ge=1))              # separable convolutions per fusion node

    @classmethod
    def inert(cls, config: Config, loss: str) -> dict[str, str]:
        return {"kd_temperature": "kd_weight = 0"} if config.kd_weight == 0 else {}

    def __init__(self, cfg: RunConfig, teacher: Backbone | None = None):
        super().__init__(cfg)
        specs = self.net.feature_specs
        if len(specs) < 2 or any(s.is_vector for s in specs):
            raise DiscbenchError(f"frskd refines the stage feature maps of a backbone of at least 2 modules; "
                                 f"'{cfg.backbone}' has {len(specs)} module(s)"
                                 + (" with vector outputs" if any(s.is_vector for s in specs) else ""))
        p = cfg.protocol
        with seeding.stream("init.self_teacher"):
            self.self_teacher = SelfTeacher(specs, cfg.dataset.num_classes, p.width, p.depth)

    def classifiers(self) -> list[Classifier]:
        return [self.reported(),
                Classifier(network="self_teacher", backbone=self.cfg.backbone, exit=self.num_modules, last=False)]

    def forward(self, x: Tensor, y: Tensor, ctx: LossContext) -> StepOutput:
        p = self.cfg.protocol
        logits, features = self.net(x)
        refined, teacher_logits = self.self_teacher(features)
        out = frskd_objective(logits, teacher_logits, features, refined, y, p.kd_weight, p.feature_weight,
                              p.kd_temperature)
        terms = {Term("ce", module=self.num_modules): out.ce, Term("ce", "self_teacher"): out.ce_teacher,
                 Term("kd"): out.kd}
        terms.update({Term("att", module=i): a for i, a in enumerate(out.att, start=1)})
        return StepOutput(out.total, {k: v.detach() for k, v in terms.items()})

    @torch.no_grad()
    def predict(self, x: Tensor) -> dict[str, Tensor]:
        logits, features = self.net(x)
        net, teacher = self.classifiers()
        return {net.key: logits, teacher.key: self.self_teacher(features)[1]}
