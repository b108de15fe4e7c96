"""Claims, failure records and ``discbench status``: N processes sweeping one suite into one directory train each
(configuration, seed) exactly once; stale claims are taken over, live ones skipped; a failed seed says why."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from discbench import claims
from discbench.errors import DiscbenchError
from tests.conftest import REPO, requires_fashion_mnist
from tests.test_cli import discbench

TINY_SUITE = """
[recipes.tiny]   # test-only: one epoch of 4 steps
epochs = 1
batch_size = 16
lr = 0.05
momentum = 0.9
nesterov = false
weight_decay = 5e-4
milestones = []
gamma = 0.1
train_subset = 64
test_subset = 32
eval_every = 1
eval_batch_size = 32

[suites.tiny]
protocol = "self"
datasets = ["fashion-mnist"]
backbones = ["tinynet"]
seeds = 3
budget = "tiny"
rows = [
    { loss = "none", label = "Baseline" },
    { loss = "l2", label = "L2" },
]

[suites.tiny-nan]   # lr 1e30 makes the loss non-finite at the second step: a seed that fails
extends = "tiny"
seeds = 1
rows = [{ loss = "ce", label = "CE lr 1e30", set = { "recipe.lr" = 1e30 } }]
"""


@pytest.fixture
def tiny_bench(tmp_path) -> Path:
    path = tmp_path / "bench.toml"
    path.write_text((REPO / "bench.toml").read_text() + TINY_SUITE)
    return path


def cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "discbench", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# -- claims, unit by unit --------------------------------------------------------------------------------------------
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it (pids are not reused this fast)


def write_claim(path: Path, **fields) -> None:
    now = time.time()
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now,
                                "token": "x", "job": None, **fields}))


def test_live_claim_is_respected_and_released_claim_can_be_taken(tmp_path):
    path = tmp_path / "h__seed0.claim"
    held = claims.acquire(path, stale_after=60)
    assert isinstance(held, claims.HeldClaim)
    other = claims.acquire(path, stale_after=60)  # a second claimant (this pid is alive, the heartbeat fresh)
    assert isinstance(other, dict) and other["pid"] == os.getpid() and other["token"] == held.content["token"]
    assert "pid" in claims.describe(other) and "heartbeat" in claims.describe(other)
    held.release()
    assert not path.exists()
    again = claims.acquire(path, stale_after=60)
    assert isinstance(again, claims.HeldClaim)
    again.release()


def test_claim_of_a_dead_process_on_this_host_is_taken_over(tmp_path, capsys):
    path = tmp_path / "h__seed0.claim"
    write_claim(path, pid=dead_pid())
    held = claims.acquire(path, stale_after=1e9)  # however fresh its heartbeat: the process is gone
    assert isinstance(held, claims.HeldClaim) and "is gone" in capsys.readouterr().err
    held.release()


def test_claim_of_another_host_is_kept_until_its_heartbeat_is_stale(tmp_path, capsys):
    path = tmp_path / "h__seed0.claim"
    write_claim(path, host="node-17", pid=1, heartbeat=time.time() - 100)
    assert isinstance(claims.acquire(path, stale_after=300), dict)  # 100 s old: alive
    held = claims.acquire(path, stale_after=50)  # 100 s > 50 s: that node is gone
    assert isinstance(held, claims.HeldClaim) and "heartbeat is 100 s old" in capsys.readouterr().err
    held.release()


def test_heartbeat_refreshes_and_a_lost_claim_is_noticed(tmp_path):
    path = tmp_path / "h__seed0.claim"
    held = claims.acquire(path, stale_after=2)  # heartbeat every 0.5 s
    first = json.loads(path.read_text())["heartbeat"]
    deadline = time.time() + 10
    while json.loads(path.read_text())["heartbeat"] == first and time.time() < deadline:
        time.sleep(0.1)
    assert json.loads(path.read_text())["heartbeat"] > first
    write_claim(path, host="thief", token="other")  # taken over by another process
    held.beat()
    assert held.lost
    held.release()
    assert json.loads(path.read_text())["host"] == "thief"  # release never removes another process's claim


def test_unwritable_results_directory_is_one_line_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DiscbenchError, match="cannot write in the results directory"):
        claims.acquire(blocker / "sub" / "h__seed0.claim")


# -- end to end ------------------------------------------------------------------------------------------------------
@requires_fashion_mnist
@pytest.mark.slow
def test_four_concurrent_sweeps_train_every_seed_exactly_once(tmp_path, tiny_bench, capsys, monkeypatch):
    results = tmp_path / "runs"
    procs = [cli("sweep", "--suite", "tiny", "--config", str(tiny_bench), "--results-dir", str(results), "--quiet")
             for _ in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err.splitlines()[-3:] for _, err in outs]  # the error lines
    wrote = [line.split(":")[0] for _, err in outs for line in err.splitlines() if line.startswith("wrote ")]
    records = sorted(results.rglob("*.json"))
    assert len(records) == 6 and len(wrote) == 6 and len(set(wrote)) == 6  # 2 rows x 3 seeds, each written once
    assert sorted(Path(w.removeprefix("wrote ")) for w in wrote) == records
    seen = {(json.loads(p.read_text())["label"], json.loads(p.read_text())["seed"]) for p in records}
    assert seen == {(label, seed) for label in ("Baseline", "L2") for seed in range(3)}
    assert not list(results.rglob("*.claim")) and not list(results.rglob("*.ckpt"))

    # status reads files only: the same entry point in this process (no interpreter start, no torch import)
    code, out, err = discbench(capsys, monkeypatch, "status", "--suite", "tiny", "--config", str(tiny_bench),
                               "--results-dir", str(results))
    assert code == 0, err
    assert out.splitlines()[-1] == "tiny: 6 done, 0 running, 0 failed, 0 pending of 6"


@requires_fashion_mnist
@pytest.mark.slow
def test_failed_seed_leaves_a_reason_that_status_shows_and_the_next_sweep_retries(tmp_path, tiny_bench, capsys,
                                                                                  monkeypatch):
    # Every command runs in this process through the console entry point (tests/test_cli.py's discbench): one
    # sweep at a time, so nothing here needs a process of its own, and each command saves an interpreter start and
    # torch's import. The claims the test writes name another host, as a process elsewhere would.
    results = tmp_path / "runs"
    args = ("--config", str(tiny_bench), "--results-dir", str(results))

    def cli_here(*argv: str) -> tuple[int, str, str]:
        return discbench(capsys, monkeypatch, *argv)

    code, _, err = cli_here("sweep", "--suite", "tiny-nan", "--quiet", *args)
    assert code == 2 and err.splitlines()[-1].startswith("error: 1 seed(s) failed; 'discbench status")
    (failure,) = results.rglob("*.failed")
    assert "non-finite loss" in json.loads(failure.read_text())["reason"]
    assert not list(results.rglob("*.json")) and not list(results.rglob("*.claim"))

    code, out, _ = cli_here("status", "--suite", "tiny-nan", *args)
    assert code == 0
    assert out.splitlines()[0].startswith("failed   CE lr 1e30 | tinynet | fashion-mnist | seed 0: non-finite loss")

    # a claim held by a live process elsewhere: status says where, a sweep skips it and says where it runs
    write_claim(failure.with_suffix(".claim"), host="node-3", pid=4242, job="777_1")
    _, out, _ = cli_here("status", "--suite", "tiny-nan", *args)
    assert out.splitlines()[0].startswith("running  CE lr 1e30 | tinynet | fashion-mnist | seed 0: on node-3 pid "
                                          "4242 (job 777_1), since")
    code, _, err = cli_here("sweep", "--suite", "tiny-nan", "--quiet", *args)
    assert code == 0 and "seed 0: running on node-3 pid 4242 (job 777_1)" in err

    # that host died: the next sweep takes the seed over and retries it (and it fails again, for the same reason)
    write_claim(failure.with_suffix(".claim"), host="node-3", pid=4242, heartbeat=time.time() - 3600)
    code, _, err = cli_here("sweep", "--suite", "tiny-nan", "--quiet", *args)
    assert code == 2 and "taking over the claim" in err and "failed CE lr 1e30" in err


@pytest.mark.parametrize("garbage", [
    {"pid": "not-a-pid"}, {"pid": -3}, {"pid": True}, {"heartbeat": "yesterday"}, {"heartbeat": float("nan")},
    {"host": ["a", "list"]},
])
def test_a_claim_with_garbage_fields_is_unreadable_and_taken_over(tmp_path, capsys, garbage):
    path = tmp_path / "h__seed0.claim"
    write_claim(path, **garbage)
    assert claims.stale_reason(json.loads(path.read_text()), 600) == "the claim file is unreadable"
    claims.describe(json.loads(path.read_text()))  # what `discbench status` prints: no exception
    held = claims.acquire(path, stale_after=600)
    assert isinstance(held, claims.HeldClaim) and "unreadable" in capsys.readouterr().err
    held.release()


def test_a_live_process_of_this_host_keeps_its_claim_whatever_its_heartbeat(tmp_path):
    # --stale-after 0 once let a second process take over the claim of a live one and train the same seed twice
    path = tmp_path / "h__seed0.claim"
    write_claim(path, heartbeat=time.time() - 10_000)  # this (live) process, an ancient heartbeat
    assert claims.stale_reason(json.loads(path.read_text()), 0.0) is None
    assert isinstance(claims.acquire(path, stale_after=0.0), dict)


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_stale_after_must_be_a_finite_number_of_seconds(value):
    proc = cli("run", "--loss", "none", "--backbone", "tinynet", "--stale-after", value)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "--stale-after" in err and "Traceback" not in err


def test_a_reused_pid_does_not_keep_a_dead_claim_alive(tmp_path, capsys):
    """The claim records when its process started; a live process with the same pid but another start time (the pid
    was reused after a crash or a reboot) does not hold it."""
    path = tmp_path / "h__seed0.claim"
    assert claims.process_start(os.getpid()) is not None  # Linux: /proc/<pid>/stat
    write_claim(path, pid_start="1")  # this live pid, but a process that started at tick 1
    assert "belongs to another process" in claims.stale_reason(json.loads(path.read_text()), 600)
    write_claim(path, pid_start=claims.process_start(os.getpid()))  # this very process
    assert claims.stale_reason(json.loads(path.read_text()), 600) is None
    held = claims.acquire(tmp_path / "fresh__seed0.claim")
    assert held.content["pid_start"] == claims.process_start(os.getpid())
    held.release()
