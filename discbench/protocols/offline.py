"""Offline distillation: a student taught by a frozen pretrained teacher (RepDistiller; MUSE Table 7(b))."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discbench.api import Backbone, Classifier, LossContext, Protocol, StepOutput, count_parameters
from discbench.config import ProtocolConfig
from discbench.errors import DiscbenchError
from discbench.functional import kd_divergence
from discbench.keys import Term
from discbench.protocols.base import (
    PairedDiscrepancies,
    build_backbone,
    classifier_costs,
    frozen,
    network_classifier,
)
from discbench.ranges import within
from discbench.registry import PROTOCOLS

if TYPE_CHECKING:
    from discbench.config import RunConfig


@PROTOCOLS.register()
class OfflineDistillation(Protocol):
    """A student (the run's backbone) trained against a frozen teacher from the teacher store (``discbench.teachers``):

    loss = ce_weight * CE(z_s, y) + kd_weight * KD(z_s || z_t) + beta * sum_{(i, j) in pairs} D(F_i^s, F_j^t)

    RepDistiller's convention (``train_student.py``: ``-r`` gamma, ``-a`` alpha, ``-b`` beta): ``ce_weight`` = -r,
    ``kd_weight`` = -a, beta = -b, KD at T = 4. The pairs follow the plugin's pairing (MUSE: every intermediate
    student module with the teacher's last feature, §4 "Extension to Offline / Online Distillation"; FitNets: the hint
    module; VID: every stage; CRD: the last). The teacher is frozen: eval mode whatever ``train()`` is asked (its
    BatchNorm statistics never move, as in mdistiller's ``Distiller.train``), no parameter requires grad, and its
    forward runs under ``torch.no_grad()``. (Not ``torch.inference_mode()``: its tensors cannot be saved for backward,
    and trainable heads that read the teacher's features, such as CRD's teacher embedding, must save them.) A run
    without KD and without a loss (the "Baseline" row) never runs the teacher, and needs none in the store.
    """

    name: ClassVar[str] = "offline"
    partner: ClassVar[str | None] = "teacher"
    needs_teacher: ClassVar[bool] = True

    kd_field: ClassVar[str] = "kd_weight"

    @dataclass(frozen=True)
    class Config(ProtocolConfig):
        ce_weight: float = field(metadata=within(ge=0))
        kd_weight: float = field(metadata=within(ge=0))
        kd_temperature: float = field(metadata=within(gt=0))
        teacher: str = ""  # teacher backbone (discbench teacher list)
        teacher_seed: int = field(default=0, metadata=within(ge=0))
        teacher_budget: str = ""  # the recipe the teacher was trained with; "" = the student's budget

    @classmethod
    def is_baseline(cls, cfg: RunConfig) -> bool:
        return not cfg.loss.name and cfg.protocol.kd_weight == 0

    @classmethod
    def inert(cls, config: Config, loss: str) -> dict[str, str]:
        return {"kd_temperature": "kd_weight = 0"} if config.kd_weight == 0 else {}

    @classmethod
    def uses_teacher(cls, cfg: RunConfig) -> bool:
        return bool(cfg.loss.name) or cfg.protocol.kd_weight != 0

    def __init__(self, cfg: RunConfig, teacher: Backbone | None = None):
        super().__init__()
        self.cfg = cfg
        self.student = build_backbone(cfg, role="student")
        self.reads_teacher = self.uses_teacher(cfg)
        if self.reads_teacher and teacher is None:
            raise DiscbenchError("protocol 'offline' needs a teacher network (discbench.teachers.TeacherStore.load)")
        self.teacher = frozen(teacher) if self.reads_teacher else None
        self.beta = cfg.loss.beta
        self.discrepancies = (PairedDiscrepancies(cfg, self.student.feature_specs, teacher.feature_specs,
                                                  cfg.dataset.num_classes, "student") if cfg.loss.name else None)

    def train(self, mode: bool = True) -> OfflineDistillation:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def networks(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def classifiers(self) -> list[Classifier]:
        return [network_classifier(self.student, "student", self.cfg.backbone)]

    def forward(self, x: Tensor, y: Tensor, ctx: LossContext) -> StepOutput:
        p = self.cfg.protocol
        student = self.student(x)
        ce = F.cross_entropy(student[0], y)
        terms = {Term("ce", "student"): ce}
        total = p.ce_weight * ce
        if self.reads_teacher:
            with torch.no_grad():
                teacher = self.teacher(x)
            if p.kd_weight:
                kd = terms[Term("kd", "student")] = kd_divergence(student[0], teacher[0], p.kd_temperature)
                total = total + p.kd_weight * kd
            if self.discrepancies is not None:
                loss, pair_terms = self.discrepancies(student, teacher, ctx, "student")
                total = total + self.beta * loss
                terms.update(pair_terms)
        return StepOutput(total, {k: v.detach() for k, v in terms.items()})

    @torch.no_grad()
    def predict(self, x: Tensor) -> dict[str, Tensor]:
        return {self.classifiers()[0].key: self.student(x)[0]}

    def cost(self, image_shape: tuple[int, ...]) -> dict:
        c = self.classifiers()[0]
        return {
            "backbone_params": count_parameters(self.student),
            "teacher_params": sum(p.numel() for p in self.teacher.parameters()) if self.teacher is not None else 0,
            "exit_params": 0,
            "loss_params": count_parameters(self.discrepancies) if self.discrepancies is not None else 0,
            "per_exit": classifier_costs(self.student, {c.exit: self.student.head}, [c], image_shape),
        }
