"""The Jensen-Shannon MI critic loss, streamed over blocks of global vectors: never holds the (B, B, N) scores.

Forward and backward both walk blocks of the B' (global) axis with 2-D GEMMs on the local codes viewed as
(B*N, D); backward recomputes each block's scores instead of saving them, so only ``local`` and ``global_`` are
saved. Positives (the block's diagonal) are handled in closed form outside the blocks and zeroed inside them.
This is the CPU path and the fallback of the Triton kernel; ``jsd_ref.jsd_mi_loss_ref`` is its oracle.

Gradients, with w_pos = 1 / (B N), w_neg = 1 / (B (B-1) N) and g the upstream gradient:
    dL/ds[b, b, n] = -g w_pos sigmoid(-s),   dL/ds[b, c, n] = g w_neg sigmoid(s)  (c != b)
    d local[b, n] = sum_c dS[b, c, n] global_[c],   d global_[c] = sum_{b, n} dS[b, c, n] local[b, n]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK_ELEMENTS = 1 << 21  # scores per block (8 MiB in fp32)
MIN_BLOCK = 16


def block_size(b: int, n: int) -> int:
    """Columns (global vectors) per block: about BLOCK_ELEMENTS scores, at least MIN_BLOCK, at most B."""
    return max(1, min(b, max(MIN_BLOCK, BLOCK_ELEMENTS // max(b * n, 1))))


def _blocks(b: int, n: int, block: int):
    for c0 in range(0, b, block):
        yield c0, min(c0 + block, b)


def _zero_positives(scores: Tensor, b: int, n: int, c0: int, c1: int) -> None:
    """Zero the entries (row (c, n), column c - c0) of a (B*N, c1-c0) score block in place: its positives."""
    scores.view(b, n, c1 - c0)[c0:c1].diagonal(dim1=0, dim2=2).zero_()


class StreamedJSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: Tensor, global_: Tensor, block: int) -> Tensor:
        b, n, d = local.shape
        flat = local.reshape(b * n, d)
        positives = torch.einsum("bnd,bd->bn", local, global_)  # (B, N)
        loss = F.softplus(-positives).mean()
        if b > 1:
            negatives = local.new_zeros(())
            for c0, c1 in _blocks(b, n, block):
                scores = F.softplus(flat @ global_[c0:c1].T)  # (B*N, c1-c0)
                _zero_positives(scores, b, n, c0, c1)
                negatives += scores.sum()
            loss = loss + negatives / (b * (b - 1) * n)
        ctx.save_for_backward(local, global_)
        ctx.block = block
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor):
        local, global_ = ctx.saved_tensors
        b, n, d = local.shape
        flat = local.reshape(b * n, d)
        positives = torch.einsum("bnd,bd->bn", local, global_)
        d_pos = torch.sigmoid(-positives).mul_(-grad / (b * n))  # (B, N)
        d_local = d_pos[:, :, None] * global_[:, None, :]  # (B, N, D): the positives' share
        d_global = torch.einsum("bn,bnd->bd", d_pos, local)
        if b > 1:
            d_flat = d_local.view(b * n, d)
            w_neg = grad / (b * (b - 1) * n)
            for c0, c1 in _blocks(b, n, ctx.block):
                g_block = global_[c0:c1]
                d_scores = torch.sigmoid_(flat @ g_block.T).mul_(w_neg)  # (B*N, c1-c0)
                _zero_positives(d_scores, b, n, c0, c1)
                d_flat.addmm_(d_scores, g_block)
                d_global[c0:c1] += d_scores.T @ flat
        return d_local, d_global, None


def jsd_mi_loss_torch(local: Tensor, global_: Tensor, block: int | None = None) -> Tensor:
    """Same value and gradients as ``jsd_mi_loss_ref``, in O(B N D + B N block) memory. Shape: (B, N, D), (B, D)."""
    b, n, _ = local.shape
    local = local.float().contiguous()
    return StreamedJSD.apply(local, global_.float().contiguous(), block or block_size(b, n))
