"""AFD: feature-map-level online adversarial distillation (Chung, Park, Kim and Kwak, "Feature-map-level Online
Adversarial Knowledge Distillation", ICML 2020)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.func import functional_call

from discbench.api import Discrepancy, FeatureSpec, LossContext, LossOutput, Pairing, Range, Tap
from discbench.features import match_spatial
from discbench.registry import LOSSES


class FeatureMapDiscriminator(nn.Module):
    """A small convolutional critic that scores a feature map with one real number (no sigmoid: LSGAN).

    1x1 conv (C -> hidden), LeakyReLU(0.2), 3x3 conv with stride 2 (hidden -> hidden), LeakyReLU(0.2), global
    average pooling, linear (hidden -> 1). No normalisation layer: batch statistics would make a sample's score
    depend on the rest of its batch, and on whether the batch is real or fake.

    Shape: (B, C, H, W) -> (B,).
    """

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).squeeze(1)


@LOSSES.register()
class AFD(Discrepancy):
    """Feature-map adversarial distillation for one network of an online pair: its discriminator and its generator
    loss, trained by one optimizer and one backward.

    Paper (Chung et al. 2020, §3; ICML 2020, PMLR 119): network k has a discriminator
    D_k on its last feature map, behind a transfer layer T_k. With G_k(x) the map of network k and the peer j:

        L_D = [1 - D_k(T_j(G_j(x)))]^2 + [D_k(T_k(G_k(x)))]^2       (the peer's map is "real", the own map "fake")
        L_G = [1 - D_k(T_k(G_k(x)))]^2                               (network k tries to pass as its peer)

    LSGAN losses (Mao et al. 2017, a = 0, b = c = 1), averaged over the batch. Here source = G_k(x) (the network
    this plugin trains) and target = G_j(x) (its peer); the online protocol builds one plugin per ordered pair, and
    with more than two networks the paper's cyclic scheme (net i learns from net i - 1) is a choice of pairs.

    **One optimizer, one backward.** LSGAN is not zero-sum (L_G is not -L_D), so a gradient-reversal layer, which
    hands the generator -dL_D, does not give it LSGAN's generator loss. This plugin returns L_D + L_G, built so that
    each side receives exactly its own gradient:

    - L_D is computed on the *detached* transferred own map and the detached peer map: its gradient reaches the
      discriminator's parameters only.
    - L_G is computed by a functional call of the discriminator with *detached* parameters
      (``torch.func.functional_call``): its gradient reaches the own map, the transfer layer and the network, never
      the discriminator.

    So d(loss)/d(discriminator) = dL_D/d(discriminator) and d(loss)/d(source) = dL_G/d(source) (tested against
    separately computed L_D and L_G in tests/test_zoo_contrastive.py). The peer (target) gets no gradient from this
    term (``detaches_target``): in the paper L_{D_k} updates D_k only and L_{G_k} updates network k only.

    Choices where the paper (or what discbench could verify of it) is silent:

    - Transfer layer: only the own map is transferred, into the peer's space. Spatial sizes are matched by adaptive
      average pooling of the larger map (``match_spatial``, no parameters); channels by a 1x1 conv, BN and ReLU when
      C_source != C_target (the output stays non-negative like the peer's post-ReLU map), and no layer at all when the
      channel counts agree (same-architecture pairs, the paper's main setting). The peer's own transfer layer T_j of
      the equations belongs to the peer's plugin in discbench, so the peer's map enters D_k as it is.
    - Discriminator: ``FeatureMapDiscriminator`` with ``hidden`` = 64 channels, raw (unsquashed) output as LSGAN
      prescribes. The paper's exact discriminator architecture is not reproduced (no public code); this one is small
      next to the networks and sees 3x3 spatial structure as a feature-map critic should.
    - Update scheme: the paper alternates a logit-loss update with an adversarial update at a smaller learning
      rate; here both terms share one step and the protocol's beta scales L_D + L_G (hence both the generator's
      pull and the discriminator's effective learning rate). A raw LSGAN critic under SGD at lr 0.05 needs that
      small rate: beta = 0.03 in bench.toml (measured there; L_D diverges at beta >= 0.3). A sigmoid output does
      not fix it: at beta = 1 the discriminator saturates to D = 0 on both inputs (L_D = L_G = 1, no gradient).
    - The terms are logged as ``d`` and ``g``.

    Shape: source (B, C_s, H, W), target (B, C_t, H', W') -> scalar.
    Parameters: transfer layer C_s C_t + 2 C_t (if C_s != C_t) and discriminator
    (C_t + 1) hidden + (9 hidden + 1) hidden + hidden + 1.
    """

    name = "afd"
    tap = Tap.FEATURE
    pairing = Pairing.LAST
    detaches_target = True

    ranges = {"hidden": Range(ge=1)}

    def __init__(self, source: FeatureSpec, target: FeatureSpec, hidden: int = 64):
        super().__init__(source, target)
        c_s, c_t = source.channels, target.channels
        self.transfer = (nn.Identity() if c_s == c_t else
                         nn.Sequential(nn.Conv2d(c_s, c_t, 1, bias=False), nn.BatchNorm2d(c_t), nn.ReLU()))
        self.discriminator = FeatureMapDiscriminator(c_t, hidden)

    def forward(self, source: Tensor, target: Tensor, ctx: LossContext) -> LossOutput:
        own, peer = match_spatial(source, target.detach())
        fake = self.transfer(own)  # (B, C_t, h, w): T_k(G_k(x))
        d_real = self.discriminator(peer)  # (B,)
        d_fake = self.discriminator(fake.detach())  # (B,)
        loss_d = (1 - d_real).pow(2).mean() + d_fake.pow(2).mean()
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        d_fake_for_g = functional_call(self.discriminator, frozen, (fake,))  # (B,)
        loss_g = (1 - d_fake_for_g).pow(2).mean()
        return LossOutput(loss_d + loss_g, {"d": loss_d.detach(), "g": loss_g.detach()})

