"""Adversarial feature matching: a discriminator tells source from target features, through a gradient-reversal layer.

The game is the GAN minimax of Goodfellow et al. (NIPS 2014, Eq. 1),

    min_G max_D V(D, G) = E_t[log D(t)] + E_s[log(1 - D(G(s)))],

whose optimal discriminator turns the generator's objective into 2 JSD(p_target || p_G) - log 4 (their Theorem 1):
this is the Jensen-Shannon matching that MUSE (§4.3, Table 6 "adversarial") contrasts with L2. Here the "real"
samples are target features, the "fakes" are source features, and the generator is the network that produces the
source (plus an owned projection). As discbench's single-optimizer contract requires, one optimizer trains both
players: the discriminator minimises
its binary cross-entropy L_D = -V, and a gradient-reversal layer (Ganin and Lempitsky, "Unsupervised Domain
Adaptation by Backpropagation", ICML 2015, §3.2: identity forward, gradient times -lambda backward) sits between the
generator and the discriminator, so that the same backward pass makes the source *ascend* L_D.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discbench.api import Discrepancy, FeatureSpec, LossContext, LossOutput, Pairing, Range, Tap
from discbench.features import pooled
from discbench.functional import at_least_fp32
from discbench.registry import LOSSES


class GradientReversal(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by -scale in the backward pass."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: Tensor, scale: float = 1.0) -> Tensor:
    """Ganin and Lempitsky's gradient-reversal layer R_lambda: R(x) = x, dR/dx = -lambda I."""
    return GradientReversal.apply(x, scale)


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """L_D = -V: BCE(D(t), 1) + BCE(D(g), 0), each averaged over the batch; 2 log 2 at chance.

    Shape: (B,), (B,) -> scalar.
    """
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


@LOSSES.register()
class Adversarial(Discrepancy):
    """Feature-level GAN between source and target, trained with one optimizer through gradient reversal.

    Pipeline (B = batch):

        source (B, C_s, H_s, W_s) -> global average pool (B, C_s) -> projection Linear(C_s, C_t) -> R_lambda -> D
        target (B, C_t, H_t, W_t) -> global average pool (B, C_t), detached                        ----------> D
        D = Linear(C_t, hidden) -> LeakyReLU(0.2) -> Linear(hidden, 1), one logit per image.

    The loss is L_D = BCE(D(t), real) + BCE(D(P(s)), fake) (Goodfellow et al. Eq. 1, negated). Minimising it trains
    D to separate the two; the reversal layer hands the projection P and the source -lambda dL_D, so they maximise
    L_D, i.e. play the minimax generator. Its value therefore *rises* towards 2 log 2 as the source becomes
    indistinguishable; ``d_acc`` (the discriminator's accuracy, 0.5 at chance) is logged alongside.

    Choices where the sources are silent (MUSE gives no details of its adversarial baseline):

    - Common input space: the target's pooled channel space. Different sizes are handled by global average pooling
      (the discriminator judges what a classifier head would see), different channels by the owned projection P
      (a linear map of the pooled source, which equals pooling a 1x1 conv of the map). The target gets no
      projection: a separate, discriminator-side projection of either input would let the discriminator separate
      them trivially (e.g. by a bias), with no pressure on the source.
    - P is on the generator side, i.e. *adversarial* (after the reversal layer): it helps the source fool D. Were it
      trained to help D, D could win by construction and the source would get no useful signal.
    - The target is detached: it is the "real" distribution, not a player (pushing F_T towards F_i would let the
      game be won by degrading the target).
    - The minimax (saturating) generator loss, not the non-saturating heuristic: the reversal layer can only
      produce -dL_D, and this is the form whose optimum is the JS divergence MUSE refers to.
    - lambda (``reversal``) = 1 constant; DANN's ramp from 0 to 1 would need the total number of steps. The
      discriminator has no normalisation layer, so real and fake batches never share statistics.
    - ``Pairing.SAME_STAGE``: in two-network protocols it is a drop-in alternative to the same-stage feature losses
      (FitNet, NST, VID); the last-map online method of Chung et al. is the separate ``afd`` plugin.

    Known behaviour (measured on the table6-smoke suite, SmallNet on Fashion-MNIST): the discriminator wins within
    about one epoch (``d_acc`` -> 1, L_D -> 0), after which the reversed gradient -sigma(D(P(s))) dD vanishes: the
    saturating minimax that a reversal layer implements (Goodfellow et al. §3 propose the non-saturating generator
    loss for exactly this reason; a reversal layer cannot express it, ``afd`` shows the detached-player way). The
    generator's objective is also unbounded above, so a too-large beta lets it blow up (bench.toml's beta note).

    Args:
        hidden: width of the discriminator's hidden layer.
        reversal: lambda, the factor of the reversed gradient that reaches the projection and the source.

    Shape: source (B, C_s, H_s, W_s) or (B, C_s), target (B, C_t, H_t, W_t) or (B, C_t) -> scalar.
    """

    name = "adversarial"
    tap = Tap.FEATURE
    pairing = Pairing.SAME_STAGE
    detaches_target = True

    ranges = {"hidden": Range(ge=1), "reversal": Range(ge=0)}

    def __init__(self, source: FeatureSpec, target: FeatureSpec, hidden: int = 256, reversal: float = 1.0):
        super().__init__(source, target)
        self.reversal = reversal
        self.projection = nn.Linear(source.channels, target.channels)
        self.discriminator = nn.Sequential(nn.Linear(target.channels, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, source: Tensor, target: Tensor, ctx: LossContext) -> LossOutput:
        fake = reverse_gradient(self.projection(at_least_fp32(pooled(source))), self.reversal)  # (B, C_t)
        real = at_least_fp32(pooled(target.detach()))  # (B, C_t)
        fake_logits = self.discriminator(fake).squeeze(1)  # (B,)
        real_logits = self.discriminator(real).squeeze(1)  # (B,)
        loss = discriminator_loss(real_logits, fake_logits)
        with torch.no_grad():
            accuracy = ((real_logits > 0).float().mean() + (fake_logits < 0).float().mean()) / 2
        return LossOutput(loss, {"d_acc": accuracy})
