"""What happens to a seed and to a sweep: skip, claim, pre-flight, teachers, resume, train, write, fail.

Every command that trains builds one ``Workspace`` (the configuration, the results directory, the data, the teacher
store, the device, how seeds survive and share) and hands configurations to ``run_seeds``, ``train_teachers`` or
``sweep``; ``discbench.train`` trains one seed. A launcher job rebuilds the same workspace in its own process from
its ``WorkspaceSpec`` (plain values, picklable).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from discbench import claims
from discbench.checkpoint import CheckpointPlan, Preempted, stop_on_signals
from discbench.claims import DEFAULT_STALE_AFTER
from discbench.config import Bench, RunConfig
from discbench.contract import preflight
from discbench.distributed import Distributed
from discbench.errors import DiscbenchError, leaves_failure_record
from discbench.machine import usable_cpus
from discbench.records import (
    DEFAULT_RESULTS_DIR,
    check_writable,
    existing_valid,
    find_record,
    record_path,
    remove_orphans,
    run_folder,
    seed_files,
    write_record,
)
from discbench.registry import PROTOCOLS
from discbench.teachers import TeacherStore, teacher_config
from discbench.train import train

if TYPE_CHECKING:
    from discbench.suites import SuiteRun


def say(line: str) -> None:
    print(line, file=sys.stderr)


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


@dataclass(frozen=True)
class RunOptions:
    """How seeds survive and share: checkpoint cadence, what to keep, when another host's claim is stale, whether a
    seed with a record is trained again, whether a failed seed stops the others."""

    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: epoch ends only)
    keep_checkpoints: bool = False  # keep the checkpoints once the record is written
    stale_after: float = DEFAULT_STALE_AFTER  # seconds without heartbeat before a claim is taken over
    keep_going: bool = False  # a failed seed records its failure and the next seed trains (sweeps)
    force: bool = False  # train seeds whose record exists (teachers: retrain stored ones)
    progress: bool = True  # progress bars and per-epoch lines on stderr


@dataclass(frozen=True)
class WorkspaceSpec:
    """A workspace as plain values: what the command line gave, and what a launcher job pickles."""

    config_path: str | None = None
    results_dir: str = str(DEFAULT_RESULTS_DIR)
    teacher_store: str | None = None
    data_dir: str | None = None
    download: bool = False
    device: str | None = None
    options: RunOptions = field(default_factory=RunOptions)

    def open(self, dist: Distributed | None = None, bench: Bench | None = None) -> Workspace:
        """The workspace these values describe (the configuration is read now, unless ``bench`` is given)."""
        dist = dist or Distributed()
        return Workspace(bench=bench or Bench.load(self.config_path), results_dir=Path(self.results_dir),
                         device=pick_device(dist.device(self.device)), data=DataCache(self.data_dir, self.download),
                         teachers=TeacherStore(self.teacher_store), options=self.options, dist=dist, spec=self)


@dataclass(frozen=True)
class Workspace:
    """Where and how a command's runs happen. Built once per command (``WorkspaceSpec.open``)."""

    bench: Bench
    results_dir: Path
    device: torch.device
    data: DataCache
    teachers: TeacherStore
    options: RunOptions
    dist: Distributed
    spec: WorkspaceSpec

    def with_options(self, **changes: Any) -> Workspace:
        options = replace(self.options, **changes)
        return replace(self, options=options, spec=replace(self.spec, options=options))


class SeedsFailed(DiscbenchError):
    """Some seeds of a ``keep_going`` run failed (each left a failure record); the others were written."""

    def __init__(self, count: int, written: list[Path]):
        self.count, self.written = count, written
        super().__init__(f"{count} seed(s) failed; 'discbench status' shows why, and the next run retries them")


# -- one configuration -----------------------------------------------------------------------------------------------
def check_networks(cfg: RunConfig) -> None:
    """Build each network the run names beside a stored teacher (its backbone; an online peer) once on the CPU, with
    the global random state left as it was: a backbone that cannot be split into modules, or whose maps collapse at
    the dataset's image size, is one line before the data opens and before any pre-flight."""
    import random

    from discbench.protocols.base import build_backbone

    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        for name in dict.fromkeys(n for n in (cfg.backbone, getattr(cfg.protocol, "peer", None)) if n):
            build_backbone(cfg, name)
    random.setstate(state)


def check_data(cfg: RunConfig, data: Any) -> None:
    """Before anything trains: the protocol can use the opened training data (``Protocol.check_data``), and a
    protocol that draws extra views (``Protocol.views``) has a dataset held in memory to draw them from."""
    protocol = PROTOCOLS.get(cfg.protocol_name)
    if protocol.draws_views() and not getattr(data, "resident", False):
        raise DiscbenchError(f"protocol '{protocol.name}' draws extra views of training samples, which needs a "
                             f"dataset held in memory; '{cfg.dataset.name}' streams from disk (layout "
                             f"'{cfg.dataset.layout}'): use a resident layout or another protocol")
    protocol.check_data(cfg, data)


def run_seeds(ws: Workspace, cfg: RunConfig, seeds: Iterable[int]) -> list[Path]:
    """Train each seed of ``cfg`` whose record does not exist yet (all with ``force``) and write its record.

    A protocol that needs a teacher finds it in the workspace's store (verified once, before the first seed) and the
    teacher's identity becomes part of the configuration, so its hash names the teacher too. Before the first seed
    it trains, the plugins pass the pre-flight check (``discbench.contract``: one forward and backward at batch 2 on
    the CPU, with the loaded teacher) and the data opens; a failure writes no record.

    Each seed is claimed first (``discbench.claims``; a seed another live process claims is skipped), resumes from
    its checkpoint if it has one (``discbench.checkpoint``), and leaves a failure record when it fails (then the
    error propagates, or with ``keep_going`` the next seed trains). Under torchrun rank 0 claims, checkpoints and
    writes; the other ranks follow its decisions.
    """
    opts, dist = ws.options, ws.dist
    teacher = None
    if PROTOCOLS.get(cfg.protocol_name).uses_teacher(cfg):  # an offline baseline never reads its teacher
        cfg = ws.teachers.attach(ws.bench, cfg)
        teacher = ws.teachers.load(cfg, ws.device)
    written, checked, failures = [], False, []
    if dist.is_main:
        remove_orphans(run_folder(ws.results_dir, cfg))
    for seed in seeds:
        existing = existing_valid(find_record(ws.results_dir, cfg, seed), note=say)
        if existing and not opts.force:
            if dist.is_main:
                say(f"skip {cfg.label} | {cfg.backbone} | seed {seed}: {existing} exists (--force reruns it)")
            continue
        path = existing or record_path(ws.results_dir, cfg, seed)
        if not checked:
            if dist.is_main:
                check_writable(path)
            check_networks(cfg)  # the networks first (a backbone that cannot split or collapses: one line)
            check_data(cfg, ws.data.get(cfg, ws.device))  # then the data: one line in seconds
            preflight(cfg, teacher=teacher.network if teacher else None)  # (a large network's pre-flight takes longer)
            checked = True
        files = seed_files(ws.results_dir, cfg, seed)
        claim = claims.acquire(files.claim, opts.stale_after) if dist.is_main else None
        busy = dist.broadcast(None if claim is None or isinstance(claim, claims.HeldClaim) else claims.describe(claim))
        if busy:
            if dist.is_main:
                say(f"skip {cfg.label} | {cfg.backbone} | seed {seed}: running on {busy} ({files.claim})")
            continue
        try:
            done = dist.broadcast(find_record(ws.results_dir, cfg, seed) if dist.is_main else None)
            if done and done != existing:  # another process finished it while this one was looking
                if dist.is_main:
                    say(f"skip {cfg.label} | {cfg.backbone} | seed {seed}: {done} exists")
                continue
            plan = CheckpointPlan(files.checkpoint, every_steps=opts.checkpoint_every, writer=dist.is_main)
            if existing and dist.is_main:  # --force over a finished seed: a kept checkpoint would resume at its end
                plan.remove()  # (only the main rank reads checkpoints)
            record = train(cfg, seed, ws.data.get(cfg, ws.device), ws.device, progress=opts.progress, teacher=teacher,
                           checkpoint=plan, dist=dist).record
            if not dist.is_main:
                continue
            if claim.lost:
                say(f"not writing {cfg.label} | {cfg.backbone} | seed {seed}: another process took its claim over")
                continue
            write_record(path, record)
            files.failed.unlink(missing_ok=True)
            if not opts.keep_checkpoints:
                plan.remove()
            say(f"wrote {path}: top-1 " + " ".join(f"{k} {v:.2f}" for k, v in record.final_top1.items()))
            written.append(path)
        except (Preempted, KeyboardInterrupt):
            raise  # the checkpoint is the record of progress; the seed is pending, not failed
        except Exception as exc:
            if dist.is_main and leaves_failure_record(exc):
                claims.write_failure(files, cfg, seed, exc)
            if not opts.keep_going:
                raise
            failures.append(exc)
            say(f"failed {cfg.label} | {cfg.backbone} | seed {seed}: {exc}")
        finally:
            if isinstance(claim, claims.HeldClaim):
                claim.release()
    if failures:
        raise SeedsFailed(len(failures), written)
    return written


# -- teachers --------------------------------------------------------------------------------------------------------
def train_teachers(ws: Workspace, backbone: str, dataset: str, budget: str, seeds: Iterable[int],
                   overrides: tuple[str, ...] = ()) -> list[dict]:
    """Train a plain ``backbone`` per seed with the offline recipe of ``budget`` (and ``overrides``) and store it as
    a teacher (its run record is written too, as the ``none`` row it is). A seed already stored is kept unless
    ``force``.

    A teacher is claimed and checkpointed like any seed; a teacher another live process is training is waited for
    (its students need it), then used."""
    opts = ws.options
    cfg = teacher_config(ws.bench, backbone, dataset, budget, overrides)
    ws.teachers.check_writable()  # before training, not after
    stored = []
    for seed in seeds:
        teacher_id = f"{cfg.hash}-seed{seed}"
        files = seed_files(ws.results_dir, cfg, seed)
        claim, waiting = None, False
        while True:
            manifest = ws.teachers.manifest(teacher_id)
            if manifest is not None and (waiting or not opts.force):  # --force retrains unless it waited for one
                break
            claim = claims.acquire(files.claim, opts.stale_after)
            if isinstance(claim, claims.HeldClaim):
                manifest = None if opts.force else ws.teachers.manifest(teacher_id)  # finished while this one looked?
                break
            if not waiting:
                say(f"waiting for teacher {backbone} | {dataset} | seed {seed}: being trained on "
                    f"{claims.describe(claim)}")
                waiting = True
            claim = None
            time.sleep(max(0.5, min(10.0, opts.stale_after / 4)))
        if manifest is not None:
            if isinstance(claim, claims.HeldClaim):
                claim.release()
            say(f"skip teacher {backbone} | {dataset} | seed {seed}: {ws.teachers.root / teacher_id} exists "
                f"(--force retrains it)")
            stored.append(manifest)
            continue
        try:
            plan = CheckpointPlan(files.checkpoint, every_steps=opts.checkpoint_every)  # a killed teacher resumes
            if opts.force and ws.teachers.manifest(teacher_id) is not None:
                plan.remove()  # --force retrains a stored teacher from scratch, whatever checkpoint was kept
            run = train(cfg, seed, ws.data.get(cfg, ws.device), ws.device, progress=opts.progress, checkpoint=plan)
            if find_record(ws.results_dir, cfg, seed) is None:  # the same plain run may be published already
                write_record(record_path(ws.results_dir, cfg, seed), run.record)
            top1 = run.record.last_top1("net")
            ds = cfg.dataset
            manifest = {"teacher_id": teacher_id, "backbone": backbone, "dataset": dataset,
                        "num_classes": ds.num_classes, "in_channels": ds.channels, "image_size": ds.image_size,
                        "budget": budget, "seed": seed, "top1": top1, "source": "trained", "config_hash": cfg.hash,
                        "config": cfg.to_dict(), "provenance": run.record.provenance}
            path = ws.teachers.save(run.system.net, manifest, force=opts.force)
            if not opts.keep_checkpoints:
                plan.remove()
        except (Preempted, KeyboardInterrupt):
            raise
        except Exception as exc:
            if leaves_failure_record(exc):
                claims.write_failure(files, cfg, seed, exc)
            raise
        finally:
            claim.release()
        say(f"stored teacher {backbone} | {dataset} | seed {seed}: top-1 {top1:.2f} in {path}")
        stored.append(ws.teachers.manifest(teacher_id))
    return stored


# -- a suite ---------------------------------------------------------------------------------------------------------
@dataclass
class SweepOutcome:
    """What a sweep did: the seeds that failed (one line each) and, for Slurm, the jobs it submitted."""

    failed: list[str] = field(default_factory=list)
    submitted: list[Any] | None = None  # Slurm job handles (the sweep returns without waiting)


def pending(ws: Workspace, runs: list[SuiteRun]) -> Iterator[tuple[RunConfig, int]]:
    """Every (configuration, seed) of ``runs`` without a record (all of them with ``force``)."""
    for run in runs:
        for seed in run.seeds:
            if ws.options.force or find_record(ws.results_dir, run.cfg, seed) is None:
                yield run.cfg, seed


def _run_one(ws: Workspace, cfg: RunConfig, seed: int) -> str | None:
    """One seed inside a launcher job: SIGTERM and SIGUSR2 (submitit's preemption signal) write a checkpoint and
    stop; a preemption then hands over to submitit's handler, which calls the job's ``checkpoint`` (requeue)."""
    try:
        with stop_on_signals((signal.SIGTERM, signal.SIGUSR2)):
            written = run_seeds(ws, cfg, [seed])
    except Preempted as exc:
        print(f"error: {exc}", file=sys.stderr)
        handler = signal.getsignal(exc.signum)  # submitit's again: checkpoint() below, requeue, exit
        if callable(handler):
            handler(exc.signum, None)
        raise
    return str(written[0]) if written else None


def _open_job_workspace(spec: WorkspaceSpec, threads: int) -> Workspace:
    if threads:
        torch.set_num_threads(threads)
    return spec.open().with_options(keep_going=False, progress=False)  # each seed raises its own error


def last_line(exc: BaseException) -> str:
    """An error's last non-empty line (a job's traceback ends with the error itself)."""
    return next((line for line in reversed(str(exc).splitlines()) if line.strip()), repr(exc)).strip()


class _Requeued:
    """submitit's requeue hook, shared by the launcher jobs: the same job again; a finished seed is skipped and an
    interrupted one resumes from the checkpoint its loop just wrote."""

    def checkpoint(self) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


@dataclass(frozen=True)
class SeedJob(_Requeued):
    """One (configuration, seed) of a workspace for a submitit executor (a Slurm array task); pickled, then called
    in the job's own process, which rebuilds the workspace from its spec."""

    spec: WorkspaceSpec
    cfg: RunConfig
    seed: int
    threads: int = 0  # torch's intra-op threads in the job's process; 0 leaves torch's default

    def __call__(self) -> str | None:
        return _run_one(_open_job_workspace(self.spec, self.threads), self.cfg, self.seed)


@dataclass(frozen=True)
class WorkerJob(_Requeued):
    """A local worker: every pending (configuration, seed) of a sweep, one after another in one process, which pays
    the interpreter's start, the imports (torch and torchvision: about 2.5 s) and the dataset's loading once, not
    once per seed. Each worker of a sweep gets the same list in the same order and skips a seed another live worker
    has claimed (``discbench.claims``), so the workers take the seeds as they free up. Returns the failed seeds'
    lines; a preemption requeues the whole worker, whose finished seeds are skipped and whose interrupted seed
    resumes from its checkpoint."""

    spec: WorkspaceSpec
    items: tuple[tuple[RunConfig, int], ...]
    threads: int = 0

    def __call__(self) -> list[str]:
        ws = _open_job_workspace(self.spec, self.threads)
        failed = []
        for cfg, seed in self.items:
            try:
                _run_one(ws, cfg, seed)
            except Preempted:  # the requeued worker resumes this seed
                raise
            except Exception as exc:
                failed.append(f"{cfg.label} | {cfg.backbone} | seed {seed}: {last_line(exc)}")
        return failed


def prepare(ws: Workspace, runs: list[SuiteRun], open_data: bool = True) -> None:
    """Before anything of a sweep trains: with ``open_data`` (a sweep that trains in this process), the data of every
    row still to run opens and passes its protocol's check (a missing dataset is one line in seconds, not after the
    pre-flight of every row); every row's plugins pass the pre-flight check (a broken plugin in the last row stops
    the sweep now, not hours later; an offline row is checked against a random teacher of the same backbone here,
    and against its real teacher again before its first seed), then every teacher the sweep needs and the store
    lacks is trained."""
    needed = {cfg.request_hash: cfg for cfg, _ in pending(ws, runs)}
    if open_data:
        for cfg in needed.values():
            check_data(cfg, ws.data.get(cfg, ws.device))
    offline = [r.cfg for r in runs if PROTOCOLS.get(r.cfg.protocol_name).uses_teacher(r.cfg)]
    for cfg in {**{c.request_hash: c for c in offline}, **needed}.values():
        preflight(cfg)
    wanted = {(c.protocol.teacher, c.dataset.name, c.protocol.teacher_budget or c.budget, c.protocol.teacher_seed)
              for c in offline}
    for backbone, dataset, budget, seed in sorted(wanted):
        train_teachers(ws, backbone, dataset, budget, [seed])


def sweep(ws: Workspace, runs: list[SuiteRun], launcher: str = "inline", executor: Any = None,
          workers: int = 1) -> SweepOutcome:
    """Every (configuration, seed) of a suite's ``runs`` without a record: inline, one after another (a failed seed
    leaves a failure record and the others go on), or as launcher jobs (``discbench.launch``): ``workers`` local
    worker processes (``WorkerJob``: each takes the next seed nobody has claimed), waited for, each with this
    process's usable CPUs / ``workers`` torch threads (so the workers share the cores instead of fighting for them;
    each record says how many threads trained it); or one Slurm array of one task per seed (``SeedJob``), submitted
    and not waited for (each task takes the threads Slurm gives it)."""
    ws = ws.with_options(keep_going=True)
    prepare(ws, runs, open_data=launcher == "inline")  # launcher jobs open their data in their own processes
    outcome = SweepOutcome()
    if launcher == "inline":
        with stop_on_signals():
            for i, run in enumerate(runs, 1):
                cfg = run.cfg
                say(f"[{i}/{len(runs)}] {cfg.label} | {cfg.backbone} | {cfg.dataset.name} | {cfg.budget} | "
                    f"config {cfg.request_hash}")
                try:
                    run_seeds(ws, cfg, run.seeds)
                except SeedsFailed as exc:
                    outcome.failed.extend([cfg.label] * exc.count)
        return outcome
    from discbench.launch import submit

    items = list(pending(ws, runs))
    if launcher == "slurm":
        outcome.submitted = submit(executor, [SeedJob(ws.spec, cfg, seed) for cfg, seed in items], launcher)
        return outcome
    worker = WorkerJob(ws.spec, tuple(items), max(1, usable_cpus() // workers))  # threads of the layout asked for,
    jobs = [worker] * min(workers, len(items))  # also when fewer seeds are left: a table keeps one thread setting
    for handle in submit(executor, jobs, launcher):
        try:
            outcome.failed.extend(handle.result())
        except Exception as exc:  # the worker process itself failed (killed, out of memory)
            outcome.failed.append(f"a local worker: {last_line(exc)}")
    return outcome
