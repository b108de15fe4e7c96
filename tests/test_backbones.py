"""Every backbone's declared FeatureSpecs against the shapes it really produces."""

from __future__ import annotations

import pytest
import torch

from discbench.registry import BACKBONES


@pytest.mark.parametrize("name,channels,size,classes", [
    ("smallnet", 1, 28, 10),
    ("smallnet", 3, 32, 100),
    ("resnet18", 3, 32, 100),
    ("resnet18", 1, 28, 10),
    ("resnet34", 3, 32, 100),
    ("resnet50", 3, 32, 100),
    ("resnet18", 3, 64, 200),
    ("resnet18", 3, 96, 1000),  # larger than 64: torchvision's ImageNet stem
])
def test_feature_specs_match_real_shapes(name, channels, size, classes):
    assert_specs_match_real_shapes(BACKBONES.get(name)(in_channels=channels, num_classes=classes, image_size=size),
                                   channels, size, classes)


def assert_specs_match_real_shapes(net, channels: int, size: int, classes: int) -> None:
    """A forward pass of a (2, channels, size, size) batch gives logits of ``classes`` and one feature per declared
    ``FeatureSpec`` (4 modules), each of the declared channels and side."""
    net = net.eval()
    with torch.no_grad():
        logits, features = net(torch.randn(2, channels, size, size))
    assert logits.shape == (2, classes)
    assert len(features) == len(net.feature_specs) == len(net.stages) == 4
    for spec, f in zip(net.feature_specs, features, strict=True):
        side = spec.spatial(size)
        assert f.shape == (2, spec.channels, side, side), (spec, f.shape)


def test_cifar_stem_and_imagenet_stem():
    cifar = BACKBONES.get("resnet18")(in_channels=3, num_classes=100, image_size=32)
    assert [s.reduction for s in cifar.feature_specs] == [1, 2, 4, 8]
    assert cifar.stages[0][0][0].kernel_size == (3, 3) and cifar.stages[0][0][0].stride == (1, 1)
    assert isinstance(cifar.stages[0][0][3], torch.nn.Identity)  # no max-pool
    imagenet = BACKBONES.get("resnet18")(in_channels=3, num_classes=1000, image_size=224)
    assert [s.reduction for s in imagenet.feature_specs] == [4, 8, 16, 32]
    assert [s.channels for s in BACKBONES.get("resnet50")(3, 100, 32).feature_specs] == [256, 512, 1024, 2048]


def test_resnet18_parameter_count_matches_the_paper():
    """MUSE Table 3: ResNet18 on CIFAR-100 has 11.2 M parameters."""
    net = BACKBONES.get("resnet18")(in_channels=3, num_classes=100, image_size=32)
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 1) == 11.2
