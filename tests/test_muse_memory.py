"""MUSE's local encoder recomputed in backward (``RecomputedInfoMax``): the same numbers as the plain modules, less
memory."""

from __future__ import annotations

import copy

import pytest
import torch

from discbench.critic_bench import cpu_peak_bytes
from discbench.losses import muse
from discbench.losses.muse import InfoMaxEncoder, RecomputedInfoMax
from tests.critic_cases import muse_step


@pytest.fixture
def always_recompute(monkeypatch):
    """Recompute at any size, in chunks of 7 rows (ragged last chunk), with the streamed critic."""
    monkeypatch.setattr(muse, "RECOMPUTE_MIN_ELEMENTS", 0)
    monkeypatch.setenv("DISCBENCH_IMPL", "torch")


def pair(c, d, dtype=torch.float32):
    """An encoder that recomputes and an exact copy that runs the plain modules."""
    enc = InfoMaxEncoder(c, d, recompute=True).to(dtype)
    plain = copy.deepcopy(enc)
    plain.recompute = False
    return enc, plain


def run(encoder, x, upstream):
    x = x.clone().requires_grad_()
    out = encoder(x)
    (out * upstream).sum().backward()
    return out.detach(), {"x": x.grad, **{n: p.grad for n, p in encoder.named_parameters()}}


@pytest.mark.parametrize("m,c,d", [(50, 6, 16), (37, 20, 8)])
def test_forward_is_bit_identical_and_gradients_are_exact(always_recompute, monkeypatch, m, c, d):
    monkeypatch.setattr(RecomputedInfoMax, "CHUNK_ELEMENTS", 7 * d)
    torch.manual_seed(0)
    x, upstream = torch.relu(torch.randn(m, c) + 0.5), torch.randn(m, d)
    enc, plain = pair(c, d)
    out, grads = run(enc, x, upstream)
    out_plain, _ = run(plain, x, upstream)
    assert torch.equal(out, out_plain)  # the same modules ran forward
    for (name, b), (_, b_plain) in zip(enc.named_buffers(), plain.named_buffers(), strict=True):
        assert torch.equal(b, b_plain), name  # BatchNorm running statistics and batch count
    # gradients against float64 autograd of the plain modules (fp32 BatchNorm backward is itself off by ~1e-3
    # relative at M = 25088 rows; the chunked sums here are accurate to ~1e-6)
    truth = copy.deepcopy(plain).double()
    _, want = run(truth, x.double(), upstream.double())
    for name, g in grads.items():
        torch.testing.assert_close(g.double(), want[name], rtol=1e-4, atol=1e-5, msg=name)
    # in float64 the recomputed gradients equal the plain modules' to rounding
    enc64, plain64 = pair(c, d, torch.float64)
    _, got64 = run(enc64, x.double(), upstream.double())
    _, want64 = run(plain64, x.double(), upstream.double())
    for name, g in got64.items():
        torch.testing.assert_close(g, want64[name], rtol=1e-10, atol=1e-12, msg=name)


def test_plain_path_when_not_training_without_grad_small_or_ref(monkeypatch):
    enc, _ = pair(4, 8)
    x = torch.randn(10, 4, requires_grad=True)
    monkeypatch.setenv("DISCBENCH_IMPL", "torch")
    assert not enc.recomputes(x)  # 80 < RECOMPUTE_MIN_ELEMENTS
    monkeypatch.setattr(muse, "RECOMPUTE_MIN_ELEMENTS", 0)
    assert enc.recomputes(x) and type(enc(x).grad_fn).__name__ == "RecomputedInfoMaxBackward"
    with torch.no_grad():
        assert not enc.recomputes(x)
    assert not enc.eval().recomputes(x)
    monkeypatch.setenv("DISCBENCH_IMPL", "ref")
    assert not enc.train().recomputes(x)
    assert not InfoMaxEncoder(4, 8).recomputes(x)  # global encoders never recompute


def test_muse_plugin_gives_the_reference_loss_and_gradients(always_recompute, monkeypatch):
    monkeypatch.setattr(RecomputedInfoMax, "CHUNK_ELEMENTS", 5 * 16)
    results = {impl: muse_step(impl, monkeypatch) for impl in ("ref", "torch")}
    for got, want in zip(results["torch"], results["ref"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # the critics compute in fp32


def test_recomputing_lowers_peak_memory(monkeypatch):
    """Plain: four (M, D) activations live from forward to backward. Recomputed: the incoming gradient, d x and one
    chunk; the forward's transient peak (two (M, D) tensors) is then the largest."""
    monkeypatch.setattr(muse, "RECOMPUTE_MIN_ELEMENTS", 0)
    monkeypatch.setenv("DISCBENCH_IMPL", "torch")
    m, c, d = 8192, 16, 64
    monkeypatch.setattr(RecomputedInfoMax, "CHUNK_ELEMENTS", m * d // 16)
    x = torch.randn(m, c, requires_grad=True)
    upstream = torch.randn(m, d)
    enc, plain = pair(c, d)

    def step(encoder):
        return lambda: (encoder(x) * upstream).sum().backward()

    activation = m * d * 4
    assert cpu_peak_bytes(step(plain)) >= 5 * activation
    assert cpu_peak_bytes(step(enc)) <= 2.2 * activation
