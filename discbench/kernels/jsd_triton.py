"""The local/global MI critic losses (JSD and InfoNCE) as fused Triton kernels: no (B, B, N) tensor in memory.

The local codes are viewed as rows r = (b, n) of a (B*N, D) matrix, the global codes as columns c of (B, D); the
score of a pair is s = <local[r], global_[c]> and the pair is positive when c == r // N (same image). Three kernels,
each a loop of (rows x columns) score tiles computed by ``tl.dot`` and consumed in registers:

- ``_critic_fwd_kernel``, one program per BLOCK_M rows, walks all column tiles: JSD sums w_pos softplus(-s) over the
  positive and w_neg softplus(s) over the negatives of each row; InfoNCE keeps an online logsumexp (flash-attention
  style) and the positive score. It writes one float per row (its share of the loss; InfoNCE also its logsumexp,
  saved for backward); the launcher sums them in torch (deterministic).
- ``_critic_bwd_local_kernel``, one program per BLOCK_M rows: recomputes the scores, turns them into dS and
  accumulates d local = dS @ global_ in a (BLOCK_M, D) register tile.
- ``_critic_bwd_global_kernel``, one program per (BLOCK_C columns, split): recomputes the scores of every SPLIT-th
  row tile and accumulates d global_ = dS^T @ local in a (BLOCK_C, D) tile; the launcher sums the SPLIT partials
  (SPLIT x B x D floats; deterministic, no atomics).

dS is computed *relative*: JSD uses -(B-1) sigmoid(-s) on positives and sigmoid(s) on negatives, InfoNCE
softmax - onehot, and the absolute weight (1 / (B (B-1) N) or 1 / (B N), times the upstream gradient) multiplies the
accumulated tile. The relative dS lies in [-(B-1), 1], so casting it to fp16 for the second ``tl.dot`` cannot
underflow (w_neg alone is 6e-8 at B = 128, N = 1024: below fp16's normal range).

GPU assumptions (the interpreter proves none of them; tests/test_triton_compile.py builds every kernel, both losses,
fp32/fp16/bf16, down to a cubin for sm_80 with triton's ptxas and checks its shared memory, and the largest tiles for
sm_90):
- every ``tl.dot`` operand dimension is >= 16: BLOCK_M, BLOCK_C >= 16 and BLOCK_D = max(16, next power of two >= D);
  the interpreter runs dots of any shape, while triton's NVIDIA backend rejects K < 16 in fp16/bf16 (K < 8 in fp32);
- every block size is a power of two (``tl.arange``); D <= MAX_D = 256, since a whole (BLOCK_M, BLOCK_D) tile of
  local codes stays in registers (MUSE uses D = 64 or 128); larger D raises;
- inputs are fp32, fp16 or bf16 (both operands of a dot in one dtype; the launcher casts global_ to local's dtype,
  and both to the autocast dtype inside ``torch.autocast``, as the reference's einsum would be), accumulation and
  the loss are fp32; half-precision dS is cast to the input dtype for the second dot, as flash-attention does with
  its probabilities;
- fp32 ``tl.dot`` runs as TF32 on NVIDIA unless told otherwise: ``input_precision`` follows
  ``torch.get_float32_matmul_precision()`` ("highest" -> "ieee", else "tf32"), and tests pass "ieee" for exactness;
- row offsets are computed in int64 (B*N*D may exceed 2^31 elements).

Interpreter (``TRITON_INTERPRET=1``, CPU tensors): one fixed config (INTERPRET_CONFIG; ``triton.autotune`` needs a
driver to time configs), no bf16 ``tl.dot`` (it multiplies raw bit patterns there), and the env var must be set
before this module is imported (``triton.jit`` reads it). On CUDA the kernels are autotuned over CUDA_CONFIGS.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from discbench.errors import DiscbenchError

JSD: tl.constexpr = tl.constexpr(0)
NCE: tl.constexpr = tl.constexpr(1)
MAX_D = 256
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
INTERPRET_CONFIG = {"BLOCK_M": 16, "BLOCK_C": 16}  # the smallest tiles that also meet the GPU constraints
CUDA_CONFIGS = [  # (BLOCK_M, BLOCK_C, num_warps)
    (32, 32, 4), (64, 32, 4), (64, 64, 4), (128, 32, 8), (128, 64, 8),
]
BWD_GLOBAL_SPLIT_INTERPRET = 2  # exercises the split partials even on tiny shapes


@triton.jit
def _softplus(x):
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _sigmoid(x):
    """1 / (1 + exp(-x)) through exp(-|x|): no inf intermediate for very negative x."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0, e) / (1.0 + e)


@triton.jit
def _tile(ptr, idx, n_idx, stride, ks, dim):
    """Rows ``idx`` (masked to < n_idx) of a row-major matrix, columns ``ks`` (masked to < dim); zeros elsewhere."""
    mask = (idx[:, None] < n_idx) & (ks[None, :] < dim)
    return tl.load(ptr + idx[:, None].to(tl.int64) * stride + ks[None, :], mask=mask, other=0.0)


@triton.jit
def _relative_d_scores(s, positive, valid, lse, pos_weight, neg_weight, KIND: tl.constexpr):
    """dS / (absolute weight) for a (rows, columns) score tile; zero outside ``valid``."""
    if KIND == JSD:
        ds = tl.where(positive, -pos_weight * _sigmoid(-s), neg_weight * _sigmoid(s))
    else:
        ds = tl.exp(s - lse[:, None]) - tl.where(positive, 1.0, 0.0)
    return tl.where(valid, ds, 0.0)


@triton.jit
def _critic_fwd_kernel(l_ptr, g_ptr, row_loss_ptr, lse_ptr, n_rows, n_loc, n_img, dim, stride_l, stride_g,
                       pos_weight, neg_weight, scale,
                       KIND: tl.constexpr, PRECISION: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ks = tl.arange(0, BLOCK_D)
    img = rows // n_loc  # the positive column of each row
    local = _tile(l_ptr, rows, n_rows, stride_l, ks, dim)  # (BLOCK_M, BLOCK_D)
    acc = tl.zeros((BLOCK_M,), dtype=tl.float32)  # JSD: weighted softplus sum; NCE: running sum of exp(s - m)
    run_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    pos_score = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for c0 in range(0, n_img, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = (cols < n_img)[None, :]
        glob = _tile(g_ptr, cols, n_img, stride_g, ks, dim)  # (BLOCK_C, BLOCK_D)
        s = tl.dot(local, tl.trans(glob), input_precision=PRECISION)  # (BLOCK_M, BLOCK_C), fp32
        positive = img[:, None] == cols[None, :]
        if KIND == JSD:
            terms = tl.where(positive, pos_weight * _softplus(-s), neg_weight * _softplus(s))
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
def _critic_bwd_local_kernel(l_ptr, g_ptr, lse_ptr, grad_ptr, dl_ptr, n_rows, n_loc, n_img, dim, stride_l, stride_g,
                             stride_dl, pos_weight, neg_weight, scale,
                             KIND: tl.constexpr, PRECISION: tl.constexpr, BLOCK_D: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ks = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    img = rows // n_loc
    local = _tile(l_ptr, rows, n_rows, stride_l, ks, dim)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0) if KIND == NCE else None
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for c0 in range(0, n_img, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        glob = _tile(g_ptr, cols, n_img, stride_g, ks, dim)
        s = tl.dot(local, tl.trans(glob), input_precision=PRECISION)
        valid = row_ok[:, None] & (cols < n_img)[None, :]
        ds = _relative_d_scores(s, img[:, None] == cols[None, :], valid, lse, pos_weight, neg_weight, KIND)
        acc += tl.dot(ds.to(glob.dtype), glob, input_precision=PRECISION)  # (BLOCK_M, BLOCK_D)
    acc = acc * (tl.load(grad_ptr) * scale)
    mask = row_ok[:, None] & (ks[None, :] < dim)
    tl.store(dl_ptr + rows[:, None].to(tl.int64) * stride_dl + ks[None, :], acc.to(dl_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _critic_bwd_global_kernel(l_ptr, g_ptr, lse_ptr, grad_ptr, partial_ptr, n_rows, n_loc, n_img, dim, stride_l,
                              stride_g, pos_weight, neg_weight, scale, n_split,
                              KIND: tl.constexpr, PRECISION: tl.constexpr, BLOCK_D: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(1)
    ks = tl.arange(0, BLOCK_D)
    col_ok = cols < n_img
    glob = _tile(g_ptr, cols, n_img, stride_g, ks, dim)  # (BLOCK_C, BLOCK_D)
    acc = tl.zeros((BLOCK_C, BLOCK_D), dtype=tl.float32)
    for t in range(split, tl.cdiv(n_rows, BLOCK_M), n_split):
        rows = t * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        local = _tile(l_ptr, rows, n_rows, stride_l, ks, dim)  # (BLOCK_M, BLOCK_D)
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0) if KIND == NCE else None
        s = tl.dot(local, tl.trans(glob), input_precision=PRECISION)
        ds = _relative_d_scores(s, (rows // n_loc)[:, None] == cols[None, :], row_ok[:, None] & col_ok[None, :],
                                lse, pos_weight, neg_weight, KIND)
        acc += tl.dot(tl.trans(ds.to(local.dtype)), local, input_precision=PRECISION)  # (BLOCK_C, BLOCK_D)
    acc = acc * (tl.load(grad_ptr) * scale)
    out = partial_ptr + split.to(tl.int64) * n_img * dim + cols[:, None] * dim + ks[None, :]
    tl.store(out, acc, mask=col_ok[:, None] & (ks[None, :] < dim))


@functools.cache
def _autotuned(kernel):
    """``kernel`` autotuned over CUDA_CONFIGS (built lazily: only CUDA launches need it)."""
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_C": c}, num_warps=w) for m, c, w in CUDA_CONFIGS]
    return triton.autotune(configs=configs, key=["n_rows", "n_img", "BLOCK_D", "KIND"])(kernel)


def _launch(kernel, grid, *args, **constexprs) -> None:
    """One fixed config under the interpreter, autotuning on CUDA; ``grid`` is a function of the meta-parameters."""
    if INTERPRET:
        kernel[grid](*args, **constexprs, **INTERPRET_CONFIG)
    else:
        _autotuned(kernel)[grid](*args, **constexprs)


def block_d(dim: int) -> int:
    """BLOCK_D for codes of ``dim`` features: the next power of two, at least 16 (a GPU's minimum dot size)."""
    return max(16, triton.next_power_of_2(dim))


def input_precision(dtype: torch.dtype) -> str:
    """fp32 dots follow torch's matmul precision ("highest" -> IEEE, otherwise TF32); half dtypes are exact."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def loss_weights(kind: int, b: int, n: int) -> tuple[float, float, float]:
    """(pos_weight, neg_weight, scale): relative weights of positives and negatives in dS and the absolute scale.

    JSD: w_pos = 1/(B N) = (B-1) w_neg, so positives weigh B-1 and negatives 1 at scale w_neg (B = 1: no negatives,
    positives weigh 1 at scale w_pos). InfoNCE: softmax - onehot at scale 1/(B N) (the weights are unused).
    """
    if kind == JSD.value and b > 1:
        return float(b - 1), 1.0, 1.0 / (b * (b - 1) * n)
    return 1.0, 0.0, 1.0 / (b * n)


def bwd_global_split(n_rows: int, n_img: int, device: torch.device) -> int:
    """Programs along the rows for d global_: about 4 per streaming multiprocessor over all column tiles."""
    if INTERPRET or device.type != "cuda":
        return BWD_GLOBAL_SPLIT_INTERPRET
    programs = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(n_rows, 16), programs // triton.cdiv(n_img, 32)))


class JSDTritonFunction(torch.autograd.Function):
    """The critic loss ``kind`` (JSD or NCE) of local (B, N, D) and global_ (B, D) codes -> fp32 scalar."""

    @staticmethod
    def forward(ctx, local: Tensor, global_: Tensor, kind: int) -> Tensor:
        b, n, d = local.shape
        flat = local.reshape(b * n, d)
        row_loss = torch.empty(b * n, device=local.device, dtype=torch.float32)
        lse = torch.empty(b * n if kind == NCE.value else 1, device=local.device, dtype=torch.float32)
        weights = loss_weights(kind, b, n)
        consts = {"KIND": kind, "PRECISION": input_precision(local.dtype), "BLOCK_D": block_d(d)}

        def grid(meta):
            return (triton.cdiv(b * n, meta["BLOCK_M"]),)

        _launch(_critic_fwd_kernel, grid, flat, global_, row_loss, lse, b * n, n, b, d, flat.stride(0),
                global_.stride(0), *weights, **consts)
        ctx.save_for_backward(flat, global_, lse)
        ctx.shape, ctx.kind, ctx.consts = (b, n, d), kind, consts
        return row_loss.sum()

    @staticmethod
    def backward(ctx, grad: Tensor):
        flat, global_, lse = ctx.saved_tensors
        b, n, d = ctx.shape
        weights = loss_weights(ctx.kind, b, n)
        grad = grad.float().reshape(1).contiguous()
        d_local = torch.empty_like(flat)

        def rows_grid(meta):
            return (triton.cdiv(b * n, meta["BLOCK_M"]),)

        _launch(_critic_bwd_local_kernel, rows_grid, flat, global_, lse, grad, d_local, b * n, n, b, d,
                flat.stride(0), global_.stride(0), d_local.stride(0), *weights, **ctx.consts)
        split = bwd_global_split(b * n, b, flat.device)
        partial = torch.empty(split, b, d, device=flat.device, dtype=torch.float32)

        def cols_grid(meta):
            return (triton.cdiv(b, meta["BLOCK_C"]), split)

        _launch(_critic_bwd_global_kernel, cols_grid, flat, global_, lse, grad, partial, b * n, n, b, d,
                flat.stride(0), global_.stride(0), *weights, split, **ctx.consts)
        return d_local.view(b, n, d), partial.sum(0).to(global_.dtype), None


def _critic(local: Tensor, global_: Tensor, kind: int) -> Tensor:
    b, n, d = local.shape
    if d > MAX_D:
        raise DiscbenchError(f"the Triton critic keeps a whole code in registers and supports D <= {MAX_D}, got "
                             f"D = {d}; use DISCBENCH_IMPL=torch")
    if torch.is_autocast_enabled(local.device.type):  # like the reference's einsum: dots in the autocast dtype
        local = local.to(torch.get_autocast_dtype(local.device.type))
    elif local.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        local = local.float()
    return JSDTritonFunction.apply(local.contiguous(), global_.to(local.dtype).contiguous(), kind)


def jsd_mi_loss_triton(local: Tensor, global_: Tensor) -> Tensor:
    """Same value and gradients as ``jsd_ref.jsd_mi_loss_ref``; fused, O(B N D) memory.

    Shape: local (B, N, D), global_ (B, D) -> scalar (fp32). fp16/bf16 inputs stay half precision in the dots.
    """
    return _critic(local, global_, JSD.value)


def nce_mi_loss_triton(local: Tensor, global_: Tensor) -> Tensor:
    """Same value and gradients as ``jsd_ref.nce_mi_loss_ref``; fused, O(B N D) memory.

    Shape: local (B, N, D), global_ (B, D) -> scalar (fp32). fp16/bf16 inputs stay half precision in the dots.
    """
    return _critic(local, global_, NCE.value)
