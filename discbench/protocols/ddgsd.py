"""DDGSD: data-distortion guided self-distillation, one network taught by its own outputs on a second distortion of
each training image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discbench.api import Backbone, LossContext, StepOutput
from discbench.config import ProtocolConfig
from discbench.errors import DiscbenchError
from discbench.functional import at_least_fp32, kd_divergence
from discbench.keys import Term
from discbench.protocols.base import DeployedNetwork
from discbench.ranges import within
from discbench.registry import PROTOCOLS

if TYPE_CHECKING:
    from discbench.config import RunConfig

DISTORTED = "distorted"  # the view DDGSD draws: a second, independent distortion of each image of the batch


def symmetric_kl(logits_a: Tensor, logits_b: Tensor, temperature: float) -> Tensor:
    """T^2 * (KL(p_a || p_b) + KL(p_b || p_a)) with p = softmax(logits / T), each averaged over the batch, in at least
    fp32; gradient flows into both sides. Shape: (B, K), (B, K) -> scalar."""
    return kd_divergence(logits_b, logits_a, temperature) + kd_divergence(logits_a, logits_b, temperature)


def linear_mmd2(h_a: Tensor, h_b: Tensor) -> Tensor:
    """Squared MMD between the rows of ``h_a`` and the rows of ``h_b`` under the linear kernel k(u, v) = u . v, biased
    (V-statistic) estimate: 1/B^2 sum k(a, a') + 1/B^2 sum k(b, b') - 2/B^2 sum k(a, b), which is the squared
    Euclidean distance between the two batch means. In at least fp32. Shape: (B, D), (B, D) -> scalar."""
    return (at_least_fp32(h_a).mean(0) - at_least_fp32(h_b).mean(0)).pow(2).sum()


def split_head(head: nn.Module) -> tuple[list[nn.Module], nn.Linear] | None:
    """(the layers of ``head`` before its classifier, the classifier) when ``head`` is an ``nn.Sequential`` (nested
    ones included) that ends in an ``nn.Linear``; None for any other head."""
    if isinstance(head, nn.Linear):
        return [], head
    if isinstance(head, nn.Sequential) and len(head):
        inner = split_head(head[-1])
        if inner is not None:
            return [*head[:-1], *inner[0]], inner[1]
    return None


@PROTOCOLS.register()
class Ddgsd(DeployedNetwork):
    """Data-distortion guided self-distillation (Ting-Bing Xu and Cheng-Lin Liu, AAAI 2019, "Data-Distortion Guided
    Self-Distillation for Deep Neural Networks", doi:10.1609/aaai.v33i01.33015565). Each training image x is
    distorted twice, x_a and x_b; both pass through the one network, which outputs the penultimate ("global")
    features h_a, h_b (the input of its classifier, the fc layer) and the posteriors p_a, p_b:

    loss = CE(z_a, y) + CE(z_b, y) + lambda * T^2 * (KL(p_a || p_b) + KL(p_b || p_a)) + mu * MMD^2(H_a, H_b)

    with p = softmax(z / T), every term averaged over the batch, lambda = ``kl_weight``, mu = ``mmd_weight``,
    T = ``temperature``, and MMD^2 the squared maximum mean discrepancy between the batch's two sets of penultimate
    features H_a = {h_a^i}, H_b = {h_b^i} under the linear kernel, biased estimate: the squared distance of the two
    batch means, ||1/B sum_i h_a^i - 1/B sum_i h_b^i||^2. Nothing is detached: the symmetric KL and the MMD pull
    both views. One network, no exits, no extra parameters, no discrepancy plugin (``takes_loss = False``); its rows
    join the self-distillation tables (``family = "self"``); evaluation is the network on clean test images.

    What the paper fixes (its Fig. 2, the overview of the method): the distortion is "random mirror and cropping",
    applied independently to the whole batch twice (B^a, B^b); the two distorted batches are concatenated, pass
    through the single network in one forward, and are sliced apart after it; MMD compares the global features
    p(h_{l-1}) before the shared fc layer; the two posteriors p_a and p_b are each supervised by the hard labels
    (cross-entropy L_Ca, L_Cb) and tied to each other by KL(p_a || p_b) and KL(p_b || p_a). This protocol does the
    same:

    - **Distortion.** The loop's batch x is one random crop (zero padding ``dataset.crop_padding``) and mirror
      (``dataset.flip``) of each image: x_a. ``views`` draws the second, x_b, from the same images
      (``data.train_x[batch.idx]``) with the same random crop and mirror (``data.augment``), independently, from the
      run's data stream, then normalises it. The operations act on uint8 maps of any channel count, so a grey dataset
      (Fashion-MNIST, 1 channel) needs no variant. A dataset configured without any random distortion
      (``crop_padding = 0`` and ``flip = false``) would give two identical views: ``check_data`` refuses it.
      Fashion-MNIST's bench setting (``crop_padding = 0``, ``flip = true``) leaves the mirror only: half the pairs
      are identical images there.
    - **Batch.** The recipe's batch size counts the B images; the step forwards 2B (the two views concatenated, so
      BatchNorm normalises with the statistics of both views together, as in Fig. 2).
    - **Penultimate features.** The input of the network's classifier: for heads that are a sequence ending in a
      linear layer (every backbone shipped but the traced adapters) the head is run up to that layer; otherwise a
      forward pre-hook on the head's last linear layer (whose outputs must be the classes) reads its input.

    Where the paper was not read, and what was chosen: the paper's full text (its equations and hyper-parameters)
    could not be obtained here, only its abstract, its Fig. 2 (reproduced in the unofficial code's README) and the
    unofficial code. So the kernel and estimator of the MMD (linear, biased), whether the KL terms are softened by a
    temperature (Fig. 2 feeds the same posteriors p_a, p_b to the cross-entropies and to the KL terms: T = 1, where
    the T^2 factor is 1 too) and whether a target is detached (nothing is, as in Fig. 2 and the unofficial code) are
    this protocol's readings. lambda = 1 and mu = 0.0005 are the unofficial code's values, which its README says
    follow the paper's settings.

    Public code: the authors released none that we know of. The one public reimplementation,
    github.com/youngerous/ddgsd-pytorch (unofficial; ``src/trainer.py``, ``src/utils.py``, ``src/dataset.py``,
    ``scripts/run_ddgsd.sh``), differs from the paper's Fig. 2 and from this protocol: its first view is only
    mirrored and its second only cropped (``train_transform_flip``, ``train_transform_crop``), two forwards rather
    than one; its "MMD" is a mean squared error between the two views' logits (its README says so); its KL terms
    are averaged over the classes as well as the batch, without T^2, at T = 3 (``--temperature 3.0``), lambda = 1
    (``--lmbda``), mu = 0.0005 (``--mu``). discbench's is, as far as we know, the first public implementation of
    the method with its MMD term on the penultimate features.

    The optimiser recipe is the bench's (MUSE's), not the paper's.
    """

    name: ClassVar[str] = "ddgsd"

    @dataclass(frozen=True)
    class Config(ProtocolConfig):
        kl_weight: float = field(metadata=within(ge=0))  # lambda: the symmetric KL between the two posteriors
        mmd_weight: float = field(metadata=within(ge=0))  # mu: the MMD between the two views' penultimate features
        temperature: float = field(metadata=within(gt=0))  # T of the posteriors the KL terms compare

    @classmethod
    def inert(cls, config: Config, loss: str) -> dict[str, str]:
        return {"temperature": "kl_weight = 0"} if config.kl_weight == 0 else {}

    @classmethod
    def check_data(cls, cfg: RunConfig, data: Any) -> None:
        """Refuse a dataset whose training augmentation draws nothing at random: its two views would be equal."""
        ds = cfg.dataset
        if ds.crop_padding == 0 and not ds.flip:
            raise DiscbenchError(
                f"protocol 'ddgsd' distorts every training image twice with the dataset's random crop and mirror, but "
                f"{ds.name} sets crop_padding = 0 and flip = false, so both views would be the same image; pass "
                f"--set dataset.flip=true (or dataset.crop_padding=N, N >= 1)")

    def __init__(self, cfg: RunConfig, teacher: Backbone | None = None):
        super().__init__(cfg)
        split = split_head(self.net.head) if type(self.net).forward is Backbone.forward else None
        # a plain tuple, so that the head's modules are not registered twice (state_dict, fingerprints)
        self._split: tuple[tuple[nn.Module, ...], nn.Linear] | None = (tuple(split[0]), split[1]) if split else None
        self._classifier: tuple[nn.Linear] | None = None  # the fallback: the head's last linear layer, hooked
        if split is None:
            linears = [m for m in self.net.head.modules() if isinstance(m, nn.Linear)]
            k = cfg.dataset.num_classes
            if not linears or linears[-1].out_features != k:
                raise DiscbenchError(
                    f"protocol 'ddgsd' compares the penultimate features (the input of the classifier), but backbone "
                    f"'{cfg.backbone}' has no linear layer with {k} outputs at the end of its head to read them from; "
                    f"use a backbone whose head ends in its linear classifier")
            self._classifier = (linears[-1],)

    def views(self, data: Any, batch: Any, generator: torch.Generator) -> dict[str, Tensor]:
        """The second distortion of each image of the batch: the dataset's random crop and mirror drawn afresh from
        ``generator`` (the loop's batch is the first), normalised as the batch is.

        Shape: batch.idx (B,) -> {"distorted": (B, C, H, W) float}.
        """
        images = data.train_x[batch.idx]  # uint8, on the data's device
        return {DISTORTED: data.normalize(data.augment(images, generator))}

    def logits_and_embedding(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The network's logits and penultimate features (the classifier's input, flattened).

        Shape: (N, C, H, W) -> (N, K), (N, D).
        """
        if self._split is None:  # a head that is not a plain sequence: read the classifier's input with a hook
            captured: list[Tensor] = []
            handle = self._classifier[0].register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0]))
            try:
                logits, _ = self.net(x)
            finally:
                handle.remove()
            return logits, captured[-1].flatten(1)
        body, classifier = self._split
        for stage in self.net.stages:
            x = stage(x)
        for layer in body:
            x = layer(x)
        return classifier(x), x.flatten(1)

    def forward(self, x: Tensor, y: Tensor, ctx: LossContext) -> StepOutput:
        p = self.cfg.protocol
        distorted = ctx.views[DISTORTED]
        if x.is_contiguous(memory_format=torch.channels_last):
            distorted = distorted.contiguous(memory_format=torch.channels_last)
        b = x.shape[0]
        logits, embedding = self.logits_and_embedding(torch.cat([x, distorted]))  # Fig. 2: concat, one pass, slice
        z_a, z_b = logits[:b], logits[b:]
        ce_a, ce_b = F.cross_entropy(z_a, y), F.cross_entropy(z_b, y)
        kd = symmetric_kl(z_a, z_b, p.temperature)
        mmd = linear_mmd2(embedding[:b], embedding[b:])
        t = self.num_modules
        terms = {Term("ce", module=t): ce_a, Term("ce_b", module=t): ce_b, Term("kd"): kd, Term("mmd"): mmd}
        total = ce_a + ce_b + p.kl_weight * kd + p.mmd_weight * mmd
        return StepOutput(total, {k: v.detach() for k, v in terms.items()})
