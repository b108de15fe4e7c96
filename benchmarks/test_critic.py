"""pytest-benchmark of the MI critic alone and of the full MUSE loss (encoders included), per implementation.

The grid is the issue's: B = 32, 64, 128, 256; N = 8^2, 16^2, 32^2; D = 128; forward + backward. Each benchmark also
records its peak memory (``extra_info["peak_mib"]``, measured as in ``discbench bench``: exact on CPU,
``max_memory_allocated`` on CUDA) and CUDA calls are synchronised, so the time is the work, not the launch. On CUDA
the steps run under bf16 autocast, as training does (``extra_info["autocast"]``).

    python -m pytest benchmarks --benchmark-enable                         # everything (minutes on a CPU)
    python -m pytest benchmarks --benchmark-enable -k "critic and B128"    # a slice
    python -m pytest benchmarks --benchmark-enable --benchmark-json=critic.json

``discbench bench`` prints the same measurements as one table with the ratios to the reference.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from discbench.kernels import available_impls, bench

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("impl", available_impls(DEVICE))
@pytest.mark.parametrize("batch", bench.BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("locations", bench.LOCATIONS, ids=lambda n: f"N{n}")
@pytest.mark.parametrize("mode", sorted(bench.MODES))
def test_forward_backward(benchmark, mode, locations, batch, impl):
    case = bench.Case(mode, impl, batch, locations, dim=128, autocast=bench.effective_autocast("bf16", DEVICE))
    step = bench.MODES[mode](case, DEVICE)

    def synchronised() -> None:
        step()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)

    benchmark.group = f"{mode} B={batch} N={locations}"
    benchmark.extra_info.update(asdict(case), peak_mib=bench.peak_bytes(step, DEVICE) / bench.MIB)
    benchmark.pedantic(synchronised, rounds=3, warmup_rounds=1)
