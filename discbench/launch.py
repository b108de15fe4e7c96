"""Launchers through submitit, on local processes or a Slurm cluster.

``discbench sweep --launcher local|slurm`` hands a suite's pending (configuration, seed) pairs to a submitit executor
(no scheduler of our own). ``local`` starts ``--workers`` subprocesses of this machine (``submitit.LocalExecutor``)
and waits for them: each is a ``discbench.runner.WorkerJob`` that walks the whole list and trains every seed no other
worker has claimed, so a process starts (imports, dataset) once per worker, not once per seed. ``slurm`` submits one
Slurm job array of one ``discbench.runner.SeedJob`` per seed (``submitit.SlurmExecutor``, ``--array-parallelism``
tasks at a time) and returns, ``discbench status`` showing progress. Either job calls ``run_seeds`` one seed at a
time, so claims, checkpoints and failure records work exactly as in ``discbench run``. When the cluster announces a
timeout or preemption (submitit's signal, USR2), the job writes a checkpoint at the next step and hands over to
submitit's checkpoint/requeue hook (the job's ``checkpoint``), whose requeued job resumes from that checkpoint.
SIGTERM writes a checkpoint and fails the job (a later sweep resumes it).

Slurm resources come from the ``[launcher.slurm]`` table of bench.toml (any ``submitit.SlurmExecutor`` parameter:
``partition``, ``time``, ``gpus_per_task``, ``cpus_per_task``, ``mem``, ``account``, ``qos``, ``constraint``,
``array_parallelism``...), overridden by the command line.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

from discbench.errors import DiscbenchError


def slurm_minutes(value: Any) -> int:
    """Slurm's ``--time`` (minutes, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) as whole minutes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    text = str(value).strip()
    try:
        days, _, rest = text.rpartition("-")
        parts = [int(p) for p in rest.split(":")]
        if days:
            hours, minutes, seconds = (parts + [0, 0])[:3]
        else:
            hours, minutes, seconds = {1: [0, parts[0], 0], 2: [0, *parts], 3: parts}[len(parts)]
        total = int(days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    except (ValueError, KeyError):
        total = 0
    if total <= 0:
        raise DiscbenchError(f"--time '{value}': expected minutes or Slurm's [D-]HH:MM:SS, e.g. --time 12:00:00")
    return total


def _submitit():
    try:
        import submitit
    except ImportError as exc:
        raise DiscbenchError("--launcher needs submitit: pip install 'discbench[launch]' (or pip install "
                             "submitit)") from exc
    return submitit


def slurm_parameters(table: dict[str, Any], cli: dict[str, Any]) -> dict[str, Any]:
    """``[launcher.slurm]`` of bench.toml overridden by the command line's non-empty values, checked against
    submitit's Slurm parameters."""
    submitit = _submitit()
    valid = sorted(submitit.SlurmExecutor._valid_parameters())
    params = {**table, **{k: v for k, v in cli.items() if v is not None}}
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise DiscbenchError(f"[launcher.slurm]: unknown key '{unknown[0]}'; valid keys: {', '.join(valid)}")
    if "time" in params:
        params["time"] = slurm_minutes(params["time"])
    return params


def make_executor(launcher: str, folder: Path, slurm: dict[str, Any] | None = None, timeout_min: int = 60 * 24 * 7):
    """A submitit executor; ``--launcher slurm`` where no Slurm is reachable is a one-line error."""
    submitit = _submitit()
    if launcher == "local":
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=timeout_min)
        return executor
    if shutil.which("sbatch") is None:
        raise DiscbenchError("--launcher slurm: no Slurm here (sbatch is not on PATH); run on a Slurm login node, or "
                             "use --launcher local")
    executor = submitit.SlurmExecutor(folder=str(folder))
    executor.update_parameters(**(slurm or {}))
    return executor


def submit(executor, jobs: list, launcher: str) -> list:
    """Submit ``jobs`` at once and return their handles: a Slurm array (one ``with executor.batch()``), or local
    processes (a sweep submits at most ``--workers`` of them and waits on each handle's ``result()``)."""
    with executor.batch() if launcher == "slurm" else contextlib.nullcontext():  # Slurm: one job array
        return [executor.submit(job) for job in jobs]
