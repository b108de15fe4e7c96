"""CS-KD (protocol ``cs_kd``): the objective against a per-sample reference written from the paper's equations, the
partners it draws, the partners' forward (train mode, no gradient, after the samples'), the training sets it refuses,
and the agreement of views / forward / predict / cost with its classifiers."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from discbench.api import LossContext
from discbench.config import Bench
from discbench.data import Batch, ResidentData
from discbench.errors import DiscbenchError
from discbench.registry import PROTOCOLS
from tests.conftest import REPO, requires_fashion_mnist
from tests.test_cli import discbench, records, tiny

SNIPPET = """
[protocols.cs_kd]
weight = 1.0
temperature = 4.0
[methods.cs_kd]
description = "CS-KD"
protocols.cs_kd = {}
"""


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    """The project's bench.toml, with the cs_kd tables laid over it where it has none yet."""
    if "cs_kd" in Bench.load(REPO / "bench.toml").data["protocols"]:
        return REPO / "bench.toml"
    path = tmp_path_factory.mktemp("cs_kd") / "bench.toml"
    path.write_text((REPO / "bench.toml").read_text() + SNIPPET)
    return path


@pytest.fixture(scope="module")
def cs_bench(config_path) -> Bench:
    return Bench.load(config_path)


def build(cs_bench, *overrides, backbone="tinynet"):
    cfg = cs_bench.resolve("cs_kd", backbone, "fashion-mnist", "zoo", "cs_kd", overrides)
    torch.manual_seed(0)
    return cfg, PROTOCOLS.get("cs_kd")(cfg)


def pairs_data(cfg, labels, augment=False):
    """A resident training set of random 28x28 images with ``labels``; without augmentation a sample's view is its
    normalised image, so the partners' images are known exactly."""
    ds = cfg.dataset if augment else dataclasses.replace(cfg.dataset, crop_padding=0, flip=False)
    g = torch.Generator().manual_seed(1)
    y = torch.tensor(labels)
    x = torch.randint(0, 256, (len(y), 1, 28, 28), generator=g, dtype=torch.uint8)
    return ResidentData(ds, (x, y), (x[:8], y[:8]), torch.device("cpu"))


def ctx(batch, views, data):
    return LossContext(step=0, epoch=0, protocol="cs_kd", labels=batch.y, indices=batch.idx,
                       dataset_size=data.num_train, num_classes=10, views=views)


# -- the objective --------------------------------------------------------------------------------------------------
def reference(z, z_partner, y, weight, temperature):
    """CE(f(x), y) + lambda T^2 KL(softmax(f(x')/T) || softmax(f(x)/T)), batch means, one sample at a time in
    Python floats (float64) (Yun et al. 2020, §2: L_CS-KD = L_CE + lambda_cls T^2 L_cls)."""

    def log_softmax(v):
        m = max(v)
        lse = m + math.log(sum(math.exp(a - m) for a in v))
        return [a - lse for a in v]

    b = len(y)
    ce = kl = 0.0
    for i in range(b):
        zi, zpi = z[i].tolist(), z_partner[i].tolist()
        ce -= log_softmax(zi)[int(y[i])]
        log_p = log_softmax([a / temperature for a in zi])  # the sample's prediction (trained)
        log_q = log_softmax([a / temperature for a in zpi])  # the partner's prediction (the target)
        kl += sum(math.exp(lq) * (lq - lp) for lq, lp in zip(log_q, log_p, strict=True))
    return ce / b, kl / b, ce / b + weight * temperature ** 2 * kl / b


def test_objective_matches_the_papers_equation_on_known_pairs(cs_bench):
    """Every class has exactly two samples, so each sample's partner is the other one; the total and both terms
    match the per-sample reference at non-default weight and temperature, in float64."""
    cfg, system = build(cs_bench, "protocol.weight=0.7", "protocol.temperature=3.0")
    system = system.double().train()
    data = pairs_data(cfg, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    idx = torch.tensor([5, 2, 7, 0, 10, 3, 8, 1])
    batch = Batch(data.normalize(data.train_x[idx]).double(), data.train_y[idx], idx)
    gen = torch.Generator().manual_seed(3)
    views = system.views(data, batch, gen)
    partner_images = data.normalize(data.train_x[idx ^ 1]).double()  # the other sample of each class
    assert set(views) == {"partner"}
    torch.testing.assert_close(views["partner"].double(), partner_images, rtol=0, atol=0)

    net = copy.deepcopy(system.net)  # train mode: each forward normalises with its own batch's statistics
    with torch.no_grad():
        z, z_partner = net(batch.x)[0], net(partner_images)[0]
    out = system(batch.x, batch.y, ctx(batch, {"partner": partner_images}, data))
    ce, kl, total = reference(z, z_partner, batch.y, 0.7, 3.0)
    terms = {t.key: v.item() for t, v in out.terms.items()}
    assert set(terms) == {"ce@4", "kd"}
    assert terms["ce@4"] == pytest.approx(ce, rel=1e-10)
    assert terms["kd"] == pytest.approx(9.0 * kl, rel=1e-10)  # the term is T^2 KL, unweighted
    assert out.total.item() == pytest.approx(total, rel=1e-10)


def test_no_gradient_through_the_partner(cs_bench):
    """The gradient of the total is that of CE + lambda T^2 KL with the partner's prediction a constant."""
    cfg, system = build(cs_bench, "protocol.weight=2.0")
    system = system.double().train()
    x, xp = torch.randn(8, 1, 28, 28, dtype=torch.float64), torch.randn(8, 1, 28, 28, dtype=torch.float64)
    y = torch.arange(8) % 4
    batch = Batch(x, y, torch.arange(8))
    net = copy.deepcopy(system.net)
    out = system(x, y, ctx(batch, {"partner": xp}, pairs_data(cfg, [0, 0])))
    grads = torch.autograd.grad(out.total, list(system.net.parameters()))
    z = net(x)[0]
    with torch.no_grad():
        q = F.softmax(net(xp)[0] / 4.0, dim=1)
    expected = F.cross_entropy(z, y) + 2.0 * 16.0 * (q * (q.log() - F.log_softmax(z / 4.0, dim=1))).sum(1).mean()
    for g, e in zip(grads, torch.autograd.grad(expected, list(net.parameters())), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def test_partners_forward_in_train_mode_after_the_samples(cs_bench):
    """As the code's train.py: the partner forward runs in train mode (BatchNorm's running statistics move twice a
    step, the samples' first, then the partners'), separately from the samples' forward."""
    cfg, system = build(cs_bench)
    system.train()
    x, xp = torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28) * 2 + 1
    y = torch.arange(8) % 4
    net = copy.deepcopy(system.net)
    system(x, y, ctx(Batch(x, y, torch.arange(8)), {"partner": xp}, pairs_data(cfg, [0, 0])))
    with torch.no_grad():
        net(x)
        net(xp)
    for (name, mine), (_, theirs) in zip(system.net.named_buffers(), net.named_buffers(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-7, msg=name)
    assert all(int(b) == 2 for n, b in system.net.named_buffers() if n.endswith("num_batches_tracked"))


def test_partners_are_other_samples_of_the_class_freshly_augmented(cs_bench):
    """With augmentation on, a partner's view is data.sample of a same-class training index other than the
    sample's, drawn from the generator passed to views (the same draw under the same generator state)."""
    cfg, system = build(cs_bench)
    labels = [i % 5 for i in range(40)]
    data = pairs_data(cfg, labels, augment=True)
    idx = torch.arange(0, 40, 3)
    batch = Batch(data.sample(idx, torch.Generator().manual_seed(0)), data.train_y[idx], idx)
    views = system.views(data, batch, torch.Generator().manual_seed(7))
    again = torch.Generator().manual_seed(7)
    partners = data.same_class_partners(idx, again)
    torch.testing.assert_close(views["partner"], data.sample(partners, again), rtol=0, atol=0)
    assert bool((data.train_y[partners] == data.train_y[idx]).all()) and bool((partners != idx).all())
    assert views["partner"].shape == batch.x.shape and views["partner"].dtype == batch.x.dtype


# -- the contract ---------------------------------------------------------------------------------------------------
def test_views_forward_predict_and_cost_agree_with_classifiers(cs_bench):
    cfg, system = build(cs_bench, backbone="smallnet")
    cls = type(system)
    assert (cls.family, cls.takes_loss, cls.draws_views(), cls.table_protocol()) == ("self", False, True, "self")
    assert not cls.is_baseline(cfg) and cfg.loss.name == ""
    classifiers = system.classifiers()
    assert [(c.network, c.backbone, c.exit, c.last) for c in classifiers] == [("net", "smallnet", 4, True)]
    data = pairs_data(cfg, [i % 10 for i in range(32)], augment=True)
    gen = torch.Generator().manual_seed(0)
    batch = next(iter(data.train_epoch(8, gen)))
    views = system.views(data, batch, gen)
    out = system(batch.x, batch.y, ctx(batch, views, data))
    assert out.total.dim() == 0 and bool(torch.isfinite(out.total))
    assert {t.key for t in out.terms} == {"ce@4", "kd"} and all(not v.requires_grad for v in out.terms.values())
    system.eval()
    logits = system.predict(batch.x)
    assert list(logits) == [c.key for c in classifiers] and logits["net/exit4"].shape == (8, 10)
    cost = system.cost((1, 28, 28))
    assert list(cost["per_exit"]) == [c.key for c in classifiers if c.last]
    assert cost["backbone_params"] == sum(p.numel() for p in system.net.parameters())
    assert cost["exit_params"] == cost["loss_params"] == 0
    assert list(system.networks()) == ["net"]
    assert sum(p.numel() for p in system.parameters()) == cost["backbone_params"]  # nothing trains beyond the net


def test_the_method_is_defined_for_cs_kd_only_and_configured_from_the_table(cs_bench):
    assert cs_bench.home_protocol("cs_kd") == "cs_kd"
    cfg, _ = build(cs_bench)
    assert (cfg.protocol.weight, cfg.protocol.temperature) == (1.0, 4.0)  # cs-kd train.py --lamda 1, --temp 4
    inert = cs_bench.resolve("cs_kd", "tinynet", "fashion-mnist", "zoo", "cs_kd",
                             ("protocol.weight=0", "protocol.temperature=2.0"))
    assert inert.protocol.temperature == 4.0  # no effect at weight 0: one configuration, one hash


# -- bad input: one line, before training ---------------------------------------------------------------------------
@pytest.mark.parametrize(("overrides", "loss", "message"), [
    (("protocol.weight=-1",), "cs_kd", "weight"),
    (("protocol.temperature=0",), "cs_kd", "temperature"),
    ((), "mi", "'mi' is not defined for protocol 'cs_kd'"),
])
def test_bad_settings_refused_in_one_line(cs_bench, overrides, loss, message):
    with pytest.raises(DiscbenchError, match=message) as info:
        cs_bench.resolve(loss, "tinynet", "fashion-mnist", "zoo", "cs_kd", overrides)
    assert "\n" not in str(info.value)


def test_a_class_with_one_sample_is_refused_in_one_line(cs_bench):
    cfg, _ = build(cs_bench, "recipe.train_subset=9")
    data = pairs_data(cfg, [0, 0, 1, 1, 2, 3, 3, 5, 5])  # class 2: one sample; classes 4, 6..9: none
    with pytest.raises(DiscbenchError) as info:
        PROTOCOLS.get("cs_kd").check_data(cfg, data)
    message = str(info.value)
    assert "\n" not in message
    assert "class 2 has 1 training sample" in message and "raise recipe.train_subset" in message
    PROTOCOLS.get("cs_kd").check_data(cfg, pairs_data(cfg, [0, 0, 1, 1, 3, 3]))  # absent classes need no partner


@requires_fashion_mnist
def test_run_refuses_a_subset_with_a_lonely_class_before_training(config_path, tmp_path, capsys, monkeypatch):
    """Fashion-MNIST's fixed 20-image subset has one image of class 4: refused in one line, nothing written."""
    status, out, err = discbench(capsys, monkeypatch, "run", "--loss", "cs_kd", "--backbone", "tinynet",
                                 "--budget", "zoo", "--seeds", "1", "--quiet", "--config", str(config_path),
                                 "--results-dir", str(tmp_path / "runs"), "--set", "recipe.train_subset=20",
                                 "--set", "recipe.batch_size=4")
    assert status == 2, (out, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "class 4 has 1 training sample" in errors[0], err
    assert "epoch" not in err  # refused before training
    assert not records(tmp_path / "runs")


@requires_fashion_mnist
@pytest.mark.slow
def test_runs_end_to_end_without_naming_the_protocol(config_path, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    status, _, err = discbench(capsys, monkeypatch, "run", "--loss", "cs_kd", "--backbone", "tinynet", "--seeds",
                               "1", "--quiet", "--config", str(config_path), "--results-dir", str(runs), *tiny())
    assert status == 0, err
    (path,) = records(runs)
    rec = json.loads(path.read_text())
    assert rec["protocol"] == "cs_kd" and rec["baseline"] is False
    assert set(rec["final_top1"]) == {"net/exit4"}
    assert {"ce@4", "kd"} <= set(rec["final_train_terms"])
