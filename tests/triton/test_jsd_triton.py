"""The fused Triton critic kernels (JSD and InfoNCE) against the reference, under the Triton interpreter.

Tiny shapes (the interpreter is 100-6000x slower than torch), fp32 and fp16 only (bf16 ``tl.dot`` is wrong in the
interpreter: triton #11584). One fixed config: INTERPRET_CONFIG, 16 x 16 tiles, and two row splits for d global_.
"""

from __future__ import annotations

import math

import pytest
import torch

from discbench.errors import DiscbenchError
from discbench.kernels import CRITICS, jsd_mi_loss, nce_mi_loss, select_impl
from tests.critic_cases import TOLERANCES, codes, muse_step, value_and_grads

pytest.importorskip("triton")
from discbench.kernels import jsd_triton as jt  # noqa: E402  (after the skip: triton is optional)

pytestmark = pytest.mark.triton

# (B, N, D): B = 1 and 2; B = 19 spans two 16-column tiles; B*N = 111 rows span seven 16-row tiles with images
# crossing tile borders; D = 20 and 7 are masked inside BLOCK_D = 32 and 16.
SHAPES = [(1, 3, 5), (2, 4, 16), (19, 5, 20), (3, 37, 7)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("loss", ["jsd", "nce"])
def test_triton_matches_the_reference(loss, shape, dtype):
    local, global_ = codes(*shape, dtype=dtype, scale=3.0)
    want = value_and_grads(CRITICS[loss]["ref"], local, global_)
    got = value_and_grads(CRITICS[loss]["triton"], local, global_)
    assert got[0].dtype == torch.float32 and got[1].dtype == dtype and got[2].dtype == dtype
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOLERANCES[dtype])


@pytest.mark.parametrize("loss", ["jsd", "nce"])
def test_large_scores_and_strided_inputs(loss):
    """Scores of +-60 (softplus, sigmoid, online logsumexp stay finite) on a local view that is not contiguous."""
    torch.manual_seed(1)
    local = torch.randn(5, 8, 6).transpose(1, 2).requires_grad_()  # (B, N=6, D=8) view of a (B, D, N) tensor
    global_ = (torch.randn(5, 8) * 60 / math.sqrt(8)).requires_grad_()
    want = value_and_grads(CRITICS[loss]["ref"], local, global_)
    got = value_and_grads(CRITICS[loss]["triton"], local, global_)
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss", ["jsd", "nce"])
def test_autocast_runs_the_dots_in_the_autocast_dtype(loss):
    local, global_ = codes(3, 10, 16, scale=3.0)
    with torch.autocast("cpu", dtype=torch.float16):
        got = value_and_grads(CRITICS[loss]["triton"], local, global_)
    rounded = [t.detach().half().float().requires_grad_() for t in (local, global_)]  # what the fp16 dots see
    want = value_and_grads(CRITICS[loss]["ref"], *rounded)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.float(), w.float(), rtol=1e-3, atol=1e-4)
    assert got[1].dtype == torch.float32  # gradients come back in the inputs' dtype


def test_dispatch_picks_triton_when_requested(monkeypatch):
    monkeypatch.setenv("DISCBENCH_IMPL", "triton")
    assert select_impl("cpu") == "triton"
    local, global_ = codes(3, 4, 5, scale=3.0)
    assert jsd_mi_loss(local, global_).item() == jt.jsd_mi_loss_triton(local, global_).item()
    assert nce_mi_loss(local, global_).item() == jt.nce_mi_loss_triton(local, global_).item()


def test_muse_plugin_on_triton(monkeypatch):
    """MUSE mi_x_si with the triton critic and the recomputed local encoder against the reference path."""
    from discbench.losses import muse

    monkeypatch.setattr(muse, "RECOMPUTE_MIN_ELEMENTS", 0)
    results = {impl: muse_step(impl, monkeypatch, shape=(4, 8, 5, 3)) for impl in ("ref", "triton")}
    for got, want in zip(results["triton"], results["ref"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def is_power_of_two(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def test_block_constants_meet_the_gpu_constraints():
    """Every tl.dot operand dimension >= 16 and every block a power of two, in every config the launcher can use."""
    configs = [(jt.INTERPRET_CONFIG["BLOCK_M"], jt.INTERPRET_CONFIG["BLOCK_C"], 4), *jt.CUDA_CONFIGS]
    for block_m, block_c, warps in configs:
        assert block_m >= 16 and block_c >= 16
        assert is_power_of_two(block_m) and is_power_of_two(block_c) and is_power_of_two(warps)
    for d in range(1, jt.MAX_D + 1):
        assert jt.block_d(d) >= max(16, d) and is_power_of_two(jt.block_d(d))
    assert jt.block_d(jt.MAX_D) == jt.MAX_D
    with pytest.raises(DiscbenchError, match="D <= 256"):
        jt.jsd_mi_loss_triton(torch.zeros(2, 3, jt.MAX_D + 1), torch.zeros(2, jt.MAX_D + 1))


def test_weights_and_precision():
    # JSD: positives weigh (B-1) x the negatives at scale w_neg, i.e. w_pos = 1/(B N); B = 1 has no negatives
    assert jt.loss_weights(jt.JSD.value, 4, 5) == (3.0, 1.0, 1 / 60)
    assert jt.loss_weights(jt.JSD.value, 1, 5) == (1.0, 0.0, 1 / 5)
    assert jt.loss_weights(jt.NCE.value, 4, 5)[2] == 1 / 20
    assert jt.input_precision(torch.float16) == "ieee"
    precision = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert jt.input_precision(torch.float32) == "ieee"
        torch.set_float32_matmul_precision("high")
        assert jt.input_precision(torch.float32) == "tf32"
    finally:
        torch.set_float32_matmul_precision(precision)
