"""BYOT's L2 and Hinton's KD against closed forms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from discbench.api import FeatureSpec, LossContext
from discbench.functional import kd_divergence
from discbench.registry import LOSSES

CTX = LossContext(step=0, epoch=0, protocol="self", labels=torch.zeros(3, dtype=torch.long), indices=torch.arange(3),
                  dataset_size=10, num_classes=5)


def test_l2_closed_forms():
    l2 = LOSSES.get("l2")(FeatureSpec(16, 8), FeatureSpec(16, 8))
    x = torch.randn(3, 16, 4, 4)
    assert l2(x, x, CTX).loss.item() == 0.0
    y = x + 2.0  # every pooled channel differs by 2: 16 channels * 4 = 64 per sample
    assert l2(x, y, CTX).loss.item() == pytest.approx(64.0)
    source = x.clone().requires_grad_()
    target = y.clone().requires_grad_()
    l2(source, target, CTX).loss.backward()
    assert source.grad.abs().sum() > 0 and target.grad is None  # BYOT detaches F_T


def test_kd_closed_forms():
    z = torch.randn(3, 5)
    assert kd_divergence(z, z, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    temp = 3.0
    manual = (F.softmax(t / temp, 1) * (F.log_softmax(t / temp, 1) - F.log_softmax(s / temp, 1))).sum(1).mean()
    assert kd_divergence(s, t, temp).item() == pytest.approx(manual.item() * temp**2, rel=1e-5)
    # large T: T^2 KL -> sum((z_s - mean z_s) - (z_t - mean z_t))^2 / (2K)  (Hinton et al. §2.1)
    s, t = torch.randn(3, 5).double(), torch.randn(3, 5).double()
    limit = (((s - s.mean(1, keepdim=True)) - (t - t.mean(1, keepdim=True))) ** 2).sum(1).mean() / (2 * 5)
    assert kd_divergence(s, t, 1e3).item() == pytest.approx(limit.item(), rel=1e-3)
