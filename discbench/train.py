"""The one training loop: every protocol, every loss, every dataset runs through ``train``.

Read top to bottom: seed -> build the protocol (network(s), exits, discrepancy plugins) -> one SGD optimizer over
every trainable parameter the protocol holds (plugin heads included) -> epochs of steps -> evaluation of every exit
-> a run record (a dict; discbench.results writes it).
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import click
import torch
from torch import Tensor

from discbench import claims
from discbench.api import LossContext, Protocol
from discbench.checkpoint import CheckpointPlan, Position, Preempted, restore, snapshot, stop_requested
from discbench.claims import DEFAULT_STALE_AFTER, seed_files
from discbench.config import Bench, RunConfig
from discbench.contract import preflight
from discbench.distributed import Distributed
from discbench.errors import DiscbenchError, NonFiniteLossError, NonFiniteWeightsError
from discbench.kernels import describe_impl, record_impls
from discbench.records import existing_valid, remove_orphans
from discbench.registry import PROTOCOLS
from discbench.results import (
    RunRecord,
    TermHistory,
    check_writable,
    find_record,
    new_record,
    peak_memory,
    record_path,
    write_record,
)
from discbench.results import reset_peak_memory as reset_peak
from discbench.teachers import Teacher, TeacherStore, teacher_config


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` ("cpu", "cuda", "cuda:1"), else CUDA when available, else CPU."""
    if requested:
        try:
            device = torch.device(requested)
        except (RuntimeError, ValueError):
            raise DiscbenchError(f"--device {requested}: not a device; use cpu, cuda or cuda:N") from None
        if device.type not in ("cpu", "cuda"):
            raise DiscbenchError(f"--device {requested}: discbench trains on cpu or cuda; use --device cpu or cuda")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DiscbenchError(f"--device {requested}: CUDA is not available on this machine; use --device cpu")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise DiscbenchError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA "
                                 f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int, device: torch.device) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
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


def check_finite(terms: dict[str, Tensor], values: Tensor, step: int, epoch: int) -> None:
    """Raise ``NonFiniteLossError`` naming the first non-finite term (one device sync per step)."""
    if not bool(torch.isfinite(values).all()):
        names = ["total", *terms]
        bad = [i for i, v in enumerate(values.tolist()) if not math.isfinite(v)]
        first = next((i for i in bad if i > 0), bad[0])  # a named term rather than the total when one is to blame
        raise NonFiniteLossError(names[first], step, epoch, values[first].item())


def check_finite_weights(system: torch.nn.Module, epoch: int) -> None:
    """Raise ``NonFiniteWeightsError`` naming the first parameter or buffer that is not finite (before evaluation:
    a non-finite network never becomes a record)."""
    for name, tensor in [*system.named_parameters(), *system.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteWeightsError(name, epoch)


def summarize(means: dict[str, float]) -> str:
    """``loss 3.21 ce 0.61 mi 1.20``: the total, then each term averaged over modules."""
    groups: dict[str, list[float]] = defaultdict(list)
    for key, value in means.items():
        groups[key.split("@")[0]].append(value)
    return " ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in groups.items())


def show_running_means(item: tuple[list[str], Tensor, int] | None) -> str | None:
    """The progress bar's text: the epoch's running means, read from the device only when the bar is drawn."""
    if item is None:
        return None
    keys, sums, steps = item
    return summarize(dict(zip(["loss", *keys], (sums / steps).tolist(), strict=True)))


class SeedsFailed(DiscbenchError):
    """Some seeds of a ``keep_going`` run failed (each left a failure record); the others were written."""

    def __init__(self, count: int, written: list[Path]):
        self.count, self.written = count, written
        super().__init__(f"{count} seed(s) failed; 'discbench status' shows why, and the next run retries them")


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
    seed_everything(seed, device)
    reset_peak(device)
    r = cfg.recipe
    runtime = {**effective_runtime(cfg, device), **dist.runtime(r.batch_size)}
    system = PROTOCOLS.get(cfg.protocol_name)(cfg, teacher=teacher.network if teacher else None).to(device)
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
    generator = torch.Generator(device=device).manual_seed(seed)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if runtime["amp_bf16"] else contextlib.nullcontext())

    steps_per_epoch = data.steps_per_epoch(r.batch_size)
    if steps_per_epoch == 0:
        raise DiscbenchError(f"batch size {r.batch_size} exceeds the {data.num_train} training samples; lower "
                             f"recipe.batch_size or raise recipe.train_subset")
    critic_impl = describe_impl(device)  # the implementation, with the reason when a CUDA device cannot run Triton
    pos = Position(history=TermHistory(steps_per_epoch * r.epochs))
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
                                  critic_impl=critic_impl)
                with autocast, record_impls(pos.critics):
                    out = step_fn(x, batch.y, ctx)
                pos.keys = list(out.terms)
                values = dist.average(torch.stack([out.total.detach().float(),
                                                   *(v.float() for v in out.terms.values())]))
                check_finite(out.terms, values, pos.step, epoch)
                optimizer.zero_grad(set_to_none=True)
                out.total.backward()
                optimizer.step()
                pos.sums = values if pos.sums is None else pos.sums + values
                pos.history.add(["loss", *pos.keys], values)
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
        means = dict(zip(["loss", *pos.keys], (pos.sums / steps_per_epoch).tolist(), strict=True))
        record = {"epoch": epoch + 1, "lr": lr, "train_terms": means, "train_seconds": time.time() - epoch_start}
        if dist.is_main and ((epoch + 1) % r.eval_every == 0 or epoch + 1 == r.epochs):
            record["top1"] = evaluate(system, data, r.eval_batch_size, runtime["channels_last"])
            if progress:
                accs = " ".join(f"{k} {v:.2f}" for k, v in record["top1"].items())
                print(f"  epoch {epoch + 1}: {summarize(means)} | top-1 {accs}", file=sys.stderr)
        pos.end_epoch(record)
        save()

    runtime["critic_impl"] = ", ".join(sorted(pos.critics)) or None
    images = pos.step * r.batch_size
    record = new_record(
        cfg, seed, pos.epochs, system.classifiers(), runtime=runtime, cost={**cost, "peak_memory": peak_memory(device)},
        timing={"wall_seconds": time.time() - started, "train_seconds": pos.train_seconds, "steps": pos.step,
                "images_per_second": images / pos.train_seconds, "steps_per_second": pos.step / pos.train_seconds,
                "resumed": pos.resumed},
        teacher=teacher.summary() if teacher else None, term_history=pos.history.to_dict(),
    ) if dist.is_main else None
    return TrainedRun(record, system)


class DataCache:
    """Datasets opened once per (dataset, subsets, device) for a command that trains many configurations."""

    def __init__(self, data_dir: str | None = None, download: bool = False):
        self.data_dir, self.download = data_dir, download
        self._open: dict = {}

    def get(self, cfg: RunConfig, device: torch.device):
        from discbench.data import open_dataset

        key = (cfg.dataset, cfg.recipe.train_subset, cfg.recipe.test_subset, str(device))
        if key not in self._open:
            self._open[key] = open_dataset(cfg.dataset, cfg.recipe, device, self.data_dir, self.download)
        return self._open[key]


@dataclass
class RunOptions:
    """How seeds survive and share: checkpoint cadence, what to keep, when another host's claim is stale."""

    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: epoch ends only)
    keep_checkpoints: bool = False  # keep the checkpoints once the record is written
    stale_after: float = DEFAULT_STALE_AFTER  # seconds without heartbeat before a claim is taken over
    keep_going: bool = False  # a failed seed records its failure and the next seed trains (sweeps)


def run_seeds(cfg: RunConfig, seeds: Iterable[int], results_dir: Path, device: torch.device, force: bool = False,
              progress: bool = True, data: DataCache | None = None, bench: Bench | None = None,
              teachers: TeacherStore | None = None, options: RunOptions | None = None,
              dist: Distributed | None = None) -> list[Path]:
    """Train each seed of ``cfg`` whose record does not exist yet (all with ``force``) and write its record.

    A protocol that needs a teacher finds it in ``teachers`` (verified once, before the first seed) and the teacher's
    identity becomes part of the configuration, so its hash names the teacher too. ``data`` lets a sweep open each
    dataset once. Before the first seed it trains, the plugins pass the pre-flight check (``discbench.contract``:
    one forward and backward at batch 2 on the CPU, with the loaded teacher); a failure writes no record.

    Each seed is claimed first (``discbench.claims``; a seed another live process claims is skipped), resumes from
    its checkpoint if it has one (``discbench.checkpoint``), and leaves a failure record when it fails (then the
    error propagates, or with ``options.keep_going`` the next seed trains). Under torchrun (``dist``) rank 0
    claims, checkpoints and writes; the other ranks follow its decisions.
    """
    opts = options or RunOptions()
    dist = dist or Distributed()
    data = data or DataCache()
    teacher = None
    if PROTOCOLS.get(cfg.protocol_name).needs_teacher:
        teachers = teachers or TeacherStore()
        cfg = teachers.attach(bench or Bench.load(), cfg)
        teacher = teachers.load(cfg, device)
    written, checked, failures = [], False, []
    if dist.is_main:
        remove_orphans(Path(results_dir) / cfg.dataset.name / cfg.budget / cfg.protocol_name)
    for seed in seeds:
        existing = existing_valid(find_record(results_dir, cfg, seed), note=lambda m: print(m, file=sys.stderr))
        if existing and not force:
            if dist.is_main:
                print(f"skip {cfg.label} | {cfg.backbone} | seed {seed}: {existing} exists (--force reruns it)",
                      file=sys.stderr)
            continue
        path = existing if existing else record_path(results_dir, cfg, seed)
        if not checked:
            if dist.is_main:
                check_writable(path)
            preflight(cfg, teacher=teacher.network if teacher else None)
            data.get(cfg, device)  # open (and check) the data before claiming the seed: bad data is not a failed seed
            checked = True
        files = seed_files(results_dir, cfg, seed)
        claim = claims.acquire(files.claim, opts.stale_after) if dist.is_main else None
        busy = dist.broadcast(None if claim is None or isinstance(claim, claims.HeldClaim) else claims.describe(claim))
        if busy:
            if dist.is_main:
                print(f"skip {cfg.label} | {cfg.backbone} | seed {seed}: running on {busy} ({files.claim})",
                      file=sys.stderr)
            continue
        try:
            done = dist.broadcast(find_record(results_dir, cfg, seed) if dist.is_main else None)
            if done and done != existing:  # another process finished it while this one was looking
                if dist.is_main:
                    print(f"skip {cfg.label} | {cfg.backbone} | seed {seed}: {done} exists", file=sys.stderr)
                continue
            plan = CheckpointPlan(files.checkpoint, every_steps=opts.checkpoint_every, writer=dist.is_main)
            record = train(cfg, seed, data.get(cfg, device), device, progress=progress, teacher=teacher,
                           checkpoint=plan, dist=dist).record
            if not dist.is_main:
                continue
            if claim.lost:
                print(f"not writing {cfg.label} | {cfg.backbone} | seed {seed}: another process took its claim over",
                      file=sys.stderr)
                continue
            write_record(path, record)
            files.failed.unlink(missing_ok=True)
            if not opts.keep_checkpoints:
                plan.remove()
            print(f"wrote {path}: top-1 " + " ".join(f"{k} {v:.2f}" for k, v in record.final_top1.items()),
                  file=sys.stderr)
            written.append(path)
        except (Preempted, KeyboardInterrupt):
            raise  # the checkpoint is the record of progress; the seed is pending, not failed
        except Exception as exc:
            if dist.is_main:
                claims.write_failure(files, cfg, seed, exc)
            if not opts.keep_going:
                raise
            failures.append(exc)
            print(f"failed {cfg.label} | {cfg.backbone} | seed {seed}: {exc}", file=sys.stderr)
        finally:
            if isinstance(claim, claims.HeldClaim):
                claim.release()
    if failures:
        raise SeedsFailed(len(failures), written)
    return written


def train_teachers(bench: Bench, backbone: str, dataset: str, budget: str, seeds: Iterable[int],
                   teachers: TeacherStore, results_dir: Path, device: torch.device, force: bool = False,
                   progress: bool = True, data: DataCache | None = None,
                   options: RunOptions | None = None) -> list[dict]:
    """Train a plain ``backbone`` per seed with the offline recipe of ``budget`` and store it as a teacher (its run
    record is written too, as the ``none`` row it is). A seed already stored is kept unless ``force``.

    A teacher is claimed and checkpointed like any seed; a teacher another live process is training is waited for
    (its students need it), then used."""
    opts = options or RunOptions()
    data = data or DataCache()
    cfg = teacher_config(bench, backbone, dataset, budget)
    stored = []
    for seed in seeds:
        teacher_id = f"{cfg.hash}-seed{seed}"
        files = seed_files(results_dir, cfg, seed)
        claim, waiting = None, False
        while True:
            manifest = teachers.manifest(teacher_id)
            if manifest is not None and (waiting or not force):  # --force retrains unless it waited for one
                break
            claim = claims.acquire(files.claim, opts.stale_after)
            if isinstance(claim, claims.HeldClaim):
                manifest = None if force else teachers.manifest(teacher_id)  # finished while this one looked?
                break
            if not waiting:
                print(f"waiting for teacher {backbone} | {dataset} | seed {seed}: being trained on "
                      f"{claims.describe(claim)}", file=sys.stderr)
                waiting = True
            claim = None
            time.sleep(max(0.5, min(10.0, opts.stale_after / 4)))
        if manifest is not None:
            if isinstance(claim, claims.HeldClaim):
                claim.release()
            print(f"skip teacher {backbone} | {dataset} | seed {seed}: {teachers.root / teacher_id} exists "
                  f"(--force retrains it)", file=sys.stderr)
            stored.append(manifest)
            continue
        try:
            plan = CheckpointPlan(files.checkpoint, every_steps=opts.checkpoint_every)  # a killed teacher resumes
            run = train(cfg, seed, data.get(cfg, device), device, progress=progress, checkpoint=plan)
            if find_record(results_dir, cfg, seed) is None:  # the same plain run may be published already (`none`)
                write_record(record_path(results_dir, cfg, seed), run.record)
            top1 = run.record.last_top1("net")
            ds = cfg.dataset
            manifest = {"teacher_id": teacher_id, "backbone": backbone, "dataset": dataset,
                        "num_classes": ds.num_classes, "in_channels": ds.channels, "image_size": ds.image_size,
                        "budget": budget, "seed": seed, "top1": top1, "source": "trained", "config_hash": cfg.hash,
                        "config": cfg.to_dict(), "provenance": run.record.provenance}
            path = teachers.save(run.system.net, manifest, force=force)
            if not opts.keep_checkpoints:
                plan.remove()
        except (Preempted, KeyboardInterrupt):
            raise
        except Exception as exc:
            claims.write_failure(files, cfg, seed, exc)
            raise
        finally:
            claim.release()
        print(f"stored teacher {backbone} | {dataset} | seed {seed}: top-1 {top1:.2f} in {path}", file=sys.stderr)
        stored.append(teachers.manifest(teacher_id))
    return stored
