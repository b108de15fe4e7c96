"""ONE (Lan, Zhu and Gong, NeurIPS 2018): the gated ensemble and the objective against a loop-level float64
reference of the paper's equations and the public code's ramp-up, the branches' seeding, the classifiers it reports
and records, its cost, and the settings it refuses."""

from __future__ import annotations

import math

import pytest
import torch

from discbench import seeding
from discbench.api import LossContext
from discbench.config import Bench
from discbench.errors import DiscbenchError
from discbench.keys import Term
from discbench.protocols.one import rampup
from discbench.registry import PROTOCOLS
from tests.conftest import REPO

# The [protocols.one] and [methods.one] tables (the bench.toml snippet), laid over bench.toml when it has none yet.
SNIPPET = """
[protocols.one]
branches = 3
temperature = 3.0
kd_weight = 1.0
rampup_fraction = 0.26666666666666666

[methods.one]
description = "ONE"
protocols.one = {}
"""


@pytest.fixture(scope="module")
def one_bench(tmp_path_factory) -> Bench:
    bench = Bench.load(REPO / "bench.toml")
    if "one" in bench.data["protocols"] and "one" in bench.data.get("methods", {}):
        return bench
    path = tmp_path_factory.mktemp("one") / "bench.toml"
    path.write_text(SNIPPET)  # a project file: laid over discbench's defaults table by table, key by key
    return Bench.load(path)


def resolve(bench, *overrides, backbone="tinynet"):
    return bench.resolve("one", backbone, "fashion-mnist", "zoo", "one", overrides)


def build(bench, *overrides, backbone="tinynet", seed=0):
    cfg = resolve(bench, *overrides, backbone=backbone)
    with seeding.run_seed(seed):
        return cfg, PROTOCOLS.get("one")(cfg)


def ctx(y, epoch=0):
    return LossContext(step=0, epoch=epoch, protocol="one", labels=y, indices=torch.arange(len(y)), dataset_size=100,
                       num_classes=10)


# -- the reference: per-sample loops in float64, written from the equations, sharing nothing with the protocol -----
def ref_softmax(v, t=1.0):
    m = max(v)
    e = [math.exp((a - m) / t) for a in v]
    s = sum(e)
    return [a / s for a in e]


def ref_gate(feature, weight, bias, gamma, beta, eps):
    """GAP -> linear -> BatchNorm1d (batch statistics, biased variance) -> ReLU -> softmax, sample by sample."""
    b, c = len(feature), len(feature[0])
    pooled = [[sum(sum(row) for row in feature[n][ch]) / (len(feature[n][ch]) * len(feature[n][ch][0]))
               for ch in range(c)] for n in range(b)]
    m = len(weight)
    scores = [[sum(weight[i][ch] * pooled[n][ch] for ch in range(c)) + bias[i] for i in range(m)] for n in range(b)]
    gates = [[0.0] * m for _ in range(b)]
    normed = [[0.0] * m for _ in range(b)]
    for i in range(m):
        mu = sum(scores[n][i] for n in range(b)) / b
        var = sum((scores[n][i] - mu) ** 2 for n in range(b)) / b
        for n in range(b):
            normed[n][i] = max(gamma[i] * (scores[n][i] - mu) / math.sqrt(var + eps) + beta[i], 0.0)
    for n in range(b):
        gates[n] = ref_softmax(normed[n])
    return gates


def ref_objective(logits, gates, y, temperature, weight):
    """sum_i CE(z_i) + CE(z_e) + weight * T^2 sum_i KL(p_e^T || p_i^T), z_e = sum_i g_i z_i, means over the batch;
    and d loss / d z_i with z_e a constant inside the KL (the code's detached soft targets)."""
    m, b, k = len(logits), len(y), len(logits[0][0])
    total, grads = 0.0, [[[0.0] * k for _ in range(b)] for _ in range(m)]
    for n in range(b):
        z_e = [sum(gates[n][i] * logits[i][n][j] for i in range(m)) for j in range(k)]
        p_e = ref_softmax(z_e)
        total += -math.log(p_e[y[n]]) / b
        p_e_t = ref_softmax(z_e, temperature)
        for i in range(m):
            p_i = ref_softmax(logits[i][n])
            p_i_t = ref_softmax(logits[i][n], temperature)
            kl = sum(p_e_t[j] * math.log(p_e_t[j] / p_i_t[j]) for j in range(k))
            total += (-math.log(p_i[y[n]]) + weight * temperature ** 2 * kl) / b
            for j in range(k):
                onehot = 1.0 if j == y[n] else 0.0
                grads[i][n][j] = ((p_i[j] - onehot) + gates[n][i] * (p_e[j] - onehot)
                                  + weight * temperature * (p_i_t[j] - p_e_t[j])) / b
    return total, grads


def test_objective_matches_the_loop_reference_of_the_equations(one_bench):
    """Fixed branch logits and a fixed shared feature F_{T-1} through the gate (training-mode BatchNorm1d), at an
    epoch inside the ramp-up: the total, each term, and the gradient reaching each branch's logits."""
    cfg, system = build(one_bench, "protocol.temperature=2.5", "protocol.kd_weight=0.8",
                        "protocol.rampup_fraction=0.5", "recipe.epochs=10")
    system = system.double().train()
    g = torch.Generator().manual_seed(1)
    b, k, m = 5, 10, 3
    shared = torch.randn(b, 32, 2, 2, generator=g, dtype=torch.float64)
    logits = [(2.0 * torch.randn(b, k, generator=g, dtype=torch.float64)).requires_grad_() for _ in range(m)]
    y = torch.tensor([3, 0, 9, 3, 7])
    with torch.no_grad():  # a gate whose scores spread over the branches (ReLU active on some, not all)
        system.gate.linear.weight.copy_(torch.randn(m, 32, generator=g, dtype=torch.float64))
        system.gate.norm.weight.copy_(torch.tensor([1.5, 0.7, 1.1], dtype=torch.float64))
        system.gate.norm.bias.copy_(torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64))
    system.branch_logits = lambda x: (shared, logits)
    epoch = 2
    out = system(torch.zeros(b, 1, 28, 28, dtype=torch.float64), y, ctx(y, epoch))

    lin, bn = system.gate.linear, system.gate.norm
    # the code's gate has a bias before its BatchNorm (control_v1); the batch mean removes it, as the protocol's
    # bias-free gate assumes
    gates = ref_gate(shared.tolist(), lin.weight.tolist(), [0.3, -0.2, 0.1], bn.weight.tolist(), bn.bias.tolist(),
                     bn.eps)
    weight = 0.8 * math.exp(-5.0 * (1.0 - epoch / (0.5 * 10)) ** 2)  # utils/ramps.py: sigmoid_rampup(2, 5)
    total, grads = ref_objective([z.tolist() for z in logits], gates, y.tolist(), 2.5, weight)
    assert out.total.item() == pytest.approx(total, rel=1e-12)
    assert {t.key for t in out.terms} == {"ce@net", "kd@net", "ce@branch2", "kd@branch2", "ce@branch3", "kd@branch3",
                                          "ce@ensemble"}
    ce_e = -sum(math.log(ref_softmax([sum(gates[n][i] * logits[i][n][j].item() for i in range(m))
                                      for j in range(k)])[y[n]]) for n in range(b)) / b
    assert out.terms[Term("ce", "ensemble")].item() == pytest.approx(ce_e, rel=1e-12)

    out.total.backward()
    for i in range(m):  # z_e is a constant in the KL: no KL gradient flows back through the ensemble
        assert torch.allclose(logits[i].grad, torch.tensor(grads[i], dtype=torch.float64), rtol=1e-10, atol=1e-14)


def test_the_gate_learns_only_from_the_ensembles_cross_entropy(one_bench):
    _, system = build(one_bench)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    out = system(x, y, ctx(y, epoch=10**6))  # the KL at full weight
    params = list(system.gate.parameters())
    from_total = torch.autograd.grad(out.total, params, retain_graph=True)
    shared, logits = system.branch_logits(x)
    ce_e = torch.nn.functional.cross_entropy(system.ensemble(system.gate(shared), logits), y)
    for a, b in zip(from_total, torch.autograd.grad(ce_e, params), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)
        assert a.abs().sum() > 0


def test_rampup_is_the_codes_sigmoid_rampup():
    """ONE's utils/ramps.py: exp(-5 (1 - clip(epoch, 0, L) / L)^2), 1 when L = 0; the code calls it per epoch."""
    assert rampup(0, 80) == pytest.approx(math.exp(-5))
    assert rampup(40, 80) == pytest.approx(math.exp(-5 * 0.25))
    assert rampup(80, 80) == rampup(299, 80) == rampup(3, 0) == 1.0


def test_the_weight_ramps_over_a_fraction_of_the_recipes_epochs(one_bench):
    _, system = build(one_bench, "recipe.epochs=300")
    assert system.kd_weight(0) == pytest.approx(math.exp(-5))
    assert system.kd_weight(40) == pytest.approx(math.exp(-5 * 0.25))  # 80 / 300 of 300 epochs: L = 80, as the code
    assert system.kd_weight(80) == system.kd_weight(299) == 1.0
    _, system = build(one_bench, "recipe.epochs=200", "protocol.rampup_fraction=0.0", "protocol.kd_weight=0.5")
    assert system.kd_weight(0) == 0.5


def test_branch_one_is_the_network_every_row_starts_from(one_bench, bench):
    """Branch 1 is the run's ``net`` (same initial weights as the self protocol's); branches 2..m and the gate come
    from their own streams and differ from it."""
    _, system = build(one_bench, seed=3)
    cfg = bench.resolve("none", "tinynet", "fashion-mnist", "zoo", "self")
    with seeding.run_seed(3):
        plain = PROTOCOLS.get("self")(cfg)
    assert seeding.fingerprint(system.net.state_dict().values()) == seeding.fingerprint(
        plain.net.state_dict().values())
    assert list(system.networks()) == ["net"]
    own = system.net.stages[-1].conv1.weight  # TinyNet's module 4: one BasicBlock
    others = [branch.stage.conv1.weight for branch in system.branches]
    assert len(others) == 2 and all(o.shape == own.shape and not torch.equal(o, own) for o in others)
    assert not torch.equal(others[0], others[1])
    _, again = build(one_bench, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(system.state_dict().values(), again.state_dict().values(),
                                                 strict=True))


def test_views_forward_predict_and_cost_agree_with_the_classifiers(one_bench):
    cfg, system = build(one_bench, "protocol.branches=4")
    classifiers = system.classifiers()
    assert [c.key for c in classifiers] == ["net/exit4", "branch2/exit4", "branch3/exit4", "branch4/exit4",
                                            "ensemble/exit4"]
    assert [c.key for c in classifiers if c.last] == ["net/exit4"]
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    assert system.views(None, None, torch.Generator()) == {}
    out = system(x, y, ctx(y))
    assert {t.network for t in out.terms} == {c.network for c in classifiers}
    system.eval()
    logits = system.predict(x)
    assert list(logits) == [c.key for c in classifiers]
    assert torch.equal(logits["net/exit4"], system.net(x)[0])  # the reported classifier is the plain network
    shared, branch = system.branch_logits(x)
    gates = system.gate(shared)
    assert torch.allclose(gates.sum(1), torch.ones(8))
    assert torch.allclose(logits["ensemble/exit4"], sum(gates[:, i:i + 1] * branch[i] for i in range(4)))
    cost = system.cost((1, 28, 28))
    net_params = sum(p.numel() for p in system.net.parameters())
    assert cost["backbone_params"] == net_params == cost["per_exit"]["net/exit4"]["params"]
    assert list(cost["per_exit"]) == ["net/exit4"]
    extra = sum(p.numel() for p in system.parameters()) - net_params
    assert cost["loss_params"] == extra == sum(p.numel() for b in system.branches for p in b.parameters()) + sum(
        p.numel() for p in system.gate.parameters())


def test_declared_family_and_home_protocol(one_bench):
    cls = PROTOCOLS.get("one")
    assert (cls.family, cls.takes_loss, cls.table_protocol()) == ("self", False, "self")
    assert one_bench.home_protocol("one") == "one"
    assert not resolve(one_bench).is_baseline


def test_without_kd_the_temperature_and_rampup_are_inert(one_bench):
    cfg = resolve(one_bench, "protocol.kd_weight=0.0", "protocol.temperature=7.0", "protocol.rampup_fraction=0.9")
    table = one_bench.data["protocols"]["one"]
    assert (cfg.protocol.temperature, cfg.protocol.rampup_fraction) == (table["temperature"], table["rampup_fraction"])
    assert cfg.hash == resolve(one_bench, "protocol.kd_weight=0.0").hash
    with seeding.run_seed(0):
        system = PROTOCOLS.get("one")(cfg)
    y = torch.randint(0, 10, (4,))
    assert {t.name for t in system(torch.randn(4, 1, 28, 28), y, ctx(y)).terms} == {"ce"}


@pytest.mark.parametrize(("overrides", "message"), [
    (("protocol.branches=1",), "protocol 'one': branches = 1 must be >= 2"),
    (("protocol.branches=0",), "branches = 0 must be >= 2"),
    (("protocol.temperature=0.0",), "temperature = 0.0 must be > 0"),
    (("protocol.rampup_fraction=1.5",), "rampup_fraction = 1.5 must be in [0, 1]"),
    (("protocol.kd_weight=-1.0",), "kd_weight = -1.0 must be >= 0"),
])
def test_bad_settings_are_refused_in_one_line(one_bench, overrides, message):
    with pytest.raises(DiscbenchError) as err:
        resolve(one_bench, *overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_batch_of_one_is_refused_before_training(one_bench):
    with pytest.raises(DiscbenchError, match="needs recipe.batch_size >= 2") as err:
        build(one_bench, "recipe.batch_size=1")
    assert "\n" not in str(err.value)


def test_a_discrepancy_plugin_is_refused_under_one(one_bench):
    with pytest.raises(DiscbenchError, match="not defined for protocol 'one'") as err:
        one_bench.resolve("mi", "tinynet", "fashion-mnist", "zoo", "one")
    assert "\n" not in str(err.value)


def test_one_keeps_the_protocol_contract(one_bench):
    """``discbench validate --protocol one``: build, classifiers, a finite step, gradients to every parameter (the
    branches and the gate included), determinism, cost."""
    from discbench.protocol_check import protocol_cases, run_protocol_checks

    results = list(run_protocol_checks(protocol_cases(one_bench, "one")))
    assert results and all(r.passed for r in results), [f"{r.check}: {r.detail}" for r in results if not r.passed]
