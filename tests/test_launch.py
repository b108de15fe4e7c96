"""Launchers through submitit: a local-executor sweep (real subprocesses) completes and ``discbench status`` reports
it; submitit's preemption signal makes a job checkpoint, requeue and resume; Slurm errors are one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("submitit")

from discbench.config import Bench  # noqa: E402
from discbench.errors import DiscbenchError  # noqa: E402
from discbench.launch import make_executor, slurm_minutes, slurm_parameters  # noqa: E402
from discbench.records import seed_files  # noqa: E402
from discbench.runner import RunOptions, SeedJob, WorkerJob, WorkspaceSpec  # noqa: E402
from tests.conftest import REPO, requires_fashion_mnist  # noqa: E402
from tests.test_claims import TINY_SUITE, tiny_bench, write_claim  # noqa: E402, F401  (the fixture)
from tests.test_cli import discbench  # noqa: E402


def run(*args, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "discbench", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


@requires_fashion_mnist
@pytest.mark.slow
def test_local_launcher_sweep_completes_and_status_reports_it(tmp_path, tiny_bench, capsys,  # noqa: F811
                                                              monkeypatch):
    results = tmp_path / "runs"
    common = ("--suite", "tiny", "--seeds", "1", "--config", str(tiny_bench), "--results-dir", str(results))
    # status reads files only: it runs in this process (the console entry point, no interpreter start); the sweep
    # and its submitit jobs are processes of their own
    _, before, _ = discbench(capsys, monkeypatch, "status", *common)
    assert before.splitlines()[-1] == "tiny: 0 done, 0 running, 0 failed, 2 pending of 2"
    proc = run("sweep", *common, "--launcher", "local", "--workers", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "| L2 " in proc.stdout  # the suite's tables, rendered from the jobs' records
    records = sorted(results.rglob("*.json"))
    assert {json.loads(p.read_text())["label"] for p in records} == {"Baseline", "L2"}
    logs = sorted((results / ".jobs").glob("*_0_log.err"))
    assert len(logs) == 2  # one submitit job (process) per worker, each taking the seeds nobody has claimed
    code, after, err = discbench(capsys, monkeypatch, "status", *common)
    assert code == 0, err
    assert after.splitlines()[-1] == "tiny: 2 done, 0 running, 0 failed, 0 pending of 2"


@requires_fashion_mnist
def test_a_local_worker_trains_every_unclaimed_seed_and_reports_each_failed_seed_in_one_line(tmp_path,
                                                                                               tiny_bench):  # noqa: F811
    """A WorkerJob (here in this process) walks its list: finished and claimed seeds are skipped, a failing seed is
    one line and the next seed still trains; a second worker over the same list trains nothing twice."""
    bench = Bench.load(tiny_bench)
    good = bench.resolve("l2", "tinynet", "fashion-mnist", "tiny")
    bad = bench.resolve("ce", "tinynet", "fashion-mnist", "tiny", overrides=("recipe.lr=1e30",))  # non-finite loss
    results = tmp_path / "runs"
    spec = WorkspaceSpec(config_path=str(tiny_bench), results_dir=str(results))
    claimed = seed_files(results, good, 2).claim
    claimed.parent.mkdir(parents=True)
    write_claim(claimed)  # a live claim of this process: another worker is training seed 2
    items = ((good, 0), (bad, 0), (good, 1), (good, 2))
    failed = WorkerJob(spec, items)()
    assert len(failed) == 1 and failed[0].startswith(f"{bad.label} | tinynet | seed 0: ")
    assert "\n" not in failed[0]
    trained = {json.loads(p.read_text())["seed"] for p in results.rglob(f"{good.loss.name}__*.json")}
    assert trained == {0, 1}  # seed 2 is the other worker's
    mtimes = {p: p.stat().st_mtime_ns for p in results.rglob("*.json")}
    assert len(WorkerJob(spec, items)()) == 1  # the failed seed fails again; nothing else runs
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*.json")} == mtimes


def test_local_workers_get_the_threads_of_the_layout_asked_for_even_when_fewer_seeds_are_left(
        tmp_path, tiny_bench, monkeypatch):  # noqa: F811
    """--workers 2 on 4 CPUs: 2 threads per worker; with one seed left, one worker, still 2 threads (a table keeps one
    thread setting); every worker walks the same list."""
    from discbench import runner, suites

    class Done:
        def result(self):
            return []

    class Executor:
        def __init__(self):
            self.jobs = []

        def submit(self, job):
            self.jobs.append(job)
            return Done()

    monkeypatch.setattr(runner, "usable_cpus", lambda: 4)
    monkeypatch.setattr(runner, "prepare", lambda *a, **k: None)  # no data, no pre-flight: only the jobs matter
    bench = Bench.load(tiny_bench)
    ws = WorkspaceSpec(config_path=str(tiny_bench), results_dir=str(tmp_path / "runs")).open(bench=bench)
    every = suites.runs(bench, suites.load(bench, "tiny"), None, 3)  # two rows x 3 seeds
    one = suites.runs(bench, suites.load(bench, "tiny"), None, 1)[:1]  # one row x 1 seed
    for runs, workers, expected_jobs, items in ((every, 2, 2, 6), (one, 2, 1, 1), (every, 1, 1, 6)):
        executor = Executor()
        runner.sweep(ws, runs, "local", executor, workers)
        assert len(executor.jobs) == expected_jobs
        assert {job.threads for job in executor.jobs} == {4 // workers}
        assert all(len(job.items) == items for job in executor.jobs)  # every worker walks the whole list


@requires_fashion_mnist
@pytest.mark.slow
def test_preemption_signal_checkpoints_requeues_and_resumes(tmp_path, tiny_bench, monkeypatch):  # noqa: F811
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    bench = Bench.load(tiny_bench)
    cfg = bench.resolve("l2", "tinynet", "fashion-mnist", "tiny",
                        overrides=("recipe.epochs=3", "recipe.train_subset=128"))
    results = tmp_path / "runs"
    job = SeedJob(WorkspaceSpec(config_path=str(tiny_bench), results_dir=str(results),
                                options=RunOptions(checkpoint_every=1)), cfg, 0)
    executor = make_executor("local", tmp_path / "jobs")
    handle = executor.submit(job)
    deadline = time.time() + 300
    while not list(results.rglob("*.ckpt")) and time.time() < deadline and not handle.done():
        time.sleep(0.05)
    assert not handle.done(), "the job finished before it could be preempted"
    # what Slurm sends to the job's processes ahead of a preemption or time-out (submitit's USR2), delivered to the
    # training process itself: its pid is in the seed's claim (submitit's own LocalJob._interrupt signals the
    # controller process, which does not forward USR2)
    (claim,) = results.rglob("*.claim")
    os.kill(json.loads(claim.read_text())["pid"], signal.SIGUSR2)
    path = handle.result()
    record = json.loads(Path(path).read_text())
    assert record["timing"]["resumed"], "the requeued job started over instead of resuming"
    assert record["timing"]["steps"] == 3 * 8
    log = "".join(p.read_text() for p in (tmp_path / "jobs").glob(f"{handle.job_id}_0_log.*"))
    assert "stopped by SIGUSR2 at epoch 1" in log and "Requeued job" in log
    assert not list(results.rglob("*.ckpt")) and not list(results.rglob("*.claim"))


def test_slurm_without_slurm_is_one_line(tmp_path, tiny_bench, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))  # no sbatch; in this process: no interpreter start
    code, _, err = discbench(capsys, monkeypatch, "sweep", "--suite", "tiny", "--config", str(tiny_bench),
                             "--results-dir", str(tmp_path / "r"), "--launcher", "slurm", "--partition", "gpu")
    assert code == 2
    assert err.strip().splitlines() == ["error: --launcher slurm: no Slurm here (sbatch is not on PATH); run "
                                        "on a Slurm login node, or use --launcher local"]
    assert not (tmp_path / "r").exists()


def test_slurm_resources_from_bench_toml_and_command_line():
    table = {"partition": "cpu", "time": "1-02:00:00", "array_parallelism": 8, "mem": "32G"}
    params = slurm_parameters(table, {"partition": "gpu", "gpus_per_task": 1, "account": None})
    assert params == {"partition": "gpu", "time": 26 * 60, "array_parallelism": 8, "mem": "32G", "gpus_per_task": 1}
    with pytest.raises(DiscbenchError, match="unknown key 'gpus'; valid keys: .*partition"):
        slurm_parameters({"gpus": 1}, {})
    assert [slurm_minutes(v) for v in (90, "90", "12:00:00", "30:00", "2-0", "0:0:30")] == [90, 90, 720, 30, 2880, 1]
    with pytest.raises(DiscbenchError, match="--time 'soon'"):
        slurm_minutes("soon")
