"""``discbench validate --protocol``: the protocol contract (``discbench.api.Protocol``) checked on a real step.

A protocol is checked with each method defined for it that runs no discrepancy plugin (its baselines, or the
protocol's own objective: ``cs_kd`` for CS-KD; plugins have their own contract, ``discbench.contract``), on a small
backbone at a dataset's input shape, with a synthetic training set held in memory (random uint8 images, every class
present at least twice) so that extra views (``Protocol.views``) are drawn as in a run. Checks, in order:

- **build**: the protocol builds from the resolved configuration (a random network stands for an offline teacher);
- **classifiers**: every network has one final classifier (``last``), keys are unique, and ``predict`` returns
  finite ``(B, classes)`` logits for exactly the declared classifiers;
- **step**: ``views`` and ``forward`` give a finite scalar total and finite scalar terms;
- **gradients**: the backward of the total reaches every trainable parameter with a finite, non-zero gradient
  (a parameter no step trains would be dead weight in the optimizer and in the cost columns);
- **deterministic**: a second build and step under the same seed gives the identical total;
- **cost**: ``cost`` counts integer parameters and a per-classifier entry (params, FLOPs) for every final classifier.

A check that needs one that failed is skipped, as in the loss contract.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from discbench import seeding
from discbench.api import LossContext, Protocol
from discbench.config import Bench, RunConfig
from discbench.contract import CheckResult
from discbench.registry import PROTOCOLS

BATCH = 8
TRAIN = 64


@dataclass(frozen=True)
class ProtocolCase:
    """One method of a protocol, resolved on a backbone and a dataset's input shape."""

    method: str
    cfg: RunConfig

    def __str__(self) -> str:
        return f"{self.method} on {self.cfg.backbone}, {self.cfg.dataset.name}"


def methods(bench: Bench, protocol: str) -> list[str]:
    """The methods defined for ``protocol`` that run no discrepancy plugin, in bench.toml's order."""
    return [m for m in bench.method_names() if not bench.method(m).plugin and protocol in bench.method(m).protocols]


def synthetic_data(cfg: RunConfig, seed: int = 0):
    """A ``ResidentData`` of random uint8 images at the dataset's shape, every class present at least twice."""
    from discbench.data import ResidentData

    ds = cfg.dataset
    g = torch.Generator().manual_seed(seed)
    shape = (ds.channels, ds.image_size, ds.image_size)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % ds.num_classes
        return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8), y

    return ResidentData(ds, split(max(TRAIN, 2 * ds.num_classes)), split(BATCH), torch.device("cpu"))


class _Step:
    """One built system and one training step of it, under seed 0."""

    def __init__(self, case: ProtocolCase):
        cfg = case.cfg
        cls = PROTOCOLS.get(cfg.protocol_name)
        teacher = None
        if cls.needs_teacher:
            from discbench.protocols.base import build_backbone

            with seeding.run_seed(0):
                teacher = build_backbone(cfg, cfg.protocol.teacher, role="teacher")
        with seeding.run_seed(0):
            self.system: Protocol = cls(cfg, teacher=teacher).train()
        self.data = synthetic_data(cfg)
        generator = seeding.generator(0, "data", torch.device("cpu"))
        batch = next(iter(self.data.train_epoch(BATCH, generator)))
        self.x, self.y = batch.x, batch.y
        torch.manual_seed(0)
        self.views = self.system.views(self.data, batch, generator)
        ctx = LossContext(step=0, epoch=0, protocol=cfg.protocol_name, labels=batch.y, indices=batch.idx,
                          dataset_size=self.data.num_train, num_classes=cfg.dataset.num_classes, critic_impl="torch",
                          views=self.views)
        self.out = self.system(batch.x, batch.y, ctx)


def _build(case: ProtocolCase, step: _Step) -> str:
    roles = step.system.networks()
    return f"networks {', '.join(roles)}; views {', '.join(step.views) or 'none'}"


def _classifiers(case: ProtocolCase, step: _Step) -> str:
    classifiers = step.system.classifiers()
    keys = [c.key for c in classifiers]
    assert len(set(keys)) == len(keys), f"classifier keys repeat: {keys}"
    networks = dict.fromkeys(c.network for c in classifiers)
    finals = {n: [c.key for c in classifiers if c.network == n and c.last] for n in networks}
    reported = [n for n, f in finals.items() if f]
    assert reported, "no classifier is a network's final classifier (last = True)"
    many = {n: f for n, f in finals.items() if len(f) > 1}
    assert not many, f"a network has several final classifiers: {many}"
    step.system.eval()
    with torch.no_grad():
        logits = step.system.predict(step.x)
    step.system.train()
    assert sorted(logits) == sorted(keys), f"predict returns {sorted(logits)}, classifiers() declares {sorted(keys)}"
    k = case.cfg.dataset.num_classes
    for key, value in logits.items():
        assert tuple(value.shape) == (BATCH, k), f"{key}: logits of shape {tuple(value.shape)}, expected ({BATCH}, {k})"
        assert bool(torch.isfinite(value).all()), f"{key}: non-finite logits"
    extra = [c.key for c in classifiers if not c.last]
    return f"reported {', '.join(finals[n][0] for n in reported)}" + (f"; also recorded {', '.join(extra)}"
                                                                       if extra else "")


def _step(case: ProtocolCase, step: _Step) -> str:
    out = step.out
    assert out.total.dim() == 0 and bool(torch.isfinite(out.total)), f"total {out.total}"
    bad = [t.key for t, v in out.terms.items() if v.dim() != 0 or not bool(torch.isfinite(v))]
    assert not bad, f"terms that are not finite scalars: {bad}"
    return f"loss {out.total.item():.4g}; terms {', '.join(t.key for t in out.terms)}"


def _gradients(case: ProtocolCase, step: _Step) -> str:
    params = [(n, p) for n, p in step.system.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(step.out.total, [p for _, p in params], allow_unused=True)
    dead = [n for (n, _), g in zip(params, grads, strict=True) if g is None or not bool(g.abs().sum() > 0)]
    assert not dead, f"{len(dead)} parameter(s) without gradient: {', '.join(dead[:5])}"
    bad = [n for (n, _), g in zip(params, grads, strict=True) if not bool(torch.isfinite(g).all())]
    assert not bad, f"non-finite gradients: {', '.join(bad[:5])}"
    return f"{sum(p.numel() for _, p in params):,} parameters all receive gradients"


def _deterministic(case: ProtocolCase, step: _Step) -> str:
    again = _Step(case)
    assert torch.equal(step.out.total, again.out.total), (f"two steps under seed 0 differ: {step.out.total.item()} "
                                                          f"vs {again.out.total.item()}")
    for name, view in step.views.items():
        assert torch.equal(view, again.views[name]), f"view '{name}' differs between two draws under seed 0"
    return "bit-identical under the same seed"


def _cost(case: ProtocolCase, step: _Step) -> str:
    ds = case.cfg.dataset
    cost = step.system.cost((ds.channels, ds.image_size, ds.image_size))
    for key in ("backbone_params", "loss_params"):
        assert isinstance(cost.get(key), int) and cost[key] >= 0, f"cost[{key!r}] = {cost.get(key)!r}"
    finals = [c.key for c in step.system.classifiers() if c.last]
    per = cost.get("per_exit", {})
    missing = [k for k in finals if not {"params", "flops"} <= set(per.get(k, {}))]
    assert not missing, f"no per-classifier cost (params, flops) for {missing}"
    return f"backbone {cost['backbone_params']:,} params; beyond it {cost['loss_params']:,}"


CHECKS = {"build": _build, "classifiers": _classifiers, "step": _step, "gradients": _gradients,
          "deterministic": _deterministic, "cost": _cost}


def run_protocol_checks(cases: list[ProtocolCase]) -> Iterator[CheckResult]:
    """Every check on every case; a build that fails skips the case's other checks, a failing step its gradients
    and determinism."""
    needs = {"gradients": "step", "deterministic": "step"}
    for case in cases:
        try:
            step = _Step(case)
        except Exception as exc:  # report, do not stop
            yield CheckResult(f"build [{case}]", False, f"{type(exc).__name__}: {exc}")
            for name in list(CHECKS)[1:]:
                yield CheckResult(f"{name} [{case}]", False, "skipped: needs 'build', which failed", skipped=True)
            continue
        failed: set[str] = set()
        for name, check in CHECKS.items():
            label = f"{name} [{case}]"
            if needs.get(name) in failed:
                failed.add(name)
                yield CheckResult(label, False, f"skipped: needs '{needs[name]}', which failed", skipped=True)
                continue
            try:
                yield CheckResult(label, True, check(case, step))
            except Exception as exc:
                failed.add(name)
                yield CheckResult(label, False, str(exc) if isinstance(exc, AssertionError)
                                  else f"{type(exc).__name__}: {exc}")


def protocol_cases(bench: Bench, protocol: str, backbone: str = "tinynet", dataset: str = "fashion-mnist",
                   budget: str = "zoo") -> list[ProtocolCase]:
    """The cases ``validate --protocol`` checks: each plugin-free method of ``protocol`` (a teacher or peer of the
    same backbone where the protocol takes one)."""
    cls = PROTOCOLS.get(protocol)
    partner = {cls.partner: backbone} if cls.partner else None
    return [ProtocolCase(m, bench.resolve(m, backbone, dataset, budget, protocol, partner=partner))
            for m in methods(bench, protocol)]
