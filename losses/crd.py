"""Contrastive Representation Distillation (Tian, Krishnan and Isola, "Contrastive Representation Distillation",
ICLR 2020), with its two momentum memory banks over the whole training set."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discbench.api import Discrepancy, FeatureSpec, LossContext, LossOutput, Pairing, Range, Tap
from discbench.errors import DiscbenchError
from discbench.features import pooled
from discbench.registry import LOSSES


class Embed(nn.Module):
    """CRD's embedding head g: a linear map, then L2 normalisation (paper §3.4). Shape: (B, C) -> (B, D), unit rows."""

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(in_features, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x), dim=1)


def nce_loss(log_p: Tensor, log_noise: float) -> Tensor:
    """NCE loss of one anchor view (CRD §3.1, L_critic; Gutmann and Hyvärinen 2010), summed over the negatives.

    With P = exp(v . m / tau) / Z the model's score of a bank entry, K noise samples of probability P_n each and
    c = log(K P_n), the posterior that an entry is the positive is h = P / (P + K P_n), and

        loss = mean_b [ -log h(positive_b) - sum_{k=1..K} log(1 - h(negative_bk)) ]
             = mean_b [ softplus(c - log P_b0) + sum_k softplus(log P_bk - c) ]

    (RepDistiller's ``ContrastLoss`` in log space, without its eps = 1e-7 in the denominators).

    Shape: log_p (B, 1+K), column 0 the positive -> scalar.
    """
    return (F.softplus(log_noise - log_p[:, 0]) + F.softplus(log_p[:, 1:] - log_noise).sum(dim=1)).mean()


@LOSSES.register()
class CRD(Discrepancy):
    """CRD's NCE loss between pooled source and target features, anchored on each side in turn and summed.

    Paper (Tian et al. 2020): §3.1, the bound I(T; S) >= log K + L_critic(h) with the NCE objective
    L_critic(h) = E_{congruent}[log h] + K E_{incongruent}[log(1 - h)] and the critic h(T, S) =
    e^{g_T(T)' g_S(S) / tau} / (e^{g_T(T)' g_S(S) / tau} + K/N) (K negatives, N = data-set size); §3.4, the memory
    buffer and the linear embeddings. Implemented as RepDistiller does (``crd/criterion.py``, ``crd/memory.py``;
    github.com/HobbitLong/RepDistiller), which normalises e^{s/tau} by an estimated Z instead of assuming Z = 1:

    - v_s = g_s(pool(source)), v_t = g_t(pool(target).detach()): trainable ``Embed`` heads (Linear to ``dim`` = 128,
      then L2 normalisation), one per side. The target feature is detached (offline: a frozen teacher); its
      embedding head still trains, through the target-anchored term.
    - Two memory banks of N = ``ctx.dataset_size`` rows of ``dim`` (``memory_source``, ``memory_target``), buffers
      allocated on the first forward (N is only known from the loss context), initialised uniformly in
      [-s, s] with s = 1/sqrt(dim/3) (rows of norm about 1), updated after each training step at the batch's
      indices ``ctx.indices``: m_i <- normalise(momentum * m_i + (1 - momentum) * v_i), momentum 0.5.
    - Candidates per anchor i: its own index (the positive, CRD's "exact" mode: the same image in the other view's
      bank) and K = min(``nce_k``, N - 1) negatives. Scores: log P = v . m / tau - log Z, tau = 0.07.
    - Z is the partition function over the bank's N entries, estimated on the first training batch as N times the
      mean of exp(v . m / tau) over its B (1+K) candidates, separately for each anchor side, then frozen (buffer
      ``log_z``), as RepDistiller does.
    - loss = nce_loss(source anchors against ``memory_target``) + nce_loss(target anchors against
      ``memory_source``): "summed symmetrically", the terms logged as ``nce_source`` and ``nce_target``.

    **Negative sampling (chosen):** each negative index is drawn independently and uniformly from the N - 1 training
    samples other than the anchor, with replacement, so P_n = 1/(N - 1) and the anchor's own index is never a
    negative. This is the noise distribution the CRD paper's NCE derivation assumes (uniform over the data set,
    the K/N term of h). RepDistiller's CIFAR loader instead draws negatives only from *other classes*
    (``cls_negative``) while its loss still uses P_n = 1/N: the sampler and the formula disagree, and same-class
    images can never be negatives. A plugin also sees only its batch's labels, not those of the whole bank.
    (RepDistiller's P_n = 1/N differs from ours by a factor N/(N-1), which is 1 + 2e-5 on CIFAR.)

    Choices where neither source is explicit: the loss is in at least fp32 with autocast off (exp(s / 0.07) amplifies
    bf16 rounding of the scores 14-fold): bf16/fp16 inputs are computed in fp32, fp64 inputs in fp64 (banks allocated
    in that dtype, so a float64 reference step can check the loss to rounding); scores are computed against the
    whole bank and then gathered, which holds B x N floats instead of the B x (1+K) x dim gathered rows RepDistiller
    materialises (25 MB instead of 1 GB at B = 128, N = 50 000, K = 16 384, dim = 128) at N/(1+K) times the GEMM
    FLOPs; the banks are updated out of place (one N x dim copy per step) because the score GEMM saves them for
    backward; banks and Z change only in training mode; indices within a batch are assumed distinct (an epoch
    permutation).

    Shape: source (B, C_s, H, W) or (B, C_s), target (B, C_t, H', W') or (B, C_t) -> scalar; ``ctx.indices`` (B,).
    Parameters: the two embedding heads, (C_s + 1) dim + (C_t + 1) dim. Buffers: 2 N dim floats of banks.
    """

    name = "crd"
    tap = Tap.FEATURE
    pairing = Pairing.LAST
    detaches_target = True

    ranges = {"dim": Range(ge=1), "nce_k": Range(ge=1), "temperature": Range(gt=0), "momentum": Range(ge=0, le=1)}

    def __init__(self, source: FeatureSpec, target: FeatureSpec, dim: int = 128, nce_k: int = 16384,
                 temperature: float = 0.07, momentum: float = 0.5):
        super().__init__(source, target)
        self.dim, self.nce_k, self.temperature, self.momentum = dim, nce_k, temperature, momentum
        self.embed_source = Embed(source.channels, dim)
        self.embed_target = Embed(target.channels, dim)
        self.register_buffer("memory_source", None)  # (N, dim), allocated by ``allocate_banks``
        self.register_buffer("memory_target", None)  # (N, dim)
        self.register_buffer("log_z", torch.full((2,), math.nan))  # log Z of the (source, target)-anchored scores

    def num_negatives(self, dataset_size: int) -> int:
        """K: ``nce_k`` clamped to the N - 1 other samples."""
        return min(self.nce_k, dataset_size - 1)

    def allocate_banks(self, dataset_size: int, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        """Create both memory banks on the first call (RepDistiller's uniform initialisation), in ``dtype``; check N
        afterwards."""
        if self.memory_source is not None:
            if self.memory_source.shape[0] != dataset_size:
                raise DiscbenchError(f"crd: memory banks hold {self.memory_source.shape[0]} samples but the loss "
                                     f"context says the training set has {dataset_size}")
            return
        if dataset_size < 2:
            raise DiscbenchError(f"crd needs a training set of at least 2 samples, got {dataset_size}")
        bound = 1.0 / math.sqrt(self.dim / 3)
        self.memory_source = (torch.rand(dataset_size, self.dim, device=device, dtype=dtype) * 2 - 1) * bound
        self.memory_target = (torch.rand(dataset_size, self.dim, device=device, dtype=dtype) * 2 - 1) * bound

    @staticmethod
    def draw_negatives(anchors: Tensor, dataset_size: int, k: int) -> Tensor:
        """K indices per anchor, i.i.d. uniform over the N - 1 indices other than the anchor's own.

        Shape: anchors (B,) -> (B, K) int64.
        """
        r = torch.randint(0, dataset_size - 1, (anchors.shape[0], k), device=anchors.device)  # uniform on N - 1
        return r + (r >= anchors[:, None]).long()  # skip the anchor: {0..N-2} -> {0..N-1} \ {anchor}

    def forward(self, source: Tensor, target: Tensor, ctx: LossContext) -> LossOutput:
        n = ctx.dataset_size
        dtype = torch.promote_types(source.dtype, torch.float32)  # fp32 at least (bf16/fp16 -> fp32), fp64 stays fp64
        with torch.autocast(device_type=source.device.type, enabled=False):
            v_s = self.embed_source(pooled(source).to(dtype))  # (B, dim)
            v_t = self.embed_target(pooled(target).detach().to(dtype))  # (B, dim)
            anchors = ctx.indices.to(device=v_s.device, dtype=torch.long)  # (B,)
            self.allocate_banks(n, v_s.device, dtype)
            k = self.num_negatives(n)
            candidates = torch.cat([anchors[:, None], self.draw_negatives(anchors, n, k)], dim=1)  # (B, 1+K)
            # each anchor view against the *other* view's bank: (B, N) scores, gathered to (B, 1+K)
            logits = torch.stack([(v_s @ self.memory_target.to(dtype).T).gather(1, candidates),
                                  (v_t @ self.memory_source.to(dtype).T).gather(1, candidates)]) / self.temperature
            log_z = self.log_z
            if torch.isnan(log_z).any():  # first batch: N * mean exp(score), per anchor side
                log_z = (torch.logsumexp(logits.detach().flatten(1), dim=1) - math.log(candidates.numel())
                         + math.log(n))
                if self.training:
                    self.log_z.copy_(log_z)
            log_noise = math.log(k / (n - 1))  # log(K P_n), P_n = 1/(N-1)
            nce_source = nce_loss(logits[0] - log_z[0], log_noise)
            nce_target = nce_loss(logits[1] - log_z[1], log_noise)
            if self.training:
                self.update_banks(anchors, v_s.detach(), v_t.detach())
        return LossOutput(nce_source + nce_target, {"nce_source": nce_source.detach(),
                                                    "nce_target": nce_target.detach()})

    @torch.no_grad()
    def update_banks(self, anchors: Tensor, v_s: Tensor, v_t: Tensor) -> None:
        """m_i <- normalise(momentum m_i + (1 - momentum) v_i) at the anchors' rows, out of place (see class doc)."""
        m = self.momentum
        for name, v in (("memory_source", v_s), ("memory_target", v_t)):
            bank = getattr(self, name)
            rows = F.normalize(bank[anchors] * m + v.to(bank.dtype) * (1 - m), dim=1)
            setattr(self, name, bank.index_copy(0, anchors, rows))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Allocate the banks before loading a checkpoint into a plugin that has not run a forward yet."""
        for name in ("memory_source", "memory_target"):
            saved = state_dict.get(prefix + name)
            if saved is not None and getattr(self, name) is None:
                setattr(self, name, torch.empty(saved.shape, dtype=saved.dtype, device=self.log_z.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
