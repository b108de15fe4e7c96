"""CRD, AFD, DML and MIMKD against independent references: naive loops, hand-derived gradients, closed forms."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from discbench.api import FeatureSpec, LossContext, count_parameters
from discbench.errors import DiscbenchError
from discbench.losses.crd import CRD
from discbench.losses.muse import InfoMaxEncoder
from discbench.registry import LOSSES


def ctx(indices, dataset_size=12, labels=None):
    indices = torch.as_tensor(indices)
    labels = torch.zeros(len(indices), dtype=torch.long) if labels is None else labels
    return LossContext(step=0, epoch=0, protocol="offline", labels=labels, indices=indices,
                       dataset_size=dataset_size, num_classes=3)


# ---------------------------------------------------------------------------------------------------------------
# CRD
# ---------------------------------------------------------------------------------------------------------------
def record_negatives(plugin: CRD) -> list[torch.Tensor]:
    """Make ``plugin`` remember every (B, K) draw of its negative sampler."""
    drawn, draw = [], plugin.draw_negatives

    def recording(*args):
        drawn.append(draw(*args))
        return drawn[-1]

    plugin.draw_negatives = recording
    return drawn


def embed_by_hand(linear: torch.nn.Linear, feature: torch.Tensor) -> list[list[float]]:
    """g(x) = normalise(W mean_hw(x) + b), one Python list per sample."""
    w, b = linear.weight.double().tolist(), linear.bias.double().tolist()
    out = []
    for x in feature.double().mean(dim=(2, 3)).tolist():
        v = [sum(wi * xi for wi, xi in zip(row, x, strict=True)) + bi for row, bi in zip(w, b, strict=True)]
        norm = math.sqrt(sum(t * t for t in v))
        out.append([t / norm for t in v])
    return out


def dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def naive_crd(v_s, v_t, bank_s, bank_t, anchors, negatives, n, tau, z=None):
    """RepDistiller's ContrastMemory + ContrastLoss (without eps), one anchor and one candidate at a time.

    Source anchors are scored against the target bank and target anchors against the source bank; candidate 0 is the
    anchor's own index (the positive). P = exp(v.m / tau) / Z with Z = N * mean over the batch's candidates (unless
    given), P_n = 1/(N-1), and loss = -sum_b [log(P_pos / (P_pos + K P_n)) + sum_k log(K P_n / (P_k + K P_n))] / B,
    summed over both anchor sides. Returns the loss and the two Z.
    """
    b, k = len(anchors), len(negatives[0])
    pn = 1.0 / (n - 1)
    total, zs = 0.0, []
    for side, (v, bank) in enumerate(((v_s, bank_t), (v_t, bank_s))):
        e = [[math.exp(dot(bank[j], v[i]) / tau) for j in [anchors[i], *negatives[i]]] for i in range(b)]
        z_side = z[side] if z is not None else sum(sum(row) for row in e) / (b * (k + 1)) * n
        zs.append(z_side)
        loss = 0.0
        for row in e:
            p_pos = row[0] / z_side
            loss -= math.log(p_pos / (p_pos + k * pn))
            for p in row[1:]:
                loss -= math.log(k * pn / (p / z_side + k * pn))
        total += loss / b
    return total, zs


def momentum_update(bank, anchors, v, m):
    bank = [row[:] for row in bank]
    for a, vi in zip(anchors, v, strict=True):
        row = [m * x + (1 - m) * y for x, y in zip(bank[a], vi, strict=True)]
        norm = math.sqrt(sum(t * t for t in row))
        bank[a] = [t / norm for t in row]
    return bank


def test_crd_nce_matches_a_naive_loop_over_two_steps():
    """Step 1 estimates Z and updates the banks; step 2 uses the frozen Z and the updated banks."""
    n, tau, m = 12, 0.07, 0.7  # momentum != 0.5, so that swapping its two weights is caught
    torch.manual_seed(0)
    plugin = CRD(FeatureSpec(6, 1), FeatureSpec(5, 2), dim=4, nce_k=7, temperature=tau, momentum=m)
    drawn = record_negatives(plugin)
    plugin.allocate_banks(n, torch.device("cpu"))
    bank_s, bank_t = plugin.memory_source.double().tolist(), plugin.memory_target.double().tolist()
    z = None
    for step, anchors in enumerate(([3, 0, 7, 11], [5, 3, 9, 1])):
        source, target = torch.randn(4, 6, 4, 4), torch.randn(4, 5, 2, 2)
        v_s = embed_by_hand(plugin.embed_source.linear, source)
        v_t = embed_by_hand(plugin.embed_target.linear, target)
        out = plugin(source, target, ctx(anchors, n))
        negatives = drawn[-1].tolist()
        assert len(negatives[0]) == 7
        expected, z = naive_crd(v_s, v_t, bank_s, bank_t, anchors, negatives, n, tau, z)
        assert out.loss.item() == pytest.approx(expected, rel=1e-4), f"step {step}"
        assert (out.terms["nce_source"] + out.terms["nce_target"]).item() == pytest.approx(expected, rel=1e-4)
        assert plugin.log_z.exp().tolist() == pytest.approx(z, rel=1e-4)  # estimated at step 0, frozen after
        bank_s, bank_t = momentum_update(bank_s, anchors, v_s, m), momentum_update(bank_t, anchors, v_t, m)
        assert plugin.memory_source.tolist() == [pytest.approx(r, abs=1e-6) for r in bank_s]
        assert plugin.memory_target.tolist() == [pytest.approx(r, abs=1e-6) for r in bank_t]


def test_crd_negatives_are_uniform_over_the_other_samples():
    """The docstring's rule: i.i.d. uniform over the N - 1 indices other than the anchor, with replacement."""
    n, k = 10, 9000
    torch.manual_seed(0)
    negatives = CRD.draw_negatives(torch.arange(n), n, k)  # (N, K): one row per possible anchor
    counts = F.one_hot(negatives, n).sum(dim=1)  # (anchor, index)
    assert (counts.diagonal() == 0).all()  # the anchor's own index is never a negative
    others = counts[~torch.eye(n, dtype=torch.bool)].double()
    # each other index ~ Binomial(9000, 1/9): mean 1000, sd 29.8; 5 sd bounds the largest of 90 counts
    assert (others - k / (n - 1)).abs().max() < 150
    # and a chi-square over all 90 cells stays within its 99.9 % quantile (dof 80: 124.8)
    chi2 = ((others - k / (n - 1)) ** 2 / (k / (n - 1))).sum().item()
    assert chi2 < 124.8


def test_crd_sampling_in_forward_ignores_labels_and_clamps_k():
    plugin = CRD(FeatureSpec(6, 1), FeatureSpec(5, 2))
    assert plugin.num_negatives(64) == 63 and plugin.num_negatives(50_000) == 16384  # default K, clamped to N - 1
    drawn = record_negatives(plugin)
    source, target = torch.randn(8, 6, 4, 4), torch.randn(8, 5, 2, 2)
    anchors = torch.randperm(64)[:8]
    losses = []
    for labels in (torch.zeros(8, dtype=torch.long), torch.arange(8) % 3):
        torch.manual_seed(3)
        fresh = copy.deepcopy(plugin)
        losses.append(fresh(source, target, ctx(anchors, 64, labels)).loss)
    assert drawn[0].shape == (8, 63)
    assert not (drawn[0] == anchors[:, None]).any()
    # no class rule: the draw (and the loss) do not depend on the labels
    assert torch.equal(drawn[0], drawn[1]) and torch.equal(losses[0], losses[1])


def test_crd_banks_are_lazy_buffers_that_checkpoint_and_only_train_in_training_mode():
    torch.manual_seed(0)
    plugin = CRD(FeatureSpec(6, 1), FeatureSpec(5, 2), dim=4)
    n_params = count_parameters(plugin)
    assert plugin.memory_source is None and "memory_source" not in plugin.state_dict()
    source, target = torch.randn(4, 6, 4, 4), torch.randn(4, 5, 2, 2)
    plugin(source, target, ctx([0, 1, 2, 3]))
    state = plugin.state_dict()
    assert state["memory_source"].shape == state["memory_target"].shape == (12, 4)
    assert torch.isfinite(state["log_z"]).all() and count_parameters(plugin) == n_params  # buffers, not parameters
    fresh = CRD(FeatureSpec(6, 1), FeatureSpec(5, 2), dim=4)
    fresh.load_state_dict(state)  # a checkpoint loads into a plugin that never ran forward
    outs = []
    for p in (plugin, fresh):
        torch.manual_seed(1)
        outs.append(p(source, target, ctx([4, 5, 6, 7])).loss)
    assert torch.equal(outs[0], outs[1])
    with pytest.raises(DiscbenchError, match="12 samples"):
        plugin(source, target, ctx([0, 1, 2, 3], dataset_size=13))
    plugin.eval()
    before = {k: v.clone() for k, v in plugin.state_dict().items()}
    plugin(source, target, ctx([8, 9, 10, 11]))
    assert all(torch.equal(before[k], v) for k, v in plugin.state_dict().items())


def test_crd_computes_in_fp32_at_least_and_in_fp64_for_fp64_inputs():
    """v2: bf16/fp16 inputs (what bf16 autocast hands it) are computed in fp32 with fp32 banks; a float64 plugin
    fed float64 computes, allocates its banks and stores Z in float64, and agrees with fp32 to fp32 rounding."""
    torch.manual_seed(0)
    source, target = torch.randn(4, 6, 4, 4), torch.randn(4, 5, 2, 2)
    plugin = CRD(FeatureSpec(6, 1), FeatureSpec(5, 2), dim=4)
    half = copy.deepcopy(plugin)
    out = half(source.bfloat16(), target.bfloat16(), ctx([0, 1, 2, 3]))
    assert out.loss.dtype == half.memory_source.dtype == half.log_z.dtype == torch.float32

    fresh = copy.deepcopy(plugin).double()  # banks not allocated yet: allocated in the input's dtype
    fresh(source.double(), target.double(), ctx([0, 1, 2, 3]))
    assert fresh.memory_source.dtype == fresh.memory_target.dtype == fresh.log_z.dtype == torch.float64

    plugin.allocate_banks(12, torch.device("cpu"))  # the same fp32 banks on both sides
    wide = copy.deepcopy(plugin).double()
    outs = []
    for p, dtype in ((plugin, torch.float32), (wide, torch.float64)):
        torch.manual_seed(1)  # the same negatives
        outs.append(p(source.to(dtype), target.to(dtype), ctx([4, 5, 6, 7])).loss)
    assert outs[1].dtype == torch.float64 and outs[1].item() == pytest.approx(outs[0].item(), rel=1e-5)
    torch.testing.assert_close(wide.memory_source, plugin.memory_source.double(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# AFD
# ---------------------------------------------------------------------------------------------------------------
def test_afd_discriminator_gets_only_lsgan_d_loss_and_source_only_g_loss():
    torch.manual_seed(0)
    plugin = LOSSES.get("afd")(FeatureSpec(8, 1), FeatureSpec(16, 2))  # channels and sizes differ: transfer layer
    reference = copy.deepcopy(plugin)
    source = torch.relu(torch.randn(6, 8, 8, 8)).requires_grad_()
    target = torch.relu(torch.randn(6, 16, 4, 4)).requires_grad_()
    out = plugin(source, target, ctx(range(6)))
    out.loss.backward()
    assert target.grad is None

    # the two LSGAN objectives, computed separately with ordinary autograd
    d, transfer = reference.discriminator, reference.transfer
    src = source.detach().clone().requires_grad_()
    fake = transfer(F.adaptive_avg_pool2d(src, (4, 4)))
    peer = target.detach()
    loss_d = (1 - d(peer)).pow(2).mean() + d(fake.detach()).pow(2).mean()
    loss_g = (1 - d(fake)).pow(2).mean()
    assert out.terms["d"].item() == pytest.approx(loss_d.item(), rel=1e-6)
    assert out.terms["g"].item() == pytest.approx(loss_g.item(), rel=1e-6)
    d_params, g_params = list(d.parameters()), list(transfer.parameters())
    grad_d = torch.autograd.grad(loss_d, d_params, retain_graph=True)
    grad_g = torch.autograd.grad(loss_g, [src, *g_params], retain_graph=True)
    for got, want in zip(plugin.discriminator.parameters(), grad_d, strict=True):
        torch.testing.assert_close(got.grad, want)
    torch.testing.assert_close(source.grad, grad_g[0])
    for got, want in zip(plugin.transfer.parameters(), grad_g[1:], strict=True):
        torch.testing.assert_close(got.grad, want)

    # the test can fail: summing the objectives naively would leak L_G into D, and a gradient-reversal layer would
    # hand the source -dL_D/dsource, which is not LSGAN's generator gradient
    leaked = torch.autograd.grad(loss_d + loss_g, d_params, retain_graph=True)
    assert not all(torch.allclose(a, b) for a, b in zip(leaked, grad_d, strict=True))
    reversed_d = torch.autograd.grad(-(d(fake).pow(2).mean()), src)[0]
    assert not torch.allclose(reversed_d, grad_g[0])


def test_afd_last_layer_gradient_by_hand():
    """D(x) = w . h(x) + b: dL_D/dw = mean[-2 (1 - D(real)) h(real)] + mean[2 D(fake) h(fake)]; for b, h = 1."""
    torch.manual_seed(1)
    plugin = LOSSES.get("afd")(FeatureSpec(16, 4), FeatureSpec(16, 4))  # same channels: no transfer layer
    assert count_parameters(plugin.transfer) == 0
    source, target = torch.relu(torch.randn(5, 16, 4, 4)), torch.relu(torch.randn(5, 16, 4, 4))
    plugin(source, target, ctx(range(5))).loss.backward()
    body = plugin.discriminator.body
    with torch.no_grad():
        h_real, h_fake = body[:-1](target), body[:-1](source)  # (B, hidden)
        d_real, d_fake = body(target).squeeze(1), body(source).squeeze(1)
        grad_w = (-2 * (1 - d_real)[:, None] * h_real).mean(0) + (2 * d_fake[:, None] * h_fake).mean(0)
        grad_b = (-2 * (1 - d_real)).mean() + (2 * d_fake).mean()
    torch.testing.assert_close(body[-1].weight.grad.squeeze(0), grad_w)
    torch.testing.assert_close(body[-1].bias.grad.squeeze(0), grad_b)


# ---------------------------------------------------------------------------------------------------------------
# DML
# ---------------------------------------------------------------------------------------------------------------
def test_dml_is_the_kl_from_the_peer_written_by_hand():
    dml = LOSSES.get("dml")(FeatureSpec(5, 0), FeatureSpec(5, 0))
    z_self, z_peer = torch.randn(4, 5), torch.randn(4, 5)
    kl = 0.0
    for zs, zp in zip(z_self.tolist(), z_peer.tolist(), strict=True):
        ps = [math.exp(v) / sum(math.exp(u) for u in zs) for v in zs]
        pp = [math.exp(v) / sum(math.exp(u) for u in zp) for v in zp]
        kl += sum(p * math.log(p / q) for p, q in zip(pp, ps, strict=True))  # KL(p_peer || p_self)
    assert dml(z_self, z_peer, ctx(range(4))).loss.item() == pytest.approx(kl / 4, rel=1e-5)
    assert dml(z_self, z_self, ctx(range(4))).loss.item() == pytest.approx(0.0, abs=1e-6)


def test_dml_peer_is_detached_unlike_kd_lib():
    """Two peers, each with its DML term: each network's logits get only their own term's gradient, (p_self - p_peer)/B.

    KD_Lib's DML does not detach the peer, so z1 would also receive the gradient of KL(p1 || p2) from z2's term.
    """
    dml = LOSSES.get("dml")(FeatureSpec(5, 0), FeatureSpec(5, 0))
    z1, z2 = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    (dml(z1, z2, ctx(range(4))).loss + dml(z2, z1, ctx(range(4))).loss).backward()
    p1, p2 = F.softmax(z1.detach(), 1), F.softmax(z2.detach(), 1)
    torch.testing.assert_close(z1.grad, (p1 - p2) / 4)
    torch.testing.assert_close(z2.grad, (p2 - p1) / 4)
    # the leaking version (KD_Lib) gives a different gradient: the test can fail
    a, b = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
    leak = (F.kl_div(F.log_softmax(a, 1), F.softmax(b, 1), reduction="batchmean")
            + F.kl_div(F.log_softmax(b, 1), F.softmax(a, 1), reduction="batchmean"))
    leak.backward()
    assert not torch.allclose(a.grad, (p1 - p2) / 4)


# ---------------------------------------------------------------------------------------------------------------
# MIMKD
# ---------------------------------------------------------------------------------------------------------------
def naive_infonce(local, global_):
    """mean over (b, n) of log sum_c exp(<l[b, n], g[c]>) - <l[b, n], g[b]>, one score at a time."""
    b, n, _ = local.shape
    total = 0.0
    for i in range(b):
        for k in range(n):
            scores = [float(local[i, k] @ global_[c]) for c in range(b)]
            total += math.log(sum(math.exp(s) for s in scores)) - scores[i]
    return total / (b * n)


def test_mimkd_is_infonce_between_student_locations_and_the_teacher_global_feature():
    torch.manual_seed(0)
    plugin = LOSSES.get("mimkd")(FeatureSpec(6, 1), FeatureSpec(10, 4), dim=8)
    assert isinstance(plugin.local_encoder, InfoMaxEncoder) and isinstance(plugin.global_encoder, InfoMaxEncoder)
    reference = copy.deepcopy(plugin)
    source = torch.randn(5, 6, 3, 3, requires_grad=True)
    target = torch.randn(5, 10, 2, 2, requires_grad=True)
    out = plugin(source, target, ctx(range(5)))
    out.loss.backward()
    assert target.grad is None and source.grad.abs().sum() > 0  # offline: the teacher is detached
    with torch.no_grad():
        local = reference.local_encoder(source.permute(0, 2, 3, 1).reshape(45, 6)).view(5, 9, 8)
        global_ = reference.global_encoder(target.mean(dim=(2, 3))) / math.sqrt(8)
    expected = naive_infonce(local, global_)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.terms["mi_lower_bound"].item() == pytest.approx(math.log(5) - expected, rel=1e-4)
