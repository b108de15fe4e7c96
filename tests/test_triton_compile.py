"""The Triton critic kernels compile for real NVIDIA GPUs, down to a cubin, on this CPU-only machine.

The interpreter (tests/triton/) proves the arithmetic, not that the kernels build for hardware: it accepts 8 x 8 x 8
dots and ignores dtypes and shared memory. ``triton.compile`` with a ``GPUTarget`` needs no GPU: it runs the NVIDIA
backend (TTIR -> TTGIR -> LLVM -> PTX) and the ptxas that ships with triton. Runs in the main process because the
kernels must be JIT functions, not the interpreter's (skipped under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import importlib
import os

import pytest

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                                reason="under the interpreter the kernels are not JIT functions")

KERNELS = ["_critic_fwd_kernel", "_critic_bwd_local_kernel", "_critic_bwd_global_kernel"]
SMEM_SM86 = 99 * 1024  # the smallest opt-in shared memory per block among sm_80+ GPUs (sm_86/sm_89)
FLOATS = {"pos_weight", "neg_weight", "scale"}
CODES = {"l_ptr", "g_ptr", "dl_ptr"}  # pointers to codes in the input dtype; other pointers are fp32 buffers


def compile_kernel(name: str, dtype: str, kind: int, block_m: int, block_c: int, warps: int, block_d: int, arch: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jt = importlib.import_module("discbench.kernels.jsd_triton")
    kernel = getattr(jt, name)
    constexprs = {"KIND": kind, "PRECISION": "tf32" if dtype == "fp32" else "ieee", "BLOCK_D": block_d,
                  "BLOCK_M": block_m, "BLOCK_C": block_c}
    signature = {}
    for arg in kernel.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            signature[arg] = f"*{dtype}" if arg in CODES else "*fp32"
        else:
            signature[arg] = "fp32" if arg in FLOATS else "i32"
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("name", KERNELS)
def test_smallest_config_builds_for_sm80_at_the_largest_code_size(name, dtype):
    """Both losses, the largest D: a cubin, within the shared memory of every sm_80+ GPU, so autotuning on any of
    them always has a config that runs."""
    from discbench.kernels.jsd_triton import CUDA_CONFIGS, JSD, MAX_D, NCE

    block_m, block_c, warps = min(CUDA_CONFIGS)
    for kind in (JSD.value, NCE.value):
        compiled = compile_kernel(name, dtype, kind, block_m, block_c, warps, MAX_D, 80)
        assert compiled.asm["cubin"] and compiled.metadata.shared <= SMEM_SM86


@pytest.mark.parametrize("name", KERNELS)
def test_largest_config_builds_for_sm90(name):
    """Hopper (wgmma for 64-row tiles) with bf16 codes of MUSE's D = 128."""
    from discbench.kernels.jsd_triton import CUDA_CONFIGS, NCE

    block_m, block_c, warps = max(CUDA_CONFIGS)
    compiled = compile_kernel(name, "bf16", NCE.value, block_m, block_c, warps, 128, 90)
    assert compiled.asm["cubin"]


def test_dots_smaller_than_16_do_not_build():
    """The check is real: a 16 x 16 x 8 half-precision dot (the interpreter runs it) fails to compile."""
    with pytest.raises(Exception, match="K >= 16"):
        compile_kernel("_critic_fwd_kernel", "bf16", 0, 16, 16, 4, 8, 80)
