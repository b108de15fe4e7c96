"""ResNet-18/34/50/101/152 from torchvision, decomposed into their 4 stages (MUSE §4.1: "each stage is a module").

Inputs up to 64x64 (CIFAR, Tiny-ImageNet) get the CIFAR stem: a 3x3 stride-1 convolution and no max-pool, as in
BYOT and RepDistiller; larger inputs keep torchvision's ImageNet stem (7x7 stride 2 and max-pool). The input
channels and class count follow the dataset.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet

from discbench.api import Backbone, FeatureSpec
from discbench.registry import BACKBONES

CIFAR_STEM_MAX_SIZE = 64


class TorchvisionResNet(Backbone):
    builder = staticmethod(resnet.resnet18)

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        net = self.builder(num_classes=num_classes)
        cifar_stem = image_size <= CIFAR_STEM_MAX_SIZE
        if cifar_stem:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([nn.Sequential(stem, net.layer1), net.layer2, net.layer3, net.layer4])
        self.head = nn.Sequential(net.avgpool, nn.Flatten(), net.fc)
        expansion = net.layer1[0].expansion
        first = 1 if cifar_stem else 4
        self.feature_specs = tuple(
            FeatureSpec(channels=64 * 2**i * expansion, reduction=first * 2**i) for i in range(4)
        )


@BACKBONES.register()
class ResNet18(TorchvisionResNet):
    name = "resnet18"
    builder = staticmethod(resnet.resnet18)


@BACKBONES.register()
class ResNet34(TorchvisionResNet):
    name = "resnet34"
    builder = staticmethod(resnet.resnet34)


@BACKBONES.register()
class ResNet50(TorchvisionResNet):
    name = "resnet50"
    builder = staticmethod(resnet.resnet50)


@BACKBONES.register()
class ResNet101(TorchvisionResNet):
    name = "resnet101"
    builder = staticmethod(resnet.resnet101)


@BACKBONES.register()
class ResNet152(TorchvisionResNet):
    name = "resnet152"
    builder = staticmethod(resnet.resnet152)
