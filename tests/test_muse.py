"""MUSE (Eq. 4-6) and the JSD critic (Eq. 5) against closed forms and hand-written references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from discbench.api import FeatureSpec, LossContext
from discbench.features import locations, sampled_locations
from discbench.kernels import jsd_mi_loss
from discbench.kernels.jsd_ref import jsd_mi_loss_ref
from discbench.registry import LOSSES


def ctx(b=4):
    return LossContext(step=0, epoch=0, protocol="self", labels=torch.zeros(b, dtype=torch.long),
                       indices=torch.arange(b), dataset_size=100, num_classes=10)


def loop_jsd(local, global_):
    """Eq. 5 as two explicit sums over (image, other image, location): the slowest possible oracle."""
    b, n, _ = local.shape
    pos, neg, n_neg = 0.0, 0.0, 0
    for i in range(b):
        for j in range(b):
            for k in range(n):
                s = float(local[i, k] @ global_[j])
                if i == j:
                    pos += math.log1p(math.exp(-s))
                else:
                    neg += math.log1p(math.exp(s))
                    n_neg += 1
    return pos / (b * n) + (neg / n_neg if n_neg else 0.0)


@pytest.mark.parametrize("b,n,d", [(1, 3, 2), (2, 1, 4), (5, 3, 7)])
def test_reference_equals_the_explicit_sums(b, n, d):
    local, global_ = torch.randn(b, n, d, dtype=torch.float64), torch.randn(b, d, dtype=torch.float64)
    assert jsd_mi_loss_ref(local, global_).item() == pytest.approx(loop_jsd(local, global_), rel=1e-6)


def test_jsd_loss_closed_forms():
    # all scores zero: softplus(0) = log 2 for positives and negatives -> 2 log 2 (DIM's loss + 2 log 2)
    assert jsd_mi_loss_ref(torch.zeros(3, 4, 5), torch.zeros(3, 5)).item() == pytest.approx(2 * math.log(2))
    # a perfect critic (positives +inf, negatives -inf) drives the loss to 0, its infimum
    eye = torch.eye(6)
    local = (eye * 30)[:, None, :].expand(6, 2, 6)
    global_ = eye * 30 - 30 * (1 - eye)
    assert jsd_mi_loss_ref(local, global_).item() < 1e-10
    # the loss is >= 0 always
    assert jsd_mi_loss_ref(torch.randn(4, 3, 2) * 10, torch.randn(4, 2)).item() >= 0


def test_dispatched_loss_matches_reference():
    local, global_ = torch.randn(6, 10, 8), torch.randn(6, 8)
    assert jsd_mi_loss(local, global_).item() == pytest.approx(jsd_mi_loss_ref(local, global_).item(), rel=1e-5)


def make(name, src=(8, 1), tgt=(16, 4), **kw):
    torch.manual_seed(0)
    return LOSSES.get(name)(FeatureSpec(*src), FeatureSpec(*tgt), **kw)


def test_variants_combine_mi_and_si_as_equations_4_and_6():
    source, target = torch.randn(4, 8, 6, 6), torch.randn(4, 16, 2, 2)
    outs = {}
    for name in ("mi", "si", "mi_plus_si", "mi_x_si"):
        m = make(name)
        torch.manual_seed(1)  # the same draw of locations (36 > K = 32) for every variant
        outs[name] = m(source, target, ctx())
    mi, si = outs["mi"].loss, outs["si"].loss
    # same seed -> the same local encoder; MI and SI global encoders are built in a fixed order
    assert outs["mi_plus_si"].terms["mi"].item() == pytest.approx(mi.item(), rel=1e-6)
    assert outs["mi_plus_si"].loss.item() == pytest.approx(
        outs["mi_plus_si"].terms["mi"].item() + outs["mi_plus_si"].terms["si"].item(), rel=1e-6)  # Eq. 4
    assert outs["mi_x_si"].loss.item() == pytest.approx(
        outs["mi_x_si"].terms["mi"].item() * outs["mi_x_si"].terms["si"].item(), rel=1e-6)  # Eq. 6
    assert set(outs["mi"].terms) == {"mi"} and set(outs["si"].terms) == {"si"}
    assert si.item() > 0


def test_muse_critic_is_the_scaled_dot_product_of_its_encoders():
    m = make("mi", dim=5)
    source, target = torch.randn(3, 8, 4, 4), torch.randn(3, 16, 2, 2)
    local = m.local_encoder(source.permute(0, 2, 3, 1).reshape(-1, 8)).view(3, 16, 5)
    glob = m.mi_global_encoder(F.adaptive_avg_pool2d(target, 1).flatten(1)) / math.sqrt(5)
    assert m(source, target, ctx(3)).loss.item() == pytest.approx(loop_jsd(local.detach(), glob.detach()), rel=1e-5)


def test_mi_trains_the_target_and_si_ignores_it():
    for name, reaches in (("mi", True), ("mi_plus_si", True), ("mi_x_si", True), ("si", False)):
        m = make(name)
        source = torch.randn(4, 8, 6, 6, requires_grad=True)
        target = torch.randn(4, 16, 2, 2, requires_grad=True)
        m(source, target, ctx()).loss.backward()
        assert source.grad.abs().sum() > 0
        assert (target.grad is not None and target.grad.abs().sum() > 0) == reaches, name
        assert LOSSES.get(name).detaches_target == (not reaches)


def test_training_the_critic_lowers_the_loss_on_dependent_features():
    """Features that share information: the JSD loss must fall well below its chance value 2 log 2."""
    torch.manual_seed(0)
    m = make("mi", src=(8, 1), tgt=(8, 2), dim=16)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(150):
        z = torch.randn(32, 8, 1, 1)
        source = z.expand(32, 8, 4, 4) + 0.1 * torch.randn(32, 8, 4, 4)
        target = z.expand(32, 8, 2, 2) + 0.1 * torch.randn(32, 8, 2, 2)
        loss = m(source, target, ctx(32)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * 2 * math.log(2)


# -- the local view's locations (version 2: K drawn uniformly per image and step) ----------------------------------
def test_sampled_locations_are_k_distinct_locations_of_each_image():
    x = torch.randn(5, 3, 4, 6)
    rows = sampled_locations(x, 7).view(5, 7, 3)
    every = locations(x).view(5, 24, 3)
    for b in range(5):
        # each drawn row is one of its own image's locations, and no location is drawn twice
        match = (rows[b][:, None, :] == every[b][None, :, :]).all(dim=2)  # (7, 24)
        assert (match.sum(dim=1) == 1).all()
        assert match.any(dim=0).sum() == 7
    for k in (0, 24, 100):  # 0 or at least H*W: every location, in order
        assert torch.equal(sampled_locations(x, k), locations(x))


def test_sampled_locations_are_uniform_and_drawn_anew_per_image():
    torch.manual_seed(0)
    index = torch.arange(20.0).view(1, 1, 4, 5).expand(2, 1, 4, 5)  # a map whose value is its location
    draws = 4000
    counts = torch.zeros(20)
    same = 0
    for _ in range(draws):
        picked = sampled_locations(index, 5).view(2, 5)
        counts += torch.bincount(picked[0].long(), minlength=20)
        same += int(set(picked[0].tolist()) == set(picked[1].tolist()))
    # each location is drawn with probability K / (H W) = 1/4: 1000 expected, binomial std about 27
    assert (counts - 1000).abs().max() < 5 * 27.4
    assert same < 10  # two images share a draw with probability 1 / C(20, 5) = 6.5e-5


def test_the_sampled_jsd_loss_is_an_unbiased_estimate_of_the_every_location_loss():
    """For given codes, K uniform locations per image estimate Eq. 5's two means without bias."""
    torch.manual_seed(0)
    b, h, w, d = 4, 5, 5, 6
    codes = torch.randn(b, d, h, w, dtype=torch.float64)
    global_ = torch.randn(b, d, dtype=torch.float64)
    full = jsd_mi_loss_ref(locations(codes).view(b, h * w, d), global_).item()
    draws = torch.tensor([jsd_mi_loss_ref(sampled_locations(codes, 3).view(b, 3, d), global_).item()
                          for _ in range(4000)])
    standard_error = draws.std().item() / math.sqrt(len(draws))
    assert abs(draws.mean().item() - full) < 4 * standard_error
    assert draws.std().item() > 0.01  # the draws do differ


def test_every_location_is_version_1s_local_view():
    """``locations = 0`` gives the critic every location (the version-1 loss), whatever the generator's state."""
    source, target = torch.randn(3, 8, 7, 7), torch.randn(3, 16, 2, 2)
    m = make("mi_x_si", locations=0)
    local = m.local_encoder(source.permute(0, 2, 3, 1).reshape(-1, 8)).view(3, 49, 64)
    mi = loop_jsd(local.detach(), (m.mi_global_encoder(target.mean(dim=(2, 3))) / 8).detach())
    si = loop_jsd(local.detach(), (m.si_global_encoder(source.mean(dim=(2, 3))) / 8).detach())
    torch.manual_seed(5)
    assert m(source, target, ctx(3)).loss.item() == pytest.approx(mi * si, rel=1e-5)


def test_the_default_draws_32_locations_and_the_draw_follows_the_seed():
    source, target = torch.randn(3, 8, 7, 7), torch.randn(3, 16, 2, 2)
    m = make("mi_x_si")
    assert m.locations == 32
    seen = {}

    def capture(module, args, out):
        seen["rows"] = out.shape[0]

    m.local_encoder.register_forward_hook(capture)
    losses = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        losses.append(m(source, target, ctx(3)).loss.item())
    assert seen["rows"] == 3 * 32
    assert losses[0] == losses[1] != losses[2]
