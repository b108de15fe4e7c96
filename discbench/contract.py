"""The contract every discrepancy plugin must meet, as runnable checks.

The test suite parametrizes these checks over the whole loss registry (third-party plugins included) and
``discbench validate --loss NAME`` runs them for one loss and prints what passes and fails. Each check builds the
plugin for a few (source, target) shapes that fit its tap and returns a ``CheckResult``.

Checks: a finite scalar; gradients reach the source and every parameter the plugin owns; none reach the target
when the plugin declares ``detaches_target`` (and some do when it does not); mismatched channels and spatial sizes;
identical values under the same seed on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from discbench.api import Discrepancy, FeatureSpec, LossContext, Tap
from discbench.registry import LOSSES

BATCH = 8
IMAGE = 16
NUM_CLASSES = 10
DATASET_SIZE = 64


@dataclass(frozen=True)
class Case:
    """One (source, target) shape pair to build a plugin for."""

    name: str
    source: FeatureSpec
    target: FeatureSpec


def cases(cls: type[Discrepancy]) -> list[Case]:
    """Shape pairs that fit the plugin's tap: a smaller, wider target (module i -> T), a larger, narrower target
    (the reverse), and equal shapes with different channels (same-stage pairing)."""
    if cls.tap is Tap.LOGITS:
        return [Case("logits", FeatureSpec(NUM_CLASSES, 0), FeatureSpec(NUM_CLASSES, 0))]
    if cls.tap is Tap.EXIT:
        return [Case("exit (same shape)", FeatureSpec(16, 4), FeatureSpec(16, 4))]
    return [
        Case("source 8x16x16 -> target 16x4x4", FeatureSpec(8, 1), FeatureSpec(16, 4)),
        Case("source 32x4x4 -> target 8x8x8", FeatureSpec(32, 4), FeatureSpec(8, 2)),
        Case("source 12x8x8 -> target 6x8x8", FeatureSpec(12, 2), FeatureSpec(6, 2)),
    ]


def sample(spec: FeatureSpec, generator: torch.Generator) -> Tensor:
    if spec.is_vector:
        return torch.randn(BATCH, spec.channels, generator=generator)
    side = spec.spatial(IMAGE)
    return torch.relu(torch.randn(BATCH, spec.channels, side, side, generator=generator))  # post-ReLU like CNN maps


def context(generator: torch.Generator, step: int = 0) -> LossContext:
    return LossContext(
        step=step, epoch=0, protocol="self", labels=torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator),
        indices=torch.randperm(DATASET_SIZE, generator=generator)[:BATCH], dataset_size=DATASET_SIZE,
        num_classes=NUM_CLASSES, source_module=1, target_module=4,
    )


def build(cls: type[Discrepancy], case: Case, seed: int = 0) -> Discrepancy:
    torch.manual_seed(seed)
    return cls(case.source, case.target)


def forward(plugin: Discrepancy, case: Case, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Loss, source and target (leaf tensors with grad) for fixed-seed inputs."""
    gen = torch.Generator().manual_seed(seed)
    source = sample(case.source, gen).requires_grad_()
    target = sample(case.target, gen).requires_grad_()
    return plugin(source, target, context(gen)).loss, source, target


@dataclass(frozen=True)
class CheckResult:
    check: str
    passed: bool
    detail: str


def _finite_scalar(cls: type[Discrepancy], case: Case) -> str:
    loss, _, _ = forward(build(cls, case), case)
    assert loss.dim() == 0, f"loss has shape {tuple(loss.shape)}, expected a scalar"
    assert torch.isfinite(loss), f"loss is {loss.item()}"
    return f"loss {loss.item():.4g}"


def _gradients(cls: type[Discrepancy], case: Case) -> str:
    plugin = build(cls, case)
    loss, source, target = forward(plugin, case)
    loss.backward()
    assert source.grad is not None and source.grad.abs().sum() > 0, "no gradient reaches the source"
    dead = [n for n, p in plugin.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not dead, f"parameters without gradient: {', '.join(dead)}"
    bad = [n for n, p in plugin.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {', '.join(bad)}"
    reached = target.grad is not None and target.grad.abs().sum() > 0
    if cls.detaches_target:
        assert not reached, "gradient reaches the target, but the plugin declares detaches_target = True"
    else:
        assert reached, "no gradient reaches the target, but the plugin declares detaches_target = False"
    n_params = sum(p.numel() for p in plugin.parameters() if p.requires_grad)
    return f"{n_params} parameters all receive gradients; target {'detached' if cls.detaches_target else 'trained'}"


def _deterministic(cls: type[Discrepancy], case: Case) -> str:
    first, _, _ = forward(build(cls, case), case)
    again, _, _ = forward(build(cls, case), case)
    assert torch.equal(first, again), f"two runs under seed 0 differ: {first.item()} vs {again.item()}"
    return "bit-identical under the same seed"


CHECKS: dict[str, Callable[[type[Discrepancy], Case], str]] = {
    "finite scalar": _finite_scalar,
    "gradients": _gradients,
    "deterministic": _deterministic,
}


def run_checks(cls: type[Discrepancy]) -> Iterator[CheckResult]:
    """Every check on every shape case of ``cls``; a failing check yields its message instead of raising."""
    for case in cases(cls):
        for name, check in CHECKS.items():
            label = f"{name} [{case.name}]"
            try:
                yield CheckResult(label, True, check(cls, case))
            except Exception as exc:  # report, do not stop: the user wants the whole picture
                yield CheckResult(label, False, f"{type(exc).__name__}: {exc}")


def validate(name: str) -> list[CheckResult]:
    """Run the contract suite on the registered loss ``name``."""
    return list(run_checks(LOSSES.get(name)))
