"""CS-KD: class-wise self-knowledge distillation, one network taught by its own predictions on same-class samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from discbench.api import LossContext, StepOutput
from discbench.config import ProtocolConfig
from discbench.errors import DiscbenchError
from discbench.functional import kd_divergence
from discbench.keys import Term
from discbench.protocols.base import DeployedNetwork
from discbench.ranges import within
from discbench.registry import PROTOCOLS

if TYPE_CHECKING:
    from discbench.config import RunConfig

PARTNER = "partner"  # the view CS-KD draws: one other training sample of each sample's class


@PROTOCOLS.register()
class CsKd(DeployedNetwork):
    """Class-wise self-knowledge distillation (Yun, Park, Lee and Shin, CVPR 2020, "Regularizing Class-wise
    Predictions via Self-knowledge Distillation", §2): each training sample x of class y is paired with another
    training sample x' of the same class, and the network's softened prediction on x' (a fixed copy of the weights,
    no gradient) is the target of its prediction on x:

    loss = CE(f(x), y) + lambda * T^2 * KL(softmax(f(x') / T) || softmax(f(x) / T))

    the paper's L_CS-KD = L_CE + lambda_cls * T^2 * L_cls, with L_cls = KL(P(y|x'; theta~, T) || P(y|x; theta, T)),
    averaged over the batch; lambda = ``weight``, T = ``temperature``. One network, no exits, no discrepancy plugin
    (``takes_loss = False``); its rows join the self-distillation tables (``family = "self"``).

    What the public code does (github.com/alinlab/cs-kd, ``train.py`` with ``-cls``, and ``datasets.py``), and what
    this protocol does likewise:

    - **Batch.** ``PairBatchSampler`` yields the ``--batch-size`` B shuffled sample indices of the step followed by
      one partner index for each, so a step forwards 2B images; the recipe's batch size counts the B samples, and the
      B partners come on top of it (``views``: the partner images, with their own fresh random crop and flip, as the
      code's loader transforms each index independently). Each sample is a first-half sample once per epoch.
    - **Partner forward.** ``train.py`` keeps the network in train mode for the whole epoch and runs the partner half
      ``with torch.no_grad()`` after the sample half, in a separate forward: BatchNorm normalises the partners with
      the partners' own batch statistics and updates its running statistics with them too (after the samples').
      ``forward`` does the same.
    - **No cross-entropy on the partners.** Only the sample half gets CE (and counts towards its training accuracy);
      the partners only provide the target.
    - **KL.** ``KDLoss``: ``KLDivLoss(reduction="sum")`` of log_softmax(f(x) / T) against softmax(f(x') / T), times
      T^2, divided by B: ``discbench.functional.kd_divergence`` with the partner logits detached.

    Where this protocol differs from the code: the code's partner is ``random.choice`` over *every* index of the
    class, the sample itself included (probability 1 / n_c, 1/500 on CIFAR-100); the paper's x' is "another" sample
    of the class, and ``ResidentData.same_class_partners`` never draws the sample itself. The code keeps the last,
    smaller batch of an epoch; the loop drops it (as for every protocol). A class with a single training sample
    cannot be paired: ``check_data`` refuses such a training set before anything trains.

    Hyper-parameters (CIFAR-100): T = 4 (``--temp`` default 4.0) and lambda = 1 (``--lamda`` default 1.0, and the
    README's CIFAR-100 command ``-cls --lamda 1``). The optimiser recipe is the bench's (MUSE's), not CS-KD's own
    (weight decay 1e-4, lr /10 at 50% and 75% of 200 epochs).
    """

    name: ClassVar[str] = "cs_kd"

    @dataclass(frozen=True)
    class Config(ProtocolConfig):
        weight: float = field(metadata=within(ge=0))  # lambda_cls
        temperature: float = field(metadata=within(gt=0))  # T

    @classmethod
    def inert(cls, config: Config, loss: str) -> dict[str, str]:
        return {"temperature": "weight = 0"} if config.weight == 0 else {}

    @classmethod
    def check_data(cls, cfg: RunConfig, data: Any) -> None:
        """Refuse a training set in which a class has exactly one sample: it has no other sample to be paired
        with. (A class without samples never appears in a batch and needs no partner.)"""
        counts = data.class_counts()
        lonely = (counts == 1).nonzero().flatten().tolist()
        if not lonely:
            return
        c = lonely[0]
        others = f" (as do {len(lonely) - 1} other classes)" if len(lonely) > 2 else (
            " (as does 1 other class)" if len(lonely) == 2 else "")
        subset = cfg.recipe.train_subset
        where = (f"the {data.num_train}-sample training subset (recipe.train_subset = {subset})" if subset
                 else f"the training split of {cfg.dataset.name}")
        fix = ("raise recipe.train_subset (--set recipe.train_subset=N, or 0 for the whole split)" if subset
               else "use a dataset with at least two training samples of every class")
        raise DiscbenchError(f"protocol 'cs_kd' pairs every sample with another of its class, but class {c} has "
                             f"{int(counts[c])} training sample{others} in {where}; {fix}")

    def views(self, data: Any, batch: Any, generator: torch.Generator) -> dict[str, Tensor]:
        """The partner of each sample: another training sample of its class, freshly augmented.

        Shape: batch.idx (B,) -> {"partner": (B, C, H, W)}.
        """
        partners = data.same_class_partners(batch.idx, generator)
        return {PARTNER: data.sample(partners, generator)}

    def forward(self, x: Tensor, y: Tensor, ctx: LossContext) -> StepOutput:
        p = self.cfg.protocol
        partner = ctx.views[PARTNER]
        if x.is_contiguous(memory_format=torch.channels_last):
            partner = partner.contiguous(memory_format=torch.channels_last)
        logits, _ = self.net(x)
        with torch.no_grad():  # the code's order: samples, then partners, both in train mode
            target, _ = self.net(partner)
        ce = F.cross_entropy(logits, y)
        kd = kd_divergence(logits, target, p.temperature)
        terms = {Term("ce", module=self.num_modules): ce, Term("kd"): kd}
        return StepOutput(ce + p.weight * kd, {k: v.detach() for k, v in terms.items()})
