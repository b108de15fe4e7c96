"""The Triton critic on a real GPU: values and gradients against the fp32 reference (marker ``cuda``).

    python -m pytest -q -m cuda tests/test_triton_cuda.py     # skipped, with the reason, without a CUDA device

Both losses; fp32 codes (as the encoders give them) in three modes: fp32 dots with IEEE precision, and fp16 and bf16
dots under ``torch.autocast("cuda")``; B in {1, 67, 128, 130}, N in {16, 64, 256, 1024}, D in {64, 128} with the
config the dispatcher chooses, and every config forced on two shapes. The reference is ``jsd_ref`` in fp32 (IEEE
matmuls) on the same inputs rounded to the dots' dtype, so what remains is the kernels' own rounding:

- fp32: only the summation order differs (a loss of 130 x 1024 rows, gradients of 130 terms): rtol 1e-4 and an atol
  of 1e-5 x the largest entry;
- fp16 / bf16: the scores are exact products summed in fp32, the relative dS is rounded to the dot dtype before the
  gradient dots (2^-11 / 2^-9 per term): ``tests.critic_cases.HALF_TOLERANCES`` (two units relative, and 2^-9 / 2^-7
  of the largest entry for entries whose terms cancel); the loss itself uses no rounded dS (rtol 1e-4).

Inputs go on the second GPU when there are two (the kernels must launch on the tensors' device, not the current one).
"""

from __future__ import annotations

import pytest
import torch

from discbench.kernels import CRITICS
from tests.critic_cases import HALF_TOLERANCES, assert_close_scaled, codes, value_and_grads

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() "
                                                                       "is False)")]

MODES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
BATCHES, LOCATIONS, DIMS = (1, 67, 128, 130), (16, 64, 256, 1024), (64, 128)


@pytest.fixture(scope="module")
def device() -> torch.device:
    if torch.cuda.get_device_capability(0) < (8, 0):
        pytest.skip("the Triton kernels need compute capability >= 8.0 (the dispatcher falls back below it)")
    return torch.device("cuda", 1 if torch.cuda.device_count() > 1 else 0)


@pytest.fixture(autouse=True)
def ieee_fp32():
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # reference and fp32 kernels without TF32
    yield
    torch.set_float32_matmul_precision(precision)


def compare(loss: str, mode: str, b: int, n: int, d: int, device: torch.device) -> None:
    torch.manual_seed(b * 7919 + n * 31 + d)
    local, global_ = (t.detach().to(device).requires_grad_() for t in codes(b, n, d, scale=3.0))
    dtype = MODES[mode]
    current = torch.cuda.current_device()
    with torch.autocast("cuda", dtype=dtype or torch.float16, enabled=dtype is not None):
        got = value_and_grads(CRITICS[loss]["triton"], local, global_)
    assert torch.cuda.current_device() == current and all(t.device == device for t in got)
    rounded = [t.detach().to(dtype or torch.float32).float().requires_grad_() for t in (local, global_)]
    want = value_and_grads(CRITICS[loss]["ref"], *rounded)
    assert got[1].dtype == got[2].dtype == torch.float32  # fp32 codes get fp32 gradients
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-6)
    tolerance = dict(rtol=1e-4, atol_rel=1e-5) if dtype is None else HALF_TOLERANCES[dtype]
    for g, w in zip(got[1:], want[1:], strict=True):
        assert_close_scaled(g, w, **tolerance)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", LOCATIONS)
@pytest.mark.parametrize("b", BATCHES)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("loss", ["jsd", "nce"])
def test_chosen_config_matches_the_reference(loss, mode, b, n, d, device):
    compare(loss, mode, b, n, d, device)


@pytest.mark.parametrize("shape", [(67, 64, 64), (130, 256, 128)], ids=str)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("loss", ["jsd", "nce"])
def test_every_config_matches_the_reference(loss, mode, shape, device):
    from discbench.kernels import jsd_triton

    for config in jsd_triton.CONFIGS:
        with jsd_triton.force_config(config):
            compare(loss, mode, *shape, device)


def test_configs_are_recorded_and_results_bitwise_reproducible(device):
    from discbench.kernels import jsd_triton

    local, global_ = (t.detach().to(device).requires_grad_() for t in codes(128, 256, 128, scale=3.0))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        first = value_and_grads(CRITICS["jsd"]["triton"], local, global_)
        second = value_and_grads(CRITICS["jsd"]["triton"], local, global_)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    chosen = jsd_triton.chosen_configs()
    key = f"{device} bwd jsd torch.float32 torch.float32 torch.bfloat16 ieee B=128 D=128"
    assert key in chosen and not jsd_triton.fallbacks()


def test_below_compute_capability_8_dispatch_falls_back_with_the_reason(monkeypatch, device):
    from discbench.kernels import describe_impl, select_impl

    monkeypatch.delenv("DISCBENCH_IMPL", raising=False)
    assert select_impl(device) == "triton" and describe_impl(device) == "triton"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert select_impl(device) == "torch"
    assert describe_impl(device) == f"torch (triton: {device} has compute capability 7.5 < 8.0)"
