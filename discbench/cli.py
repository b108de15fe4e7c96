"""The ``discbench`` command line: run, sweep, leaderboard, publish, check-records, status, bench, list, validate,
train-teacher, teacher, config, dataset.

A command parses its options, builds what the library needs (a configuration, a ``discbench.runner.Workspace``) and
calls one library function; it holds no logic of its own. Every command imports what it needs inside its own body:
``discbench --help``, ``list budgets``, ``list suites``, ``leaderboard`` (``--suite``, ``--published`` and ``--check``
included: the built-ins' declarations are read from their source, ``discbench.catalog.declared_plugins``) and
``validate --help`` never import torch, torchvision or a built-in plugin.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import click

from discbench.errors import DiscbenchError
from discbench.records import DEFAULT_RESULTS_DIR, PUBLISHED_RESULTS  # torch-free

PUBLISHED = Path("results") / "LEADERBOARD.md"

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="A project bench.toml laid over discbench's defaults (default: $DISCBENCH_CONFIG, else ./bench.toml).")
results_option = click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path),
                              default=DEFAULT_RESULTS_DIR, show_default=True, help="Where run records live.")
results_dirs_option = click.option(
    "--results-dir", "results_dirs", multiple=True, default=None,
    help=f"Where run records live (default: {DEFAULT_RESULTS_DIR}; {PUBLISHED_RESULTS} for the published "
         f"leaderboard); repeatable, and globs ('runs/*') are expanded: records of every directory merge (a run found "
         f"twice is counted once; with different numbers it is flagged and left out).")
teacher_store_option = click.option(
    "--teacher-store", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Teacher store (default: $DISCBENCH_TEACHERS, else ~/.cache/discbench/teachers).")
sets_option = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                           help="Override a resolved value, e.g. --set recipe.lr=0.05 --set loss.dim=64 (repeatable).")
data_options = [
    click.option("--data-dir", default=None, help="Dataset root (default: $DISCBENCH_DATA; Fashion-MNIST: "
                                                  "/usr/share/datasets/fashion-mnist)."),
    click.option("--download", is_flag=True, help="Let torchvision download a missing dataset (needs internet)."),
    click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)."),
    click.option("--force", is_flag=True, help="Rerun seeds whose record already exists."),
    click.option("--quiet", is_flag=True, help="No progress bars."),
]
resilience_options = [
    click.option("--checkpoint-every", default=0, show_default=True, type=click.IntRange(min=0), metavar="STEPS",
                 help="Also checkpoint every STEPS steps (checkpoints are written at every epoch end)."),
    click.option("--keep-checkpoints", is_flag=True, help="Keep a seed's checkpoints once its record is written."),
    click.option("--stale-after", default=600.0, show_default=True, type=click.FloatRange(min=0.0), metavar="SECONDS",
                 callback=lambda ctx, param, value: _finite(param, value),
                 help="A claim of another host whose heartbeat is older than this is taken over (a dead host; a claim "
                      "of this host is taken over only when its process is gone)."),
]


def _finite(param, value: float) -> float:  # click's FloatRange lets NaN and infinity through
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds; give a finite value such as 600", param=param)
    return value


def with_options(options):
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def workspace_spec(config_path, results_dir, teacher_store, data_dir, download, device, force, quiet,
                   checkpoint_every=0, keep_checkpoints=False, stale_after=600.0):
    """The workspace the common options describe (``discbench.runner.WorkspaceSpec``)."""
    from discbench.runner import RunOptions, WorkspaceSpec

    options = RunOptions(checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
                         stale_after=stale_after, force=force, progress=not quiet)
    return WorkspaceSpec(config_path=config_path, results_dir=str(results_dir),
                         teacher_store=str(teacher_store) if teacher_store else None, data_dir=data_dir,
                         download=download, device=device, options=options)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="discbench")
def cli() -> None:
    """discbench: feature discrepancy functions for knowledge distillation under identical protocols."""


@cli.command()
@click.option("--loss", required=True, help="A method: a registered loss or a baseline (discbench list losses).")
@click.option("--backbone", default="resnet18", show_default=True)
@click.option("--dataset", default="fashion-mnist", show_default=True)
@click.option("--budget", default="smoke", show_default=True, help="Recipe: smoke, zoo, paper, ... (discbench list "
                                                                       "budgets).")
@click.option("--protocol", default=None, help="self, online, offline, ... (discbench list protocols); default: self, "
                                                "or the one protocol the method is defined for (cs_kd for cs_kd).")
@click.option("--peer", default=None, help="online: the second network's backbone (default: the same as --backbone).")
@click.option("--teacher", default=None, help="offline: the teacher's backbone, from the teacher store.")
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(min=1, max=10_000),
              help="Runs seeds 0..N-1.")
@sets_option
@click.option("--label", default=None, help="Row label in leaderboards (default: the loss and the overrides).")
@results_option
@config_option
@teacher_store_option
@with_options(data_options)
@with_options(resilience_options)
def run(loss, backbone, dataset, budget, protocol, peer, teacher, seeds, overrides, label, results_dir, config_path,
        teacher_store, data_dir, download, device, force, quiet, checkpoint_every, keep_checkpoints, stale_after):
    """Train seeds 0..N-1 of one configuration and write one record per seed.

    An unfinished seed resumes from its checkpoint; a seed another process is training is skipped. Under
    torchrun (torchrun --nproc-per-node N -m discbench run ...) it trains with DistributedDataParallel."""
    from discbench.checkpoint import stop_on_signals
    from discbench.config import Bench
    from discbench.distributed import Distributed
    from discbench.runner import run_seeds

    bench = Bench.load(config_path)
    protocol = protocol or bench.home_protocol(loss)
    protocol = protocol or bench.home_protocol(loss)
    cfg = bench.resolve(loss, backbone, dataset, budget, protocol, overrides, label,
                        partner={"peer": peer, "teacher": teacher})
    dist = Distributed.from_env()
    try:
        dist.local_batch(cfg.recipe.batch_size)
        spec = workspace_spec(config_path, results_dir, teacher_store, data_dir, download, device, force, quiet,
                              checkpoint_every, keep_checkpoints, stale_after)
        ws = spec.open(dist, bench).with_options(progress=not quiet and dist.is_main)
        if dist.is_main:
            world = f" | {dist.world_size} processes" if dist.enabled else ""
            click.echo(f"{cfg.label} | {backbone} | {dataset} | {budget} | {protocol} | config {cfg.request_hash} | "
                       f"{ws.device}{world}", err=True)
        with stop_on_signals():
            run_seeds(ws, cfg, range(seeds))
    finally:
        dist.close()


@cli.command()
@click.option("--suite", required=True, help="A suite of bench.toml (discbench list suites).")
@click.option("--budget", default=None, help="Recipe to use instead of the suite's.")
@click.option("--seeds", default=None, type=click.IntRange(min=1, max=10_000), help="Seeds per row instead of the "
                                                                                    "suite's.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the suite's tables to this file.")
@click.option("--launcher", type=click.Choice(["inline", "local", "slurm"]), default="inline", show_default=True,
              help="inline: train here, one seed after another, with progress; local: --workers processes here "
                   "that share the seeds (on a CPU, one per core is the fastest layout: "
                   "benchmarks/sweep_layouts.py); slurm: one Slurm array task per seed.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="--launcher local: worker processes, each with usable CPUs / workers torch threads.")
@click.option("--partition", default=None, help="--launcher slurm: the partition.")
@click.option("--time", "time_limit", default=None, help="--launcher slurm: time limit per job ([D-]HH:MM:SS or "
                                                           "minutes).")
@click.option("--gpus-per-task", default=None, type=click.IntRange(min=0), help="--launcher slurm.")
@click.option("--cpus-per-task", default=None, type=click.IntRange(min=1), help="--launcher slurm.")
@click.option("--mem", default=None, help="--launcher slurm: memory per node, e.g. 32G.")
@click.option("--account", default=None, help="--launcher slurm.")
@click.option("--array-parallelism", default=None, type=click.IntRange(min=1),
              help="--launcher slurm: array tasks running at once.")
@click.option("--jobs-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="submitit's job folder (logs, pickles); default: <results-dir>/.jobs.")
@results_option
@config_option
@teacher_store_option
@with_options(data_options)
@with_options(resilience_options)
def sweep(suite, budget, seeds, out, launcher, workers, partition, time_limit, gpus_per_task, cpus_per_task, mem,
          account, array_parallelism, jobs_dir, results_dir, config_path, teacher_store, data_dir, download, device,
          force, quiet, checkpoint_every, keep_checkpoints, stale_after):
    """Run every (row, backbone, dataset, seed) of a suite, skipping existing records, then print its tables.

    An offline suite first trains (and stores) every teacher it names that the teacher store lacks. Seeds another
    process is training are skipped; a failed seed leaves a failure record (discbench status) and the others go on.
    """
    from discbench import suites
    from discbench.config import Bench
    from discbench.records import load as load_records
    from discbench.reporting.markdown import render_suite
    from discbench.runner import sweep as run_sweep

    if out:
        _check_out(out)  # before training, not after
    bench = Bench.load(config_path)
    s = suites.load(bench, suite)
    runs = suites.runs(bench, s, budget, seeds)
    slurm = {"partition": partition, "time": time_limit, "gpus_per_task": gpus_per_task,
             "cpus_per_task": cpus_per_task, "mem": mem, "account": account, "array_parallelism": array_parallelism}
    given = [f"--{k.replace('_', '-')}" for k, v in slurm.items() if v is not None]
    if given and launcher != "slurm":
        raise DiscbenchError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --launcher slurm only")
    if workers > 1 and launcher != "local":
        raise DiscbenchError("--workers applies to --launcher local only")
    executor = None
    if launcher != "inline":
        from discbench.launch import make_executor, slurm_parameters

        params = slurm_parameters(bench.data.get("launcher", {}).get("slurm", {}), slurm) \
            if launcher == "slurm" else None
        executor = make_executor(launcher, jobs_dir or results_dir / ".jobs", params)
    ws = workspace_spec(config_path, results_dir, teacher_store, data_dir, download, device, force, quiet,
                        checkpoint_every, keep_checkpoints, stale_after).open(bench=bench)
    outcome = run_sweep(ws, runs, launcher, executor, workers)
    if outcome.submitted is not None:
        handles = outcome.submitted
        click.echo(f"submitted {len(handles)} jobs to Slurm (array {handles[0].job_id.split('_')[0]}); follow them "
                   f"with: discbench status --suite {suite} --results-dir {results_dir}"
                   if handles else "nothing to submit: every seed has a record", err=True)
        return
    for line in outcome.failed:
        click.echo(f"failed {line}", err=True)
    try:
        text = render_suite(s, runs, load_records(results_dir, echo=_note))
    except DiscbenchError as exc:  # no seed has a record yet (others are running, or every one failed)
        click.echo(f"no tables yet: {exc}", err=True)
        text = ""
    if text and out:
        _write_text(out, text)
    if text:
        click.echo(text)
    if outcome.failed:
        raise DiscbenchError(f"{len(outcome.failed)} seed(s) failed; 'discbench status --suite {suite} "
                             f"--results-dir {results_dir}' shows why, and the next sweep retries them")


@cli.command()
@results_dirs_option
@click.option("--budget", default=None, help="Only records of this budget (with --suite: the suites' budget).")
@click.option("--suite", "suites", multiple=True, help="Render these suites' tables (their rows, labels and order) "
                                                       "instead of every record; repeatable.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the tables to this file; by default nothing is written.")
@click.option("--figures", is_flag=True, help="Add a Figures section (MUSE Figs. 2/3 per MI+SI/MI×SI row, accuracy "
                                              "against step time per table) and draw the figures into figures/ "
                                              "beside --out (PNG and SVG).")
@click.option("--published", is_flag=True, help=f"The published leaderboard: the suites of bench.toml's [publish] "
                                                f"from {PUBLISHED_RESULTS}, with figures, written to {PUBLISHED} "
                                                f"(figures beside it).")
@click.option("--check", is_flag=True, help=f"Write nothing; exit 1 with a diff when {PUBLISHED} is not what the "
                                            f"published leaderboard renders to (with --out FILE and --suite: that "
                                            f"file and those suites).")
@click.option("--mix-environments", "mix", is_flag=True,
              help="Let a table hold records of several environments (machine, threads, torch, commit); the mixed "
                   "cells are marked. By default such a table is refused.")
@config_option
def leaderboard(results_dirs, budget, suites, out, figures, published, check, mix, config_path):
    """Render records under --results-dir as markdown tables (all of them, or --suite's) on stdout, and into --out.

    Without --suite the tables come from the records alone; --suite resolves the suites' configurations to find
    their records, reading the built-in plugins' declarations from their source (neither imports torch; a suite that
    names a third-party loss imports it). --published renders the published leaderboard; --check compares it with
    the committed file and writes nothing."""
    from discbench.config import Bench
    from discbench.reporting.markdown import leaderboard as render

    published = published or (check and not suites)
    if published:
        suites = suites or Bench.load(config_path).published_suites()
        results_dirs = results_dirs or (str(PUBLISHED_RESULTS),)
        out, figures = out or PUBLISHED, True
    results_dirs = results_dirs or (str(DEFAULT_RESULTS_DIR),)
    draw_into = Path(out).parent / "figures" if figures and out and not check else None
    if out and not check:
        _check_out(out, draw_into)  # before rendering, not after
    text = render(results_dirs, suites, budget, config_path, echo=_note, figures=figures, draw_into=draw_into,
                  mix=mix, published=published)
    if check:
        sys.exit(_check_stale(Path(out or PUBLISHED), text + "\n"))
    if out:
        _write_text(out, text)
    if not published:
        click.echo(text)


def _check_stale(path: Path, text: str) -> int:
    """0 when ``path`` holds exactly ``text``; else a unified diff on stdout and 1."""
    import difflib

    if not path.is_file():
        click.echo(f"{path} does not exist: write it with 'discbench leaderboard --published' (or --out {path})",
                   err=True)
        return 1
    old = path.read_text(encoding="utf-8", errors="replace")
    if old == text:
        click.echo(f"{path} is up to date", err=True)
        return 0
    click.echo("".join(difflib.unified_diff(old.splitlines(keepends=True), text.splitlines(keepends=True),
                                            f"{path} (committed)", f"{path} (rendered from the records)")))
    click.echo(f"{path} is stale: re-render it with 'discbench leaderboard --published' and commit it", err=True)
    return 1


@cli.command()
@results_dirs_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Site directory: LEADERBOARD.md, index.html, figures/ and records/ are written there.")
@click.option("--suite", "suites", multiple=True, help="Publish these suites' tables (default: every record).")
@click.option("--budget", default=None, help="Only records of this budget (with --suite: the suites' budget).")
@click.option("--published", is_flag=True, help=f"The published leaderboard's suites, from {PUBLISHED_RESULTS}.")
@click.option("--mix-environments", "mix", is_flag=True, help="As for leaderboard.")
@click.option("--replace", is_flag=True, help="Overwrite files of --out that publish did not write (by default such a "
                                              "directory is refused; publish never deletes them).")
@config_option
def publish(results_dirs, out_dir, suites, budget, published, mix, replace, config_path):
    """Write a static site from the records: LEADERBOARD.md, index.html (sortable, filterable, each cell linked to
    its run records), figures/ (PNG and SVG) and records/ (the run records behind the cells).

    publish owns only the files it wrote (listed in OUT/.discbench-site.json): it replaces and removes those, leaves
    every other file of OUT alone, and never touches its --results-dir."""
    from discbench.config import Bench
    from discbench.reporting.html import publish as write_site

    if published:
        suites = suites or Bench.load(config_path).published_suites()
        results_dirs = results_dirs or (str(PUBLISHED_RESULTS),)
    for path in write_site(results_dirs or (str(DEFAULT_RESULTS_DIR),), out_dir, suites, budget, config_path,
                           echo=_note, mix=mix, replace=replace):
        click.echo(f"wrote {path}", err=True)


@cli.command()
@click.option("--suite", required=True, help="A suite of bench.toml (discbench list suites).")
@click.option("--detect", default=0.5, show_default=True, type=click.FloatRange(min=0.0, min_open=True),
              help="The difference of top-1 (percentage points) the tables should detect.")
@click.option("--budget", default=None, help="Recipe to use instead of the suite's.")
@results_dirs_option
@config_option
def plan(suite, detect, budget, results_dirs, config_path):
    """How many seeds per row the suite needs to detect --detect pp (80 % power, two-sided 5 %), and how long they
    take on this machine, from the records that exist (nothing is trained)."""
    from discbench import suites
    from discbench.config import Bench
    from discbench.records import load
    from discbench.reporting import plan as planning
    from discbench.reporting.markdown import suite_records

    bench = Bench.load(config_path)
    s = suites.load(bench, suite)
    runs = suites.runs(bench, s, budget)
    dirs = [d for d in (results_dirs or (str(DEFAULT_RESULTS_DIR),)) if "*" in d or Path(d).is_dir()]
    records = suite_records(runs, load(dirs, echo=_note)) if dirs else []
    machine = planning.this_machine()
    click.echo(planning.render(suite, planning.rows(runs, records, machine), s.seeds, detect, machine))


@cli.command(name="check-records")
@click.argument("directories", nargs=-1, required=True)
@click.option("--clean", is_flag=True, help="Also remove orphaned temporary files of killed writers.")
def check_records(directories, clean):
    """Validate every record under DIRECTORIES (against discbench/record.schema.json, and its config_hash against
    the hash of its configuration): one line per invalid file, duplicate, conflict or orphaned temporary file; exit 1
    if any file is invalid or any run id conflicts."""
    from discbench.records import collect

    found = collect(directories, remove_orphaned=clean)
    for line in found.messages():
        click.echo(line)
    edited = found.edited()
    for problem in edited:
        click.echo(str(problem))
    n_files = sum(len(v) for v in found.sources.values()) + len(found.problems)
    click.echo(f"{n_files} files: {len(found.records) - len(edited)} valid runs, "
               f"{len(found.problems) + len(edited)} invalid, {len(found.duplicates)} duplicated, "
               f"{len(found.conflicts)} conflicting, {len(found.orphans)} orphaned temporary files"
               + (" (removed)" if clean and found.orphans else ""))
    if found.problems or found.conflicts or edited:
        sys.exit(1)


@cli.command()
@click.option("--suite", required=True, help="A suite of bench.toml (discbench list suites).")
@click.option("--budget", default=None, help="Recipe to use instead of the suite's.")
@click.option("--seeds", default=None, type=click.IntRange(min=1, max=10_000), help="Seeds per row instead of the "
                                                                                    "suite's.")
@click.option("--stale-after", default=600.0, show_default=True, type=click.FloatRange(min=0.0), metavar="SECONDS",
              callback=lambda ctx, param, value: _finite(param, value),
              help="A claim whose heartbeat is older than this counts as stale (pending).")
@results_option
@config_option
def status(suite, budget, seeds, stale_after, results_dir, config_path):
    """Every (row, backbone, dataset, seed) of a suite: done, running (where), failed (why) or pending."""
    from discbench import suites
    from discbench.config import Bench
    from discbench.status import suite_status

    bench = Bench.load(config_path)
    s = suites.load(bench, suite)
    rows = suite_status(suites.runs(bench, s, budget, seeds), results_dir, stale_after)
    for row in rows:
        click.echo(f"{row.state:<8} {row.label} | {row.backbone} | {row.dataset} | seed {row.seed}"
                   + (f": {row.detail}" if row.detail else ""))
    counts = {state: sum(r.state == state for r in rows) for state in ("done", "running", "failed", "pending")}
    click.echo(f"{suite}: " + ", ".join(f"{n} {state}" for state, n in counts.items()) + f" of {len(rows)}")


@cli.command()
@click.option("--mode", "modes", multiple=True, type=click.Choice(["critic", "full"]),
              help="critic: the JSD critic alone; full: MUSE's mi loss with its encoders (repeatable; default both).")
@click.option("--impl", "impls", multiple=True, type=click.Choice(["ref", "torch", "triton"]),
              help="Implementations to measure (repeatable; default every one available on the device).")
@click.option("--batch", "batches", default="32,64,128,256", show_default=True, help="Batch sizes B, comma-separated.")
@click.option("--side", "sides", default="8,16,32", show_default=True,
              help="Sides of the local map, comma-separated: N = side^2 locations.")
@click.option("--dim", default=128, show_default=True, type=click.IntRange(min=1), help="Code size D.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1), help="Timed calls (median).")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(min=0), help="Untimed calls first.")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="torch CPU threads (default: torch's).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available).")
@click.option("--autocast", default="bf16", show_default=True, type=click.Choice(["bf16", "off"]),
              help="bf16: run under CUDA bf16 autocast, the path training takes; off: fp32. CPU runs never autocast.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table as JSON with machine information to this file.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def bench(modes, impls, batches, sides, dim, repeats, warmup, threads, device, autocast, out, quiet):
    """Time and peak memory of the MI critic, alone and in the full MUSE loss, per implementation."""
    import torch

    from discbench import critic_bench as measure
    from discbench.kernels import available_impls
    from discbench.runner import pick_device

    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    modes = list(modes) or list(measure.MODES)
    impls = list(impls) or available_impls(dev)
    batches, sides = _int_list(batches, "--batch"), _int_list(sides, "--side")

    def progress(case):
        if not quiet:
            click.echo(f"{case.mode} {case.impl} B={case.batch} N={case.locations} D={case.dim}", err=True)

    autocast = measure.effective_autocast(autocast, dev)
    click.echo(f"measuring on {dev} with fp32 codes, autocast {autocast}"
               + (" (training's path: bf16 autocast on CUDA)" if autocast == "bf16" else "")
               + (" (CPU never autocasts)" if dev.type != "cuda" else ""), err=True)
    rows = measure.run(modes, impls, batches, [s * s for s in sides], dim, dev, repeats, warmup, progress, autocast)
    settings = {"modes": modes, "impls": impls, "batches": batches, "sides": sides, "dim": dim, "repeats": repeats,
                "warmup": warmup, "threads": torch.get_num_threads(), "autocast": autocast}
    if out:
        measure.write_json(out, rows, settings, dev)
        click.echo(f"wrote {out}", err=True)
    click.echo(measure.render(rows))


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise DiscbenchError(f"{option} takes positive integers separated by commas, got '{text}'")
    return values


@cli.command(name="list")
@click.argument("what", type=click.Choice(["losses", "backbones", "datasets", "protocols", "budgets", "suites"]))
@config_option
def list_(what, config_path):
    """Show registered names and where each comes from."""
    from discbench.config import Bench

    bench = Bench.load(config_path)
    rows: list[tuple[str, str]]
    if what == "losses":
        rows = _loss_rows(bench)
    elif what == "backbones":  # declared numbers (a test checks them): listing imports no torch
        from discbench.backbone_catalog import REFERENCE_INPUT, listing

        click.echo(f"parameters and modules (channels@reduction) for {REFERENCE_INPUT}")
        rows = listing()
    elif what == "protocols":
        from discbench.catalog import protocol_rows

        rows = protocol_rows()
    elif what == "datasets":
        rows = [(name, f"loader '{table.get('layout', '?')}', {table.get('channels')}x{table.get('image_size')}^2, "
                       f"{table.get('num_classes')} classes")
                for name, table in sorted(bench.data["datasets"].items())]
    elif what == "suites":  # from the tables and the catalog: no torch; the time on this machine: discbench plan
        from discbench import suites
        from discbench.catalog import loss_cards, protocol_cards

        cards = {c.name: c.protocols for c in loss_cards() if c.protocols}
        every = [p.name for p in protocol_cards()]

        def methods(protocol: str) -> int:  # rows = "all": every method of every protocol of the family
            family = [p.name for p in protocol_cards() if p.family == protocol]
            return sum(p in bench.method(m, cards, every).protocols for p in family
                       for m in bench.method_names(list(cards)))

        rows = [(name, suites.summary(bench, name, methods)) for name in bench.names("suites")]
        click.echo("suite: what it shows; protocol, budget, size (the seeds a difference needs and the time on this "
                   "machine, from the records: discbench plan --suite NAME)")
    else:
        rows = [(name, bench.describe()) for name in bench.names("recipes")]
    width = max((len(n) for n, _ in rows), default=0)
    for name, origin in rows:
        click.echo(f"{name:<{width}}  {origin}".replace("\n", "\n" + " " * (width + 2)))


def _loss_rows(bench) -> list[tuple[str, str]]:
    """Every method: the losses (described from their cards, without importing torch for the built-ins alone), then
    the baselines with what defines them under each protocol they are defined for."""
    from discbench.catalog import loss_cards, protocol_names

    cards = loss_cards()
    rows = [(card.name, card.describe()) for card in cards]
    losses = {card.name: card.protocols for card in cards}  # the registry's names, read without importing torch
    for name in bench.method_names(list(losses)):
        method = bench.method(name, losses, protocol_names()) if name not in losses else None
        if method is None or method.plugin:
            continue
        per = "; ".join(f"{p}: {', '.join(method.overrides(p)) or 'protocol defaults'}" for p in method.protocols)
        rows.append((name, f"baseline ({bench.describe()}): " + (f"{method.description}; " if method.description
                                                                else "") + per))
    return rows


@cli.command()
@click.option("--loss", default=None, help="A registered loss, built-in or from another package (discbench list "
                                           "losses).")
@click.option("--backbone", default=None, help="A backbone (discbench list backbones), tv:NAME or timm:NAME; with "
                                               "--protocol, the network it is checked on (default tinynet).")
@click.option("--protocol", default=None, help="A protocol (discbench list protocols): its contract, with each method "
                                               "defined for it that runs no plugin.")
@click.option("--dataset", "datasets", multiple=True, help="With --backbone or --protocol: check at this dataset's "
                                                           "input shape (repeatable; default: fashion-mnist and "
                                                           "cifar100; fashion-mnist with --protocol).")
@config_option
def validate(loss, backbone, protocol, datasets, config_path):
    """Run the plugin contract suite (discbench.contract) on one loss, the backbone contract on one backbone
    (four modules, specs against real shapes, every parameter trains at batch 2), or the protocol contract
    (discbench.protocol_check: build, classifiers, a finite step, gradients to every parameter, determinism, cost):
    one line per check, then a summary.

    A check that needs one that failed is skipped (SKIP). Exit status 0 when every check passes, 1 when any fails,
    2 for an unknown loss, backbone or protocol, a plugin that cannot be loaded or a backbone that cannot be built.
    """
    if protocol is not None:
        if loss is not None:
            raise click.UsageError("--protocol checks the protocol's own methods; check a loss with --loss alone")
        _validate_protocol(protocol, backbone or "tinynet", datasets, config_path)
        return
    if (loss is None) == (backbone is None):
        raise click.UsageError("give exactly one of --loss NAME, --backbone NAME and --protocol NAME")
    if backbone is not None:
        _validate_backbone(backbone, datasets, config_path)
        return
    if datasets:
        raise click.UsageError("--dataset goes with --backbone")
    from discbench.contract import validate as run_contract
    from discbench.registry import LOSSES

    cls = LOSSES.get(loss)  # unknown name -> DiscbenchError -> exit 2 with "did you mean"
    click.echo(f"{loss} v{cls.version} ({LOSSES.origins()[loss]}): tap '{cls.tap.value}', "
               f"target {'detached' if cls.detaches_target else 'trained'}")
    _print_checks(loss, run_contract(loss))


def _print_checks(name: str, results) -> None:
    """One line per check, then the summary; exit status 1 when any failed."""
    width = max(len(r.check) for r in results)
    for r in results:
        click.echo(f"{'PASS' if r.passed else 'SKIP' if r.skipped else 'FAIL'}  {r.check:<{width}}  {r.detail}")
    passed = sum(r.passed for r in results)
    skipped = sum(r.skipped for r in results)
    failed = len(results) - passed - skipped
    click.echo(f"{name}: {passed}/{len(results)} checks passed" + (f", {failed} failed" if failed else "")
               + (f", {skipped} skipped" if skipped else ""))
    if failed:
        sys.exit(1)  # not ctx.exit: main() runs click with standalone_mode=False, which swallows Exit codes


def _validate_protocol(name, backbone, datasets, config_path):
    from discbench.config import Bench
    from discbench.protocol_check import protocol_cases, run_protocol_checks
    from discbench.registry import PROTOCOLS

    bench = Bench.load(config_path)
    PROTOCOLS.get(name)  # unknown name -> DiscbenchError -> exit 2 with "did you mean"
    cases = [c for ds in (datasets or ("fashion-mnist",)) for c in protocol_cases(bench, name, backbone, ds)]
    if not cases:
        raise DiscbenchError(f"protocol '{name}' has no method without a plugin to check it with; define one under "
                             f"[methods.NAME.protocols.{name}]")
    _print_checks(name, list(run_protocol_checks(cases)))


def _validate_backbone(name, datasets, config_path):
    from discbench.backbone_check import InputCase, run_backbone_checks
    from discbench.config import Bench
    from discbench.registry import unknown_name_message

    bench = Bench.load(config_path)
    cases = []
    for ds in datasets or ("fashion-mnist", "cifar100"):
        table = bench.data["datasets"].get(ds)
        if table is None:
            raise DiscbenchError(unknown_name_message("dataset", ds, bench.names("datasets")))
        cases.append(InputCase(ds, table["channels"], table["image_size"], table["num_classes"]))
    results = list(run_backbone_checks(name, cases))
    width = max(len(r.check) for r in results)
    for r in results:
        click.echo(f"{'PASS' if r.passed else 'FAIL'}  {r.check:<{width}}  {r.detail}")
    failed = sum(not r.passed for r in results)
    click.echo(f"{name}: {len(results) - failed}/{len(results)} checks passed" + (f", {failed} failed" if failed
                                                                                   else ""))
    if failed:
        sys.exit(1)


@cli.command(name="train-teacher")
@click.option("--backbone", required=True, help="The teacher's backbone (discbench list backbones).")
@click.option("--dataset", default="fashion-mnist", show_default=True)
@click.option("--budget", default="smoke", show_default=True, help="Recipe (its offline-protocol variant is used).")
@click.option("--seeds", default=None, type=click.IntRange(min=1, max=10_000), help="Train seeds 0..N-1.")
@click.option("--seed", default=None, type=click.IntRange(min=0), help="Train this one seed (default 0).")
@sets_option
@results_option
@config_option
@teacher_store_option
@with_options(data_options)
def train_teacher(backbone, dataset, budget, seeds, seed, overrides, results_dir, config_path, teacher_store,
                  data_dir, download, device, force, quiet):
    """Train a plain network and store it as a teacher (weights, sha256, config, test top-1) for offline runs."""
    from discbench.runner import train_teachers

    if seeds is not None and seed is not None:
        raise DiscbenchError("give --seeds N (seeds 0..N-1) or --seed K, not both")
    chosen = range(seeds) if seeds is not None else [seed or 0]
    ws = workspace_spec(config_path, results_dir, teacher_store, data_dir, download, device, force, quiet).open()
    train_teachers(ws, backbone, dataset, budget, chosen, tuple(overrides))


@cli.group()
def teacher() -> None:
    """The teacher store: list its teachers, import a RepDistiller checkpoint."""


@teacher.command(name="list")
@teacher_store_option
def teacher_list(teacher_store):
    """Every stored teacher: id, backbone, dataset, budget, seed, test top-1, sha256, source."""
    from discbench.teachers import TeacherStore

    store = TeacherStore(teacher_store)
    manifests = store.manifests()
    click.echo(f"teacher store: {store.root}")
    for line in store.invalid:
        click.echo(f"skipped: {line}", err=True)
    if not manifests:
        click.echo(("no valid teachers" if store.invalid else "no teachers")
                   + "; train one with 'discbench train-teacher --backbone NAME'")
        return
    from tabulate import tabulate

    rows = [{"id": m["teacher_id"], "backbone": m["backbone"], "dataset": m["dataset"], "budget": m["budget"],
             "seed": m["seed"], "top-1": "—" if m.get("top1") is None else f"{m['top1']:.2f}",
             "sha256": m["sha256"][:16], "source": m["source"]} for m in manifests]
    click.echo(tabulate(rows, headers="keys", tablefmt="pipe", disable_numparse=True))


@teacher.command(name="import")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--backbone", required=True, help="discbench backbone of the checkpoint (e.g. resnet56, wrn_40_2).")
@click.option("--dataset", default="cifar100", show_default=True)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed to file it under.")
@click.option("--force", is_flag=True, help="Replace a teacher already stored under the same id.")
@config_option
@teacher_store_option
def teacher_import(checkpoint, backbone, dataset, seed, force, config_path, teacher_store):
    """Import a RepDistiller checkpoint ({'model': state_dict, 'accuracy': ...}) as a teacher of budget 'imported'."""
    from discbench.config import Bench
    from discbench.teachers import TeacherStore, import_repdistiller

    path = import_repdistiller(Bench.load(config_path), checkpoint, backbone, dataset, seed,
                               TeacherStore(teacher_store), force=force)
    click.echo(f"stored {path}")


@cli.group()
def config() -> None:
    """The configuration: discbench's defaults with your project's bench.toml laid over them."""


@config.command(name="show")
@click.option("--loss", default=None, help="Show the resolved configuration of this method's run (as 'run' would).")
@click.option("--backbone", default="resnet18", show_default=True)
@click.option("--dataset", default="fashion-mnist", show_default=True)
@click.option("--budget", default="smoke", show_default=True)
@click.option("--protocol", default=None, help="Default: self, or the one protocol the method is defined for.")
@click.option("--peer", default=None)
@click.option("--teacher", default=None)
@sets_option
@config_option
def config_show(loss, backbone, dataset, budget, protocol, peer, teacher, overrides, config_path):
    """Without --loss: the merged configuration (every table, and the files it comes from). With --loss: the
    resolved configuration of that run, section by section, and its hash."""
    from discbench.config import Bench
    from discbench.tomlout import dumps

    bench = Bench.load(config_path)
    click.echo(f"# {bench.describe()}: " + ", ".join(str(p) for p in bench.layers))
    if loss is None:
        click.echo(dumps(bench.data))
        return
    protocol = protocol or bench.home_protocol(loss)
    cfg = bench.resolve(loss, backbone, dataset, budget, protocol, overrides,
                        partner={"peer": peer, "teacher": teacher})
    payload = cfg.to_dict()
    click.echo(f"# {cfg.label} | {backbone} | {dataset} | {budget} | {protocol} | config {cfg.request_hash}")
    click.echo(dumps({k: payload[k] for k in ("dataset", "recipe", "protocol", "loss", "runtime")}))


@config.command(name="init")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default=Path("bench.toml"))
@click.option("--force", is_flag=True, help="Replace an existing file.")
def config_init(path, force):
    """Write a starting bench.toml (PATH, default ./bench.toml) to edit: every value it sets is laid over
    discbench's defaults; 'discbench config show' prints the result."""
    from discbench.tomlout import STARTER

    if path.exists() and not force:
        raise DiscbenchError(f"{path} exists; edit it, or pass --force to replace it")
    _write_text(path, STARTER.rstrip("\n"))


@cli.group()
def dataset() -> None:
    """A dataset of your own: measure it for its bench.toml table."""


@dataset.command(name="stats")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", default=None, help="The table's name, [datasets.NAME] (default: the directory's name).")
def dataset_stats(directory, name):
    """Print the [datasets.NAME] table of an ImageFolder dataset.

    DIRECTORY holds train/<class>/*.png|jpg and val/<class>/ (or test/<class>/). The table has its classes, image
    size, and the per-channel mean and std of every training pixel as the imagefolder-resident loader decodes them.
    Paste it into your project's bench.toml, or append it:

    \b
        discbench dataset stats DIR --name mydata >> bench.toml
    """
    from discbench.dataset_stats import measure, table

    stats = measure(directory)
    click.echo("\n" + table(stats, stats.directory.name if name is None else name))


def _note(line: str) -> None:
    click.echo(line, err=True)


def _file_in_the_way(directory: Path) -> Path | None:
    """The first of ``directory`` and its parents, from the top, that exists and is not a directory: a file where
    ``directory`` would be made. None when there is none."""
    for place in (*reversed(Path(directory).parents), Path(directory)):
        if not place.exists():
            return None
        if not place.is_dir():
            return place
    return None


def _check_out(path: Path, figures: Path | None = None) -> None:
    """``path`` (and the ``figures`` directory beside it) can be made where they are named: one line naming the file
    in the way otherwise."""
    blocking = _file_in_the_way(Path(path).parent)
    if blocking is not None:
        raise DiscbenchError(f"cannot write {path}: {blocking} is a file, not a directory")
    blocking = _file_in_the_way(figures) if figures is not None else None
    if blocking is not None:
        raise DiscbenchError(f"cannot draw the figures into {figures}: {blocking} is a file, not a directory")


def _write_text(path: Path, text: str) -> None:
    from discbench.atomic import atomic_write_text

    try:
        atomic_write_text(path, text + "\n")
    except OSError as exc:
        _check_out(path)  # a file where a directory is needed: say which
        raise DiscbenchError(f"cannot write {path}: {exc.strerror or exc}") from None
    click.echo(f"wrote {path}", err=True)


INTERRUPTED = ("interrupted: records of finished seeds are kept; the current seed resumes from its last checkpoint "
               "when run again")


def main() -> None:
    """Console entry point: a ``DiscbenchError`` becomes one line on stderr and exit status 2."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort as exc:  # click turns Ctrl-C into Abort
        interrupted = isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt)
        click.echo(INTERRUPTED if interrupted else "aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DiscbenchError as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank refuses alike: rank 0 says it once
            click.echo(f"error: {exc}", err=True)
        signum = getattr(exc, "signum", None)  # discbench.checkpoint.Preempted: stopped by a signal, resumable
        sys.exit(128 + signum if signum else 2)
    except KeyboardInterrupt:
        click.echo(INTERRUPTED, err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
