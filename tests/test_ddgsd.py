"""DDGSD (Xu and Liu, AAAI 2019): the objective against a loop-level float64 reference of its terms, its second
distortion of each image, the data and backbones it refuses, and the protocol contract."""

from __future__ import annotations

import copy
import math
import tomllib

import pytest
import torch
from torch import nn

from discbench import seeding
from discbench.api import LossContext
from discbench.config import Bench, merge
from discbench.errors import DiscbenchError
from discbench.protocol_check import CHECKS, protocol_cases, run_protocol_checks, synthetic_data
from discbench.protocols import ddgsd
from discbench.registry import PROTOCOLS
from discbench.runner import check_data

# The bench.toml tables of the method (as in the notes' snippet), laid over the bench only where it lacks them.
TABLES = """
[protocols.ddgsd]
kl_weight = 1.0
mmd_weight = 0.0005
temperature = 1.0

[methods.ddgsd]
description = "DDGSD"
protocols.ddgsd = {}
"""


@pytest.fixture(scope="module")
def bench_ddgsd(bench) -> Bench:
    if "ddgsd" in bench.data["protocols"]:
        return bench
    return Bench(merge(bench.data, tomllib.loads(TABLES)), bench.layers)


def resolve(bench, *overrides, backbone="tinynet", dataset="fashion-mnist"):
    return bench.resolve("ddgsd", backbone, dataset, "zoo", protocol="ddgsd", overrides=overrides)


def build(cfg):
    with seeding.run_seed(0):
        return PROTOCOLS.get("ddgsd")(cfg)


def context(y, views):
    return LossContext(step=0, epoch=0, protocol="ddgsd", labels=y, indices=torch.arange(len(y)), dataset_size=64,
                       num_classes=10, views=views)


# -- the paper's terms, one sample and one class at a time, in Python floats ---------------------------------------
def ref_log_softmax(row, t):
    z = [v / t for v in row]
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def ref_ce(logits, y):
    return sum(-ref_log_softmax(row, 1.0)[c] for row, c in zip(logits, y, strict=True)) / len(y)


def ref_kl(target_logits, logits, t):
    """1/B sum_i sum_k q_ik (log q_ik - log p_ik), q = softmax(target / T), p = softmax(logits / T)."""
    total = 0.0
    for q_row, p_row in zip(target_logits, logits, strict=True):
        log_q, log_p = ref_log_softmax(q_row, t), ref_log_softmax(p_row, t)
        total += sum(math.exp(lq) * (lq - lp) for lq, lp in zip(log_q, log_p, strict=True))
    return total / len(logits)


def ref_mmd2_linear(h_a, h_b):
    """The kernel expansion of MMD^2 with k(u, v) = u . v, every pair of rows (biased estimate)."""
    def k(u, v):
        return sum(x * w for x, w in zip(u, v, strict=True))

    n, m = len(h_a), len(h_b)
    aa = sum(k(u, v) for u in h_a for v in h_a) / (n * n)
    bb = sum(k(u, v) for u in h_b for v in h_b) / (m * m)
    ab = sum(k(u, v) for u in h_a for v in h_b) / (n * m)
    return aa + bb - 2 * ab


def ref_objective(z_a, z_b, h_a, h_b, y, kl_weight, mmd_weight, t):
    """CE(z_a) + CE(z_b) + lambda T^2 (KL(p_a || p_b) + KL(p_b || p_a)) + mu MMD^2(H_a, H_b)."""
    kl = t * t * (ref_kl(z_a, z_b, t) + ref_kl(z_b, z_a, t))
    return ref_ce(z_a, y) + ref_ce(z_b, y) + kl_weight * kl + mmd_weight * ref_mmd2_linear(h_a, h_b)


def test_terms_match_the_loop_reference_and_train_both_views():
    g = torch.Generator().manual_seed(1)
    z_a, z_b = (torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    h_a, h_b = (torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    t = 3.0
    kl = ddgsd.symmetric_kl(z_a, z_b, t)
    expected = t * t * (ref_kl(z_a.tolist(), z_b.tolist(), t) + ref_kl(z_b.tolist(), z_a.tolist(), t))
    assert kl.item() == pytest.approx(expected, rel=1e-12)
    assert ddgsd.symmetric_kl(z_b, z_a, t).item() == pytest.approx(expected, rel=1e-12)  # symmetric
    mmd = ddgsd.linear_mmd2(h_a, h_b)
    assert mmd.item() == pytest.approx(ref_mmd2_linear(h_a.tolist(), h_b.tolist()), rel=1e-12)
    # nothing is detached: both views receive gradient from each term, and autograd's gradient is the true one
    for value, inputs in ((kl, (z_a, z_b)), (mmd, (h_a, h_b))):
        grads = torch.autograd.grad(value, inputs)
        assert all(bool(gr.abs().sum() > 0) for gr in grads)
    assert torch.autograd.gradcheck(lambda a, b: ddgsd.symmetric_kl(a, b, t), (z_a, z_b))
    assert torch.autograd.gradcheck(ddgsd.linear_mmd2, (h_a, h_b))
    assert ddgsd.linear_mmd2(h_a, h_a).item() == 0.0 and ddgsd.symmetric_kl(z_a, z_a, t).item() == 0.0


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_step_is_the_objective_of_two_fixed_views(bench_ddgsd, mode):
    """Two fixed views through a fixed tiny network (float64): the step's total and terms are the reference objective
    of the logits and penultimate features the network gives the two views, forwarded together (Fig. 2: concat,
    one pass, slice; in train mode BatchNorm sees both views at once)."""
    cfg = resolve(bench_ddgsd, "protocol.kl_weight=0.7", "protocol.mmd_weight=0.3", "protocol.temperature=2.0")
    system = build(cfg).double().train(mode == "train")
    g = torch.Generator().manual_seed(2)
    x_a, x_b = (torch.randn(8, 1, 28, 28, generator=g, dtype=torch.float64) for _ in range(2))
    y = torch.randint(0, 10, (8,), generator=g)
    reference_net = copy.deepcopy(system.net)  # the same weights, BatchNorm statistics untouched by the step
    out = system(x_a, y, context(y, {ddgsd.DISTORTED: x_b}))

    with torch.no_grad():
        logits, features = reference_net(torch.cat([x_a, x_b]))
        h = features[-1].mean(dim=(2, 3))  # the classifier's input: tinynet's head is pool, flatten, linear
    z_a, z_b, h_a, h_b = logits[:8].tolist(), logits[8:].tolist(), h[:8].tolist(), h[8:].tolist()
    expected = ref_objective(z_a, z_b, h_a, h_b, y.tolist(), 0.7, 0.3, 2.0)
    assert out.total.item() == pytest.approx(expected, rel=1e-10)
    terms = {t.key: v.item() for t, v in out.terms.items()}
    assert terms == pytest.approx({"ce@4": ref_ce(z_a, y.tolist()), "ce_b@4": ref_ce(z_b, y.tolist()),
                                   "kd": 4.0 * (ref_kl(z_a, z_b, 2.0) + ref_kl(z_b, z_a, 2.0)),
                                   "mmd": ref_mmd2_linear(h_a, h_b)}, rel=1e-10)
    if mode == "train":  # two separate forwards would normalise each view with its own statistics: not the same step
        with torch.no_grad():
            (sa, fa), (sb, fb) = copy.deepcopy(reference_net)(x_a), copy.deepcopy(reference_net)(x_b)
        separate = ref_objective(sa.tolist(), sb.tolist(), fa[-1].mean(dim=(2, 3)).tolist(),
                                 fb[-1].mean(dim=(2, 3)).tolist(), y.tolist(), 0.7, 0.3, 2.0)
        assert abs(separate - expected) > 1e-6


def test_the_hook_reads_the_same_penultimate_features(bench_ddgsd, monkeypatch):
    """A head that is not a plain sequence is read through a hook on its last linear layer: same numbers."""
    cfg = resolve(bench_ddgsd)
    split = build(cfg).eval()
    monkeypatch.setattr(ddgsd, "split_head", lambda head: None)
    hooked = build(cfg).eval()
    assert hooked._split is None and split._split is not None
    x = torch.randn(4, 1, 28, 28)
    for a, b in zip(split.logits_and_embedding(x), hooked.logits_and_embedding(x), strict=True):
        assert torch.equal(a, b)
    assert not hooked.net.head[-1]._forward_pre_hooks  # the hook is removed after each use


# -- the second distortion --------------------------------------------------------------------------------------------
def draw(system, data, seed):
    g = torch.Generator().manual_seed(seed)
    batch = next(iter(data.train_epoch(16, g)))
    return batch, system.views(data, batch, g)[ddgsd.DISTORTED]


def crops_and_flips(image, padding, flip):
    """Every image the dataset's augmentation can make of ``image`` (uint8, (C, H, W))."""
    c, h, w = image.shape
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    out = [padded[:, dy:dy + h, dx:dx + w] for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)]
    return out + ([o.flip(2) for o in out] if flip else [])


@pytest.mark.parametrize("dataset", ["cifar100", "fashion-mnist"])
def test_the_second_view_is_a_fresh_crop_and_mirror(bench_ddgsd, dataset):
    cfg = resolve(bench_ddgsd, dataset=dataset)
    ds = cfg.dataset
    system, data = build(cfg), synthetic_data(cfg)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    batch, view = draw(system, data, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # every draw comes from the data generator
    assert view.shape == batch.x.shape == (16, ds.channels, ds.image_size, ds.image_size)
    assert view.dtype == torch.float32
    again = draw(system, data, seed=3)[1]
    assert torch.equal(view, again)  # deterministic under the seed
    assert not torch.equal(view, draw(system, data, seed=4)[1])
    g, same = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    first = system.views(data, batch, g)[ddgsd.DISTORTED]
    assert torch.equal(first, system.views(data, batch, same)[ddgsd.DISTORTED])
    assert not torch.equal(first, system.views(data, batch, g)[ddgsd.DISTORTED])  # drawn from the stream, which moves
    # the range: normalised uint8 values, each image one crop (zero padding) and mirror of its training image
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(ds.std).view(1, -1, 1, 1) * 255
    pixels = view * std + mean
    assert float(pixels.min()) > -1e-3 and float(pixels.max()) < 255 + 1e-3
    pixels = pixels.round().to(torch.uint8)
    for i, idx in enumerate(batch.idx.tolist()):
        candidates = crops_and_flips(data.train_x[idx], ds.crop_padding, ds.flip)
        assert any(torch.equal(pixels[i], c) for c in candidates)
    differs = (view != batch.x).flatten(1).any(1).float().mean().item()
    assert differs >= (0.9 if ds.crop_padding else 0.25)  # mostly not the loop's view (mirror only: about half)


# -- bad input ------------------------------------------------------------------------------------------------------
def test_a_dataset_without_random_distortion_is_refused_in_one_line(bench_ddgsd):
    cfg = resolve(bench_ddgsd, "dataset.flip=false")
    data = synthetic_data(cfg)
    with pytest.raises(DiscbenchError) as err:
        check_data(cfg, data)
    message = str(err.value)
    assert "\n" not in message and "fashion-mnist" in message and "crop_padding = 0 and flip = false" in message
    assert "--set dataset.flip=true" in message
    check_data(resolve(bench_ddgsd), data)  # the bench's Fashion-MNIST (mirror only, 1 channel) is accepted
    check_data(resolve(bench_ddgsd, "dataset.flip=false", "dataset.crop_padding=2"), data)


def test_streamed_data_is_refused(bench_ddgsd):
    with pytest.raises(DiscbenchError, match="protocol 'ddgsd' draws extra views.*held in memory"):
        check_data(resolve(bench_ddgsd), object())


def test_a_head_without_its_linear_classifier_is_refused(bench_ddgsd, monkeypatch):
    from discbench.protocols import base

    build_backbone = base.build_backbone

    def headless(cfg):
        net = build_backbone(cfg)
        net.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return net

    monkeypatch.setattr(base, "build_backbone", headless)  # the network every DeployedNetwork builds
    with pytest.raises(DiscbenchError) as err:
        build(resolve(bench_ddgsd))
    assert "\n" not in str(err.value) and "penultimate" in str(err.value) and "10 outputs" in str(err.value)


def test_configuration(bench_ddgsd):
    cls = PROTOCOLS.get("ddgsd")
    assert cls.family == "self" and cls.table_protocol() == "self" and not cls.takes_loss and cls.draws_views()
    cfg = resolve(bench_ddgsd)
    assert not cls.is_baseline(cfg)
    assert cls.inert(cfg.protocol, "") == {}
    assert resolve(bench_ddgsd, "protocol.kl_weight=0").protocol.temperature == cfg.protocol.temperature
    assert cls.inert(resolve(bench_ddgsd, "protocol.kl_weight=0").protocol, "") == {"temperature": "kl_weight = 0"}
    with pytest.raises(DiscbenchError):
        resolve(bench_ddgsd, "protocol.temperature=0")
    with pytest.raises(DiscbenchError):
        resolve(bench_ddgsd, "protocol.mmd_weight=-1")


# -- the contract ----------------------------------------------------------------------------------------------------
def test_views_forward_predict_and_cost_agree_with_the_classifiers(bench_ddgsd):
    cases = protocol_cases(bench_ddgsd, "ddgsd")
    assert [c.method for c in cases] == ["ddgsd"]
    results = list(run_protocol_checks(cases))
    assert [r.check for r in results if not r.passed] == [] and len(results) == len(CHECKS)
    cfg = cases[0].cfg
    system = build(cfg)
    (classifier,) = system.classifiers()
    assert classifier.key == "net/exit4" and classifier.last and classifier.network == "net"
    data = synthetic_data(cfg)
    batch, view = draw(system, data, seed=0)
    out = system(batch.x, batch.y, context(batch.y, {ddgsd.DISTORTED: view}))
    assert {t.key for t in out.terms} == {"ce@4", "ce_b@4", "kd", "mmd"}
    assert list(system.eval().predict(batch.x)) == [classifier.key]
    cost = system.cost((1, 28, 28))
    assert cost["loss_params"] == 0 and cost["exit_params"] == 0
    assert cost["backbone_params"] == sum(p.numel() for p in system.parameters())
    assert list(cost["per_exit"]) == [classifier.key]
    assert list(system.state_dict()) == ["net." + k for k in system.net.state_dict()]  # the head is not held twice
