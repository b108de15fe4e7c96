"""The local/global MI critic losses (JSD and InfoNCE), streamed over chunks of images: never holds the (B, B, N)
scores.

The local codes are viewed as rows r = (b, n) of a (B*N, D) matrix and the global codes as the columns of the
scores. Forward and backward walk chunks of whole images (k*N rows) with 2-D GEMMs: a chunk's scores are
(k*N, B), its positives (column b for the rows of image b) are a strided view of them, and backward recomputes
them instead of saving them. Only ``local`` and ``global_`` are saved (plus one float per row for InfoNCE: its
logsumexp), except when JSD's scores fit in one chunk: forward then keeps that chunk (at most BLOCK_ELEMENTS
floats) and backward skips the GEMM that would recompute it, with the same values. This is the CPU path and the
fallback of the Triton kernels (which tile the same way); ``jsd_ref`` holds the oracles.

Why chunks of rows and not blocks of the B' (global) axis: a row chunk reads each local code once per GEMM and its
(k*N, D) slice stays in cache for the chunk's two backward GEMMs, while a column block re-reads all of ``local``
for every block. On this 2-core Xeon (one thread) the score GEMM at B*N = 131072, D = B = 128 runs at 117 GFLOP/s in
row chunks of 16384 and at 37 GFLOP/s in column blocks of 16. d local is written chunk by chunk (no accumulation),
d global_ accumulates one (B, D) GEMM per chunk.

Gradients, with g the upstream gradient, dS[r, c] = dL/ds[r, c]:

- JSD, w_pos = 1 / (B N), w_neg = 1 / (B (B-1) N): dS = -g w_pos sigmoid(-s) on positives, g w_neg sigmoid(s) on
  negatives;
- InfoNCE, w = 1 / (B N): dS = g w (softmax_c(s)[r, c] - [c == b(r)]), the softmax being exp(s - lse);

and d local = dS @ global_ (chunk rows), d global_ = sum over chunks of dS^T @ local_chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

BLOCK_ELEMENTS = 1 << 20  # scores per chunk (4 MiB in fp32), at least one image's N*B


def softplus(x: Tensor) -> Tensor:
    """log(1 + e^x) as max(x, 0) + log(1 + e^-|x|), a new tensor. Its absolute error is at most 6e-8 (log of a
    number in (1, 2]) plus the final addition's rounding, like ``F.softplus``'s; only below x = -16, where the exact
    value is under 1e-7, it returns 0 instead. The JSD loss is a mean of such terms, so that changes it by less than
    1e-7, and its gradient (sigmoid, in backward) not at all. 6x faster than ``F.softplus`` on CPUs where ATen uses
    AVX-512 kernels, whose ``log1p`` (what ``F.softplus`` applies to e^x) takes 8x as long as the AVX2 one
    (docs/costs.md); as fast elsewhere."""
    return x.abs().neg_().exp_().add_(1).log_().add_(x.clamp(min=0))


def block_size(b: int, n: int) -> int:
    """Images per chunk: about BLOCK_ELEMENTS scores (k*N rows x B columns), at least 1, at most B."""
    return max(1, min(b, BLOCK_ELEMENTS // max(b * n, 1)))


def _chunks(b: int, block: int) -> Iterator[tuple[int, int]]:
    for i0 in range(0, b, block):
        yield i0, min(i0 + block, b)


def _positives(scores: Tensor, n: int, i0: int, i1: int) -> Tensor:
    """The positive entries of a chunk's (k*N, B) scores (images i0..i1): a (N, k) view, writable in place."""
    return scores.view(i1 - i0, n, -1)[:, :, i0:i1].diagonal(dim1=0, dim2=2)


def _chunk_scores(flat: Tensor, global_: Tensor, n: int, i0: int, i1: int) -> tuple[Tensor, Tensor]:
    """(local rows of images i0..i1, their scores against every global vector): (k*N, D), (k*N, B)."""
    rows = flat[i0 * n:i1 * n]
    return rows, rows @ global_.T


def _streamed_grads(local: Tensor, global_: Tensor, block: int, saved: Tensor | None,
                    d_scores: Callable[[Tensor, int, int, Tensor | None], Tensor]) -> tuple[Tensor, Tensor]:
    """d local, d global_ given ``d_scores(scores, i0, i1, out)``: a chunk's dS, written into ``out``. ``out`` is
    the chunk's recomputed scores themselves, or None (a new tensor) when the scores are ``saved``: a single chunk
    that forward kept, which a second backward over the same graph reads again. ``saved`` None: recompute.

    d local is returned as a tensor of its own, not a view: autograd then adds the other critic's d local into it
    in place (MUSE's MI and SI terms share ``local``) instead of allocating the sum."""
    b, n, d = local.shape
    flat = local.view(b * n, d)
    d_local = torch.empty_like(local)
    d_flat = d_local.view(b * n, d)  # (B*N, D), written chunk by chunk
    d_global = torch.zeros_like(global_)
    for i0, i1 in _chunks(b, block):
        if saved is None:
            rows, scores = _chunk_scores(flat, global_, n, i0, i1)
        else:
            rows, scores = flat, saved
        ds = d_scores(scores, i0, i1, None if saved is not None else scores)  # (k*N, B)
        torch.mm(ds, global_, out=d_flat[i0 * n:i1 * n])
        d_global.addmm_(ds.T, rows)
        del scores, ds  # before the next chunk's scores exist
    return d_local, d_global


def _single_chunk(b: int, block: int) -> bool:
    """Whether forward covers every image in one chunk, so that it keeps the (B*N, B) scores for backward (at most
    BLOCK_ELEMENTS floats unless one image alone is bigger) instead of backward recomputing them with a GEMM."""
    return block >= b


class StreamedJSD(torch.autograd.Function):
    """MUSE Eq. 5 JSD loss (``jsd_ref.jsd_mi_loss_ref``) with O(B N D + block N B) memory."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # fp32 scores even inside autocast
    def forward(ctx, local: Tensor, global_: Tensor, block: int) -> Tensor:
        b, n, d = local.shape
        positive = local.new_zeros(())
        negative = local.new_zeros(())
        for i0, i1 in _chunks(b, block):
            _, scores = _chunk_scores(local.view(b * n, d), global_, n, i0, i1)
            positive += softplus(-_positives(scores, n, i0, i1)).sum()
            terms = softplus(scores)
            _positives(terms, n, i0, i1).zero_()
            negative += terms.sum()
            del terms
        loss = positive / (b * n)
        if b > 1:
            loss = loss + negative / (b * (b - 1) * n)
        ctx.save_for_backward(local, global_, scores if _single_chunk(b, block) else None)
        ctx.block = block
        return loss

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: Tensor):
        local, global_, saved = ctx.saved_tensors
        b, n, _ = local.shape
        w_pos = grad / (b * n)
        w_neg = grad / (b * (b - 1) * n) if b > 1 else torch.zeros_like(grad)

        def d_scores(scores: Tensor, i0: int, i1: int, out: Tensor | None) -> Tensor:
            d_positive = torch.sigmoid(-_positives(scores, n, i0, i1)).mul_(-w_pos)  # (N, k), before out is written
            ds = torch.sigmoid(scores, out=out).mul_(w_neg)
            _positives(ds, n, i0, i1).copy_(d_positive)
            return ds

        d_local, d_global = _streamed_grads(local, global_, ctx.block, saved, d_scores)
        return d_local, d_global, None


class StreamedNCE(torch.autograd.Function):
    """InfoNCE loss (``jsd_ref.nce_mi_loss_ref``): a row-wise logsumexp per chunk, O(B N D + block N B) memory."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # fp32 scores even inside autocast
    def forward(ctx, local: Tensor, global_: Tensor, block: int) -> Tensor:
        b, n, d = local.shape
        lse = local.new_empty(b * n)  # logsumexp of each row over the B global vectors
        positive = local.new_zeros(())
        for i0, i1 in _chunks(b, block):
            _, scores = _chunk_scores(local.view(b * n, d), global_, n, i0, i1)
            torch.logsumexp(scores, dim=1, out=lse[i0 * n:i1 * n])
            positive += _positives(scores, n, i0, i1).sum()
            del scores
        loss = (lse.sum() - positive) / (b * n)
        ctx.save_for_backward(local, global_, lse)
        ctx.block = block
        return loss

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: Tensor):
        local, global_, lse = ctx.saved_tensors
        b, n, _ = local.shape
        w = grad / (b * n)

        def d_scores(scores: Tensor, i0: int, i1: int, out: Tensor | None) -> Tensor:
            ds = torch.sub(scores, lse[i0 * n:i1 * n, None], out=out).exp_().mul_(w)  # w softmax
            _positives(ds, n, i0, i1).sub_(w)  # - w onehot
            return ds

        d_local, d_global = _streamed_grads(local, global_, ctx.block, None, d_scores)
        return d_local, d_global, None


def _apply(function: type[torch.autograd.Function], local: Tensor, global_: Tensor, block: int | None) -> Tensor:
    b, n, _ = local.shape
    return function.apply(local.float().contiguous(), global_.float().contiguous(), block or block_size(b, n))


def jsd_mi_loss_torch(local: Tensor, global_: Tensor, block: int | None = None) -> Tensor:
    """Same value and gradients as ``jsd_mi_loss_ref``, in O(B N D + block N B) memory (``block``: images per chunk).

    Shape: local (B, N, D), global_ (B, D) -> scalar (fp32; half-precision inputs are upcast).
    """
    return _apply(StreamedJSD, local, global_, block)


def nce_mi_loss_torch(local: Tensor, global_: Tensor, block: int | None = None) -> Tensor:
    """Same value and gradients as ``nce_mi_loss_ref``, in O(B N D + block N B) memory (``block``: images per chunk).

    Shape: local (B, N, D), global_ (B, D) -> scalar (fp32; half-precision inputs are upcast).
    """
    return _apply(StreamedNCE, local, global_, block)
