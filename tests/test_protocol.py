"""Self-distillation: the terms it sums, the taps it feeds plugins, its exits and its cost report."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from discbench.api import LossContext
from discbench.errors import DiscbenchError
from discbench.functional import kd_divergence
from discbench.registry import PROTOCOLS


def build(bench, loss, *overrides, backbone="smallnet"):
    cfg = bench.resolve(loss, backbone, "fashion-mnist", "smoke", overrides=overrides)
    torch.manual_seed(0)
    return cfg, PROTOCOLS.get("self")(cfg)


def ctx(y):
    return LossContext(step=0, epoch=0, protocol="self", labels=y, indices=torch.arange(len(y)), dataset_size=100,
                       num_classes=10)


def test_total_is_the_weighted_sum_of_the_equation(bench):
    cfg, system = build(bench, "mi_x_si", "protocol.exit_ce_weight=0.7", "protocol.kd_weight=0.3",
                        "loss.beta=0.2", "loss.locations=0")  # every location: both evaluations see the same terms
    system.eval()  # BN in eval mode: two forward passes give the same numbers
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    out = system(x, y, ctx(y))
    logits, feats = system.net(x)
    # BYOT (Zhang et al., ICCV 2019, its train.py): every cross-entropy weighs 1 - alpha, every KD term alpha = 0.3
    expected = 0.7 * F.cross_entropy(logits, y)
    for i in range(3):
        _, exit_logits = system.exits[i](feats[i])
        expected = expected + 0.7 * 0.7 * F.cross_entropy(exit_logits, y) + 0.3 * kd_divergence(exit_logits, logits,
                                                                                                  3.0)
        expected = expected + 0.2 * system.discrepancies[i](feats[i], feats[3], ctx(y)).loss
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert {t.key for t in out.terms} == {"ce@4", *(f"{t}@{i}" for t in ("ce", "kd", "mi_x_si", "mi", "si")
                                                  for i in (1, 2, 3))}


def test_each_feature_term_pairs_module_i_with_the_last(bench):
    """MUSE Fig. 1: D(F_i, F_4) for i = 1, 2, 3, in that order, with the module indices in the context."""
    _, system = build(bench, "mi")
    seen = []
    for plugin in system.discrepancies:
        plugin.register_forward_hook(lambda m, args, out: seen.append(
            (tuple(args[0].shape), tuple(args[1].shape), args[2].source_module, args[2].target_module)))
    y = torch.randint(0, 10, (4,))
    system(torch.randn(4, 1, 28, 28), y, ctx(y))
    assert seen == [((4, 16, 28, 28), (4, 128, 4, 4), 1, 4), ((4, 32, 14, 14), (4, 128, 4, 4), 2, 4),
                    ((4, 64, 7, 7), (4, 128, 4, 4), 3, 4)]


def test_l2_compares_exit_bottlenecks_with_the_detached_last_feature(bench):
    _, system = build(bench, "l2")
    seen = []
    system.discrepancies[0].register_forward_hook(lambda m, args, out: seen.append(args))
    y = torch.randint(0, 10, (4,))
    system(torch.randn(4, 1, 28, 28), y, ctx(y))
    source, target, _ = seen[0]
    assert source.shape == target.shape == (4, 128, 4, 4)
    assert source.grad_fn is not None and "Relu" in type(source.grad_fn).__name__  # the bottleneck's output


def test_kd_does_not_train_the_last_exit(bench):
    """BYOT detaches exit T in KD: the last classifier's gradient is that of its own cross-entropy alone."""
    _, system = build(bench, "ce_kd", "protocol.kd_weight=0.9")
    system.eval()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    system(x, y, ctx(y)).total.backward()
    head = system.net.head[2].weight
    with_kd = head.grad.clone()
    head.grad = None
    F.cross_entropy(system.net(x)[0], y).backward()
    assert torch.allclose(with_kd, (1 - 0.9) * head.grad, atol=1e-7)  # its CE alone, weighed 1 - alpha
    assert system.exits[0].classifier[2].weight.grad.abs().sum() > 0


def test_plain_network_has_one_exit(bench):
    _, system = build(bench, "none")
    assert len(system.exits) == 0 and len(system.discrepancies) == 0
    y = torch.randint(0, 10, (4,))
    out = system(torch.randn(4, 1, 28, 28), y, ctx(y))
    (term,) = out.terms
    assert term.key == "ce@4" and torch.equal(out.total, out.terms[term])
    assert list(system.predict(torch.randn(2, 1, 28, 28))) == ["net/exit4"]


def test_exit_taps_need_exits(bench):
    with pytest.raises(DiscbenchError, match=r"loss 'l2' compares exit outputs.*protocol.exits = true"):
        build(bench, "l2", "protocol.exits=false")


def test_exits_match_the_last_feature_for_odd_sizes(bench):
    """7x7 -> 4x4 and 28x28 -> 4x4 (SmallNet) as well as the CIFAR powers of two (ResNet18)."""
    for backbone, size, channels in (("smallnet", 28, 1), ("resnet18", 32, 3)):
        cfg = bench.resolve("ce", backbone, "cifar100" if channels == 3 else "fashion-mnist", "smoke")
        system = PROTOCOLS.get("self")(cfg).eval()
        _, feats = system.net(torch.randn(2, channels, size, size))
        for branch, f in zip(system.exits, feats, strict=False):
            assert branch(f)[0].shape == feats[-1].shape


def test_cost_report(bench):
    _, system = build(bench, "mi_x_si")
    cost = system.cost((1, 28, 28))
    assert cost["loss_params"] == sum(p.numel() for p in system.discrepancies.parameters())
    per = cost["per_exit"]
    assert list(per) == ["net/exit1", "net/exit2", "net/exit3", "net/exit4"]
    assert per["net/exit4"]["params"] == cost["backbone_params"]
    assert 0 < per["net/exit1"]["flops"] < per["net/exit4"]["flops"]
    # exit 4's path is the plain network: its FLOPs equal the backbone's forward FLOPs
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        system.net(torch.zeros(1, 1, 28, 28))
    assert per["net/exit4"]["flops"] == counter.get_total_flops()
