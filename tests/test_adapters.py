"""``tv:NAME`` and ``timm:NAME`` backbones (backbones/adapters.py): the split network computes the library's own
function, modules end at the library's stage boundaries, bad names and sizes are one-line errors, and a smoke seed
runs end to end through the command line."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from discbench.backbones import adapters
from discbench.errors import DiscbenchError
from discbench.registry import BACKBONES
from tests.conftest import requires_fashion_mnist
from tests.test_backbones import assert_specs_match_real_shapes
from tests.test_cli import discbench, records, tiny

requires_timm = pytest.mark.skipif(not adapters.timm_available(), reason="timm is not installed (pip install timm)")


def copy_weights(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Our split network shares the library model's modules; copy state by qualified name of the originals."""
    ours_state = ours.state_dict()
    theirs_state = theirs.state_dict()
    assert len(ours_state) == len(theirs_state)
    with torch.no_grad():
        for (k, a), b in zip(ours_state.items(), theirs_state.values(), strict=True):
            assert a.shape == b.shape, k
            a.copy_(b)


def test_tv_resnet18_modules_are_its_four_layers_and_compute_torchvision_s_logits():
    net = BACKBONES.get("tv:resnet18")(in_channels=3, num_classes=10, image_size=64)
    assert net.boundary_names == ("layer1.1.relu_1", "layer2.1.relu_1", "layer3.1.relu_1", "layer4.1.relu_1")
    assert [(s.channels, s.reduction) for s in net.feature_specs] == [(64, 4), (128, 8), (256, 16), (512, 32)]
    theirs = torchvision.models.resnet18(num_classes=10).eval()
    copy_weights(net, theirs)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, features = net.eval()(x)
        torch.testing.assert_close(logits, theirs(x), rtol=1e-5, atol=1e-5)
        layer4 = theirs.layer4(theirs.layer3(theirs.layer2(theirs.layer1(theirs.maxpool(theirs.relu(theirs.bn1(
            theirs.conv1(x))))))))
        torch.testing.assert_close(features[3], layer4, rtol=1e-5, atol=1e-5)


def test_tv_efficientnet_b0_cuts_between_stages_not_inside_blocks():
    net = BACKBONES.get("tv:efficientnet_b0")(in_channels=3, num_classes=10, image_size=32)
    assert net.boundary_names == ("features.2.1.add", "features.3.1.add", "features.5.2.add", "features.8.2")
    assert [s.channels for s in net.feature_specs] == [24, 40, 112, 1280]


def test_tv_one_channel_input_replaces_the_first_convolution():
    net = BACKBONES.get("tv:regnet_y_400mf")(in_channels=1, num_classes=10, image_size=28)
    assert_specs_match_real_shapes(net, 1, 28, 10)


def test_tv_stochastic_depth_follows_train_and_eval():
    """torchvision's StochasticDepth reads self.training: it stays a module, so eval() is deterministic and
    train() drops paths (a traced constant would freeze one mode)."""
    from torchvision.ops import StochasticDepth

    net = BACKBONES.get("tv:efficientnet_b0")(in_channels=3, num_classes=10, image_size=32)
    depth = [m for m in net.modules() if isinstance(m, StochasticDepth)]
    assert len(depth) == 9  # the MBConv blocks with a residual connection
    for m in depth:
        m.p = 0.5  # torchvision's are 0.0125..0.19: make a drop certain to show
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        net.eval()
        torch.testing.assert_close(net(x)[0], net(x)[0])
        net.train()
        torch.manual_seed(0)
        a = net(x)[1][3]
        torch.manual_seed(1)
        b = net(x)[1][3]
        torch.manual_seed(0)
        again = net(x)[1][3]
    assert not torch.equal(a, b) and torch.equal(a, again)


@pytest.mark.parametrize("key,message", [
    ("tv:resnet18x", "torchvision has no classification model 'resnet18x' (backbone 'tv:resnet18x'); did you mean "
                     "'resnet18'"),
    ("tv:", "backbone 'tv:' names no model; write tv:NAME"),
    ("tv:fasterrcnn_resnet50_fpn", "torchvision has no classification model 'fasterrcnn_resnet50_fpn'"),
])
def test_unknown_model_names(key, message):
    with pytest.raises(DiscbenchError) as info:
        BACKBONES.get(key)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert key not in BACKBONES


def test_a_model_without_stages_is_refused_in_one_line():
    with pytest.raises(DiscbenchError, match=r"^backbone 'tv:vit_b_16' has no usable stages: it has 0 strides"):
        BACKBONES.get("tv:vit_b_16")(in_channels=3, num_classes=10, image_size=224)


def test_timm_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(adapters, "timm_available", lambda: False)
    with pytest.raises(DiscbenchError, match=r"needs timm, which is not installed; pip install 'discbench\[timm\]'"):
        adapters.adapter_class("timm:resnet18")


@requires_timm
def test_timm_resnet18_modules_follow_feature_info_and_compute_timm_s_logits():
    import timm

    net = BACKBONES.get("timm:resnet18")(in_channels=1, num_classes=10, image_size=32)
    theirs = timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=1).eval()
    info = theirs.feature_info[-4:]
    assert [n.rsplit(".", 2)[0] for n in net.boundary_names] == [e["module"] for e in info]
    assert [(s.channels, s.reduction) for s in net.feature_specs] == [(e["num_chs"], e["reduction"]) for e in info]
    copy_weights(net, theirs)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x)[0], theirs(x), rtol=1e-5, atol=1e-5)


@requires_timm
def test_timm_image_too_small_names_the_collapsing_module():
    with pytest.raises(DiscbenchError) as info:
        BACKBONES.get("timm:convnext_atto")(in_channels=3, num_classes=10, image_size=16)
    message = str(info.value)
    assert message.startswith("backbone 'timm:convnext_atto' at 16x16: module 4 (stride 32, ends at 'stages.3.")
    assert "collapses to zero size" in message and "use larger images" in message


@requires_timm
def test_timm_unknown_name_did_you_mean():
    with pytest.raises(DiscbenchError, match=r"timm has no model 'convnext_attoo'.*did you mean 'convnext_atto'"):
        BACKBONES.get("timm:convnext_attoo")


@requires_fashion_mnist
@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["tv:mobilenet_v3_small", pytest.param("timm:resnet10t", marks=requires_timm)])
def test_a_smoke_seed_runs_end_to_end(tmp_path, capsys, monkeypatch, backbone):
    res = tmp_path / "runs"
    status, _, err = discbench(capsys, monkeypatch, "run", "--loss", "mi_x_si", "--backbone", backbone, "--seeds", "1",
                               "--results-dir", str(res), "--quiet", *tiny())
    assert status == 0, err
    (path,) = records(res)
    assert ":" not in path.name and backbone.replace(":", "+") in path.name
    rec = json.loads(path.read_text())
    assert rec["backbone"] == backbone
    assert set(rec["final_top1"]) == {"net/exit1", "net/exit2", "net/exit3", "net/exit4"}
    assert all(c["flops"] > 0 for c in rec["cost"]["per_exit"].values())
