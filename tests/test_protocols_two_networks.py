"""Online and offline distillation: the terms each protocol sums, the pairs it feeds plugins, the frozen teacher,
and the combinations it refuses."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from discbench.api import LossContext, Pairing
from discbench.errors import DiscbenchError
from discbench.functional import kd_divergence
from discbench.protocols.base import build_backbone
from discbench.registry import PROTOCOLS
from tests.conftest import requires_fashion_mnist
from tests.test_cli import discbench, records, tiny


def ctx(y):
    return LossContext(step=0, epoch=0, protocol="online", labels=y, indices=torch.arange(len(y)), dataset_size=100,
                       num_classes=10)


def batch(n=6):
    return torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,))


def test_pairings_name_the_module_pairs():
    assert Pairing.TO_LAST.pairs(4) == [(1, 4), (2, 4), (3, 4)]
    assert Pairing.SAME_STAGE.pairs(4) == [(2, 2), (3, 3), (4, 4)]  # RepDistiller's feat[1:-1]
    assert Pairing.HINT.pairs(4) == [(3, 3)]  # RepDistiller's hint_layer = 2
    assert Pairing.LAST.pairs(4) == [(4, 4)]


def online(bench, loss, *overrides, backbone="tinynet", peer=None):
    cfg = bench.resolve(loss, backbone, "fashion-mnist", "smoke", "online", overrides, partner={"peer": peer})
    torch.manual_seed(0)
    return cfg, PROTOCOLS.get("online")(cfg)


def test_online_total_is_the_equation(bench):
    """sum_k CE(z_k) + kd_weight sum_k KD(z_k || z_peer) + beta sum_k sum_{i<4} D(F_i^k, F_4^peer), term by term."""
    cfg, system = online(bench, "mi_plus_si", "protocol.kd_weight=0.7", "loss.beta=0.2", "loss.locations=0",
                         peer="smallnet")  # every location: no draw, so the two evaluations see the same terms
    system.eval()  # BN in eval mode: two forward passes give the same numbers
    x, y = batch()
    out = system(x, y, ctx(y))
    (z1, f1), (z2, f2) = system.net1(x), system.net2(x)
    expected = F.cross_entropy(z1, y) + F.cross_entropy(z2, y)
    expected += 0.7 * (kd_divergence(z1, z2, 3.0) + kd_divergence(z2, z1, 3.0))
    for net, (src, tgt) in {"net1": (f1, f2), "net2": (f2, f1)}.items():
        for plugin, i in zip(system.discrepancies[net].plugins, (1, 2, 3), strict=True):
            expected += 0.2 * plugin(src[i - 1], tgt[3], ctx(y)).loss
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert {"ce@net1", "ce@net2", "kd@net1", "kd@net2", "mi@net1.1", "si@net2.3", "mi_plus_si@net1.2"} <= {
        t.key for t in out.terms}


def test_online_identical_pair_by_default_and_a_different_peer(bench):
    cfg, system = online(bench, "none")
    assert cfg.protocol.peer == "tinynet" and cfg.is_baseline
    assert sum(p.numel() for p in system.net1.parameters()) == sum(p.numel() for p in system.net2.parameters())
    assert [c.key for c in system.classifiers()] == ["net1/exit4", "net2/exit4"]
    x, y = batch()
    out = system(x, y, ctx(y))
    assert {t.key for t in out.terms} == {"ce@net1", "ce@net2"}  # the baseline: two networks side by side, no KD
    cfg2, system2 = online(bench, "ce_kd", peer="smallnet")
    assert cfg2.protocol.peer == "smallnet" and not cfg2.is_baseline and cfg2.hash != cfg.hash
    assert system2.net2.feature_specs[-1].channels == 128 and system2.net1.feature_specs[-1].channels == 64
    assert set(system2.predict(x)) == {"net1/exit4", "net2/exit4"}


def test_online_plugins_follow_their_pairing_in_both_directions(bench):
    """MUSE's TO_LAST: F_i of each network with its peer's F_4; AFD's LAST: F_4 with F_4. Shapes from the specs."""
    _, system = online(bench, "mi", peer="smallnet")
    seen = []
    for net, pairs in system.discrepancies.items():
        for plugin in pairs.plugins:
            plugin.register_forward_hook(lambda m, args, out, net=net: seen.append(
                (net, args[2].source_module, args[2].target_module, args[0].shape[1], args[1].shape[1])))
    x, y = batch(4)
    system(x, y, ctx(y))
    assert seen == [("net1", 1, 4, 8, 128), ("net1", 2, 4, 16, 128), ("net1", 3, 4, 32, 128),
                    ("net2", 1, 4, 16, 64), ("net2", 2, 4, 32, 64), ("net2", 3, 4, 64, 64)]
    _, afd = online(bench, "afd")
    assert [pairs.pairs for pairs in afd.discrepancies.values()] == [[(4, 4)], [(4, 4)]]


def test_dml_peer_is_a_constant_target(bench):
    """DML's term for net1 trains net1 only: net2 gets no gradient from it (KD_Lib's bug, online)."""
    _, system = online(bench, "dml", "protocol.kd_weight=0.0")
    x, y = batch()
    (z1, _), (z2, _) = system.net1(x), system.net2(x)
    loss, _ = system.discrepancies["net1"]((z1, []), (z2, []), ctx(y), "net1")
    loss.backward()
    assert all(p.grad is None for p in system.net2.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in system.net1.parameters())


def offline(bench, loss, *overrides, teacher_net=None):
    cfg = bench.resolve(loss, "tinynet", "fashion-mnist", "smoke", "offline", overrides,
                        partner={"teacher": "smallnet"})
    torch.manual_seed(1)
    teacher_net = teacher_net or build_backbone(cfg, "smallnet")
    torch.manual_seed(0)
    return cfg, PROTOCOLS.get("offline")(cfg, teacher=teacher_net)


def test_offline_total_is_repdistillers_sum_and_the_teacher_is_frozen(bench):
    cfg, system = offline(bench, "vid", "protocol.ce_weight=0.3", "protocol.kd_weight=0.5", "loss.beta=2.0")
    teacher = system.teacher
    stats = {k: v.clone() for k, v in teacher.state_dict().items()}
    system.train()
    assert system.training and not teacher.training  # the loop's train() never puts the teacher in train mode
    x, y = batch()
    out = system(x, y, ctx(y))
    out.total.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in stats.items())  # BN statistics did not move
    assert all(p in {q for q in system.parameters() if q.requires_grad} for p in system.student.parameters())
    system.eval()
    out = system(x, y, ctx(y))
    zs, fs = system.student(x)
    zt, ft = teacher(x)
    expected = 0.3 * F.cross_entropy(zs, y) + 0.5 * kd_divergence(zs, zt, 4.0)
    for plugin, i in zip(system.discrepancies.plugins, (2, 3, 4), strict=True):  # VID: SAME_STAGE, modules 2..4
        expected += 2.0 * plugin(fs[i - 1], ft[i - 1], ctx(y)).loss
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert [c.key for c in system.classifiers()] == ["student/exit4"]
    assert system.cost((1, 28, 28))["teacher_params"] == sum(p.numel() for p in teacher.parameters())


def test_offline_baseline_never_runs_the_teacher(bench):
    cfg, system = offline(bench, "none")
    assert cfg.is_baseline and cfg.protocol.kd_weight == 0 and cfg.protocol.ce_weight == 1
    calls = []
    teacher = build_backbone(cfg, "smallnet")
    teacher.register_forward_hook(lambda *a: calls.append(1))
    cfg, system = offline(bench, "none", teacher_net=teacher)
    assert system.teacher is None and system.cost((1, 28, 28))["teacher_params"] == 0  # not even held
    x, y = batch()
    assert {t.key for t in system(x, y, ctx(y)).terms} == {"ce@student"} and not calls


def test_fitnet_offline_is_the_single_hint(bench):
    _, system = offline(bench, "fitnet")
    assert system.discrepancies.pairs == [(3, 3)]


@pytest.mark.parametrize("loss,protocol,partner,message", [
    ("dml", "self", {}, "'dml' is not defined for protocol 'self'; it is defined for: online"),
    ("kdcl", "offline", {"teacher": "smallnet"},
     "'kdcl' is not defined for protocol 'offline'; it is defined for: online"),
    ("l2", "online", {}, "'l2' is not defined for protocol 'online'; it is defined for: self"),
    ("ce", "online", {}, "'ce' is not defined for protocol 'online'; it is defined for: self"),
    ("mi", "self", {"peer": "smallnet"}, "--peer does not apply to protocol 'self', which trains one network"),
    ("mi", "online", {"teacher": "smallnet"}, "--teacher does not apply to protocol 'online', which takes --peer"),
    ("mi", "offline", {}, "protocol 'offline' needs a teacher: pass --teacher BACKBONE"),
    ("mi", "online", {"peer": "smalnet"}, "unknown --peer backbone 'smalnet'; did you mean 'smallnet'"),
])
def test_combinations_refused_in_one_line(bench, loss, protocol, partner, message):
    with pytest.raises(DiscbenchError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        bench.resolve(loss, "smallnet", "fashion-mnist", "smoke", protocol, partner=partner)
    assert "\n" not in str(info.value)


@requires_fashion_mnist
@pytest.mark.slow
def test_online_runs_end_to_end_identical_and_different(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    for peer in ([], ["--peer", "smallnet"]):
        status, _, err = discbench(capsys, monkeypatch, "run", "--protocol", "online", "--loss", "mi_plus_si",
                                   "--backbone", "tinynet", *peer, "--seeds", "1", "--quiet", "--results-dir",
                                   str(runs), "--label", "MI+SI", *tiny())
        assert status == 0, err
    recs = {json.loads(p.read_text())["partner"]: json.loads(p.read_text()) for p in records(runs)}
    assert set(recs) == {"tinynet", "smallnet"}
    for partner, rec in recs.items():
        assert rec["protocol"] == "online" and rec["baseline"] is False
        assert [(c["network"], c["backbone"]) for c in rec["classifiers"]] == [("net1", "tinynet"),
                                                                              ("net2", partner)]
        assert set(rec["final_top1"]) == {"net1/exit4", "net2/exit4"}
        assert {"ce@net1", "ce@net2", "kd@net1", "mi@net1.1", "si@net2.3"} <= set(rec["final_train_terms"])
    status, out, _ = discbench(capsys, monkeypatch, "leaderboard", "--results-dir", str(runs), "--out",
                               str(tmp_path / "LB.md"))
    row = next(line for line in out.splitlines() if line.startswith("| MI+SI"))
    assert status == 0 and "tinynet / smallnet ↑" in out and "tinynet / tinynet ↑" in out
    assert row.count("(n=1)") == 3  # the identical pair's mean, then net1 / net2 of the different pair
