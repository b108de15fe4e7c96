"""FRSKD (Ji et al., CVPR 2021): the self-teacher's refinement and the objective against loop-level float64
references written from the paper's equations (github.com/MingiJi/FRSKD's BiFPNc, AT and KD for the layer details),
the step's terms and gradients, its seeding, its classifiers and cost, and the inputs it refuses."""

from __future__ import annotations

import math
import tomllib

import numpy as np
import pytest
import torch
from torch import nn

from discbench import seeding
from discbench.api import Backbone, FeatureSpec, LossContext, classifier_head, count_parameters
from discbench.config import Bench, merge
from discbench.errors import DiscbenchError
from discbench.protocol_check import CHECKS, protocol_cases, run_protocol_checks
from discbench.protocols.frskd import SelfTeacher, frskd_objective
from discbench.registry import PROTOCOLS

# The paper's CIFAR-100 setting (README: --alpha 2 --beta 100; main.py: --temperature 4 --width 2 --depth 2), laid
# over the defaults where they do not define the protocol yet (the snippet in bench.toml is the lead's to merge).
SNIPPET = """
[protocols.frskd]
kd_weight = 2.0
feature_weight = 100.0
kd_temperature = 4.0
width = 2
depth = 2
[methods.frskd]
description = "FRSKD"
protocols.frskd = {}
"""
PAPER = {"kd_weight": 2.0, "feature_weight": 100.0, "kd_temperature": 4.0, "width": 2, "depth": 2}


@pytest.fixture(scope="module")
def fbench(bench) -> Bench:
    if "frskd" in bench.data["protocols"]:
        return bench
    return Bench(merge(bench.data, tomllib.loads(SNIPPET)), bench.layers)


def build(fbench, *overrides, backbone="tinynet"):
    cfg = fbench.resolve("frskd", backbone, "fashion-mnist", "zoo", protocol="frskd", overrides=overrides)
    return cfg, PROTOCOLS.get("frskd")(cfg)


def ctx(y):
    return LossContext(step=0, epoch=0, protocol="frskd", labels=y, indices=torch.arange(len(y)), dataset_size=100,
                       num_classes=10)


# -- the reference: the paper's equations, one number at a time -----------------------------------------------------
def relu(x):
    return np.maximum(x, 0.0)


def conv1x1(x, w):
    B, C, H, W = x.shape
    out = np.zeros((B, w.shape[0], H, W))
    for b in range(B):
        for o in range(w.shape[0]):
            for i in range(H):
                for j in range(W):
                    out[b, o, i, j] = sum(w[o, c, 0, 0] * x[b, c, i, j] for c in range(C))
    return out


def depthwise3x3(x, w):
    """Per-channel 3x3 convolution, zero padding 1."""
    B, C, H, W = x.shape
    out = np.zeros_like(x)
    for b in range(B):
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    out[b, c, i, j] = sum(w[c, 0, di + 1, dj + 1] * x[b, c, i + di, j + dj]
                                          for di in (-1, 0, 1) for dj in (-1, 0, 1)
                                          if 0 <= i + di < H and 0 <= j + dj < W)
    return out


def batchnorm(x, gamma, beta, eps=1e-5):
    """Training-mode batch normalisation: each channel's mean and biased variance over batch and locations."""
    B, C, H, W = x.shape
    out = np.zeros_like(x)
    for c in range(C):
        values = [x[b, c, i, j] for b in range(B) for i in range(H) for j in range(W)]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)
        for b in range(B):
            for i in range(H):
                for j in range(W):
                    out[b, c, i, j] = gamma[c] * (x[b, c, i, j] - mean) / math.sqrt(var + eps) + beta[c]
    return out


def maxpool_same(x, k=3, s=2):
    """k x k max pooling with stride s under TensorFlow "same" zero padding: ceil(H / s) outputs."""
    B, C, H, W = x.shape
    ho, wo = -(-H // s), -(-W // s)
    top, left = ((ho - 1) * s + k - H) // 2, ((wo - 1) * s + k - W) // 2
    out = np.zeros((B, C, ho, wo))
    for b in range(B):
        for c in range(C):
            for i in range(ho):
                for j in range(wo):
                    out[b, c, i, j] = max(x[b, c, r, q] if 0 <= r < H and 0 <= q < W else 0.0
                                          for r in range(i * s - top, i * s - top + k)
                                          for q in range(j * s - left, j * s - left + k))
    return out


def nearest(x, H, W):
    B, C, h, w = x.shape
    out = np.zeros((B, C, H, W))
    for i in range(H):
        for j in range(W):
            out[:, :, i, j] = x[:, :, (i * h) // H, (j * w) // W]
    return out


def numbers(module):
    """The weights of a block's convolutions and BNs, in order (the reference reads values, not code)."""
    return [{k: v.detach().double().numpy() for k, v in m.named_parameters()} for m in module.modules()
            if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]


def lateral(block, x):
    """phi(x) = ReLU(BN(Conv1x1(x)))."""
    conv, bn = numbers(block)
    return relu(batchnorm(conv1x1(x, conv["weight"]), bn["weight"], bn["bias"]))


def node(block, x, depth):
    """The fusion node's convolution: ``depth`` x (depthwise 3x3, pointwise 1x1, BN), a ReLU between two."""
    layers = numbers(block)
    assert len(layers) == 3 * depth
    for k in range(depth):
        dw, pw, bn = layers[3 * k: 3 * k + 3]
        x = relu(x) if k else x
        x = batchnorm(conv1x1(depthwise3x3(x, dw["weight"]), pw["weight"]), bn["weight"], bn["bias"])
    return x


def fused(raw):
    w = [max(v, 0.0) for v in raw.detach().tolist()]
    return [v / (sum(w) + 1e-6) for v in w]


def reference_refinement(st, features, depth):
    """FRSKD §3.2: lateral L_i, top-down P_i, bottom-up T_i with normalised fusion weights; logits from T_n."""
    n = len(features)
    f = [relu(x) for x in features]
    size = [x.shape[-2:] for x in f]
    L = [lateral(st.lateral[i], f[i]) for i in range(n)]
    L2 = [None, *(lateral(st.lateral_up[i - 1], f[i]) for i in range(1, n))]
    P = [None] * n
    P[n - 1] = L[n - 1]
    for i in range(n - 2, -1, -1):
        w = fused(st.up_weight[i])
        up = lateral(st.up_resample[i].project, nearest(relu(P[i + 1]), *size[i]))
        P[i] = node(st.up_conv[i], w[0] * relu(L[i]) + w[1] * up, depth)
    T = [P[0]]
    for i in range(1, n):
        w = fused(st.down_weight[i - 1])
        down = lateral(st.down_resample[i - 1].project, maxpool_same(relu(T[i - 1])))
        assert down.shape[-2:] == size[i]
        x = w[0] * relu(L2[i]) + (w[1] * relu(P[i]) if i < n - 1 else 0.0) + w[-1] * down
        T.append(node(st.down_conv[i - 1], x, depth))
    out = [relu(t) for t in T]
    fc_w, fc_b = st.classifier.weight.detach().double().numpy(), st.classifier.bias.detach().double().numpy()
    top = out[-1]
    B, C, H, W = top.shape
    logits = np.zeros((B, fc_w.shape[0]))
    for b in range(B):
        pooled = [sum(top[b, c, i, j] for i in range(H) for j in range(W)) / (H * W) for c in range(C)]
        for k in range(fc_w.shape[0]):
            logits[b, k] = sum(fc_w[k, c] * pooled[c] for c in range(C)) + fc_b[k]
    return out, logits


def log_softmax(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def reference_objective(z, zt, features, refined, y, alpha, beta, temp):
    """FRSKD §3.3: CE(z) + CE(z_t) + alpha T^2 KL(p_t || p) + beta sum_i mean_{b,j} (Q(F_i)_bj - Q(T_i)_bj)^2."""
    B = len(y)
    ce = sum(-log_softmax(z[b])[y[b]] for b in range(B)) / B
    ce_t = sum(-log_softmax(zt[b])[y[b]] for b in range(B)) / B
    kd = 0.0
    for b in range(B):
        ls, lt = log_softmax([v / temp for v in z[b]]), log_softmax([v / temp for v in zt[b]])
        kd += sum(math.exp(t) * (t - s) for s, t in zip(ls, lt, strict=True))
    kd = temp * temp * kd / B

    def attention(a, b):  # the L2-normalised channel mean of squares of sample b
        C, H, W = a.shape[1:]
        q = [sum(max(a[b, c, i, j], 0.0) ** 2 for c in range(C)) / C for i in range(H) for j in range(W)]
        norm = math.sqrt(sum(v * v for v in q))
        return [v / norm for v in q]

    att = []
    for fs, ft in zip(features, refined, strict=True):
        diffs = [(s - t) ** 2 for b in range(B) for s, t in zip(attention(fs, b), attention(ft, b), strict=True)]
        att.append(sum(diffs) / len(diffs))
    return ce + ce_t + alpha * kd + beta * sum(att), (ce, ce_t, kd, att)


# -- golden tests ----------------------------------------------------------------------------------------------------
SPECS = (FeatureSpec(2, 1), FeatureSpec(3, 2), FeatureSpec(2, 4))
SIDES = (5, 3, 2)  # odd sizes: same-padded pooling 5 -> 3 -> 2, nearest resampling 2 -> 3 -> 5


def fixed_teacher(width=2, depth=2, classes=3):
    torch.manual_seed(1)
    st = SelfTeacher(SPECS, classes, width, depth).double()
    with torch.no_grad():
        for m in st.modules():
            if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.Linear):
                for p in m.parameters():
                    p.normal_(0.0, 0.7)
        for w in [*st.up_weight, *st.down_weight]:
            w.uniform_(-0.3, 1.5)
        st.up_weight[0].copy_(torch.tensor([0.8, -0.4]))  # a negative weight is clamped to 0 by the ReLU
    return st.train()


def fixed_features(batch=2):
    g = torch.Generator().manual_seed(2)
    return [torch.randn(batch, s.channels, n, n, generator=g, dtype=torch.float64) for s, n in zip(SPECS, SIDES,
                                                                                                  strict=True)]


def test_refinement_matches_the_loop_reference():
    st, feats = fixed_teacher(), fixed_features()
    refined, logits = st(feats)
    ref_maps, ref_logits = reference_refinement(st, [f.numpy() for f in feats], depth=2)
    assert [tuple(t.shape) for t in refined] == [(2, 4, 5, 5), (2, 6, 3, 3), (2, 4, 2, 2)]  # d_i = width * C_i
    for ours, theirs in zip(refined, ref_maps, strict=True):
        np.testing.assert_allclose(ours.detach().numpy(), theirs, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(logits.detach().numpy(), ref_logits, rtol=1e-10, atol=1e-10)


def test_refinement_at_depth_one_and_width_one():
    st, feats = fixed_teacher(width=1, depth=1), fixed_features()
    refined, logits = st(feats)
    ref_maps, ref_logits = reference_refinement(st, [f.numpy() for f in feats], depth=1)
    assert refined[1].shape[1] == 3
    for ours, theirs in zip([*refined, logits], [*ref_maps, ref_logits], strict=True):
        np.testing.assert_allclose(ours.detach().numpy(), theirs, rtol=1e-10, atol=1e-10)


def test_objective_matches_the_loop_reference():
    g = torch.Generator().manual_seed(3)
    B, K = 4, 5
    z, zt = (torch.randn(B, K, generator=g, dtype=torch.float64) * 2 for _ in range(2))
    y = torch.tensor([0, 3, 4, 3])
    # backbone features with negative values (they enter after a ReLU), refined maps post-ReLU and twice as wide
    features = [torch.randn(B, c, n, n, generator=g, dtype=torch.float64) for c, n in ((2, 5), (3, 3), (2, 2))]
    refined = [torch.randn(B, 2 * c, n, n, generator=g, dtype=torch.float64).relu() for c, n in ((2, 5), (3, 3),
                                                                                                  (2, 2))]
    out = frskd_objective(z, zt, features, refined, y, 2.0, 100.0, 4.0)
    total, (ce, ce_t, kd, att) = reference_objective(z.tolist(), zt.tolist(), [f.numpy() for f in features],
                                                     [t.numpy() for t in refined], y.tolist(), 2.0, 100.0, 4.0)
    assert out.ce.item() == pytest.approx(ce, rel=1e-12)
    assert out.ce_teacher.item() == pytest.approx(ce_t, rel=1e-12)
    assert out.kd.item() == pytest.approx(kd, rel=1e-12)
    assert [a.item() for a in out.att] == pytest.approx(att, rel=1e-12)
    assert out.total.item() == pytest.approx(total, rel=1e-12)


# -- the step --------------------------------------------------------------------------------------------------------
def test_step_is_the_objective_on_the_backbone_and_its_self_teacher(fbench):
    cfg, system = build(fbench, "protocol.kd_weight=1.5", "protocol.feature_weight=30.0", "protocol.kd_temperature=2.0")
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    out = system(x, y, ctx(y))
    logits, feats = system.net(x)  # training-mode BN: the same batch gives the same numbers
    refined, zt = system.self_teacher(feats)
    expected = frskd_objective(logits, zt, feats, refined, y, 1.5, 30.0, 2.0)
    assert out.total.item() == pytest.approx(expected.total.item(), rel=1e-6)
    assert {t.key: v.item() for t, v in out.terms.items()} == pytest.approx(
        {"ce@4": expected.ce.item(), "ce@self_teacher": expected.ce_teacher.item(), "kd": expected.kd.item(),
         **{f"att@{i}": a.item() for i, a in enumerate(expected.att, 1)}}, rel=1e-6)
    assert all(v.grad_fn is None for v in out.terms.values())


def test_odd_sizes_every_level_refined_at_the_backbones_size(fbench):
    """TinyNet on 28x28: 14, 7, 4, 2 (7 -> 4 pools to 4, 4 -> 7 resamples to 7); widths 2 * C_i."""
    _, system = build(fbench)
    _, feats = system.net(torch.randn(2, 1, 28, 28))
    refined, logits = system.self_teacher(feats)
    assert [tuple(t.shape) for t in refined] == [(2, 2 * f.shape[1], *f.shape[-2:]) for f in feats]
    assert [f.shape[-1] for f in feats] == [14, 7, 4, 2] and logits.shape == (2, 10)


def test_stride_one_gaps_need_no_pooling():
    """RepDistiller's ResNets have two levels at 1/1 (16@1 16@1 32@2 64@4)."""
    specs = (FeatureSpec(16, 1), FeatureSpec(16, 1), FeatureSpec(32, 2), FeatureSpec(64, 4))
    st = SelfTeacher(specs, 10, 2, 2)
    assert [d.stride for d in st.down_resample] == [1, 2, 2]
    refined, _ = st([torch.randn(2, s.channels, n, n) for s, n in zip(specs, (9, 9, 5, 3), strict=True)])
    assert [tuple(t.shape[1:]) for t in refined] == [(32, 9, 9), (32, 9, 9), (64, 5, 5), (128, 3, 3)]


def test_targets_are_detached_and_the_self_teachers_ce_reaches_the_backbone(fbench):
    """The self-teacher learns from its own CE alone (KD's z_t and the attention targets T_i are detached); that CE
    reaches the backbone through F_i (the code does not detach the features)."""
    _, system = build(fbench)
    system.eval()  # BN on running statistics: the passes below compute the same function
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    params = [p for p in system.self_teacher.parameters()]
    total = torch.autograd.grad(system(x, y, ctx(y)).total, params)
    _, feats = system.net(x)
    alone = torch.autograd.grad(torch.nn.functional.cross_entropy(system.self_teacher(feats)[1], y), params)
    for a, b in zip(total, alone, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    _, feats = system.net(x)
    stem = system.net.stages[0][0][0].weight
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(system.self_teacher(feats)[1], y), [stem])
    assert grad.abs().sum() > 0


def test_backbone_starts_as_every_other_row(fbench, bench):
    """The self-teacher draws from its own stream: the network is the `none` row's under the same seed."""
    cfg, _ = build(fbench)
    plain = bench.resolve("none", "tinynet", "fashion-mnist", "zoo")
    with seeding.run_seed(3):
        a = PROTOCOLS.get("frskd")(cfg)
        b = PROTOCOLS.get("self")(plain)
        again = PROTOCOLS.get("frskd")(cfg)
    assert seeding.fingerprint(a.net.state_dict().values()) == seeding.fingerprint(b.net.state_dict().values())
    assert all(torch.equal(p, q) for p, q in zip(a.self_teacher.parameters(), again.self_teacher.parameters(),
                                                 strict=True))


# -- contract --------------------------------------------------------------------------------------------------------
def test_classifiers_predict_and_cost_agree(fbench):
    cfg, system = build(fbench)
    classifiers = system.classifiers()
    assert [(c.key, c.last) for c in classifiers] == [("net/exit4", True), ("self_teacher/exit4", False)]
    assert system.networks() == {"net": system.net}
    system.eval()
    out = system.predict(torch.randn(3, 1, 28, 28))
    assert sorted(out) == sorted(c.key for c in classifiers) and all(v.shape == (3, 10) for v in out.values())
    cost = system.cost((1, 28, 28))
    assert cost["backbone_params"] == count_parameters(system.net) and cost["exit_params"] == 0
    assert cost["loss_params"] == count_parameters(system.self_teacher) > 0
    assert set(cost["per_exit"]) == {"net/exit4"} and cost["per_exit"]["net/exit4"]["params"] == cost[
        "backbone_params"]
    assert system.views(None, None, None) == {} and not system.draws_views()


def test_protocol_contract(fbench):
    cases = protocol_cases(fbench, "frskd")
    assert [c.method for c in cases] == ["frskd"]
    results = list(run_protocol_checks(cases))
    assert [r.detail for r in results if not r.passed] == [] and len(results) == len(CHECKS)


def test_the_bench_values_are_the_papers(fbench):
    cfg, _ = build(fbench)
    assert {k: getattr(cfg.protocol, k) for k in PAPER} == PAPER
    assert fbench.home_protocol("frskd") == "frskd" and not cfg.is_baseline
    cls = PROTOCOLS.get("frskd")
    assert cls.family == "self" and cls.takes_loss is False and cls.table_protocol() == "self"


# -- refusals --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override", ["protocol.kd_weight=-1.0", "protocol.feature_weight=-0.5",
                                      "protocol.kd_temperature=0.0", "protocol.width=0", "protocol.width=1.5",
                                      "protocol.depth=0", "protocol.alpha=2.0", "loss.beta=1.0"])
def test_bad_settings_are_one_line(fbench, override):
    with pytest.raises(DiscbenchError) as err:
        build(fbench, override)
    assert "\n" not in str(err.value)


def test_no_plugin_runs_under_frskd_and_frskd_runs_under_no_other_protocol(fbench):
    with pytest.raises(DiscbenchError, match="not defined for protocol 'frskd'"):
        fbench.resolve("mi", "tinynet", "fashion-mnist", "zoo", protocol="frskd")
    with pytest.raises(DiscbenchError, match="not defined for protocol 'self'"):
        fbench.resolve("frskd", "tinynet", "fashion-mnist", "zoo", protocol="self")


def test_temperature_without_kd_is_inert(fbench):
    cfg, _ = build(fbench, "protocol.kd_weight=0.0", "protocol.kd_temperature=2.0")
    assert cfg.protocol.kd_temperature == 4.0 and any("kd_temperature" in n for n in cfg.notes)


class OneModule(Backbone):
    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([nn.Conv2d(1, 4, 3, padding=1)])
        self.head = classifier_head(4, 10)
        self.feature_specs = (FeatureSpec(4, 1),)


def test_a_backbone_of_one_module_is_refused(fbench, monkeypatch):
    cfg, _ = build(fbench)
    monkeypatch.setattr("discbench.protocols.base.build_backbone", lambda cfg: OneModule())
    with pytest.raises(DiscbenchError, match="at least 2 modules") as err:
        PROTOCOLS.get("frskd")(cfg)
    assert "\n" not in str(err.value)
