"""The local/global MI critic losses (JSD and InfoNCE) as fused Triton kernels: no (B, B, N) tensor in memory.

The local codes are viewed as rows r = (b, n) of a (B*N, D) matrix, the global codes as columns c of (B, D); the
score of a pair is s = <local[r], global_[c]> and the pair is positive when c == r // N (same image). Two kernels,
each a loop of (rows x columns) score tiles computed by ``tl.dot`` and consumed in registers:

- ``_critic_fwd_kernel``, one program per BLOCK_M rows, walks all column tiles: JSD sums w_pos softplus(-s) over the
  positive and w_neg softplus(s) over the negatives of each row; InfoNCE keeps an online logsumexp (flash-attention
  style) and the positive score. It writes one float per row (its share of the loss; InfoNCE also its logsumexp,
  saved for backward); the launcher sums them in torch.
- ``_critic_bwd_kernel``, one program per contiguous group of row tiles (``bwd_split``): for each column tile it
  recomputes the scores of its rows, turns them into dS, writes d local = dS @ global_ of its rows (accumulated over
  column tiles in the fp32 output, which only this program touches) and accumulates d global_ = dS^T @ local in a
  (BLOCK_C, D) register tile, stored as this program's partial; the launcher sums the partials (split x B x D
  floats; no atomics). With B <= BLOCK_C (the configs with 128-wide column tiles cover MUSE's B = 128) every local
  code is read once and every score computed once per backward.

Precision: the kernels read fp32, fp16 or bf16 codes (each pointer in its own dtype) and cast them in registers to
the dot dtype ``DOT`` (the autocast dtype inside ``torch.autocast``, as the reference's einsum would run, else the
codes' dtype): training's fp32 codes under bf16 autocast are never copied to bf16 in memory. Accumulation, the loss
and both gradients are fp32 (autograd casts a gradient to its input's dtype). fp32 dots run as TF32 unless
``torch.get_float32_matmul_precision()`` is "highest" ("ieee"). dS is computed *relative*: JSD uses
-(B-1) sigmoid(-s) on positives and sigmoid(s) on negatives, InfoNCE softmax - onehot, and the absolute weight
(1 / (B (B-1) N) or 1 / (B N), times the upstream gradient) multiplies the accumulated tiles; the relative dS lies in
[-(B-1), 1], so casting it to fp16/bf16 for the second and third ``tl.dot`` cannot underflow (w_neg alone is 6e-8 at
B = 128, N = 1024: below fp16's normal range), as flash-attention casts its probabilities.

Special functions: every JSD score costs one exp and one log forward, one exp and one reciprocal backward; softplus
and sigmoid of s and -s share them (softplus(+-s) = max(+-s, 0) + log(1 + e), sigmoid(s) = r or e r with
e = exp(-|s|), r = 1 / (1 + e)), and ``tl.where`` only selects between computed values. (ptxas had already merged
the duplicates of the former two-branch source: its sm_90 SASS has 1 MUFU per score forward and 2 per score in each
former backward kernel; ``tl.log`` compiles to FMAs. What saves special functions is the fused backward: 3 per score
per forward + backward instead of 5; benchmarks/critic_h100_estimate.py.)

Configs and determinism: a config is (BLOCK_M, BLOCK_C, num_warps, num_stages) from CONFIGS. On CUDA each kernel's
config is chosen once per (device, kernel, loss, dtypes, B, D): the first in ``preferred_configs`` order whose build
for this device has no register spills and fits its shared memory; the choice is cached and listed by
``chosen_configs()``. ``bwd_split`` depends only on the shape and the config, never on the SM count. So on one GPU
model, triton version and shape, the loss and gradients are bitwise reproducible between runs and processes (no
atomics, fixed summation orders); across GPU models the chosen config can differ (a smaller GPU may reject a config
that spills or does not fit), and with it the summation order: results then agree to rounding, not bitwise.

Fallback (recorded, see ``discbench.kernels.describe_impl``): below compute capability 8.0 (no bf16 ``tl.dot``)
dispatch picks the streamed torch path for the whole run; a call whose shape no config fits (D > MAX_D, or a device
with less shared memory than any config needs) runs the streamed path, warns once and is listed by ``fallbacks()``.

GPU assumptions (the interpreter proves none of them; tests/test_triton_compile.py builds every config, dtype, D and
loss with the run-time specialisation for sm_80, sm_86 and sm_90 and checks spills and shared memory):
- every ``tl.dot`` operand dimension is >= 16: BLOCK_M, BLOCK_C >= 16 and BLOCK_D = max(16, next power of two >= D);
- every block size is a power of two (``tl.arange``); D <= MAX_D = 256 (a (BLOCK_M, BLOCK_D) tile of codes stays on
  chip; MUSE uses D = 64 or 128);
- row offsets are computed in int64 (B*N*D may exceed 2^31 elements).

Interpreter (``TRITON_INTERPRET=1``, CPU tensors): the env var must be set before this module is imported
(``triton.jit`` reads it); configs follow ``preferred_configs`` without a build check, and the interpreter's bf16
arithmetic is made the GPU's (``_patch_interpreter_bf16``: round-to-nearest-even casts, dots of bf16 values).
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from discbench.errors import DiscbenchError

JSD: tl.constexpr = tl.constexpr(0)
NCE: tl.constexpr = tl.constexpr(1)
MAX_D = 256
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_SPLIT = 256  # programs of the backward: about 2 per SM on an H100 (132 SMs), a constant (determinism)
DOT_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


class Config(NamedTuple):
    """Tile sizes and launch options of one kernel launch."""

    block_m: int
    block_c: int
    num_warps: int
    num_stages: int

    def __str__(self) -> str:
        return f"{self.block_m}x{self.block_c}/w{self.num_warps}/s{self.num_stages}"


CONFIGS = (  # measured for D = 64, 128, 256 on sm_80, sm_86, sm_90: benchmarks/critic_compile_matrix.md
    Config(32, 32, 4, 2), Config(32, 32, 8, 1), Config(32, 64, 4, 1), Config(64, 64, 8, 1), Config(128, 64, 8, 1),
    Config(32, 128, 8, 1), Config(128, 128, 8, 2),
    Config(16, 16, 8, 1),  # the only backward that fits TF32 at D = 256 on sm_86 and some IEEE InfoNCE shapes
)


@triton.jit
def _codes(ptr, idx, n_idx, stride, ks, dim, DOT: tl.constexpr):
    """Rows ``idx`` (masked to < n_idx), columns ``ks`` (masked to < dim) of a row-major matrix, in the dot dtype."""
    mask = (idx[:, None] < n_idx) & (ks[None, :] < dim)
    x = tl.load(ptr + idx[:, None].to(tl.int64) * stride + ks[None, :], mask=mask, other=0.0)
    return x.to(DOT)


@triton.jit
def _relative_d_scores(s, positive, valid, lse, pos_weight, neg_weight, KIND: tl.constexpr):
    """dS / (absolute weight) for a (rows, columns) score tile; zero outside ``valid``.

    JSD: one exp and one reciprocal per score give both sigmoid(s) and sigmoid(-s), each without cancellation.
    """
    if KIND == JSD:
        e = tl.exp(-tl.abs(s))
        r = 1.0 / (1.0 + e)
        er = e * r
        nonneg = s >= 0
        ds = tl.where(positive, -pos_weight * tl.where(nonneg, er, r), neg_weight * tl.where(nonneg, r, er))
    else:
        ds = tl.exp(s - lse[:, None]) - tl.where(positive, 1.0, 0.0)
    return tl.where(valid, ds, 0.0)


@triton.jit
def _critic_fwd_kernel(l_ptr, g_ptr, row_loss_ptr, lse_ptr, n_rows, n_loc, n_img, dim, stride_l, stride_g,
                       pos_weight, neg_weight, scale,
                       KIND: tl.constexpr, PRECISION: tl.constexpr, DOT: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ks = tl.arange(0, BLOCK_D)
    img = rows // n_loc  # the positive column of each row
    local = _codes(l_ptr, rows, n_rows, stride_l, ks, dim, DOT)  # (BLOCK_M, BLOCK_D)
    acc = tl.zeros((BLOCK_M,), dtype=tl.float32)  # JSD: weighted softplus sum; NCE: running sum of exp(s - m)
    run_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    pos_score = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for c0 in range(0, n_img, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = (cols < n_img)[None, :]
        glob = _codes(g_ptr, cols, n_img, stride_g, ks, dim, DOT)  # (BLOCK_C, BLOCK_D)
        s = tl.dot(local, tl.trans(glob), input_precision=PRECISION)  # (BLOCK_M, BLOCK_C), fp32
        positive = img[:, None] == cols[None, :]
        if KIND == JSD:
            # softplus(+-s) = max(+-s, 0) + log(1 + exp(-|s|)): one exp and one log per score
            log1pe = tl.log(1.0 + tl.exp(-tl.abs(s)))
            terms = tl.where(positive, pos_weight * (tl.maximum(-s, 0.0) + log1pe),
                             neg_weight * (tl.maximum(s, 0.0) + log1pe))
            acc += tl.sum(tl.where(col_ok, terms, 0.0), axis=1)
        else:
            s = tl.where(col_ok, s, float("-inf"))
            new_max = tl.maximum(run_max, tl.max(s, axis=1))
            acc = acc * tl.exp(run_max - new_max) + tl.sum(tl.exp(s - new_max[:, None]), axis=1)
            run_max = new_max
            pos_score += tl.sum(tl.where(positive, s, 0.0), axis=1)
    row_ok = rows < n_rows
    if KIND == JSD:
        tl.store(row_loss_ptr + rows, acc * scale, mask=row_ok)
    else:
        lse = run_max + tl.log(acc)
        tl.store(lse_ptr + rows, lse, mask=row_ok)
        tl.store(row_loss_ptr + rows, (lse - pos_score) * scale, mask=row_ok)


@triton.jit
def _critic_bwd_kernel(l_ptr, g_ptr, lse_ptr, grad_ptr, dl_ptr, partial_ptr, n_rows, n_loc, n_img, dim, stride_l,
                       stride_g, tiles_per_program, pos_weight, neg_weight, scale,
                       KIND: tl.constexpr, PRECISION: tl.constexpr, DOT: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    program = tl.program_id(0)
    ks = tl.arange(0, BLOCK_D)
    k_ok = ks < dim
    first = program * tiles_per_program
    last = tl.minimum(first + tiles_per_program, tl.cdiv(n_rows, BLOCK_M))
    weight = tl.load(grad_ptr) * scale  # upstream gradient x absolute weight
    for c0 in range(0, n_img, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = cols < n_img
        glob = _codes(g_ptr, cols, n_img, stride_g, ks, dim, DOT)  # (BLOCK_C, BLOCK_D)
        acc_g = tl.zeros((BLOCK_C, BLOCK_D), dtype=tl.float32)
        for t in range(first, last):
            rows = t * BLOCK_M + tl.arange(0, BLOCK_M)
            row_ok = rows < n_rows
            local = _codes(l_ptr, rows, n_rows, stride_l, ks, dim, DOT)  # (BLOCK_M, BLOCK_D)
            lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0) if KIND == NCE else None
            s = tl.dot(local, tl.trans(glob), input_precision=PRECISION)
            ds = _relative_d_scores(s, (rows // n_loc)[:, None] == cols[None, :], row_ok[:, None] & col_ok[None, :],
                                    lse, pos_weight, neg_weight, KIND).to(DOT)
            d_local = tl.dot(ds, glob, input_precision=PRECISION) * weight  # (BLOCK_M, BLOCK_D)
            out = dl_ptr + rows[:, None].to(tl.int64) * dim + ks[None, :]
            mask = row_ok[:, None] & k_ok[None, :]
            if c0 > 0:  # later column tiles add to what this program stored for these rows
                d_local += tl.load(out, mask=mask, other=0.0)
            tl.store(out, d_local, mask=mask)
            acc_g += tl.dot(tl.trans(ds), local, input_precision=PRECISION)  # (BLOCK_C, BLOCK_D)
        out = partial_ptr + program.to(tl.int64) * n_img * dim + cols[:, None] * dim + ks[None, :]
        tl.store(out, acc_g * weight, mask=col_ok[:, None] & k_ok[None, :])
        tl.debug_barrier()  # the next column tile's loads of d local see this tile's stores from every thread


KERNELS = {"fwd": _critic_fwd_kernel, "bwd": _critic_bwd_kernel}


def block_d(dim: int) -> int:
    """BLOCK_D for codes of ``dim`` features: the next power of two, at least 16 (a GPU's minimum dot size)."""
    return max(16, triton.next_power_of_2(dim))


def input_precision(dtype: torch.dtype) -> str:
    """fp32 dots follow torch's matmul precision ("highest" -> IEEE, otherwise TF32); half dtypes are exact."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def dot_dtype(local: Tensor, global_: Tensor) -> torch.dtype:
    """The dtype of the dots: the autocast dtype inside ``torch.autocast`` (like the reference's einsum), else the
    promoted dtype of the codes (anything but fp16/bf16 runs in fp32)."""
    device_type = local.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    dtype = torch.promote_types(local.dtype, global_.dtype)
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


def loss_weights(kind: int, b: int, n: int) -> tuple[float, float, float]:
    """(pos_weight, neg_weight, scale): relative weights of positives and negatives in dS and the absolute scale.

    JSD: w_pos = 1/(B N) = (B-1) w_neg, so positives weigh B-1 and negatives 1 at scale w_neg (B = 1: no negatives,
    positives weigh 1 at scale w_pos). InfoNCE: softmax - onehot at scale 1/(B N) (the weights are unused).
    """
    if kind == JSD.value and b > 1:
        return float(b - 1), 1.0, 1.0 / (b * (b - 1) * n)
    return 1.0, 0.0, 1.0 / (b * n)


def bwd_split(n_rows: int, block_m: int) -> tuple[int, int]:
    """(programs, row tiles per program) of the backward: at most MAX_SPLIT programs of contiguous row tiles.

    A function of the shape and the config only (not of the GPU), so the summation order of d global_ is fixed.
    """
    tiles = triton.cdiv(n_rows, block_m)
    per_program = triton.cdiv(tiles, min(tiles, MAX_SPLIT))
    return triton.cdiv(tiles, per_program), per_program


def preferred_configs(n_img: int, fma: bool = False) -> list[Config]:
    """CONFIGS in the order they are tried for B = ``n_img`` columns: fewest column tiles (every local code read
    once), then the narrowest such tile (least masked work), then the tallest row tile (fewest programs).

    ``fma``: fp32 dots at IEEE precision run on the FMA units, not the tensor cores, where every backward tile above
    32 x 32 spills at D >= 128 and 32 x 32 itself spills in some (benchmarks/critic_compile_matrix.md; a spilling
    build also takes minutes in ptxas): smallest tiles first, most warps first, so the first candidate, 16 x 16 with 8
    warps, fits every tabulated shape and is the only one built."""
    if fma:
        return sorted(CONFIGS, key=lambda c: (c.block_m * c.block_c, -c.num_warps, c.block_c))
    return sorted(CONFIGS, key=lambda c: (triton.cdiv(n_img, c.block_c), c.block_c, -c.block_m, c.num_warps))


_FORCED: list[Config] = []
_CHOSEN: dict[tuple, Config] = {}
_FALLBACKS: dict[str, int] = {}


@contextlib.contextmanager
def force_config(config: Config) -> Iterator[None]:
    """Run every launch inside the block with ``config`` (tests and benchmarks; no fit check, no caching)."""
    _FORCED.append(Config(*config))
    try:
        yield
    finally:
        _FORCED.pop()


def chosen_configs() -> dict[str, str]:
    """The config each (device, kernel, loss, dtypes, B, D) got, as text: what a record or a benchmark reports."""
    return {" ".join(str(k) for k in key): str(config) for key, config in _CHOSEN.items()}


def fallbacks() -> dict[str, int]:
    """Why calls ran the streamed torch path instead of the kernels, and how many."""
    return dict(_FALLBACKS)


@functools.cache
def max_shared_memory(index: int) -> int:
    """Opt-in shared memory per block of CUDA device ``index`` (what a launch may request)."""
    return triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]


def fits(kernel, shared_limit: int) -> bool:
    """A built kernel runs as compiled: its shared memory within the device's limit and no register spills."""
    from triton.runtime.errors import OutOfResources

    if kernel.metadata.shared > shared_limit:
        return False
    try:
        kernel._init_handles()  # loads the cubin: fills n_spills (local bytes / 4) and n_regs
    except OutOfResources:
        return False
    return kernel.n_spills == 0


def _options(config: Config, constexprs: dict) -> dict:
    """The launch keywords of ``config``: tile sizes, and warps and stages on a GPU."""
    return {**constexprs, "BLOCK_M": config.block_m, "BLOCK_C": config.block_c,
            **({} if INTERPRET else {"num_warps": config.num_warps, "num_stages": config.num_stages})}


def _device(t: Tensor):
    """Triton launches on the current device and stream: make them the tensors' (``--device cuda:1``)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


class _Plan:
    """One critic call's launches: constexprs, arguments and grid of each kernel for a given config."""

    def __init__(self, flat: Tensor, global_: Tensor, n: int, kind: int, dot: torch.dtype):
        self.flat, self.global_, self.n, self.kind = flat, global_, n, kind
        self.device = flat.device
        self.rows, self.d = flat.shape
        self.b = global_.shape[0]
        self.consts = {"KIND": kind, "PRECISION": input_precision(dot), "DOT": DOT_DTYPES[dot],
                       "BLOCK_D": block_d(self.d)}
        self.key = (("jsd", "nce")[kind], str(flat.dtype), str(global_.dtype), str(dot), self.consts["PRECISION"],
                    f"B={self.b}", f"D={self.d}")
        self.weights = loss_weights(kind, self.b, n)
        self.fma = dot == torch.float32 and self.consts["PRECISION"] == "ieee"

    def fwd(self, config: Config, row_loss: Tensor, lse: Tensor) -> tuple[tuple, tuple]:
        """(grid, arguments) of the forward."""
        return (triton.cdiv(self.rows, config.block_m),), (
            self.flat, self.global_, row_loss, lse, self.rows, self.n, self.b, self.d, self.flat.stride(0),
            self.global_.stride(0), *self.weights)

    def bwd(self, config: Config, lse: Tensor, grad: Tensor, d_local: Tensor, partial: Tensor) -> tuple[tuple, tuple]:
        """(grid, arguments) of the backward (``partial``: (programs, B, D) fp32)."""
        programs, per_program = bwd_split(self.rows, config.block_m)
        return (programs,), (self.flat, self.global_, lse, grad, d_local, partial, self.rows, self.n, self.b, self.d,
                             self.flat.stride(0), self.global_.stride(0), per_program, *self.weights)

    def buffers(self) -> tuple[Tensor, Tensor]:
        """(row losses, per-row logsumexps) of the forward."""
        dev = self.flat.device
        return (torch.empty(self.rows, device=dev, dtype=torch.float32),
                torch.empty(self.rows if self.kind == NCE.value else 1, device=dev, dtype=torch.float32))

    def build(self, name: str, config: Config):
        """Compile (without launching) kernel ``name`` for ``config`` with this call's run-time specialisation."""
        dev = self.flat.device
        if name == "fwd":
            grid, args = self.fwd(config, *self.buffers())
        else:
            one = torch.ones(1, device=dev)
            grid, args = self.bwd(config, self.buffers()[1], one, one, one)
        return KERNELS[name].warmup(*args, grid=grid, **_options(config, self.consts))

    def config(self, name: str) -> Config | None:
        """Kernel ``name``'s config: forced, cached, or the first preferred one that fits this device (None: none)."""
        if _FORCED:
            return _FORCED[-1]
        device = self.device
        key = (str(device), name, *self.key)
        if key not in _CHOSEN:
            candidates = preferred_configs(self.b, fma=self.fma)
            if INTERPRET or device.type != "cuda":
                _CHOSEN[key] = candidates[0]
            else:
                limit = max_shared_memory(device.index)
                chosen = next((c for c in candidates if fits(self.build(name, c), limit)), None)
                if chosen is None:
                    return None
                _CHOSEN[key] = chosen
        return _CHOSEN[key]


class JSDTritonFunction(torch.autograd.Function):
    """The critic loss of local (B*N, D) rows of B images and global_ (B, D) codes -> fp32 scalar (``_Plan``)."""

    @staticmethod
    def forward(ctx, flat: Tensor, global_: Tensor, plan: _Plan, config: Config, bwd_config: Config) -> Tensor:
        row_loss, lse = plan.buffers()
        grid, args = plan.fwd(config, row_loss, lse)
        with _device(flat):
            _critic_fwd_kernel[grid](*args, **_options(config, plan.consts))
        ctx.save_for_backward(lse)
        ctx.plan, ctx.config = plan, bwd_config
        return row_loss.sum()

    @staticmethod
    def backward(ctx, grad: Tensor):
        (lse,) = ctx.saved_tensors
        plan, config = ctx.plan, ctx.config
        with _device(plan.flat):
            d_local = torch.empty(plan.rows, plan.d, device=plan.flat.device, dtype=torch.float32)
            partial = torch.empty(bwd_split(plan.rows, config.block_m)[0], plan.b, plan.d, device=plan.flat.device,
                                  dtype=torch.float32)
            grid, args = plan.bwd(config, lse, grad.float().reshape(1).contiguous(), d_local, partial)
            _critic_bwd_kernel[grid](*args, **_options(config, plan.consts))
            d_global = partial.sum(0)
        return d_local, d_global, None, None, None


def _torch_fallback(local: Tensor, global_: Tensor, kind: int, reason: str) -> Tensor:
    from discbench.kernels.jsd_torch import jsd_mi_loss_torch, nce_mi_loss_torch

    if reason not in _FALLBACKS:
        warnings.warn(f"Triton critic: {reason}; running the streamed torch path", stacklevel=3)
    _FALLBACKS[reason] = _FALLBACKS.get(reason, 0) + 1
    return (jsd_mi_loss_torch if kind == JSD.value else nce_mi_loss_torch)(local, global_)


def _critic(local: Tensor, global_: Tensor, kind: int) -> Tensor:
    if local.dim() != 3 or global_.dim() != 2 or global_.shape != (local.shape[0], local.shape[2]):
        raise DiscbenchError(f"the critic takes local codes (B, N, D) and global codes (B, D), got "
                             f"{tuple(local.shape)} and {tuple(global_.shape)}")
    if local.device != global_.device:
        raise DiscbenchError(f"local codes on {local.device} and global codes on {global_.device}: the critic needs "
                             f"both on one device")
    b, n, d = local.shape
    if d > MAX_D:
        return _torch_fallback(local, global_, kind, f"D = {d} > {MAX_D} (a code tile must stay on chip)")
    dot = dot_dtype(local, global_)
    # the kernels read fp32/fp16/bf16 codes as they are (cast to the dot dtype in registers); others become fp32
    flat = local.reshape(b * n, d)
    flat = flat if flat.dtype in DOT_DTYPES else flat.float()
    glob = global_ if global_.dtype in DOT_DTYPES else global_.float()
    flat = flat if flat.stride(-1) == 1 else flat.contiguous()
    glob = glob if glob.stride(-1) == 1 else glob.contiguous()
    plan = _Plan(flat, glob, n, kind, dot)
    with _device(flat):  # both configs before anything runs: a shape that fits neither kernel falls back whole
        config, bwd_config = plan.config("fwd"), plan.config("bwd")
    if config is None or bwd_config is None:
        name = torch.cuda.get_device_name(flat.device)
        return _torch_fallback(local, global_, kind, f"no config fits {' '.join(plan.key)} on {name}")
    return JSDTritonFunction.apply(flat, glob, plan, config, bwd_config)


def jsd_mi_loss_triton(local: Tensor, global_: Tensor) -> Tensor:
    """Same value and gradients as ``jsd_ref.jsd_mi_loss_ref``; fused, O(B N D) memory.

    Shape: local (B, N, D), global_ (B, D) -> scalar (fp32). Dots in the autocast dtype (or the codes' half dtype).
    """
    return _critic(local, global_, JSD.value)


def nce_mi_loss_triton(local: Tensor, global_: Tensor) -> Tensor:
    """Same value and gradients as ``jsd_ref.nce_mi_loss_ref``; fused, O(B N D) memory.

    Shape: local (B, N, D), global_ (B, D) -> scalar (fp32). Dots in the autocast dtype (or the codes' half dtype).
    """
    return _critic(local, global_, NCE.value)


def _patch_interpreter_bf16() -> None:
    """Make the interpreter's bf16 arithmetic the GPU's. It stores bf16 as uint16 and (triton 3.8) truncates fp32 to
    bf16 where the GPU rounds to nearest even, and its ``tl.dot`` multiplies the uint16 bit patterns. Replaced here:
    fp32 -> bf16 rounds to nearest even, and a dot of bf16 operands multiplies their values in fp32 (exact
    products, fp32 accumulation: what the tensor cores compute)."""
    import numpy as np
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_dot, "_discbench", False):
        return
    create_dot, cast_impl = builder.create_dot, builder.cast_impl

    def widen(x):
        if x.dtype.scalar != tl.bfloat16:
            return x
        bits = x.data.astype(np.uint32) << np.uint32(16)
        return interpreter.TensorHandle(bits.view(np.float32), tl.float32)

    def patched_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return create_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    def patched_cast(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32)
            rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
            rounded = np.where(np.isnan(src.data), np.uint32(0x7FC0), rounded)
            return interpreter.TensorHandle(rounded.astype(np.uint16), tl.bfloat16)
        return cast_impl(self, src, dst_type)

    patched_dot._discbench = True
    builder.create_dot = patched_dot
    builder.cast_impl = patched_cast
    builder.create_fp_trunc = patched_cast


if INTERPRET:
    _patch_interpreter_bf16()
