"""The contract every discrepancy plugin must meet, as runnable checks, and the pre-flight check of a run.

The test suite parametrizes these checks over the whole loss registry (third-party plugins included) and
``discbench validate --loss NAME`` runs them for one loss and prints what passes, fails and is skipped. Each check
builds the plugin for a few (source, target) shapes that fit its tap and returns a ``CheckResult``.

Checks: a finite scalar ``LossOutput`` (its terms scalars too); gradients reach the source and every parameter the
plugin owns; none reach the target when the plugin declares ``detaches_target`` (and some do when it does not);
mismatched channels and spatial sizes; identical values under the same seed on CPU. A check that depends on one that
failed (gradients and determinism need a finite scalar) is skipped, so one fault (a NaN) is reported once.

``preflight(cfg)`` applies the same output and gradient checks to the plugins of a real run before its first step:
``discbench run`` and ``discbench sweep`` build the run's protocol on the CPU, run one forward and backward at
batch 2 on random inputs of the dataset's shape, and stop with one line (``PluginCheckError``) naming the plugin,
its package and the check it failed; no record is written.
"""

from __future__ import annotations

import copy
import inspect
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from discbench.api import Discrepancy, FeatureSpec, LossContext, LossOutput, Tap
from discbench.errors import DiscbenchError
from discbench.registry import LOSSES

if TYPE_CHECKING:
    from discbench.config import RunConfig

BATCH = 8
IMAGE = 16
NUM_CLASSES = 10
DATASET_SIZE = 64
PREFLIGHT_BATCH = 2
PREFLIGHT_DATASET_SIZE = 256  # only sizes memory banks (CRD): the check is about shapes and gradients


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


def call(plugin: Discrepancy, case: Case, seed: int = 0) -> tuple[Any, Tensor, Tensor]:
    """What the plugin's forward returns (a ``LossOutput`` if it keeps the contract), the source and the target
    (leaf tensors with grad) for fixed-seed inputs."""
    gen = torch.Generator().manual_seed(seed)
    source = sample(case.source, gen).requires_grad_()
    target = sample(case.target, gen).requires_grad_()
    return plugin(source, target, context(gen)), source, target


def forward(plugin: Discrepancy, case: Case, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Loss, source and target (leaf tensors with grad) for fixed-seed inputs (the golden values are computed so)."""
    out, source, target = call(plugin, case, seed)
    return out.loss, source, target


# -- the checks on one call of a plugin, shared by the contract suite and the pre-flight check ---------------------
def check_output(out: Any) -> Tensor:
    """``out`` must be a ``LossOutput`` whose ``loss`` is a finite scalar tensor and whose terms are scalar tensors;
    returns the loss, raises ``AssertionError`` with a one-line reason."""
    assert isinstance(out, LossOutput), (f"forward returned {type(out).__name__}, expected a discbench.api.LossOutput"
                                         f"(loss, terms)")
    loss = out.loss
    assert isinstance(loss, Tensor), f"LossOutput.loss is {type(loss).__name__}, expected a tensor"
    assert loss.dim() == 0, f"loss has shape {tuple(loss.shape)}, expected a scalar"
    assert torch.isfinite(loss), f"loss is {loss.item()}"
    assert isinstance(out.terms, dict), f"LossOutput.terms is {type(out.terms).__name__}, expected a dict"
    for key, value in out.terms.items():
        assert isinstance(value, Tensor) and value.dim() == 0, f"term '{key}' is not a scalar tensor"
    return loss


def check_gradients(plugin: nn.Module, loss: Tensor, source: Tensor, target: Tensor, detaches_target: bool) -> str:
    """Gradients of ``loss`` reach ``source`` and every trainable parameter of ``plugin``, all finite, and reach
    ``target`` exactly when the plugin does not declare ``detaches_target`` (checked only for a ``target`` that
    requires grad: a frozen teacher's features never do). Raises ``AssertionError`` with a one-line reason."""
    params = [(n, p) for n, p in plugin.named_parameters() if p.requires_grad]
    ends = [t for t in (source, target) if t.requires_grad]
    assert loss.requires_grad, "the loss does not depend on the source or on any parameter (no gradient at all)"
    grads = torch.autograd.grad(loss, [p for _, p in params] + ends, retain_graph=True, allow_unused=True)
    param_grads, end_grads = grads[:len(params)], dict(zip([id(t) for t in ends], grads[len(params):], strict=True))

    def reached(g: Tensor | None) -> bool:
        return g is not None and bool(g.abs().sum() > 0)

    if source.requires_grad:
        assert reached(end_grads[id(source)]), "no gradient reaches the source"
    dead = [n for (n, _), g in zip(params, param_grads, strict=True) if not reached(g)]
    assert not dead, f"parameters without gradient: {', '.join(dead)}"
    bad = [n for (n, _), g in zip(params, param_grads, strict=True) if g is not None and not torch.isfinite(g).all()]
    assert not bad, f"non-finite gradients: {', '.join(bad)}"
    if target.requires_grad and target is not source:
        if detaches_target:
            assert not reached(end_grads[id(target)]), ("gradient reaches the target, but the plugin declares "
                                                         "detaches_target = True")
        else:
            assert reached(end_grads[id(target)]), ("no gradient reaches the target, but the plugin declares "
                                                    "detaches_target = False")
    n_params = sum(p.numel() for _, p in params)
    return f"{n_params} parameters all receive gradients; target {'detached' if detaches_target else 'trained'}"


# -- the contract suite ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    check: str
    passed: bool
    detail: str
    skipped: bool = False


def _finite_scalar(cls: type[Discrepancy], case: Case) -> str:
    out, _, _ = call(build(cls, case), case)
    loss = check_output(out)
    return f"loss {loss.item():.4g}"


def _gradients(cls: type[Discrepancy], case: Case) -> str:
    plugin = build(cls, case)
    out, source, target = call(plugin, case)
    return check_gradients(plugin, check_output(out), source, target, cls.detaches_target)


def _deterministic(cls: type[Discrepancy], case: Case) -> str:
    first, _, _ = call(build(cls, case), case)
    again, _, _ = call(build(cls, case), case)
    first, again = check_output(first), check_output(again)
    assert torch.equal(first, again), f"two runs under seed 0 differ: {first.item()} vs {again.item()}"
    return "bit-identical under the same seed"


CHECKS: dict[str, Callable[[type[Discrepancy], Case], str]] = {
    "finite scalar": _finite_scalar,
    "gradients": _gradients,
    "deterministic": _deterministic,
}
# A check is skipped (not failed again) when a check it needs failed on the same case.
NEEDS: dict[str, tuple[str, ...]] = {"gradients": ("finite scalar",), "deterministic": ("finite scalar",)}


def run_checks(cls: type[Discrepancy]) -> Iterator[CheckResult]:
    """Every check on every shape case of ``cls``; a failing check yields its message instead of raising, and the
    checks that need it are skipped."""
    for case in cases(cls):
        failed: set[str] = set()
        for name, check in CHECKS.items():
            label = f"{name} [{case.name}]"
            blocked = [n for n in NEEDS.get(name, ()) if n in failed]
            if blocked:
                failed.add(name)
                yield CheckResult(label, False, f"skipped: needs '{blocked[0]}', which failed", skipped=True)
                continue
            try:
                yield CheckResult(label, True, check(cls, case))
            except Exception as exc:  # report, do not stop: the user wants the whole picture
                failed.add(name)
                yield CheckResult(label, False, f"{type(exc).__name__}: {exc}" if not isinstance(exc, AssertionError)
                                  else str(exc))


def validate(name: str) -> list[CheckResult]:
    """Run the contract suite on the registered loss ``name``."""
    return list(run_checks(LOSSES.get(name)))


# -- the pre-flight check of a run --------------------------------------------------------------------------------
class PluginCheckError(DiscbenchError):
    """A discrepancy plugin failed the pre-flight check of a run (one line: the plugin, its package, the check)."""


@dataclass
class _Call:
    plugin: Discrepancy
    source: Tensor
    target: Tensor
    ctx: Any
    output: Any = None


def _top_level_plugins(system: nn.Module) -> list[Discrepancy]:
    """Every discrepancy plugin of ``system`` that is not part of another plugin."""
    plugins = [m for m in system.modules() if isinstance(m, Discrepancy)]
    inner = {id(sub) for m in plugins for sub in m.modules() if sub is not m and isinstance(sub, Discrepancy)}
    return [m for m in plugins if id(m) not in inner]


def _on_cpu(network: nn.Module | None) -> nn.Module | None:
    """``network`` if it lives on the CPU, else a CPU copy (the run's own teacher is left where it is)."""
    if network is None or all(t.device.type == "cpu" for t in (*network.parameters(), *network.buffers())):
        return network
    return copy.deepcopy(network).cpu()


def preflight(cfg: RunConfig, teacher: nn.Module | None = None) -> int:
    """Check the plugins of ``cfg``'s run before its first step: build its protocol on the CPU as ``train`` does (with
    ``teacher``, or a randomly initialised network of the teacher's backbone for a protocol that needs one; in the
    run's memory format), run one forward and, per plugin call, one backward at batch 2 on random inputs of the
    dataset's shape, and check every call of every plugin (found by forward hooks on its ``Discrepancy`` modules):
    it returns a finite scalar ``LossOutput``, gradients reach every parameter it owns and the source, and reach
    the target exactly as ``detaches_target`` declares. The global random state is left as it was.

    Returns the number of plugin calls checked (0 for a run without a discrepancy); raises ``PluginCheckError``.
    """
    if not cfg.loss.name:
        return 0
    from discbench.registry import PROTOCOLS

    name = cfg.loss.name
    cls = LOSSES.get(name)  # a broken plugin raises its own one-line error here
    protocol = PROTOCOLS.get(cfg.protocol_name)
    ds = cfg.dataset

    def fail(check: str, where: str, reason: str) -> PluginCheckError:
        reason = " ".join(reason.split())  # one line
        return PluginCheckError(f"{LOSSES.describe(name)} failed the pre-flight check '{check}' ({where}): {reason}; "
                                f"fix the plugin, then check it with 'discbench validate --loss {name}'")

    base_where = f"protocol {cfg.protocol_name}, {cfg.backbone} on {ds.name}, batch {PREFLIGHT_BATCH}"
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(0)
        if protocol.needs_teacher:
            if teacher is None:
                from discbench.protocols.base import build_backbone

                teacher = build_backbone(cfg, cfg.protocol.teacher)
            teacher = _on_cpu(teacher)
        try:
            system = protocol(cfg, teacher=teacher).cpu().train()
        except DiscbenchError:
            raise
        except Exception as exc:
            if not _raised_in(exc, cls):
                raise
            raise fail("build", base_where, f"{type(exc).__name__}: {exc}") from exc

        calls: list[_Call] = []
        running: list[_Call] = []

        def before(module, args):
            running.append(_Call(module, *args[:3]) if len(args) >= 3 else _Call(module, None, None, None))

        def after(module, args, output):
            call = running.pop()
            call.output = output
            calls.append(call)

        hooks = [h for m in _top_level_plugins(system)
                 for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
        n = PREFLIGHT_DATASET_SIZE
        x = torch.randn(PREFLIGHT_BATCH, ds.channels, ds.image_size, ds.image_size)
        if cfg.runtime.channels_last:  # the memory format the run trains in
            system = system.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, ds.num_classes, (PREFLIGHT_BATCH,))
        ctx = LossContext(step=0, epoch=0, protocol=cfg.protocol_name, labels=y, indices=torch.randperm(n)[:len(y)],
                          dataset_size=n, num_classes=ds.num_classes, critic_impl="torch")

        def where(call: _Call) -> str:
            c = call.ctx
            pair = f", module {c.source_module} -> {c.target_module}" if isinstance(c, LossContext) else ""
            return base_where + pair

        try:
            try:
                system(x, y, ctx)
                error = None
            except Exception as exc:  # blame the plugin only if it raised or returned something wrong
                error = exc
            for call in calls:  # outputs first: a bad output is what makes the protocol's code fail afterwards
                try:
                    check_output(call.output)
                except AssertionError as exc:
                    raise fail("finite scalar", where(call), str(exc)) from error
            if error is not None:
                if running:
                    raise fail("forward", where(running[-1]), f"{type(error).__name__}: {error}") from error
                raise error
            for call in calls:
                try:
                    check_gradients(call.plugin, call.output.loss, call.source, call.target, cls.detaches_target)
                except AssertionError as exc:
                    raise fail("gradients", where(call), str(exc)) from None
                except RuntimeError as exc:
                    raise fail("gradients", where(call), f"{type(exc).__name__}: {exc}") from exc
        finally:
            for h in hooks:
                h.remove()
    return len(calls)


def _raised_in(exc: BaseException, cls: type) -> bool:
    """Whether the traceback of ``exc`` passes through the module that defines ``cls``."""
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:
        return False
    return any(frame.filename == path for frame in traceback.extract_tb(exc.__traceback__))

