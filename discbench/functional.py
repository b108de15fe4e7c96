"""Math shared by the harness and by plugins. The harness imports this module, never a plugin module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def at_least_fp32(x: Tensor) -> Tensor:
    """``x`` in float32, or in its own dtype when that is wider (float64 stays float64): losses compute in at least
    fp32 under bf16 autocast, and a float64 run stays float64 (the reference-step tests check losses to 1e-10)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def kd_divergence(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch (Hinton, Vinyals and Dean,
    "Distilling the Knowledge in a Neural Network", 2015, §2).

    The T^2 factor keeps the gradient scale independent of T. Computed in at least fp32. Gradient flows into whichever
    argument is not detached by the caller.

    Shape: student, teacher (B, K) -> scalar.
    """
    t = temperature
    log_p_student = F.log_softmax(at_least_fp32(student) / t, dim=1)
    log_p_teacher = F.log_softmax(at_least_fp32(teacher) / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)
