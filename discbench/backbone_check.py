"""``discbench validate --backbone``: the backbone contract (``discbench.api.Backbone``) checked on real inputs.

For each input shape (a dataset's channels, image size and classes), one network is built and checked:

- **four modules**: ``stages``, ``feature_specs`` and the features ``forward`` returns all number four;
- **specs match shapes**: at batch 2 the logits are (2, classes) and feature i is (2, channels_i, side_i, side_i)
  with ``side_i = feature_specs[i].spatial(image size)``;
- **parameters train**: in train mode, a forward and backward at batch 2 (cross-entropy of the logits plus the mean
  of every feature) gives every parameter a finite gradient, and all parameters are trainable.

A backbone that cannot be built for the input (an unknown name, a ``tv:``/``timm:`` model without usable stages,
an image too small for its strides) raises ``DiscbenchError`` with one line instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from discbench.api import Backbone
from discbench.contract import CheckResult
from discbench.registry import BACKBONES


@dataclass(frozen=True)
class InputCase:
    name: str  # e.g. the dataset's name
    channels: int
    image_size: int
    num_classes: int

    def __str__(self) -> str:
        return f"{self.name}: {self.channels}x{self.image_size}x{self.image_size}, {self.num_classes} classes"


def _batch(case: InputCase) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, case.channels, case.image_size, case.image_size, generator=g)
    return x, torch.tensor([0, case.num_classes - 1])


def _four_modules(net: Backbone, case: InputCase) -> str:
    net.eval()
    with torch.no_grad():
        _, features = net(_batch(case)[0])
    counts = (len(net.stages), len(net.feature_specs), len(features))
    assert counts == (4, 4, 4), f"stages, feature_specs and features number {counts}, expected 4 each"
    return "4 stages, 4 specs, 4 features"


def _specs_match(net: Backbone, case: InputCase) -> str:
    net.eval()
    with torch.no_grad():
        logits, features = net(_batch(case)[0])
    want = (2, case.num_classes)
    assert tuple(logits.shape) == want, f"logits {tuple(logits.shape)}, expected {want}"
    for i, (spec, f) in enumerate(zip(net.feature_specs, features, strict=True), start=1):
        side = spec.spatial(case.image_size)
        want = (2, spec.channels, side, side)
        assert tuple(f.shape) == want, f"module {i}: declared {spec} gives {want}, the network gives {tuple(f.shape)}"
    return " ".join(f"{s.channels}x{s.spatial(case.image_size)}²" for s in net.feature_specs)


def _parameters_train(net: Backbone, case: InputCase) -> str:
    net.train()
    net.zero_grad(set_to_none=True)
    x, y = _batch(case)
    logits, features = net(x)
    loss = F.cross_entropy(logits, y) + sum(f.float().mean() for f in features)
    loss.backward()
    params = dict(net.named_parameters())
    frozen = [n for n, p in params.items() if not p.requires_grad]
    assert not frozen, f"{len(frozen)} parameters do not train, e.g. '{frozen[0]}'"
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"{len(missing)} parameters get no gradient, e.g. '{missing[0]}'"
    bad = [n for n, p in params.items() if not torch.isfinite(p.grad).all()]
    assert not bad, f"{len(bad)} parameters get a non-finite gradient, e.g. '{bad[0]}'"
    return f"{sum(p.numel() for p in params.values()):,} parameters, all with finite gradients (batch 2)"


CHECKS: dict[str, Callable[[Backbone, InputCase], str]] = {
    "four modules": _four_modules,
    "specs match shapes": _specs_match,
    "parameters train": _parameters_train,
}


def run_backbone_checks(name: str, cases: list[InputCase]) -> Iterator[CheckResult]:
    """Every check on every input case; a failing check yields its message. Building the network raises
    ``DiscbenchError`` (one line) when it cannot be built for the case."""
    cls = BACKBONES.get(name)
    for case in cases:
        torch.manual_seed(0)
        net = cls(in_channels=case.channels, num_classes=case.num_classes, image_size=case.image_size)
        for check, fn in CHECKS.items():
            label = f"{check} [{case}]"
            try:
                yield CheckResult(label, True, fn(net, case))
            except Exception as exc:  # report, do not stop
                yield CheckResult(label, False, str(exc) if isinstance(exc, AssertionError)
                                  else f"{type(exc).__name__}: {exc}")
