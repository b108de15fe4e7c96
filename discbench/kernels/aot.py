"""Ahead-of-time builds of the Triton critic kernels for NVIDIA GPUs, on any machine (no GPU, no driver).

``build`` compiles one kernel the way a launch on a GPU would: the arguments of a real call of shape (B, N, D) go
through triton's own binder, so sizes and strides divisible by 16 (and pointers aligned to 16 bytes) get the same
specialisation as at run time; the target is ``GPUTarget("cuda", arch, 32)`` and the cubin comes from triton's
bundled ptxas. Its resources are read from the cubin with triton's bundled ``cuobjdump -res-usage``: registers per
thread and local memory per thread (what triton reports as ``n_spills`` x 4 on a GPU: ``fits`` refuses a config
with any), and shared memory is the launch's request (``metadata.shared``).

Used by tests/test_triton_compile.py and benchmarks/critic_compile_matrix.py, which writes the compile matrix of every
config, dtype, D and architecture to benchmarks/critic_compile_matrix.md (described in docs/kernels.md, "On a GPU").
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch
import triton

from discbench.kernels import jsd_triton as jt

# opt-in shared memory per block (bytes) of each architecture: A100 163 KB, GA10x/AD10x 99 KB, H100 227 KB
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
ARCHS = (90, 80, 86)
# (name, codes' dtype, dot dtype, fp32 input precision): what the dispatcher can launch; "fp32>bf16" is training's
# fp32 codes under bf16 autocast
VARIANTS = {
    "fp32>bf16": (torch.float32, torch.bfloat16, "ieee"),
    "bf16": (torch.bfloat16, torch.bfloat16, "ieee"),
    "fp16": (torch.float16, torch.float16, "ieee"),
    "fp32-tf32": (torch.float32, torch.float32, "tf32"),
    "fp32-ieee": (torch.float32, torch.float32, "ieee"),
}
DIMS = (64, 128, 256)
LOSSES = {"jsd": jt.JSD.value, "nce": jt.NCE.value}


class _Pointer:
    """A tensor argument as the binder sees it: a dtype and a 16-byte aligned address (like torch's allocations)."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    @staticmethod
    def data_ptr() -> int:
        return 0


@dataclass(frozen=True)
class Build:
    kernel: str
    variant: str
    loss: str
    config: jt.Config
    dim: int
    arch: int
    registers: int
    local_bytes: int
    shared_bytes: int

    @property
    def fits(self) -> bool:
        return self.local_bytes == 0 and self.shared_bytes <= SHARED_LIMIT[self.arch]


def arguments(kernel: str, variant: str, kind: int, config: jt.Config, b: int, n: int, d: int) -> tuple[tuple, dict]:
    """(positional, constexpr) arguments of a launch on local codes (B, N, D) and global codes (B, D)."""
    codes, dot, precision = VARIANTS[variant]
    rows = b * n
    f32 = _Pointer(torch.float32)
    weights = jt.loss_weights(kind, b, n)
    if kernel == "fwd":
        args = (_Pointer(codes), _Pointer(codes), f32, f32, rows, n, b, d, d, d, *weights)
    else:
        args = (_Pointer(codes), _Pointer(codes), f32, f32, f32, f32, rows, n, b, d, d, d,
                jt.bwd_split(rows, config.block_m)[1], *weights)
    constexprs = {"KIND": kind, "PRECISION": precision, "DOT": jt.DOT_DTYPES[dot], "BLOCK_D": jt.block_d(d),
                  "BLOCK_M": config.block_m, "BLOCK_C": config.block_c}
    return args, constexprs


def specialise(kernel: str, variant: str, kind: int, config: jt.Config, arch: int, b: int = 128, n: int = 1024,
               d: int = 128, block_d: int | None = None):
    """(backend, signature, constexprs, attrs, options) triton's binder gives a launch on (B, N, D) for ``arch``."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = jt.KERNELS[kernel]
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    args, constexprs = arguments(kernel, variant, kind, config, b, n, d)
    if block_d is not None:
        constexprs["BLOCK_D"] = block_d
    launch = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **constexprs, **launch)
    options, signature, consts, attrs = fn._pack_args(backend, launch, bound, specialization, options)
    return target, signature, consts, attrs, options


def compile_kernel(kernel: str, variant: str, kind: int, config: jt.Config, arch: int, b: int = 128, n: int = 1024,
                   d: int = 128, block_d: int | None = None):
    """triton's CompiledKernel of ``kernel`` ("fwd" | "bwd") for ``arch``, specialised as a call on (B, N, D) is."""
    from triton.compiler import ASTSource

    target, signature, consts, attrs, options = specialise(kernel, variant, kind, config, arch, b, n, d, block_d)
    return triton.compile(ASTSource(jt.KERNELS[kernel], signature, consts, attrs), target=target,
                          options=options.__dict__)


def cuobjdump() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resources(cubin: bytes) -> dict[str, int]:
    """REG, LOCAL, SHARED, STACK of the kernel in ``cubin`` (``cuobjdump -res-usage``)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([cuobjdump(), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    line = next(line for line in text.splitlines() if "REG:" in line)
    return {key: int(value) for key, value in re.findall(r"(REG|LOCAL|SHARED|STACK):(\d+)", line)}


def sass(cubin: bytes) -> str:
    """The SASS of ``cubin`` (``cuobjdump -sass``)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([cuobjdump(), "-sass", f.name], capture_output=True, text=True, check=True).stdout


def build(kernel: str, variant: str, loss: str, config: jt.Config, dim: int, arch: int, b: int = 128,
          n: int = 1024) -> Build:
    """Compile and measure one kernel (see the module docstring)."""
    compiled = compile_kernel(kernel, variant, LOSSES[loss], config, arch, b, n, dim)
    res = resources(compiled.asm["cubin"])
    return Build(kernel, variant, loss, jt.Config(*config), dim, arch, res["REG"], res["LOCAL"] + res["STACK"],
                 compiled.metadata.shared)


def _build_star(job: tuple) -> Build:
    return build(*job)


def matrix(jobs: list[tuple], processes: int | None = None):
    """``build`` for every job, in parallel processes (compiling is CPU-bound and needs no GPU); yields the builds in
    the jobs' order as they finish."""
    import multiprocessing

    processes = processes or max(1, min(len(jobs), os.cpu_count() or 1))
    if processes == 1:
        yield from map(_build_star, jobs)
        return
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        yield from pool.imap(_build_star, jobs, chunksize=1)


def all_jobs(archs=ARCHS, variants=tuple(VARIANTS), dims=(128, 64, 256), losses=tuple(LOSSES), configs=jt.CONFIGS,
             kernels=tuple(jt.KERNELS)) -> list[tuple]:
    """Every (kernel, variant, loss, config, D, arch), most used first: D = 128, training's dtypes, sm_90."""
    return [(k, v, loss, c, d, a) for d in dims for v in variants for a in archs for loss in losses for c in configs
            for k in kernels]
