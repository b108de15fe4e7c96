"""The one training loop: every protocol, every loss, every dataset runs through ``train``.

Read top to bottom: seed -> build the protocol (network(s), exits, discrepancy plugins) -> one SGD optimizer over
every trainable parameter the protocol holds (plugin heads included) -> epochs of steps -> evaluation of every exit
-> a run record (a dict; discbench.results writes it).
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import click
import torch
from torch import Tensor

from discbench.api import LossContext, Protocol
from discbench.config import Bench, RunConfig
from discbench.contract import preflight
from discbench.errors import DiscbenchError, NonFiniteLossError
from discbench.kernels import describe_impl
from discbench.registry import PROTOCOLS
from discbench.results import RunRecord, find_record, new_record, record_path, write_record
from discbench.teachers import Teacher, TeacherStore, teacher_config


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` ("cpu", "cuda", "cuda:1"), else CUDA when available, else CPU."""
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DiscbenchError(f"--device {requested}: CUDA is not available on this machine; use --device cpu")
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
        "critic_impl": describe_impl(device),
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


@dataclass
class TrainedRun:
    """What ``train`` returns: the run record (not yet written) and the trained protocol (its networks)."""

    record: RunRecord
    system: Protocol


def train(cfg: RunConfig, seed: int, data, device: torch.device, progress: bool = True,
          teacher: Teacher | None = None) -> TrainedRun:
    """Train one seed of ``cfg`` on ``data`` (against ``teacher`` for protocols that need one)."""
    started = time.time()
    seed_everything(seed, device)
    runtime = effective_runtime(cfg, device)
    system = PROTOCOLS.get(cfg.protocol_name)(cfg, teacher=teacher.network if teacher else None).to(device)
    if runtime["channels_last"]:
        system = system.to(memory_format=torch.channels_last)
    image_shape = (cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size)
    cost = system.cost(image_shape)
    step_fn = torch.compile(system) if runtime["compile"] else system

    r = cfg.recipe
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
    epochs, step, train_seconds = [], 0, 0.0
    for epoch in range(r.epochs):
        epoch_start = time.time()
        sums: Tensor | None = None
        keys: list[str] = []
        epoch_steps = 0
        bar = click.progressbar(length=steps_per_epoch, label=f"{cfg.label} | {cfg.backbone} | seed {seed} | "
                                f"epoch {epoch + 1}/{r.epochs}", hidden=not progress, file=sys.stderr,
                                show_pos=True, item_show_func=show_running_means)
        with bar:
            for batch in data.train_epoch(r.batch_size, generator):
                x = batch.x.contiguous(memory_format=torch.channels_last) if runtime["channels_last"] else batch.x
                ctx = LossContext(step=step, epoch=epoch, protocol=cfg.protocol_name, labels=batch.y,
                                  indices=batch.idx, dataset_size=data.num_train, num_classes=cfg.dataset.num_classes,
                                  critic_impl=runtime["critic_impl"])
                with autocast:
                    out = step_fn(x, batch.y, ctx)
                keys = list(out.terms)
                values = torch.stack([out.total.detach().float(), *(v.float() for v in out.terms.values())])
                check_finite(out.terms, values, step, epoch)
                optimizer.zero_grad(set_to_none=True)
                out.total.backward()
                optimizer.step()
                sums = values if sums is None else sums + values
                step += 1
                epoch_steps += 1
                bar.update(1, (keys, sums, epoch_steps))
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        train_seconds += time.time() - epoch_start
        means = dict(zip(["loss", *keys], (sums / steps_per_epoch).tolist(), strict=True))
        record = {"epoch": epoch + 1, "lr": lr, "train_terms": means, "train_seconds": time.time() - epoch_start}
        if (epoch + 1) % r.eval_every == 0 or epoch + 1 == r.epochs:
            record["top1"] = evaluate(system, data, r.eval_batch_size, runtime["channels_last"])
            if progress:
                accs = " ".join(f"{k} {v:.2f}" for k, v in record["top1"].items())
                print(f"  epoch {epoch + 1}: {summarize(means)} | top-1 {accs}", file=sys.stderr)
        epochs.append(record)

    images = step * r.batch_size
    record = new_record(
        cfg, seed, epochs, system.classifiers(), runtime=runtime, cost=cost,
        timing={"wall_seconds": time.time() - started, "train_seconds": train_seconds, "steps": step,
                "images_per_second": images / train_seconds, "steps_per_second": step / train_seconds},
        teacher=teacher.summary() if teacher else None,
    )
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


def run_seeds(cfg: RunConfig, seeds: Iterable[int], results_dir: Path, device: torch.device, force: bool = False,
              progress: bool = True, data: DataCache | None = None, bench: Bench | None = None,
              teachers: TeacherStore | None = None) -> list[Path]:
    """Train each seed of ``cfg`` whose record does not exist yet (all with ``force``) and write its record.

    A protocol that needs a teacher finds it in ``teachers`` (verified once, before the first seed) and the teacher's
    identity becomes part of the configuration, so its hash names the teacher too. ``data`` lets a sweep open each
    dataset once. Before the first seed it trains, the plugins pass the pre-flight check (``discbench.contract``:
    one forward and backward at batch 2 on the CPU, with the loaded teacher); a failure writes no record.
    """
    data = data or DataCache()
    teacher = None
    if PROTOCOLS.get(cfg.protocol_name).needs_teacher:
        teachers = teachers or TeacherStore()
        cfg = teachers.attach(bench or Bench.load(), cfg)
        teacher = teachers.load(cfg, device)
    written, checked = [], False
    for seed in seeds:
        existing = find_record(results_dir, cfg, seed)
        if existing and not force:
            print(f"skip {cfg.label} | {cfg.backbone} | seed {seed}: {existing} exists (--force reruns it)",
                  file=sys.stderr)
            continue
        if not checked:
            preflight(cfg, teacher=teacher.network if teacher else None)
            checked = True
        record = train(cfg, seed, data.get(cfg, device), device, progress=progress, teacher=teacher).record
        path = existing if existing else record_path(results_dir, cfg, seed)
        write_record(path, record)
        print(f"wrote {path}: top-1 " + " ".join(f"{k} {v:.2f}" for k, v in record.final_top1.items()),
              file=sys.stderr)
        written.append(path)
    return written


def train_teachers(bench: Bench, backbone: str, dataset: str, budget: str, seeds: Iterable[int],
                   teachers: TeacherStore, results_dir: Path, device: torch.device, force: bool = False,
                   progress: bool = True, data: DataCache | None = None) -> list[dict]:
    """Train a plain ``backbone`` per seed with the offline recipe of ``budget`` and store it as a teacher (its run
    record is written too, as the ``none`` row it is). A seed already stored is kept unless ``force``."""
    data = data or DataCache()
    cfg = teacher_config(bench, backbone, dataset, budget)
    stored = []
    for seed in seeds:
        teacher_id = f"{cfg.hash}-seed{seed}"
        manifest = teachers.manifest(teacher_id)
        if manifest is not None and not force:
            print(f"skip teacher {backbone} | {dataset} | seed {seed}: {teachers.root / teacher_id} exists "
                  f"(--force retrains it)", file=sys.stderr)
            stored.append(manifest)
            continue
        run = train(cfg, seed, data.get(cfg, device), device, progress=progress)
        if find_record(results_dir, cfg, seed) is None:  # the same plain run may be published already (a `none` row)
            write_record(record_path(results_dir, cfg, seed), run.record)
        top1 = run.record.last_top1("net")
        ds = cfg.dataset
        manifest = {"teacher_id": teacher_id, "backbone": backbone, "dataset": dataset, "num_classes": ds.num_classes,
                    "in_channels": ds.channels, "image_size": ds.image_size, "budget": budget, "seed": seed,
                    "top1": top1, "source": "trained", "config_hash": cfg.hash, "config": cfg.to_dict(),
                    "provenance": run.record.provenance}
        path = teachers.save(run.system.net, manifest, force=force)
        print(f"stored teacher {backbone} | {dataset} | seed {seed}: top-1 {top1:.2f} in {path}", file=sys.stderr)
        stored.append(teachers.manifest(teacher_id))
    return stored
