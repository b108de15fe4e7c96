"""The fused Triton critic kernels (JSD and InfoNCE) against the reference, under the Triton interpreter.

Tiny shapes (the interpreter is 100-6000x slower than torch); fp32, fp16 and bf16 codes, and training's fp32 codes
under bf16 autocast; every config of ``jsd_triton.CONFIGS`` forced; backward splits of several row tiles per program.
The interpreter's bf16 ``tl.dot`` is replaced by exact fp32 products of the bf16 values (``jsd_triton`` does it on
import; a test below checks the replacement against torch).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from discbench.errors import DiscbenchError
from discbench.kernels import CRITICS, jsd_mi_loss, nce_mi_loss, select_impl
from tests.critic_cases import HALF_TOLERANCES, TOLERANCES, assert_close_scaled, codes, muse_step, value_and_grads

triton = pytest.importorskip("triton")
from discbench.kernels import jsd_triton as jt  # noqa: E402  (after the skip: triton is optional)

pytestmark = pytest.mark.triton

# (B, N, D): B = 1 and 2; B = 37 spans two 32-column tiles; B*N = 111 rows span several 32-row tiles with images
# crossing tile borders; D = 20 and 7 are masked inside BLOCK_D = 32 and 16. B = 130 (two 128-wide column tiles)
# runs once per config below.
SHAPES = [(1, 3, 5), (2, 4, 16), (37, 2, 20), (3, 37, 7)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def check(got, want, dtype):
    for g, w in zip(got, want, strict=True):
        if dtype == torch.float32:
            torch.testing.assert_close(g, w, **TOLERANCES[dtype])
        else:
            assert_close_scaled(g, w, **HALF_TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("loss", ["jsd", "nce"])
def test_triton_matches_the_reference(loss, shape, dtype):
    local, global_ = codes(*shape, dtype=dtype, scale=3.0)
    want = value_and_grads(CRITICS[loss]["ref"], local, global_)  # the reference upcasts the same rounded codes
    got = value_and_grads(CRITICS[loss]["triton"], local, global_)
    assert got[0].dtype == torch.float32 and got[1].dtype == dtype and got[2].dtype == dtype
    check(got, want, dtype)


@pytest.mark.parametrize("config", jt.CONFIGS, ids=str)
@pytest.mark.parametrize("loss", ["jsd", "nce"])
def test_every_config(loss, config, monkeypatch):
    """Each config forced, fp32 and bf16 codes, on B = 130 (two column tiles at BLOCK_C = 128, three or more below)
    and B*N = 390 rows with MAX_SPLIT = 3 backward programs of several row tiles each."""
    monkeypatch.setattr(jt, "MAX_SPLIT", 3)
    for dtype in (torch.float32, torch.bfloat16):
        local, global_ = codes(130, 3, 9, dtype=dtype, scale=3.0)
        want = value_and_grads(CRITICS[loss]["ref"], local, global_)
        with jt.force_config(config):
            got = value_and_grads(CRITICS[loss]["triton"], local, global_)
        check(got, want, dtype)


@pytest.mark.parametrize("loss", ["jsd", "nce"])
def test_fp32_codes_under_bf16_autocast(loss):
    """Training's path: fp32 codes read by the kernels, bf16 dots, fp32 gradients (no copies in bf16)."""
    local, global_ = codes(5, 12, 24, scale=3.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = value_and_grads(CRITICS[loss]["triton"], local, global_)
    assert got[1].dtype == torch.float32 and got[2].dtype == torch.float32
    rounded = [t.detach().bfloat16().float().requires_grad_() for t in (local, global_)]  # what the bf16 dots see
    want = value_and_grads(CRITICS[loss]["ref"], *rounded)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)  # the loss uses no rounded dS
    for g, w in zip(got[1:], want[1:], strict=True):
        assert_close_scaled(g, w, rtol=2**-7, atol_rel=2**-8)  # one bf16 rounding of dS


@pytest.mark.parametrize("loss", ["jsd", "nce"])
def test_autocast_fp16_and_mixed_dtypes(loss):
    local, global_ = codes(3, 10, 16, scale=3.0)
    with torch.autocast("cpu", dtype=torch.float16):
        got = value_and_grads(CRITICS[loss]["triton"], local, global_)
    rounded = [t.detach().half().float().requires_grad_() for t in (local, global_)]
    want = value_and_grads(CRITICS[loss]["ref"], *rounded)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.float(), w.float(), rtol=1e-3, atol=1e-4)
    assert got[1].dtype == torch.float32
    # bf16 local codes with fp32 global codes (no autocast): the dots run in fp32 on the bf16 values
    lo, gl = codes(3, 10, 16, scale=3.0)
    lo = lo.detach().bfloat16().requires_grad_()
    got = value_and_grads(CRITICS[loss]["triton"], lo, gl)
    want = value_and_grads(CRITICS[loss]["ref"], lo, gl)
    assert jt.dot_dtype(lo, gl) == torch.float32 and got[1].dtype == torch.bfloat16
    assert_close_scaled(got[1], want[1], **HALF_TOLERANCES[torch.bfloat16])  # only the leaf's rounding
    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-6)


def test_the_interpreters_bf16_dot_is_exact():
    """The replaced interpreter dot multiplies bf16 values (not their bit patterns) with fp32 accumulation."""
    import triton.language as tl

    @triton.jit
    def dot(a_ptr, b_ptr, out_ptr):
        i = tl.arange(0, 16)
        a = tl.load(a_ptr + i[:, None] * 16 + i[None, :])
        b = tl.load(b_ptr + i[:, None] * 16 + i[None, :])
        tl.store(out_ptr + i[:, None] * 16 + i[None, :], tl.dot(a, b))

    a, b = torch.randn(16, 16).bfloat16(), torch.randn(16, 16).bfloat16()
    out = torch.empty(16, 16)
    dot[(1,)](a, b, out)
    torch.testing.assert_close(out, a.double().matmul(b.double()).float(), rtol=1e-6, atol=1e-6)


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


def test_repeated_calls_are_bitwise_identical():
    local, global_ = codes(37, 5, 20, scale=3.0)
    first = value_and_grads(CRITICS["jsd"]["triton"], local, global_)
    second = value_and_grads(CRITICS["jsd"]["triton"], local, global_)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_configs_are_chosen_once_and_recorded():
    local, global_ = codes(37, 2, 20)
    jt._CHOSEN.clear()
    jt.jsd_mi_loss_triton(local, global_).backward()
    chosen = jt.chosen_configs()
    # fp32 codes and torch's default "highest" matmul precision: IEEE fp32 dots, the smallest tile first
    want = str(jt.preferred_configs(37, fma=True)[0])
    assert want == "16x16/w8/s1"
    f32 = "torch.float32 torch.float32 torch.float32 ieee B=37 D=20"
    assert chosen == {f"cpu fwd jsd {f32}": want, f"cpu bwd jsd {f32}": want}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        jt.jsd_mi_loss_triton(local, global_)
    # bf16 dots: 37 columns in one 64-wide tile, the tallest such config
    bf16 = "torch.float32 torch.float32 torch.bfloat16 ieee B=37 D=20"
    assert jt.chosen_configs()[f"cpu fwd jsd {bf16}"] == "128x64/w8/s1"


def test_preferred_configs_and_split_depend_only_on_the_shape(monkeypatch):
    assert jt.preferred_configs(128)[0] == jt.Config(128, 128, 8, 2)  # one 128-wide column tile
    assert [c.block_c for c in jt.preferred_configs(128)][:3] == [128, 128, 64]
    assert jt.preferred_configs(20)[0].block_c == 32
    assert jt.preferred_configs(130)[0].block_c == 128  # two column tiles: the fewest any config gives
    assert jt.preferred_configs(128, fma=True)[:3] == [jt.Config(16, 16, 8, 1), jt.Config(32, 32, 8, 1),
                                                       jt.Config(32, 32, 4, 2)]
    assert jt.preferred_configs(16)[0] == jt.Config(16, 16, 8, 1)  # B <= 16: one 16-wide column tile
    # 131072 rows of 64: 2048 row tiles over 256 programs of 8; 10 tiles: one each, or 4 programs of 3 (the last 1)
    assert jt.bwd_split(128 * 1024, 64) == (256, 8)
    assert jt.bwd_split(10 * 32 - 5, 32) == (10, 1)
    assert jt.bwd_split(1, 128) == (1, 1)
    monkeypatch.setattr(jt, "MAX_SPLIT", 4)
    assert jt.bwd_split(10 * 32 - 5, 32) == (4, 3)


def test_code_sizes_above_the_limit_fall_back_to_the_streamed_path():
    local, global_ = codes(3, 4, jt.MAX_D + 1)
    jt._FALLBACKS.clear()
    with pytest.warns(UserWarning, match="D = 257 > 256"):
        got = value_and_grads(jt.jsd_mi_loss_triton, local, global_)
    want = value_and_grads(CRITICS["jsd"]["ref"], local, global_)
    check(got, want, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per reason
        jt.nce_mi_loss_triton(local, global_)
    assert jt.fallbacks() == {"D = 257 > 256 (a code tile must stay on chip)": 2}


def test_bad_shapes_and_devices_are_refused():
    with pytest.raises(DiscbenchError, match=r"local codes \(B, N, D\) and global codes \(B, D\), got"):
        jt.jsd_mi_loss_triton(torch.zeros(2, 3, 4), torch.zeros(3, 4))
    with pytest.raises(DiscbenchError, match="on one device"):
        jt.jsd_mi_loss_triton(torch.zeros(2, 3, 4), torch.zeros(2, 4, device="meta"))


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
    for config in jt.CONFIGS:
        assert config.block_m >= 16 and config.block_c >= 16
        assert all(is_power_of_two(x) for x in (config.block_m, config.block_c, config.num_warps))
    assert any(c.block_c >= 128 for c in jt.CONFIGS)  # MUSE's B = 128 in one column tile
    for d in range(1, jt.MAX_D + 1):
        assert jt.block_d(d) >= max(16, d) and is_power_of_two(jt.block_d(d))
    assert jt.block_d(jt.MAX_D) == jt.MAX_D


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


def test_the_interpreters_bf16_casts_round_to_nearest_even():
    import triton.language as tl

    @triton.jit
    def cast(x_ptr, out_ptr):
        i = tl.arange(0, 16)
        tl.store(out_ptr + i, tl.load(x_ptr + i).to(tl.bfloat16))

    x = torch.randn(16) * torch.logspace(-3, 3, 16)
    x[0], x[1] = 1 + 2**-8, 1 + 3 * 2**-8  # ties: to even (1.0) and up (1 + 2^-6)
    out = torch.empty(16, dtype=torch.bfloat16)
    cast[(1,)](x, out)
    assert torch.equal(out, x.bfloat16())
