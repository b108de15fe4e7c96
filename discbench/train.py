"""The one training loop: every protocol, every loss, every dataset runs through ``train``.

Read top to bottom: seed -> build the protocol (network(s), exits, discrepancy plugins) -> one SGD optimizer over
every trainable parameter the protocol holds (plugin heads included) -> epochs of steps -> evaluation of every exit
-> a run record (``discbench.records.new_record``; the caller writes it). What happens around one seed (claims,
skipping, resuming, teachers, failures) is ``discbench.runner``'s.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click
import torch
from torch import Tensor

from discbench import seeding
from discbench.api import LossContext, Protocol
from discbench.checkpoint import CheckpointPlan, Position, Preempted, TermHistory, restore, snapshot, stop_requested
from discbench.config import RunConfig
from discbench.distributed import Distributed
from discbench.errors import DiscbenchError, NonFiniteLossError, NonFiniteWeightsError
from discbench.kernels import describe_impl, record_impls
from discbench.keys import TOTAL, Term
from discbench.machine import peak_memory, reset_peak_memory
from discbench.records import RunRecord, new_record
from discbench.registry import PROTOCOLS

if TYPE_CHECKING:
    from discbench.teachers import Teacher


def deterministic(device: torch.device) -> None:
    """Bit-identical repeats on the CPU (``torch.use_deterministic_algorithms``)."""
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)


def effective_runtime(cfg: RunConfig, device: torch.device) -> dict:
    """The switches that actually apply on ``device``: bf16 autocast and compile on CUDA only; channels_last
    everywhere (it makes a CPU step of SmallNet ~25% faster, measured)."""
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "amp_bf16": cuda and cfg.runtime.amp_bf16,
        "channels_last": cfg.runtime.channels_last,
        "compile": cuda and cfg.runtime.compile,
        "critic_impl": None,  # the MI critic implementation(s) that ran, filled in after training (None: no critic)
        "threads": torch.get_num_threads(),
    }


@torch.no_grad()
def evaluate(system: torch.nn.Module, data, batch_size: int, channels_last: bool) -> dict[str, float]:
    """Top-1 accuracy (%) of every exit on the test split."""
    system.eval()
    correct: dict[str, int] = defaultdict(int)
    total = 0
    for x, y in data.test_batches(batch_size):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for name, logits in system.predict(x).items():
            correct[name] += int((logits.argmax(1) == y).sum())
        total += len(y)
    system.train()
    return {name: 100.0 * c / max(total, 1) for name, c in correct.items()}


def check_finite(terms: list[Term], values: Tensor, step: int, epoch: int) -> None:
    """Raise ``NonFiniteLossError`` naming the first non-finite term (one device sync per step); ``values`` holds the
    total, then ``terms``."""
    if not bool(torch.isfinite(values).all()):
        names = [TOTAL, *terms]
        bad = [i for i, v in enumerate(values.tolist()) if not math.isfinite(v)]
        first = next((i for i in bad if i > 0), bad[0])  # a named term rather than the total when one is to blame
        raise NonFiniteLossError(names[first], step, epoch, values[first].item())


def check_finite_weights(system: torch.nn.Module, epoch: int) -> None:
    """Raise ``NonFiniteWeightsError`` naming the first parameter or buffer that is not finite (before evaluation:
    a non-finite network never becomes a record)."""
    for name, tensor in [*system.named_parameters(), *system.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteWeightsError(name, epoch)


def summarize(terms: list[Term], values: list[float]) -> str:
    """``loss 3.21 ce 0.61 mi 1.20``: the total, then each term averaged over networks and modules."""
    groups: dict[str, list[float]] = defaultdict(list)
    for term, value in zip([TOTAL, *terms], values, strict=True):
        groups[term.name].append(value)
    return " ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in groups.items())


def show_running_means(item: tuple[list[Term], Tensor, int] | None) -> str | None:
    """The progress bar's text: the epoch's running means, read from the device only when the bar is drawn."""
    if item is None:
        return None
    terms, sums, steps = item
    return summarize(terms, (sums / steps).tolist())


@dataclass
class TrainedRun:
    """What ``train`` returns: the run record (not yet written) and the trained protocol (its networks)."""

    record: RunRecord | None  # None on DDP ranks other than 0
    system: Protocol


def train(cfg: RunConfig, seed: int, data, device: torch.device, progress: bool = True,
          teacher: Teacher | None = None, checkpoint: CheckpointPlan | None = None,
          dist: Distributed | None = None) -> TrainedRun:
    """Train one seed of ``cfg`` on ``data`` (against ``teacher`` for protocols that need one).

    With a ``checkpoint`` plan the run resumes from its newest valid checkpoint and writes one at every epoch end
    (and every ``checkpoint.every_steps`` steps); a stop request (SIGTERM under ``stop_on_signals``) writes one at
    the next step and raises ``Preempted``. ``dist`` trains one rank of a torchrun group (``discbench.distributed``).
    """
    started = time.time()
    dist = dist or Distributed()
    deterministic(device)
    reset_peak_memory(device)
    r = cfg.recipe
    runtime = {**effective_runtime(cfg, device), **dist.runtime(r.batch_size)}
    with seeding.run_seed(seed):  # networks, exits and plugin heads each from their own stream
        system = PROTOCOLS.get(cfg.protocol_name)(cfg, teacher=teacher.network if teacher else None)
    init_prints = {role: seeding.fingerprint(net.state_dict().values()) for role, net in system.networks().items()}
    system = system.to(device)
    if runtime["channels_last"]:
        system = system.to(memory_format=torch.channels_last)
    image_shape = (cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size)
    cost = system.cost(image_shape)
    system = dist.prepare(system, device)
    runtime["batchnorm"] = dist.batchnorm
    model = dist.wrap(system, device)
    step_fn = torch.compile(model) if runtime["compile"] else model

    params = [p for p in system.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay,
                                nesterov=r.nesterov)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(r.milestones), gamma=r.gamma)
    generator = seeding.generator(seed, "data", device)  # the epochs' order and the augmentation
    seeding.seed_global(seed, "loss")  # every other draw of the steps (sampling inside losses)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if runtime["amp_bf16"] else contextlib.nullcontext())

    steps_per_epoch = data.steps_per_epoch(r.batch_size)
    if steps_per_epoch == 0:
        raise DiscbenchError(f"batch size {r.batch_size} exceeds the {data.num_train} training samples; lower "
                             f"recipe.batch_size or raise recipe.train_subset")
    critic_impl = describe_impl(device)  # the implementation, with the reason when a CUDA device cannot run Triton
    pos = Position(history=TermHistory(steps_per_epoch * r.epochs), fingerprints={"init": init_prints})
    if checkpoint is not None:
        state = dist.broadcast(checkpoint.load(cfg.hash, seed) if dist.is_main else None)
        if state is not None:
            pos = restore(state, system, optimizer, scheduler, generator, device, checkpoint.path)
            if progress and dist.is_main:
                print(f"resuming {cfg.label} | {cfg.backbone} | seed {seed} from {checkpoint.path}: epoch "
                      f"{pos.epoch + 1}, step {pos.epoch_step}/{steps_per_epoch}", file=sys.stderr)

    def save() -> None:
        if checkpoint is not None and dist.is_main:
            checkpoint.save(snapshot(cfg, seed, pos, system, optimizer, scheduler, generator))

    for epoch in range(pos.epoch, r.epochs):
        epoch_start = segment_start = time.time()
        if pos.order is None:
            pos.order = data.epoch_order(generator)
            if epoch == 0:
                pos.fingerprints["data"] = seeding.fingerprint([pos.order])
        bar = click.progressbar(length=steps_per_epoch, label=f"{cfg.label} | {cfg.backbone} | seed {seed} | "
                                f"epoch {epoch + 1}/{r.epochs}", hidden=not (progress and dist.is_main),
                                file=sys.stderr, show_pos=True, item_show_func=show_running_means)
        with bar:
            bar.update(pos.epoch_step)
            for batch in data.train_epoch(r.batch_size, generator, pos.order, pos.epoch_step, dist.rank,
                                          dist.world_size):
                x = batch.x.contiguous(memory_format=torch.channels_last) if runtime["channels_last"] else batch.x
                ctx = LossContext(step=pos.step, epoch=epoch, protocol=cfg.protocol_name, labels=batch.y,
                                  indices=batch.idx, dataset_size=data.num_train, num_classes=cfg.dataset.num_classes,
                                  critic_impl=critic_impl, views=system.views(data, batch, generator))
                with autocast, record_impls(pos.critics):
                    out = step_fn(x, batch.y, ctx)
                pos.keys = list(out.terms)
                values = dist.average(torch.stack([out.total.detach().float(),
                                                   *(v.float() for v in out.terms.values())]))
                check_finite(pos.keys, values, pos.step, epoch)
                optimizer.zero_grad(set_to_none=True)
                out.total.backward()
                optimizer.step()
                pos.sums = values if pos.sums is None else pos.sums + values
                pos.history.add([TOTAL.key, *(t.key for t in pos.keys)], values)
                pos.step += 1
                pos.epoch_step += 1
                bar.update(1, (pos.keys, pos.sums, pos.epoch_step))
                stop = dist.any(stop_requested() is not None, device)
                if stop or (checkpoint is not None and checkpoint.every_steps
                            and pos.step % checkpoint.every_steps == 0 and pos.epoch_step < steps_per_epoch):
                    pos.train_seconds += time.time() - segment_start  # checkpoint writes count as training
                    segment_start = time.time()
                    save()
                if stop:
                    where = f"checkpoint {checkpoint.path}" if checkpoint is not None else "no checkpoint"
                    signum = stop_requested() or signal.SIGTERM
                    raise Preempted(signum, f"stopped by {signal.Signals(signum).name} at epoch {epoch + 1}, step "
                                            f"{pos.epoch_step}/{steps_per_epoch} of seed {seed}; {where} written "
                                            f"(rerun the same command to resume)")
        check_finite_weights(system, epoch)  # before evaluation and before a checkpoint: never save a broken network
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        pos.train_seconds += time.time() - segment_start
        means = (pos.sums / steps_per_epoch).tolist()
        record = {"epoch": epoch + 1, "lr": lr, "train_seconds": time.time() - epoch_start,
                  "train_terms": dict(zip([TOTAL.key, *(t.key for t in pos.keys)], means, strict=True))}
        if dist.is_main and ((epoch + 1) % r.eval_every == 0 or epoch + 1 == r.epochs):
            record["top1"] = evaluate(system, data, r.eval_batch_size, runtime["channels_last"])
            if progress:
                accs = " ".join(f"{k} {v:.2f}" for k, v in record["top1"].items())
                print(f"  epoch {epoch + 1}: {summarize(pos.keys, means)} | top-1 {accs}", file=sys.stderr)
        pos.end_epoch(record)
        save()

    runtime["critic_impl"] = ", ".join(sorted(pos.critics)) or None
    images = pos.step * r.batch_size
    record = new_record(
        cfg, seed, pos.epochs, system.classifiers(), [TOTAL, *pos.keys], runtime=runtime,
        cost={**cost, "peak_memory": peak_memory(device)},
        timing={"wall_seconds": time.time() - started, "train_seconds": pos.train_seconds, "steps": pos.step,
                "images_per_second": images / pos.train_seconds, "steps_per_second": pos.step / pos.train_seconds,
                "resumed": pos.resumed},
        teacher=teacher.summary() if teacher else None, term_history=pos.history.to_dict(),
        fingerprints=pos.fingerprints,
    ) if dist.is_main else None
    return TrainedRun(record, system)
