"""Roofline estimate of one JSD critic forward + backward on an H100 SXM, before and after issue 12's kernels.

Training's case: B = 128 images, N = 1024 locations, D = 128, fp32 codes from the encoders, bf16 dots under autocast.
Each kernel is bounded below by the slowest of three resources at their peak: tensor-core FLOPs, HBM bytes and MUFU
(special-function unit) operations; kernels run one after another, so their times add. Peaks assumed (H100 SXM5,
NVIDIA's datasheet and the Hopper tuning guide):

- 989 TFLOP/s dense bf16 tensor-core throughput (at the 1.83 GHz boost clock it is quoted for);
- 3.35 TB/s HBM3 bandwidth;
- 16 MUFU results per clock per SM (4 per SM sub-partition) x 132 SMs x 1.83 GHz = 3.87e12 special functions/s.

Special functions per score are counted in the SASS of the sm_90 cubins (``cuobjdump -sass`` of the bf16 kernels at
64 x 64 tiles, 4 warps: 32 scores per thread per loop iteration), not in the source: ptxas already shared exp(-|s|)
between the two softplus and the reciprocal between the two sigmoids of the old source, and ``tl.log`` compiles to
FMA arithmetic, not MUFU.LG2. Measured: old forward 32 EX2 (1 per score), old backward kernels 32 EX2 + 32 RCP each
(2 per score); new forward 1, new fused backward 2 (``--sass`` recounts the new kernels).

    python benchmarks/critic_h100_estimate.py [--sass]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

B, N, D = 128, 1024, 128
TENSOR_FLOPS = 989e12
HBM_BYTES = 3.35e12
MUFU_OPS = 16 * 132 * 1.83e9
SCORES = B * N * B  # one pass over every (row, column) pair
GEMM = 2 * SCORES * D  # FLOPs of one (B*N, D) x (D, B) product
F32, BF16 = 4, 2
CODES = B * N * D  # local code elements
MB = 1e6


def kernels_before() -> list[tuple[str, float, float, float]]:
    """(name, FLOPs, bytes, MUFU ops) of commit 34faaff's path: bf16 copies cast outside, three kernels."""
    split = 4 * 132 // -(-B // 32)  # bwd_global_split: 4 programs per SM over the 32-wide column tiles
    col_tiles = -(-B // 64)  # bwd_global reads the local codes once per column tile (autotuned BLOCK_C = 64)
    return [
        ("cast local fp32 -> bf16 (torch)", 0, CODES * (F32 + BF16), 0),
        ("forward", GEMM, CODES * BF16 + B * N * F32, 1 * SCORES),
        ("backward d local", 2 * GEMM, 2 * CODES * BF16, 2 * SCORES),
        ("backward d global_", 2 * GEMM, col_tiles * CODES * BF16 + 2 * split * B * D * F32, 2 * SCORES),
        ("cast d local bf16 -> fp32 (torch)", 0, CODES * (BF16 + F32), 0),
    ]


def kernels_after(block_m: int = 32) -> list[tuple[str, float, float, float]]:
    """Issue 12's path: fp32 codes read in the kernels, one fused backward (config 32x128 on sm_90 at B = 128)."""
    from discbench.kernels.jsd_triton import bwd_split

    programs, _ = bwd_split(B * N, block_m)
    return [
        ("forward", GEMM, CODES * F32 + B * N * F32, 1 * SCORES),
        ("fused backward", 3 * GEMM, 2 * CODES * F32 + programs * B * D * F32, 2 * SCORES),
        ("sum of d global_ partials (torch)", 0, programs * B * D * F32, 0),
    ]


def report(name: str, kernels: list[tuple[str, float, float, float]]) -> float:
    print(f"\n{name}")
    print("| kernel | GFLOP | µs tensor | MB HBM | µs HBM | M MUFU | µs MUFU | bound µs |")
    print("|---|---|---|---|---|---|---|---|")
    total = 0.0
    for kernel, flops, nbytes, mufu in kernels:
        times = {"tensor": flops / TENSOR_FLOPS * 1e6, "HBM": nbytes / HBM_BYTES * 1e6, "MUFU": mufu / MUFU_OPS * 1e6}
        bound = max(times.values())
        total += bound
        print(f"| {kernel} | {flops / 1e9:.2f} | {times['tensor']:.1f} | {nbytes / MB:.1f} | {times['HBM']:.1f} | "
              f"{mufu / 1e6:.1f} | {times['MUFU']:.1f} | {bound:.1f} ({max(times, key=times.get)}) |")
    print(f"| total | | | | | | | **{total:.1f}** |")
    return total


def count_sass() -> None:
    """MUFU instructions per score in the sm_90 SASS of the current kernels (bf16, 64 x 64 tiles, 4 warps)."""
    import re

    from discbench.kernels import aot
    from discbench.kernels import jsd_triton as jt

    config = jt.Config(64, 64, 4, 2)
    per_thread = config.block_m * config.block_c // (32 * config.num_warps)
    for kernel in jt.KERNELS:
        sass = aot.sass(aot.compile_kernel(kernel, "bf16", jt.JSD.value, config, 90).asm["cubin"])
        counts = {op: len(re.findall(rf"MUFU\.{op}\b", sass)) for op in ("EX2", "LG2", "RCP")}
        print(f"{kernel}: {counts} MUFU in the SASS; {per_thread} scores per thread per iteration")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sass", action="store_true", help="recount MUFU per score in the new kernels' SASS")
    args = parser.parse_args()
    print(f"B = {B}, N = {N}, D = {D}: {SCORES / 1e6:.1f} M scores per pass; one score GEMM = {GEMM / 1e9:.2f} GFLOP")
    print(f"peaks: {TENSOR_FLOPS / 1e12:.0f} TFLOP/s bf16 dense, {HBM_BYTES / 1e12:.2f} TB/s HBM, "
          f"{MUFU_OPS / 1e12:.2f} T MUFU/s")
    before = report("before (commit 34faaff: casts outside, forward + two backward kernels)", kernels_before())
    after = report("after (issue 12: fp32 codes read in-kernel, forward + fused backward)", kernels_after())
    print(f"\nestimated fwd+bwd: {before:.0f} µs before, {after:.0f} µs after ({before / after:.2f}x); "
          f"lower bounds at peak throughput (Triton kernels typically reach 60-80% of HBM bandwidth)")
    if args.sass:
        count_sass()


if __name__ == "__main__":
    main()
