"""SmallNet: a 4-stage CNN for the CPU smoke recipe (one BasicBlock per stage, widths 16/32/64/128).

About 0.31 M parameters; a training step on 28x28 inputs at batch 32 takes ~17 ms on 2 CPU cores.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock

from discbench.api import Backbone, FeatureSpec, classifier_head
from discbench.registry import BACKBONES


def basic_block(cin: int, cout: int, stride: int) -> BasicBlock:
    downsample = None
    if stride != 1 or cin != cout:
        downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
    return BasicBlock(cin, cout, stride=stride, downsample=downsample)


@BACKBONES.register()
class SmallNet(Backbone):
    name = "smallnet"
    widths = (16, 32, 64, 128)
    stem_stride = 1

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(in_channels, self.widths[0], 3, stride=self.stem_stride, padding=1, bias=False),
                             nn.BatchNorm2d(self.widths[0]), nn.ReLU(inplace=True))
        stages, cin = [], self.widths[0]
        for i, width in enumerate(self.widths):
            block = basic_block(cin, width, stride=1 if i == 0 else 2)
            stages.append(nn.Sequential(stem, block) if i == 0 else block)
            cin = width
        self.stages = nn.ModuleList(stages)
        self.head = classifier_head(cin, num_classes)
        self.feature_specs = tuple(FeatureSpec(channels=w, reduction=self.stem_stride * 2**i)
                                   for i, w in enumerate(self.widths))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


@BACKBONES.register()
class TinyNet(SmallNet):
    """SmallNet at half width (8/16/32/64) with a stride-2 stem: modules at 1/2, 1/4, 1/8 and 1/16 of the input
    (14, 7, 4 and 2 on 28x28), about 0.08 M parameters. The student and small peer of the CPU smoke suites of MUSE
    Table 7. Its maps have half SmallNet's side, so critics that score every location of F_i (MIMKD's, and MUSE's
    with ``locations = 0``) see 4x fewer locations."""

    name = "tinynet"
    widths = (8, 16, 32, 64)
    stem_stride = 2
