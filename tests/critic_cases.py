"""Inputs and comparisons shared by the critic tests of both pytest processes (plain and Triton interpreter).

Imports no kernel module, so the Triton process can import it before TRITON_INTERPRET matters.
"""

from __future__ import annotations

import math

import torch

TOLERANCES = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float16: dict(rtol=1e-2, atol=2e-3)}
# Half-precision dots against the fp32 reference on the same rounded inputs: the scores are exact products summed in
# fp32, so what differs is the rounding of the relative dS to the dot dtype before the two gradient dots (2^-9 in
# bf16, 2^-11 in fp16, per term) and, for half-precision leaves, the rounding of the gradient to the leaf's dtype
# (another 2^-9 / 2^-11). rtol is two units of that rounding; atol, relative to the largest gradient entry, bounds
# entries that nearly cancel (sum of |terms| x unit <= ~2 x max |gradient| x unit for these critics; x2 margin).
HALF_TOLERANCES = {torch.bfloat16: dict(rtol=2**-6, atol_rel=2**-7), torch.float16: dict(rtol=2**-8, atol_rel=2**-9)}


def assert_close_scaled(got, want, rtol, atol_rel):
    """|got - want| <= atol_rel * max|want| + rtol * |want| elementwise (compared in fp32)."""
    want = want.float()
    torch.testing.assert_close(got.float(), want, rtol=rtol, atol=atol_rel * want.abs().max().item() + 1e-12)


def codes(b, n, d, dtype=torch.float32, scale=1.0):
    """Local codes (B, N, D) and global codes (B, D) with scores of standard deviation ``scale``, as leaves."""
    local = torch.randn(b, n, d)
    global_ = torch.randn(b, d) * scale / math.sqrt(d)
    return local.to(dtype).requires_grad_(), global_.to(dtype).requires_grad_()


def value_and_grads(fn, local, global_, upstream=1.7):
    """Loss and the gradients of ``upstream * loss`` (an upstream gradient that is not 1)."""
    local.grad = global_.grad = None
    loss = fn(local, global_)
    (loss * upstream).backward()
    return loss.detach(), local.grad.clone(), global_.grad.clone()


def muse_step(impl, monkeypatch, shape=(4, 8, 6, 5)):
    """Loss and every gradient of one ``mi_x_si`` forward/backward with ``DISCBENCH_IMPL=impl`` (seed 0)."""
    from discbench.api import FeatureSpec, LossContext
    from discbench.registry import LOSSES

    b, c, h, w = shape
    ctx = LossContext(step=0, epoch=0, protocol="self", labels=torch.zeros(b, dtype=torch.long),
                      indices=torch.arange(b), dataset_size=100, num_classes=10)
    gen = torch.Generator().manual_seed(1)
    source, target = torch.randn(shape, generator=gen), torch.randn(b, 16, 3, 3, generator=gen)
    monkeypatch.setenv("DISCBENCH_IMPL", impl)
    torch.manual_seed(0)
    m = LOSSES.get("mi_x_si")(FeatureSpec(c, 1), FeatureSpec(16, 2), dim=16)
    s, t = source.clone().requires_grad_(), target.clone().requires_grad_()
    out = m(s, t, ctx)
    out.loss.backward()
    return (out.loss.detach(), s.grad, t.grad, *(p.grad for p in m.parameters()))
