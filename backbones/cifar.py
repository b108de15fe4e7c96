"""RepDistiller's CIFAR backbones (ResNet-20/32/56/110, WRN-40-2, ShuffleNetV1), decomposed into 4 modules.

The architectures, hyper-parameters and initialisations follow RepDistiller (Tian et al., "Contrastive
Representation Distillation", ICLR 2020; github.com/HobbitLong/RepDistiller): ``models/resnet.py`` (CIFAR ResNets,
widths 16/16/32/64, depth 6n+2, BasicBlocks), ``models/wrn.py`` (pre-activation Wide ResNet, depth 6n+4, widths
16/16k/32k/64k) and ``models/ShuffleNetv1.py`` (``ShuffleV1``: stages of 4/8/4 units, widths 240/480/960, 3 groups).
Parameter and buffer shapes are identical, so RepDistiller's published CIFAR-100 teacher checkpoints load through
``from_repdistiller`` (see ``RepDistillerImport``). This is an independent implementation, not a copy of its code.

Decomposition into four modules. With ``is_feat=True`` every RepDistiller CIFAR network returns the feature taps
``feat[0..3]`` (then the pooled vector ``feat[4]``): the stem output, then the output of each of its three stages.
RepDistiller's distillers index exactly these taps (``helper/loops.py``): FitNets' default ``hint_layer=2`` is
``feat[2]``, the second stage's output; AT, NST, VID and KDSVD pair ``feat[1:-1]`` (the three stages) of teacher and
student; SP uses ``feat[-2]`` (the last stage); CRD, RKD and PKT use ``feat[-1]``, the pooled vector that the head
computes. So discbench's modules end at those taps, and RepDistiller's tap i is discbench's module i + 1:

* module 1 = the stem. ResNet: conv1 + bn1 + ReLU. ShuffleV1: its 1x1 conv1 + bn1 + ReLU. WRN: conv1 alone, as
  RepDistiller's ``feat[0]`` is the raw convolution (a pre-activation network: each block starts with BN + ReLU).
* modules 2, 3, 4 = the three stages (``layer1..3``, or ``block1..3`` for WRN), ending at the same tensors as
  ``feat[1..3]``: post-ReLU block outputs for ResNet and ShuffleV1 (not the ``preact=True`` variant). For WRN the
  stage output is the un-activated residual sum: RepDistiller applies the final bn1 + ReLU after taking ``feat[3]``,
  so here they belong to the head, not to module 4. So FitNets' hint (``feat[2]``) is discbench's module 3.
* head = global average pooling + flatten + the linear classifier (``fc``; ``linear`` in ShuffleV1), preceded by
  bn1 + ReLU for WRN. RepDistiller pools with a fixed window (8, or 4 for ShuffleV1), which covers the whole map at
  32x32; global pooling gives the same values there (up to float rounding: summation order) and also works on 28x28.

Feature specs (channels @ reduction relative to the input):

* resnet20/32/56/110: 16@1, 16@1, 32@2, 64@4
* wrn_40_2: 16@1, 32@1, 64@2, 128@4
* shufflenet_v1: 24@1, 240@2, 480@4, 960@8 (its first stage already downsamples)

The first convolution takes ``in_channels`` (1 for Fashion-MNIST); the class count follows the dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discbench.api import Backbone, FeatureSpec, classifier_head
from discbench.errors import DiscbenchError
from discbench.registry import BACKBONES


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


class RepDistillerImport:
    """Mixin: map a RepDistiller state dict onto this module's ``state_dict()`` keys.

    Each class lists ``repdistiller_renames``, (their prefix, our prefix) pairs: a RepDistiller key is renamed by
    the first pair whose prefix it starts with; below the prefix, key names are the same on both sides.
    """

    repdistiller_name: ClassVar[str]
    repdistiller_renames: ClassVar[tuple[tuple[str, str], ...]]

    def _rename(self, key: str, inverse: bool = False) -> str | None:
        for theirs, ours in self.repdistiller_renames:
            src, dst = (ours, theirs) if inverse else (theirs, ours)
            if key.startswith(src):
                return dst + key[len(src):]
        return None

    def from_repdistiller(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Return ``state_dict`` (RepDistiller's keys) re-keyed for ``self.load_state_dict(..., strict=True)``.

        The tensors themselves are passed through unchanged. A whole checkpoint as RepDistiller saves it,
        ``{'model': state_dict, 'accuracy': ..., 'epoch': ...}``, is accepted too. BatchNorm's
        ``num_batches_tracked`` counters (absent from checkpoints of PyTorch < 0.4.1) may be missing: ours are kept.

        Raises:
            DiscbenchError: on the first unexpected key, missing key, or shape that differs from this model's.
        """
        if isinstance(state_dict.get("model"), Mapping):
            state_dict = state_dict["model"]
        ours: dict[str, Tensor] = self.state_dict()  # type: ignore[attr-defined]  # mixed into an nn.Module
        name = getattr(self, "name", type(self).__name__)
        where = f"state dict does not fit backbone '{name}' (RepDistiller's '{self.repdistiller_name}')"
        mapped: dict[str, Tensor] = {}
        for key, value in state_dict.items():
            our_key = self._rename(key)
            if our_key is None or our_key not in ours:
                raise DiscbenchError(f"{where}: unexpected key '{key}'")
            if not isinstance(value, Tensor):
                raise DiscbenchError(f"{where}: '{key}' is a {type(value).__name__}, not a tensor")
            if value.shape != ours[our_key].shape:
                hint = " (check in_channels and num_classes)" if our_key.startswith(("stages.0.", "head.")) else ""
                raise DiscbenchError(
                    f"{where}: '{key}' has shape {_shape(value)}, expected {_shape(ours[our_key])}{hint}"
                )
            mapped[our_key] = value
        for our_key, tensor in ours.items():
            if our_key not in mapped:
                if our_key.endswith(".num_batches_tracked"):
                    mapped[our_key] = tensor.clone()
                else:
                    raise DiscbenchError(f"{where}: missing key '{self._rename(our_key, inverse=True)}'")
        return mapped


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)


def _stage(block: type[nn.Module], cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
    """``n`` blocks; the first one changes the width and applies the stride."""
    return nn.Sequential(block(cin, cout, stride), *(block(cout, cout, 1) for _ in range(n - 1)))


def _init_convs_fan_out(net: nn.Module) -> None:
    """He-normal with fan_out = k*k*out_channels: RepDistiller's init for ResNet (kaiming_normal_, mode fan_out) and
    WRN (normal_(0, sqrt(2 / n)) with n = k*k*out_channels), which is the same distribution."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# -- ResNet-20/32/56/110 (RepDistiller models/resnet.py) --------------------------------------------------------------


class _ResBasicBlock(nn.Module):
    """Post-activation basic block: conv3x3-BN-ReLU-conv3x3-BN, plus the input (1x1 conv + BN when the shape
    changes), then ReLU. Attribute names match RepDistiller's so that checkpoint keys line up."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv(cin, cout, 3, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv(cout, cout, 3)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class RepDistillerResNet(RepDistillerImport, Backbone):
    """CIFAR ResNet of depth 6n+2: a 3x3 stem, then 3 stages of n basic blocks (strides 1, 2, 2)."""

    depth: ClassVar[int]
    widths: ClassVar[tuple[int, int, int, int]] = (16, 16, 32, 64)
    repdistiller_renames = (
        ("conv1.", "stages.0.0."), ("bn1.", "stages.0.1."),
        ("layer1.", "stages.1."), ("layer2.", "stages.2."), ("layer3.", "stages.3."),
        ("fc.", "head.2."),
    )

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        n = (self.depth - 2) // 6
        w = self.widths
        stem = nn.Sequential(_conv(in_channels, w[0], 3), nn.BatchNorm2d(w[0]), nn.ReLU(inplace=True))
        stages: list[nn.Module] = [stem]
        for i in range(3):
            stages.append(_stage(_ResBasicBlock, w[i], w[i + 1], n, stride=1 if i == 0 else 2))
        self.stages = nn.ModuleList(stages)
        self.head = classifier_head(w[3], num_classes)
        self.feature_specs = tuple(FeatureSpec(channels=c, reduction=r) for c, r in zip(w, (1, 1, 2, 4), strict=True))
        _init_convs_fan_out(self)


@BACKBONES.register()
class ResNet20(RepDistillerResNet):
    name = "resnet20"
    repdistiller_name = "resnet20"
    depth = 20


@BACKBONES.register()
class ResNet32(RepDistillerResNet):
    name = "resnet32"
    repdistiller_name = "resnet32"
    depth = 32


@BACKBONES.register()
class ResNet56(RepDistillerResNet):
    name = "resnet56"
    repdistiller_name = "resnet56"
    depth = 56


@BACKBONES.register()
class ResNet110(RepDistillerResNet):
    name = "resnet110"
    repdistiller_name = "resnet110"
    depth = 110


# -- WRN-40-2 (RepDistiller models/wrn.py) ----------------------------------------------------------------------------


class _WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus the input, or, when the width changes, plus a 1x1
    conv of the *activated* input (as in wrn.py). No dropout (RepDistiller's dropRate is 0)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv(cin, cout, 3, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv(cout, cout, 3)
        # RepDistiller's attribute name, kept so that checkpoint keys line up.
        self.convShortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class RepDistillerWRN(RepDistillerImport, Backbone):
    """Wide ResNet of depth 6n+4 and widen factor k: a 3x3 conv, 3 stages of n pre-activation blocks, then BN-ReLU."""

    depth: ClassVar[int]
    widen_factor: ClassVar[int]
    repdistiller_renames = (
        ("conv1.", "stages.0."),
        ("block1.layer.", "stages.1."), ("block2.layer.", "stages.2."), ("block3.layer.", "stages.3."),
        ("bn1.", "head.0."), ("fc.", "head.4."),
    )

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        n = (self.depth - 4) // 6
        k = self.widen_factor
        w = (16, 16 * k, 32 * k, 64 * k)
        stages: list[nn.Module] = [_conv(in_channels, w[0], 3)]
        for i in range(3):
            stages.append(_stage(_WideBasicBlock, w[i], w[i + 1], n, stride=1 if i == 0 else 2))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(nn.BatchNorm2d(w[3]), nn.ReLU(inplace=True), *classifier_head(w[3], num_classes))
        self.feature_specs = tuple(FeatureSpec(channels=c, reduction=r) for c, r in zip(w, (1, 1, 2, 4), strict=True))
        _init_convs_fan_out(self)
        nn.init.zeros_(self.head[-1].bias)


@BACKBONES.register()
class WRN40x2(RepDistillerWRN):
    name = "wrn_40_2"
    repdistiller_name = "wrn_40_2"
    depth = 40
    widen_factor = 2


# -- ShuffleNetV1 (RepDistiller models/ShuffleNetv1.py, ShuffleV1) ----------------------------------------------------


def _channel_shuffle(x: Tensor, groups: int) -> Tensor:
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _ShuffleUnit(nn.Module):
    """ShuffleNet unit: grouped 1x1 conv-BN-ReLU, channel shuffle, depthwise 3x3 conv-BN-ReLU, grouped 1x1 conv-BN;
    added to the input (stride 1) or, at stride 2, concatenated with a 3x3 average pool of the input; then ReLU.
    ``cout`` is the width of the convolutional branch (the concatenation adds ``cin`` channels at stride 2)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, first_groups: int):
        super().__init__()
        mid = cout // 4
        self.stride = stride
        self.first_groups = first_groups
        self.conv1 = _conv(cin, mid, 1, groups=first_groups)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = _conv(mid, mid, 3, stride, groups=mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _conv(mid, cout, 1, groups=groups)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        out = _channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


@BACKBONES.register()
class ShuffleNetV1(RepDistillerImport, Backbone):
    """ShuffleV1, CIFAR configuration: a 1x1 conv to 24 channels, then 3 stages (4, 8, 4 units; 240, 480, 960
    channels; 3 groups), each starting with a stride-2 unit. The first unit's first 1x1 conv is not grouped.
    PyTorch's default initialisation, as in RepDistiller."""

    name = "shufflenet_v1"
    repdistiller_name = "ShuffleV1"
    stem_width: ClassVar[int] = 24
    widths: ClassVar[tuple[int, int, int]] = (240, 480, 960)
    num_units: ClassVar[tuple[int, int, int]] = (4, 8, 4)
    groups: ClassVar[int] = 3
    repdistiller_renames = (
        ("conv1.", "stages.0.0."), ("bn1.", "stages.0.1."),
        ("layer1.", "stages.1."), ("layer2.", "stages.2."), ("layer3.", "stages.3."),
        ("linear.", "head.2."),
    )

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        cin = self.stem_width
        stem = nn.Sequential(_conv(in_channels, cin, 1), nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
        stages: list[nn.Module] = [stem]
        for s, (width, units) in enumerate(zip(self.widths, self.num_units, strict=True)):
            stage = []
            for j in range(units):
                stride = 2 if j == 0 else 1
                branch = width - cin if stride == 2 else width
                first_groups = 1 if (s, j) == (0, 0) else self.groups
                stage.append(_ShuffleUnit(cin, branch, stride, self.groups, first_groups))
                cin = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.ModuleList(stages)
        self.head = classifier_head(self.widths[-1], num_classes)
        self.feature_specs = (FeatureSpec(self.stem_width, 1),) + tuple(
            FeatureSpec(channels=c, reduction=2 ** (i + 1)) for i, c in enumerate(self.widths)
        )
