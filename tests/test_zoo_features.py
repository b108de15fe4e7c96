"""FitNet, AT, NST/MMD, MMD-RBF, adversarial and VID against closed forms, naive loops and their known pitfalls."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from discbench.api import FeatureSpec, LossContext
from discbench.losses.adversarial import discriminator_loss
from discbench.losses.fitnet import ConvRegressor
from discbench.losses.mmd import gaussian_kernel, linear_kernel, median_bandwidth, mmd2
from discbench.registry import LOSSES

CTX = LossContext(step=0, epoch=0, protocol="offline", labels=torch.zeros(2, dtype=torch.long),
                  indices=torch.arange(2), dataset_size=10, num_classes=5)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add spinning (100 steps of a 2-D GAN take 0.1 s on one thread, 1-4 s on
    two of a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, source: FeatureSpec, target: FeatureSpec, **hparams):
    return LOSSES.get(name)(source, target, **hparams)


def relu_randn(*shape: int) -> torch.Tensor:
    return torch.relu(torch.randn(*shape))


def block_mean(x: torch.Tensor, k: int) -> list[list[list[list[float]]]]:
    """Average k x k blocks by hand (what adaptive pooling to an exact divisor does). (B, C, H, W) nested lists."""
    b, c, h, w = x.shape
    return [[[[sum(x[i, j, u * k + a, v * k + e].item() for a in range(k) for e in range(k)) / (k * k)
               for v in range(w // k)] for u in range(h // k)] for j in range(c)] for i in range(b)]


# -- FitNet ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source,target,layer,kernel,stride,padding", [
    (FeatureSpec(8, 1), FeatureSpec(16, 2), nn.Conv2d, 3, 2, 1),           # 2x down
    (FeatureSpec(8, 2), FeatureSpec(16, 1), nn.ConvTranspose2d, 4, 2, 1),  # 2x up
    (FeatureSpec(8, 2), FeatureSpec(16, 2), nn.Conv2d, 1, 1, 0),           # equal
    (FeatureSpec(8, 1), FeatureSpec(16, 4), nn.Conv2d, 4, 4, 0),           # 4x down: patchify
    (FeatureSpec(8, 4), FeatureSpec(16, 1), nn.ConvTranspose2d, 8, 4, 2),  # 4x up
])
def test_conv_regressor_picks_the_layer_by_relative_size(source, target, layer, kernel, stride, padding):
    reg = ConvRegressor(source, target)
    assert type(reg.conv) is layer
    assert (reg.conv.kernel_size, reg.conv.stride, reg.conv.padding) == ((kernel,) * 2, (stride,) * 2, (padding,) * 2)
    assert (reg.conv.in_channels, reg.conv.out_channels) == (8, 16) and reg.conv.bias is None
    assert isinstance(reg.bn, nn.BatchNorm2d) and isinstance(reg.relu, nn.ReLU)


@pytest.mark.parametrize("source,target,image", [
    (FeatureSpec(3, 1), FeatureSpec(5, 2), 8), (FeatureSpec(3, 1), FeatureSpec(5, 2), 7),  # 8 -> 4, 7 -> 4
    (FeatureSpec(3, 2), FeatureSpec(5, 1), 8), (FeatureSpec(3, 2), FeatureSpec(5, 1), 7),  # 4 -> 8, 4 -> 7
    (FeatureSpec(3, 1), FeatureSpec(5, 4), 14), (FeatureSpec(3, 4), FeatureSpec(5, 1), 14),  # 14 <-> 4
    (FeatureSpec(3, 2), FeatureSpec(5, 2), 7),
])
def test_fitnet_output_matches_the_target_shape_with_odd_sizes(source, target, image):
    s = relu_randn(2, source.channels, source.spatial(image), source.spatial(image))
    t_side = target.spatial(image)
    assert ConvRegressor(source, target)(s, (t_side, t_side)).shape == (2, target.channels, t_side, t_side)
    loss = build("fitnet", source, target)(s, relu_randn(2, target.channels, t_side, t_side), CTX).loss
    assert torch.isfinite(loss)


def test_fitnet_with_a_perfect_regressor_is_the_mse_and_zero_on_identical_inputs():
    fitnet = build("fitnet", FeatureSpec(4, 2), FeatureSpec(4, 2))
    reg = fitnet.regressor
    with torch.no_grad():  # conv = identity, BN (eval) = identity: r(x) = relu(x) = x on post-ReLU maps
        reg.conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
        reg.bn.running_mean.zero_()
        reg.bn.running_var.fill_(1.0 - reg.bn.eps)
    fitnet.eval()
    x, y = relu_randn(2, 4, 5, 5), relu_randn(2, 4, 5, 5)
    assert fitnet(x, x, CTX).loss.item() == pytest.approx(0.0, abs=1e-12)
    by_hand = sum((a - b) ** 2 for a, b in zip(x.flatten().tolist(), y.flatten().tolist(), strict=True)) / x.numel()
    assert fitnet(x, y, CTX).loss.item() == pytest.approx(by_hand, rel=1e-5)


# -- AT ----------------------------------------------------------------------------------------------------------
def at_by_hand(s: torch.Tensor, t: torch.Tensor, p: float) -> float:
    """Zagoruyko and Komodakis §3.1 + Eq. 2 as RepDistiller averages it; s is larger and is block-averaged first."""
    k = s.shape[-1] // t.shape[-1]
    s_maps, t_maps = block_mean(s, k), t.tolist()
    total, count = 0.0, 0
    for sb, tb in zip(s_maps, t_maps, strict=True):
        qs = [sum(abs(ch[u][v]) ** p for ch in sb) for u in range(len(sb[0])) for v in range(len(sb[0][0]))]
        qt = [sum(abs(ch[u][v]) ** p for ch in tb) for u in range(len(tb[0])) for v in range(len(tb[0][0]))]
        ns, nt = math.sqrt(sum(q * q for q in qs)), math.sqrt(sum(q * q for q in qt))
        total += sum((a / ns - b / nt) ** 2 for a, b in zip(qs, qt, strict=True))
        count += len(qs)
    return total / count


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_at_against_the_formula_by_hand(p):
    s, t = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)  # signed inputs: |A|^p matters for odd p
    at = build("at", FeatureSpec(3, 1), FeatureSpec(5, 2), p=p)
    assert at(s, t, CTX).loss.item() == pytest.approx(at_by_hand(s.double(), t.double(), p), rel=1e-5)


def test_at_closed_forms():
    at = build("at", FeatureSpec(3, 1), FeatureSpec(6, 1))
    x = relu_randn(2, 3, 4, 4)
    assert at(x, x, CTX).loss.item() == 0.0
    # the same attention with twice the channels and any scale: still zero (attention maps have no channels)
    assert at(x, 3.0 * torch.cat([x, x], dim=1), CTX).loss.item() == pytest.approx(0.0, abs=1e-12)
    assert at(x, x.flip(-1), CTX).loss.item() > 1e-4


# -- MMD: NST and RBF -----------------------------------------------------------------------------------------
def test_mmd_with_a_linear_kernel_is_the_squared_distance_of_the_means():
    x, y = torch.randn(3, 5, 7, dtype=torch.float64), torch.randn(3, 4, 7, dtype=torch.float64)
    means = (x.mean(1) - y.mean(1)).pow(2).sum(1)  # (B,)
    torch.testing.assert_close(mmd2(x, y, linear_kernel), means)


def normalised_channels_by_hand(x: torch.Tensor) -> list[list[list[float]]]:
    out = []
    for sample in x.tolist():
        rows = []
        for ch in sample:
            flat = [v for row in ch for v in row]
            norm = math.sqrt(sum(v * v for v in flat))
            rows.append([v / norm for v in flat])
        out.append(rows)
    return out


def mmd_by_hand(xs: list[list[float]], ys: list[list[float]], k) -> float:
    def mean_k(a, b):
        return sum(k(u, v) for u in a for v in b) / (len(a) * len(b))

    return mean_k(xs, xs) + mean_k(ys, ys) - 2 * mean_k(xs, ys)


def dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


def test_nst_against_a_naive_double_loop():
    s, t = relu_randn(2, 3, 8, 8).double(), relu_randn(2, 4, 4, 4).double()
    nst = build("mmd", FeatureSpec(3, 1), FeatureSpec(4, 2))
    xs = normalised_channels_by_hand(torch.tensor(block_mean(s, 2)))
    ys = normalised_channels_by_hand(t)
    by_hand = sum(mmd_by_hand(a, b, lambda u, v: dot(u, v) ** 2) for a, b in zip(xs, ys, strict=True)) / 2
    assert nst(s, t, CTX).loss.item() == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize("name", ["mmd", "mmd_rbf"])
def test_mmd_compares_distributions_of_channels_not_channels(name):
    """0 for identical inputs and for a permutation of the channels (which L2 or FitNet would penalise)."""
    x = relu_randn(2, 6, 4, 4)
    loss = build(name, FeatureSpec(6, 2), FeatureSpec(6, 2))
    assert loss(x, x, CTX).loss.item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x, x[:, torch.randperm(6)], CTX).loss.item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x, relu_randn(2, 6, 4, 4), CTX).loss.item() > 1e-3


def test_median_heuristic_against_a_naive_computation():
    x, y = torch.randn(2, 4, 5, dtype=torch.float64), torch.randn(2, 3, 5, dtype=torch.float64)
    sigma2 = median_bandwidth(x, y)
    assert sigma2.shape == (2, 1, 1)
    for b in range(2):
        z = x[b].tolist() + y[b].tolist()
        d2 = sorted(sum((u - v) ** 2 for u, v in zip(z[i], z[j], strict=True))
                    for i in range(len(z)) for j in range(i + 1, len(z)))
        assert len(d2) == 21  # odd: the median is the middle value
        assert sigma2[b].item() == pytest.approx(d2[len(d2) // 2], rel=1e-9)
    x4 = torch.randn(1, 4, 5, dtype=torch.float64)  # 6 pairs: the lower of the two middle values
    d2 = sorted(((x4[0, i] - x4[0, j]) ** 2).sum().item() for i in range(4) for j in range(i + 1, 4))
    assert median_bandwidth(x4[:, :2], x4[:, 2:]).item() == pytest.approx(d2[2], rel=1e-9)


def test_mmd_rbf_against_a_naive_double_loop():
    s, t = relu_randn(2, 3, 4, 4).double(), relu_randn(2, 5, 4, 4).double()
    xs, ys = normalised_channels_by_hand(s), normalised_channels_by_hand(t)
    by_hand = 0.0
    for a, b in zip(xs, ys, strict=True):
        z = a + b
        d2 = sorted(sum((u - v) ** 2 for u, v in zip(z[i], z[j], strict=True))
                    for i in range(len(z)) for j in range(i + 1, len(z)))
        sigma2 = d2[(len(d2) - 1) // 2]

        def k(u, v, s2=sigma2):
            return math.exp(-sum((p - q) ** 2 for p, q in zip(u, v, strict=True)) / (2 * s2))

        by_hand += mmd_by_hand(a, b, k)
    loss = build("mmd_rbf", FeatureSpec(3, 2), FeatureSpec(5, 2))(s, t, CTX).loss
    assert loss.item() == pytest.approx(by_hand / 2, rel=1e-5)
    assert gaussian_kernel(s.flatten(2), s.flatten(2), 1.0).diagonal(dim1=1, dim2=2).eq(1).all()


def test_mmd_rbf_bandwidth_carries_no_gradient():
    s = relu_randn(2, 3, 4, 4).requires_grad_()
    t = relu_randn(2, 5, 4, 4)
    build("mmd_rbf", FeatureSpec(3, 2), FeatureSpec(5, 2))(s, t, CTX).loss.backward()
    assert median_bandwidth(s.flatten(2), t.flatten(2)).requires_grad is False and s.grad.abs().sum() > 0


# -- adversarial -------------------------------------------------------------------------------------------------
def test_adversarial_gradients_train_the_discriminator_and_reverse_into_the_source():
    """Against L_D computed without the reversal layer: D gets +dL_D, the projection and the source -lambda dL_D."""
    lam = 0.5
    adv = build("adversarial", FeatureSpec(3, 1), FeatureSpec(5, 2), hidden=8, reversal=lam)
    s = relu_randn(4, 3, 8, 8).requires_grad_()
    t = relu_randn(4, 5, 4, 4)
    d_params = list(adv.discriminator.parameters())
    p_params = list(adv.projection.parameters())
    fake = adv.projection(s.mean((2, 3)))  # no reversal layer: the plain L_D
    manual = discriminator_loss(adv.discriminator(t.mean((2, 3))).squeeze(1), adv.discriminator(fake).squeeze(1))
    grads = torch.autograd.grad(manual, [s, *d_params, *p_params])
    g_source, g_d, g_p = grads[0], grads[1:1 + len(d_params)], grads[1 + len(d_params):]

    out = adv(s, t, CTX)
    assert out.loss.item() == pytest.approx(manual.item(), rel=1e-6)
    out.loss.backward()
    torch.testing.assert_close(s.grad, -lam * g_source)
    for p, g in zip(d_params, g_d, strict=True):
        torch.testing.assert_close(p.grad, g)
    for p, g in zip(p_params, g_p, strict=True):
        torch.testing.assert_close(p.grad, -lam * g)
    assert all(g.abs().sum() > 0 for g in grads)


def test_adversarial_discriminator_learns_to_separate_separable_inputs():
    torch.manual_seed(0)
    adv = build("adversarial", FeatureSpec(4, 1), FeatureSpec(6, 1), hidden=16)
    s, t = relu_randn(16, 4, 2, 2), relu_randn(16, 6, 2, 2) + 1.0  # fixed inputs
    opt = torch.optim.SGD(adv.discriminator.parameters(), lr=0.1, momentum=0.9)  # only D: the plugin's own update
    first = None
    for _ in range(100):
        out = adv(s, t, CTX)
        first = out.loss.item() if first is None else first
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert first == pytest.approx(2 * math.log(2), abs=0.5)
    assert out.loss.item() < 0.1 * first and out.terms["d_acc"].item() == 1.0


def test_adversarial_game_with_one_optimizer_moves_the_source_to_the_target():
    """Both players under one SGD: a learnable source distribution drifts to the target's (a 2-D Gaussian at (2, 2))."""
    torch.manual_seed(0)
    adv = build("adversarial", FeatureSpec(2, 0), FeatureSpec(2, 0), hidden=16)
    with torch.no_grad():
        adv.projection.weight.copy_(torch.eye(2))
        adv.projection.bias.zero_()
    adv.projection.requires_grad_(False)  # isolate the source: only it can move the fakes
    offset = torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([*adv.discriminator.parameters(), offset], lr=0.1)
    for _ in range(400):
        source = torch.randn(64, 2) * 0.5 + offset
        target = torch.randn(64, 2) * 0.5 + 2.0
        loss = adv(source, target, CTX).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (offset.detach() - 2.0).norm() < 0.75  # started at distance 2.83; seeds 0-9 end at 0.03-0.52


# -- VID ---------------------------------------------------------------------------------------------------------
def test_vid_is_the_gaussian_negative_log_likelihood():
    vid = build("vid", FeatureSpec(3, 1), FeatureSpec(4, 2))
    with torch.no_grad():
        vid.log_scale.copy_(torch.tensor([-1.0, 0.0, 0.5, 2.0]))  # different variances per channel
    s, t = relu_randn(2, 3, 8, 8), relu_randn(2, 4, 4, 4)
    mean = vid.regressor(F.avg_pool2d(s, 2))  # the larger map pooled to the smaller
    sigma = (F.softplus(vid.log_scale) + 1e-5).sqrt().view(1, -1, 1, 1)
    nll = -torch.distributions.Normal(mean, sigma).log_prob(t) - 0.5 * math.log(2 * math.pi)
    assert vid(s, t, CTX).loss.item() == pytest.approx(nll.mean().item(), rel=1e-5)


def test_vid_regressor_and_initial_variance():
    vid = build("vid", FeatureSpec(3, 1), FeatureSpec(4, 2))
    convs = [m for m in vid.regressor if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.bias) for c in convs] == [
        (3, 4, (1, 1), None), (4, 4, (1, 1), None), (4, 4, (1, 1), None)]
    torch.testing.assert_close(vid.variance(), torch.full((4,), 5.0))
    assert [c.out_channels for c in build("vid", FeatureSpec(3, 1), FeatureSpec(4, 2), mid_channels=7).regressor
            if isinstance(c, nn.Conv2d)] == [7, 7, 4]


def test_vid_variance_is_a_trained_parameter():
    """mdistiller's pitfall: the variance must be in parameters(), get gradient and move under the optimizer."""
    vid = build("vid", FeatureSpec(3, 1), FeatureSpec(4, 2))
    assert any(p is vid.log_scale for p in vid.parameters())
    before = vid.variance().detach().clone()
    opt = torch.optim.SGD(vid.parameters(), lr=0.1)
    out = vid(relu_randn(2, 3, 8, 8), relu_randn(2, 4, 4, 4), CTX)
    out.loss.backward()
    assert vid.log_scale.grad is not None and vid.log_scale.grad.abs().min() > 0
    opt.step()
    assert (vid.variance() - before).abs().min() > 0
    assert out.terms["sigma2"].item() == pytest.approx(5.0, rel=1e-6)


def test_vid_variance_is_driven_to_the_maximum_likelihood_value():
    """With the mean fixed, the likelihood is stationary at sigma_c^2 = mean squared residual of channel c (dL/dsigma^2
    = (sigma^2 - r) / (2 sigma^4) per element), and a step from sigma^2 = 5 moves each channel towards its r."""
    vid = build("vid", FeatureSpec(2, 1), FeatureSpec(2, 1))
    with torch.no_grad():
        for conv in (m for m in vid.regressor if isinstance(m, nn.Conv2d)):
            conv.weight.zero_()  # mu = 0: the residual is t
    s = torch.zeros(4, 2, 3, 3)
    t = torch.randn(4, 2, 3, 3) * torch.tensor([0.5, 3.0]).view(1, 2, 1, 1)
    residual = t.pow(2).mean((0, 2, 3))  # (2,): about 0.25 and 9, on both sides of the initial 5
    opt = torch.optim.SGD([vid.log_scale], lr=0.5)
    opt.zero_grad()
    vid(s, t, CTX).loss.backward()
    opt.step()
    moved = vid.variance().detach()
    assert moved[0] < 5.0 and moved[1] > 5.0
    with torch.no_grad():
        vid.log_scale.copy_(torch.log(torch.expm1(residual - vid.eps)))
    vid.log_scale.grad = None
    vid(s, t, CTX).loss.backward()
    assert vid.log_scale.grad.abs().max() < 1e-6
