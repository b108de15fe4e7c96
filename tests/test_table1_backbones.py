"""The networks of MUSE Table 1 (backbones/table1.py, backbones/resnet.py): parameter counts against MUSE Table 3,
modules and stems, torchvision's function preserved, the declared catalogue of ``discbench list backbones``, and
the backbone contract of ``discbench validate --backbone`` on every built-in."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from discbench.backbone_catalog import CATALOG
from discbench.backbone_check import InputCase, run_backbone_checks
from discbench.registry import BACKBONES
from tests.test_backbones import assert_specs_match_real_shapes
from tests.test_cli import discbench

NEW = ["vgg19_bn", "resnet101", "resnet152", "densenet121", "efficientnet_b0"]

# MUSE Table 3 (CIFAR-100, 100 classes), parameters in millions. NASNet (5.1 M) is not shipped: neither
# torchvision nor timm has NASNet-A Mobile.
TABLE3_PARAMS_M = {"vgg19_bn": 20.0, "resnet18": 11.2, "resnet34": 21.3, "resnet50": 23.4, "resnet101": 42.4,
                   "resnet152": 58.0, "efficientnet_b0": 4.0}

# Where the paper's count cannot be met within 3 %, and why.
TABLE3_EXCEPTIONS = {
    # torchvision's EfficientNet-B0 with a 100-class classifier has 4,135,648 parameters (3.4 % above 4.0 M); without
    # its classifier it has 4,007,548 = 4.0 M. Table 3's figure is the network without the 1280 x 100 linear layer
    # (or with a 1- to 10-class one); the architecture itself matches. Checked: the count without the classifier.
    "efficientnet_b0": lambda net: net_params(net) - net_params(net.head[-1][-1]),
}


def net_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def build(name, channels=3, classes=100, size=32):
    return BACKBONES.get(name)(in_channels=channels, num_classes=classes, image_size=size)


@pytest.mark.parametrize("name", TABLE3_PARAMS_M)
def test_parameter_count_matches_muse_table3(name):
    net = build(name)
    count = TABLE3_EXCEPTIONS.get(name, net_params)(net)
    paper = TABLE3_PARAMS_M[name] * 1e6
    assert abs(count - paper) <= 0.03 * paper, (name, count, paper)


def test_efficientnet_b0_with_its_classifier_misses_table3_by_more_than_3_percent():
    """The recorded exception is needed: with the 100-class classifier the count is 3.4 % above Table 3's 4.0 M."""
    count = net_params(build("efficientnet_b0"))
    assert count == 4_135_648 and abs(count - 4.0e6) > 0.03 * 4.0e6


def test_nasnet_is_not_registered():
    assert not any("nasnet" in n for n in BACKBONES.names())


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("channels,size,classes", [(3, 32, 100), (1, 28, 10), (3, 64, 200)])
def test_feature_specs_match_real_shapes(name, channels, size, classes):
    assert_specs_match_real_shapes(build(name, channels, classes, size), channels, size, classes)


def test_vgg19_bn_modules_end_at_its_first_four_max_pools():
    net = build("vgg19_bn")
    for stage in net.stages:
        assert isinstance(stage[-1], nn.MaxPool2d)
        assert sum(isinstance(m, nn.MaxPool2d) for m in stage) == 1
    convs = [sum(isinstance(m, nn.Conv2d) for m in stage) for stage in net.stages]
    assert convs == [2, 2, 4, 4]  # VGG-19: 2, 2, 4, 4 convolutions before pools 1..4, then 4 more in the head
    assert sum(isinstance(m, nn.Conv2d) for m in net.head.modules()) == 4
    assert net.head[-1].in_features == 512 and net.head[-1].out_features == 100


def test_cifar_and_imagenet_stems():
    eff = build("efficientnet_b0")
    assert eff.stages[0][0][0].stride == (1, 1)
    assert build("efficientnet_b0", size=96).stages[0][0][0].stride == (2, 2)
    dense = build("densenet121")
    assert dense.stages[0][0][0].kernel_size == (3, 3) and isinstance(dense.stages[0][0][3], nn.Identity)
    assert [s.reduction for s in build("densenet121", size=96).feature_specs] == [4, 8, 16, 32]
    assert build("vgg19_bn", channels=1, classes=10, size=28).stages[0][0].in_channels == 1


@pytest.mark.parametrize("name,builder", [("efficientnet_b0", tvm.efficientnet_b0), ("densenet121", tvm.densenet121),
                                          ("resnet101", tvm.resnet101)])
def test_imagenet_sized_network_computes_torchvision_s_function(name, builder):
    """Above 64x64 nothing is adapted: with torchvision's weights copied in (same parameters, same order), the
    network cut into modules gives torchvision's logits."""
    torch.manual_seed(0)
    theirs = builder(num_classes=10).eval()
    ours = build(name, classes=10, size=96).eval()
    ours_params, theirs_params = list(ours.parameters()), list(theirs.parameters())
    assert [p.shape for p in ours_params] == [p.shape for p in theirs_params]
    with torch.no_grad():
        for a, b in zip(ours_params, theirs_params, strict=True):
            a.copy_(b)
        for a, b in zip(ours.buffers(), theirs.buffers(), strict=True):
            a.copy_(b)
        x = torch.randn(2, 3, 96, 96)
        torch.testing.assert_close(ours(x)[0], theirs(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_catalogue_of_list_backbones_is_true(name):
    net = build(name)
    info = CATALOG[name]
    assert net_params(net) == info.params
    assert tuple((s.channels, s.reduction) for s in net.feature_specs) == info.specs


def test_catalogue_lists_every_builtin():
    """Every backbone of discbench.backbones (tests may register their own, e.g. tests/test_distributed.py)."""
    builtins = [n for n in BACKBONES.names()
                if (BACKBONES.source(n).entry_point or "").startswith("discbench.backbones")]
    assert sorted(CATALOG) == builtins


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_builtin_passes_the_backbone_contract(name):
    cases = [InputCase("fashion-mnist", 1, 28, 10), InputCase("cifar100", 3, 32, 100)]
    results = list(run_backbone_checks(name, cases))
    assert len(results) == 6 and all(r.passed for r in results), [r for r in results if not r.passed]


def test_backbone_contract_catches_a_wrong_spec():
    cls = BACKBONES.get("smallnet")

    class Wrong(cls):
        name = "wrong_for_tests"

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.feature_specs = (*self.feature_specs[:3], self.feature_specs[3].__class__(99, 8))
            self.frozen = nn.Linear(2, 2)  # never used: gets no gradient

    BACKBONES.add(Wrong.name, Wrong, origin="test")
    try:
        results = {r.check.split(" [")[0]: r for r in run_backbone_checks(Wrong.name, [InputCase("c", 3, 32, 10)])}
    finally:
        BACKBONES.unregister(Wrong.name)
    assert results["four modules"].passed
    assert not results["specs match shapes"].passed and "module 4" in results["specs match shapes"].detail
    assert not results["parameters train"].passed and "frozen.weight" in results["parameters train"].detail


def test_validate_backbone_cli(capsys, monkeypatch):
    status, out, err = discbench(capsys, monkeypatch, "validate", "--backbone", "efficientnet_b0", "--dataset",
                                 "cifar100")
    assert status == 0, err
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["PASS"] * 3
    assert "40x8² 112x4² 320x2² 1280x2²" in lines[1]
    assert lines[-1] == "efficientnet_b0: 3/3 checks passed"


@pytest.mark.parametrize("args,message", [
    (["--backbone", "resnet19"], "error: unknown backbone 'resnet19'; did you mean 'resnet18'"),
    (["--backbone", "efficientnet_b1"], "or tv:NAME (any torchvision classifier), timm:NAME"),
    (["--backbone", "tv:resnet18x"], "error: torchvision has no classification model 'resnet18x' (backbone "
                                     "'tv:resnet18x'); did you mean 'resnet18'"),
    (["--backbone", "tv:vit_b_16", "--dataset", "imagenet"], "error: backbone 'tv:vit_b_16' has no usable stages"),
    (["--backbone", "smallnet", "--dataset", "cifar1000"], "error: unknown dataset 'cifar1000'"),
    ([], "give exactly one of --loss NAME, --backbone NAME and --protocol NAME"),
])
def test_validate_backbone_bad_input_is_one_line_exit_2(capsys, monkeypatch, args, message):
    status, out, err = discbench(capsys, monkeypatch, "validate", *args)
    assert status == 2 and "PASS" not in out
    assert message in err.strip().splitlines()[-1]


def test_list_backbones_shows_params_modules_and_specs(capsys, monkeypatch):
    status, out, _ = discbench(capsys, monkeypatch, "list", "backbones")
    assert status == 0
    line = next(x for x in out.splitlines() if x.startswith("efficientnet_b0 "))
    assert "4.14 M params, 4 modules: 40@4 112@8 320@16 1280@16" in line
    assert any(x.startswith("tv:NAME") for x in out.splitlines())
    assert any(x.startswith("timm:NAME") for x in out.splitlines())
