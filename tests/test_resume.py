"""Checkpoint and resume: a run killed (SIGKILL) or stopped (SIGTERM) at a random step and run again writes the
record of an uninterrupted run, bit for bit (timing aside); bad checkpoints are refused or moved aside.

The reference is the uninterrupted run itself, trained in its own process with the same settings: on CPU discbench is
deterministic (``torch.use_deterministic_algorithms``), so any difference in the resumed record is a state the
checkpoint failed to restore (weights, optimizer momentum, scheduler, an RNG, CRD's memory banks, the data order or
the position inside the epoch, the running sums of the epoch's loss terms).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from discbench.checkpoint import FORMAT, SCHEMA, CheckpointPlan
from discbench.errors import DiscbenchError
from tests.conftest import REPO, requires_fashion_mnist

# 2 epochs of 6 steps: kills land before, inside and after an epoch boundary; crd has lazily allocated memory
# banks (buffers) and draws its negatives from torch's global RNG, so both must come back exactly.
SETTINGS = ("recipe.epochs=2", "recipe.train_subset=96", "recipe.test_subset=64", "recipe.batch_size=16",
            "recipe.milestones=[1]", "recipe.eval_batch_size=64", "loss.nce_k=32")
ARGS = ["run", "--loss", "crd", "--backbone", "tinynet", "--seeds", "1", "--quiet", "--checkpoint-every", "1",
        *[a for s in SETTINGS for a in ("--set", s)]]
TOTAL_STEPS = 12


# The command line with a pause after every checkpoint write: the test reads each checkpoint's step and signals
# inside the pause, so the signal lands right after step `target` on any machine, however loaded (a bare run's last
# steps take milliseconds and a poller could miss them). The pause only delays; it changes no state.
PACED = """
import sys, time
from discbench import checkpoint
save = checkpoint.CheckpointPlan.save
def paced(self, state):
    save(self, state)
    time.sleep(0.3)
checkpoint.CheckpointPlan.save = paced
from discbench.cli import main
sys.argv[0] = "discbench"
main()
"""


def start(results: Path, *extra: str, paced: bool = False) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    entry = ["-c", PACED] if paced else ["-m", "discbench"]
    return subprocess.Popen([sys.executable, *entry, *ARGS, "--results-dir", str(results), *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def record_of(results: Path) -> dict:
    (path,) = sorted(results.rglob("*.json"))
    return json.loads(path.read_text())


def comparable(rec: dict) -> dict:
    """Everything but timing, peak memory and provenance (when, how fast and in how much memory it ran: a resumed
    process's peak RSS is its own)."""
    epochs = [{k: v for k, v in e.items() if k != "train_seconds"} for e in rec["epochs"]]
    cost = {k: v for k, v in rec["cost"].items() if k != "peak_memory"}
    return {**{k: v for k, v in rec.items() if k not in ("timing", "provenance", "epochs", "cost")}, "epochs": epochs,
            "cost": cost}


def checkpoint_of(results: Path) -> Path | None:
    """The run's checkpoint, or None (also while the run creates or removes the directories it probes)."""
    try:
        return next(iter(sorted(p for p in results.rglob("*.ckpt") if not p.name.startswith(".tmp-"))), None)
    except FileNotFoundError:
        return None


def interrupt(results: Path, sig: int, rng: random.Random) -> tuple[int, str, int]:
    """Start a paced run, let it reach a random step (1..TOTAL_STEPS-2, read from its checkpoints), send ``sig`` in
    the pause after that step's checkpoint: at least one step and the last evaluation remain, so the signal lands
    before the run ends (before the epoch boundary at step 6, on it, or after it)."""
    target = rng.randint(1, TOTAL_STEPS - 2)
    proc = start(results, paced=True)
    step = 0
    while proc.poll() is None and step < target:
        ckpt = checkpoint_of(results)
        if ckpt is not None:
            with contextlib.suppress(Exception):  # renamed under us between the glob and the read: read the next
                step = torch.load(ckpt, weights_only=True)["step"]
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    status, err = finish(proc)
    return status, err, target


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    results = tmp_path_factory.mktemp("reference")
    status, err = finish(start(results))
    assert status == 0, err
    assert checkpoint_of(results) is None  # removed once the record is written
    return record_of(results)


@requires_fashion_mnist
@pytest.mark.slow
def test_sigkill_at_a_random_step_then_rerun_equals_uninterrupted(tmp_path, reference):
    rng = random.Random(int(os.environ.get("DISCBENCH_TEST_SEED", time.time_ns())))
    status, _, target = interrupt(tmp_path, signal.SIGKILL, rng)
    assert status == -signal.SIGKILL
    assert not list(tmp_path.rglob("*.json"))  # no record, no partial record
    saved = torch.load(checkpoint_of(tmp_path), weights_only=True)
    assert saved["step"] == target  # the kill landed in the pause after that step's checkpoint
    assert list(tmp_path.rglob("*.claim"))  # the dead process's claim is left behind ...
    status, err = finish(start(tmp_path))  # ... and taken over: same host, its process is gone
    assert status == 0, err
    assert "taking over the claim" in err and "is gone" in err
    resumed = record_of(tmp_path)
    assert resumed["timing"]["resumed"] and resumed["timing"]["resumed"][0]["step"] == saved["step"]
    assert comparable(resumed) == comparable(reference), f"killed after step {saved['step']}"
    assert resumed["final_top1"] == reference["final_top1"]
    assert checkpoint_of(tmp_path) is None and not list(tmp_path.rglob("*.claim"))


@requires_fashion_mnist
@pytest.mark.slow
def test_sigterm_checkpoints_exits_with_one_line_and_resumes(tmp_path, reference):
    rng = random.Random(int(os.environ.get("DISCBENCH_TEST_SEED", time.time_ns())) + 1)
    status, err, _ = interrupt(tmp_path, signal.SIGTERM, rng)
    assert status == 128 + signal.SIGTERM, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: stopped by SIGTERM at epoch ") and "rerun the same command" in lines[-1]
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.claim"))  # the claim is released
    status, err = finish(start(tmp_path))
    assert status == 0, err
    assert comparable(record_of(tmp_path)) == comparable(reference)


def test_truncated_checkpoint_is_moved_aside_and_the_previous_one_used(tmp_path, capsys):
    plan = CheckpointPlan(tmp_path / "h__seed0.ckpt")
    good = {"format": FORMAT, "schema": SCHEMA, "config_hash": "h", "seed": 0, "step": 3}
    plan.save(good)
    plan.save({**good, "step": 5})
    assert torch.load(plan.previous, weights_only=True)["step"] == 3  # the previous one is kept
    data = plan.path.read_bytes()
    plan.path.write_bytes(data[: len(data) // 2])  # a torn write (or disk corruption)
    assert plan.load("h", 0)["step"] == 3
    assert (tmp_path / "h__seed0.ckpt.corrupt").read_bytes() == data[: len(data) // 2]  # nothing lost
    assert "is unreadable" in capsys.readouterr().err


def test_foreign_or_unsafe_checkpoint_is_refused_in_one_line(tmp_path):
    plan = CheckpointPlan(tmp_path / "h__seed0.ckpt")
    plan.save({"format": FORMAT, "schema": SCHEMA, "config_hash": "other", "seed": 0})
    with pytest.raises(DiscbenchError, match=r"belongs to config other seed 0, not to config h seed 0; delete"):
        plan.load("h", 0)
    plan.save({"format": FORMAT, "schema": SCHEMA + 1, "config_hash": "h", "seed": 0})
    with pytest.raises(DiscbenchError, match="checkpoint schema"):
        plan.load("h", 0)
    plan.remove()

    class Evil:  # a pickle that would run code when loaded: weights_only refuses it, nothing runs
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"format": FORMAT, "x": Evil()}, plan.path)
    assert plan.load("h", 0) is None
    assert not (tmp_path / "pwned").exists() and (tmp_path / "h__seed0.ckpt.corrupt").exists()


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    plan = CheckpointPlan(tmp_path / "h__seed0.ckpt")
    plan.save({"format": FORMAT, "schema": SCHEMA, "config_hash": "h", "seed": 0, "step": 1})

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(DiscbenchError, match="could not write checkpoint .*No space left on device.*intact"):
        plan.save({"format": FORMAT, "schema": SCHEMA, "config_hash": "h", "seed": 0, "step": 2})
    monkeypatch.undo()
    assert plan.load("h", 0)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h__seed0.ckpt"]  # no temporary file left
