"""Kernel MMD between the channel maps of two features: NST (``mmd``, polynomial kernel) and ``mmd_rbf`` (Gaussian).

Neuron selectivity transfer (Huang and Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity
Transfer", arXiv:1707.01219, 2017) treats each channel's flattened, L2-normalised spatial map f^i / ||f^i||_2 (a
point in R^{HW}, §3.3) as one sample of a distribution, and matches the student's and the teacher's distributions
with the squared maximum mean discrepancy, expanded with the kernel trick (§3.2, Eq. 2):

    MMD^2(X, Y) = 1/N^2 sum_{i,i'} k(x_i, x_i') + 1/M^2 sum_{j,j'} k(y_j, y_j') - 2/(NM) sum_{i,j} k(x_i, y_j),

the biased (V-statistic) estimate that NST and RepDistiller (``distiller_zoo/NST.py``) use. The module exposes the
pieces: kernels are small functions on batched row sets, ``mmd2`` takes any of them, so that closed forms (a linear
kernel gives the squared distance of the means) can be tested.

Section and equation numbers follow arXiv:1707.01219; they were written from the
published formulas and RepDistiller's code, not re-checked against the PDF.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from discbench.api import Discrepancy, FeatureSpec, LossContext, LossOutput, Pairing, Range, Tap
from discbench.features import match_spatial
from discbench.functional import at_least_fp32
from discbench.registry import LOSSES

Kernel = Callable[[Tensor, Tensor], Tensor]
"""A kernel on batched row sets: (B, N, D), (B, M, D) -> (B, N, M) Gram matrices."""


def linear_kernel(x: Tensor, y: Tensor) -> Tensor:
    """k(a, b) = a . b. Shape: (B, N, D), (B, M, D) -> (B, N, M)."""
    return x @ y.transpose(1, 2)


def polynomial_kernel(x: Tensor, y: Tensor, degree: int = 2, offset: float = 0.0) -> Tensor:
    """k(a, b) = (a . b + c)^d; NST uses d = 2, c = 0. Shape: (B, N, D), (B, M, D) -> (B, N, M)."""
    return (linear_kernel(x, y) + offset).pow(degree)


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """||a - b||^2 for every pair of rows, clamped at 0 against rounding. Shape: (B, N, D), (B, M, D) -> (B, N, M)."""
    return (x.pow(2).sum(-1, keepdim=True) + y.pow(2).sum(-1).unsqueeze(1) - 2 * linear_kernel(x, y)).clamp_min(0)


def gaussian_kernel(x: Tensor, y: Tensor, sigma2: Tensor | float) -> Tensor:
    """k(a, b) = exp(-||a - b||^2 / (2 sigma^2)).

    Shape: (B, N, D), (B, M, D), sigma2 (B, 1, 1) or a scalar -> (B, N, M).
    """
    return torch.exp(-squared_distances(x, y) / (2 * sigma2))


def median_bandwidth(x: Tensor, y: Tensor, floor: float = 1e-6) -> Tensor:
    """Median heuristic (Gretton et al., JMLR 2012, §8): sigma^2 = median of ||z - z'||^2 over the distinct pairs of
    the pooled sample Z = X u Y, one bandwidth per batch element, without gradient.

    sigma = median distance, so sigma^2 is the median squared distance; for an even number of pairs it is the lower
    of the two middle values (``torch.median``). Clamped at ``floor`` so identical samples do not divide by zero.

    Shape: x (B, N, D), y (B, M, D) -> (B, 1, 1).
    """
    with torch.no_grad():
        z = torch.cat([x, y], dim=1)  # (B, N+M, D)
        n = z.shape[1]
        i, j = torch.triu_indices(n, n, offset=1, device=z.device)
        d2 = squared_distances(z, z)[:, i, j]  # (B, (N+M)(N+M-1)/2)
        return d2.median(dim=1).values.clamp_min(floor).view(-1, 1, 1)


def mmd2(x: Tensor, y: Tensor, kernel: Kernel) -> Tensor:
    """Biased estimate of MMD^2 between the rows of x and the rows of y, per batch element (Huang and Wang Eq. 2).

    Shape: x (B, N, D), y (B, M, D) -> (B,).
    """
    return kernel(x, x).mean((1, 2)) + kernel(y, y).mean((1, 2)) - 2 * kernel(x, y).mean((1, 2))


def channel_samples(feature: Tensor) -> Tensor:
    """NST's samples: each channel's spatial map, flattened and L2-normalised over space, in at least fp32.

    Shape: (B, C, H, W) -> (B, C, H*W).
    """
    return F.normalize(at_least_fp32(feature).flatten(2), dim=2)


class KernelMMD(Discrepancy):
    """MMD^2 between the source's and the target's sets of normalised channel maps, per sample, averaged over the batch.

    Subclasses pick the kernel (``kernel``). Choices shared by both plugins:

    - samples are channels (NST §3.3): C_s source samples and C_t target samples, so the channel counts may differ
      freely; the larger map is adaptive-average-pooled to the smaller first (RepDistiller's choice,
      ``discbench.features.match_spatial``) so that both sets live in R^{HW};
    - one MMD per image, averaged over the batch (as RepDistiller's mean over (B, C, C));
    - the target is detached; its k(y, y) term is kept (it carries no gradient) so that the value is the MMD^2
      itself, >= 0 and 0 when the distributions match, as RepDistiller's ``full_loss``;
    - ``Pairing.SAME_STAGE`` (NST matches corresponding layers of teacher and student).

    Shape: source (B, C_s, H_s, W_s), target (B, C_t, H_t, W_t) -> scalar. The plugins own no parameters.
    """

    tap = Tap.FEATURE
    pairing = Pairing.SAME_STAGE
    detaches_target = True

    def kernel(self, x: Tensor, y: Tensor) -> Kernel:  # pragma: no cover - every plugin overrides it
        """The kernel for the samples x (B, N, D) and y (B, M, D) of this step."""
        raise NotImplementedError

    def forward(self, source: Tensor, target: Tensor, ctx: LossContext) -> LossOutput:
        s, t = match_spatial(source, target.detach())
        x, y = channel_samples(s), channel_samples(t)  # (B, C_s, HW), (B, C_t, HW)
        return LossOutput(mmd2(x, y, self.kernel(x, y)).mean())


@LOSSES.register()
class MMD(KernelMMD):
    """Neuron selectivity transfer: ``KernelMMD`` with the polynomial kernel k(a, b) = (a . b + c)^d, d = 2, c = 0.

    Huang and Wang §3.3 and §4 (their best kernel in the CIFAR experiments is the polynomial one with d = 2, c = 0),
    as RepDistiller's ``NSTLoss`` (``distiller_zoo/NST.py``); NST's loss weight lambda / 2 becomes bench.toml's beta
    = 50
    (RepDistiller's value).

    Args:
        degree: d of the polynomial kernel.
        offset: c of the polynomial kernel.
    """

    name = "mmd"

    ranges = {"degree": Range(ge=1), "offset": Range(ge=0)}

    def __init__(self, source: FeatureSpec, target: FeatureSpec, degree: int = 2, offset: float = 0.0):
        super().__init__(source, target)
        self.degree = degree
        self.offset = offset

    def kernel(self, x: Tensor, y: Tensor) -> Kernel:
        return partial(polynomial_kernel, degree=self.degree, offset=self.offset)


@LOSSES.register()
class MMDRBF(KernelMMD):
    """``KernelMMD`` with a Gaussian kernel whose bandwidth is set by the median heuristic, per image and step.

    NST's Gaussian variant (Huang and Wang §3.3) sets sigma^2 from the data too; discbench uses the standard median
    heuristic instead (Gretton et al., "A Kernel Two-Sample Test", JMLR 2012, §8): sigma^2 is the median squared
    distance between distinct samples of the pooled source and target set of each image (``median_bandwidth``),
    computed without gradient (the bandwidth is a statistic of the step, not something the network should game).
    With L2-normalised samples, squared distances lie in [0, 4] and k in [e^{-2/sigma^2}, 1].
    """

    name = "mmd_rbf"

    def __init__(self, source: FeatureSpec, target: FeatureSpec):
        super().__init__(source, target)

    def kernel(self, x: Tensor, y: Tensor) -> Kernel:
        return partial(gaussian_kernel, sigma2=median_bandwidth(x, y))
