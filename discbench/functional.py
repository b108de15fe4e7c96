"""Math shared by the harness and by plugins. The harness imports this module, never a plugin module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def kd_divergence(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch (Hinton, Vinyals and Dean,
    "Distilling the Knowledge in a Neural Network", 2015, §2).

    The T^2 factor keeps the gradient scale independent of T. Computed in at least fp32. Gradient flows into whichever
    argument is not detached by the caller.

    Shape: student, teacher (B, K) -> scalar.
    """
    t = temperature
    dtype = torch.promote_types(student.dtype, torch.float32)  # fp32 at least, fp64 stays fp64
    log_p_student = F.log_softmax(student.to(dtype) / t, dim=1)
    log_p_teacher = F.log_softmax(teacher.to(dtype) / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)
