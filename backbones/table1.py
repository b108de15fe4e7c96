"""The other networks of MUSE Table 1, built from torchvision's definitions and cut into four modules.

Each class builds torchvision's network (``torchvision.models``) with the dataset's class count, adapts its stem to
the input, and regroups torchvision's own submodules into ``stages`` (modules 1..4) and ``head``; no layer is
rewritten by hand. Inputs up to 64x64 (CIFAR, Tiny-ImageNet, and 28x28 Fashion-MNIST) get a CIFAR-sized network, the
variant whose parameter counts MUSE Table 3 reports; larger inputs keep torchvision's ImageNet network. The first
convolution always takes the dataset's ``in_channels``.

* ``vgg19_bn`` (VGG-19 with batch norm; MUSE §4.1: "VGG is decomposed at the positions of the first 4 maxpooling
  layers"): module i is ``features`` up to and including its i-th max-pool; the head is the fifth convolution block
  and its max-pool, then the classifier. CIFAR-sized: the classifier is global average pooling and one linear layer
  (512 -> classes, as in the CIFAR VGGs whose ~20.0 M parameters Table 3 reports, instead of torchvision's 7x7 pool
  and three 4096-wide layers), and the max-pools round up (``ceil_mode``) so that 28x28 inputs reach 1x1 instead
  of 0x0. Modules: 64@2, 128@4, 256@8, 512@16 (channels @ reduction); ImageNet-sized the same.
* ``densenet121``: module 1 is the stem and ``denseblock1``; module i = 2..4 is ``transition{i-1}`` (1x1 conv and a
  2x2 average pool) and ``denseblock{i}``; module 4 ends with ``norm5`` and the ReLU torchvision applies in
  ``forward``; the head is global average pooling and the linear classifier. CIFAR-sized: the stem is a 3x3
  stride-1 convolution without the max-pool (as for the ResNets) and the transitions' pools round up. Modules:
  256@1, 512@2, 1024@4, 1024@8 (ImageNet-sized: reductions 4, 8, 16, 32).
* ``efficientnet_b0``: torchvision's ``features`` are the stem (0), seven MBConv stages (1..7) and a 1x1 convolution
  to 1280 channels (8). Module 1 is ``features[0:4]`` (up to the 40-channel stage), module 2 ``features[4:6]`` (to
  the 112-channel stage), module 3 ``features[6:8]`` (to the 320-channel stage) and module 4 ``features[8]``; the
  head is global average pooling, dropout and the linear classifier. Module 2 then ends with 0.85 M parameters,
  as MUSE Table 3's compressed EfficientNet-B0 (module 2, 0.8 M) implies. CIFAR-sized: the stem convolution has
  stride 1 instead of 2. Modules: 40@4, 112@8, 320@16, 1280@16 (ImageNet-sized: 40@8, 112@16, 320@32, 1280@32).

ResNet-101 and ResNet-152 are in ``resnet.py`` with the other ResNets. NASNet-A Mobile (MUSE's "NASNet") has no
maintained implementation in torchvision or timm (timm has only NASNet-A Large and PNASNet-5 Large), so it is not
shipped.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import densenet, efficientnet, vgg

from discbench.api import Backbone, FeatureSpec
from discbench.registry import BACKBONES

from .resnet import CIFAR_STEM_MAX_SIZE


def _conv_like(conv: nn.Conv2d, in_channels: int, kernel_size: int | None = None, stride: int | None = None,
               padding: int | None = None) -> nn.Conv2d:
    """A fresh convolution like ``conv`` with other input channels (and optionally kernel, stride, padding);
    He-normal (fan_out), torchvision's initialisation of these networks' convolutions."""
    new = nn.Conv2d(in_channels, conv.out_channels, kernel_size or conv.kernel_size, stride=stride or conv.stride,
                    padding=conv.padding if padding is None else padding, bias=conv.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


@BACKBONES.register()
class VGG19BN(Backbone):
    name = "vgg19_bn"

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        cifar = image_size <= CIFAR_STEM_MAX_SIZE
        if cifar:  # torchvision's VGG-19-BN layers (configuration "E"), without its 120 M-parameter classifier
            net, features = None, vgg.make_layers(vgg.cfgs["E"], batch_norm=True)
            for m in features.modules():  # torchvision's VGG initialisation (VGG.__init__, init_weights=True)
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        else:
            net = vgg.vgg19_bn(num_classes=num_classes)
            features = net.features
        if in_channels != 3:
            features[0] = _conv_like(features[0], in_channels)
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        if cifar:
            for i in pools:
                features[i] = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        bounds = [0, *(i + 1 for i in pools)]
        self.stages = nn.ModuleList(features[a:b] for a, b in zip(bounds[:4], bounds[1:5], strict=True))
        rest = features[bounds[4]:]
        if cifar:
            linear = nn.Linear(512, num_classes)
            nn.init.normal_(linear.weight, 0, 0.01)  # torchvision's VGG initialisation of linear layers
            nn.init.zeros_(linear.bias)
            self.head = nn.Sequential(rest, nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)
        else:
            self.head = nn.Sequential(rest, net.avgpool, nn.Flatten(), net.classifier)
        self.feature_specs = tuple(FeatureSpec(channels=c, reduction=2 ** (i + 1))
                                   for i, c in enumerate((64, 128, 256, 512)))


@BACKBONES.register()
class DenseNet121(Backbone):
    name = "densenet121"
    builder = staticmethod(densenet.densenet121)

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        cifar = image_size <= CIFAR_STEM_MAX_SIZE
        f = self.builder(num_classes=num_classes).features
        classifier = nn.Linear(f.norm5.num_features, num_classes)
        nn.init.zeros_(classifier.bias)  # torchvision's DenseNet initialisation (weight: nn.Linear's default)
        if cifar:
            f.conv0 = _conv_like(f.conv0, in_channels, kernel_size=3, stride=1, padding=1)
            f.pool0 = nn.Identity()
            for i in (1, 2, 3):
                getattr(f, f"transition{i}").pool = nn.AvgPool2d(kernel_size=2, stride=2, ceil_mode=True)
        elif in_channels != 3:
            f.conv0 = _conv_like(f.conv0, in_channels)
        stem = nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0)
        self.stages = nn.ModuleList([
            nn.Sequential(stem, f.denseblock1),
            nn.Sequential(f.transition1, f.denseblock2),
            nn.Sequential(f.transition2, f.denseblock3),
            nn.Sequential(f.transition3, f.denseblock4, f.norm5, nn.ReLU(inplace=True)),
        ])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), classifier)
        first = 1 if cifar else 4
        channels = [getattr(f, f"transition{i}").conv.in_channels for i in (1, 2, 3)] + [f.norm5.num_features]
        self.feature_specs = tuple(FeatureSpec(channels=c, reduction=first * 2**i) for i, c in enumerate(channels))


@BACKBONES.register()
class EfficientNetB0(Backbone):
    name = "efficientnet_b0"
    cuts = (0, 4, 6, 8, 9)  # features[cuts[i]:cuts[i+1]] is module i + 1

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        cifar = image_size <= CIFAR_STEM_MAX_SIZE
        net = efficientnet.efficientnet_b0(num_classes=num_classes)
        features = net.features
        stem = features[0][0]
        if cifar or in_channels != 3:
            features[0][0] = _conv_like(stem, in_channels, stride=1 if cifar else None)
        c = self.cuts
        self.stages = nn.ModuleList(features[c[i]:c[i + 1]] for i in range(4))
        self.head = nn.Sequential(net.avgpool, nn.Flatten(), net.classifier)
        first = 4 if cifar else 8
        reductions = (first, first * 2, first * 4, first * 4)
        channels = [self._out_channels(stage) for stage in self.stages]
        self.feature_specs = tuple(FeatureSpec(channels=ch, reduction=r)
                                   for ch, r in zip(channels, reductions, strict=True))

    @staticmethod
    def _out_channels(stage: nn.Module) -> int:
        return [m for m in stage.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
