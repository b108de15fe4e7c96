"""DDP under torchrun: 2 gloo processes on CPU train what 1 process trains at the same global batch.

Tolerance (``test_two_gloo_processes_match_one_process``): the network there has no BatchNorm (a test-only tinynet
with GroupNorm(1, C), a per-sample normalisation, in place of each BatchNorm; online protocol, so no exits) and the
loss (CE, KD between the two networks' logits, attention transfer at every stage) is a mean of per-sample terms, so
the 2-rank run is mathematically the 1-process run: each rank's slice of every global batch is augmented as part of
the whole batch, DDP averages the two half-batch gradients (= the full-batch mean gradient) and the logged terms are
averaged over ranks. The only difference is the order of floating-point additions (two half sums then their mean,
instead of one sum), ~1e-7 relative per step in float32; over 8 SGD steps that stays far below 1e-4, so the terms
are compared with rtol 1e-4 and the top-1 may differ by at most one test image (a near-tie argmax). With BatchNorm
on CPU each rank normalises with its own half batch (no SyncBatchNorm there), a different computation: the torchrun
end-to-end test checks that path runs and records itself, not equality.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from discbench.config import Bench
from discbench.distributed import Distributed
from discbench.errors import DiscbenchError
from discbench.registry import BACKBONES
from tests.conftest import REPO, requires_fashion_mnist

if "tinynet_nobn" not in BACKBONES:

    @BACKBONES.register()
    class TinyNetNoBN(BACKBONES.get("tinynet")):  # test-only: tinynet with GroupNorm for BatchNorm
        name = "tinynet_nobn"

        def __init__(self, in_channels: int, num_classes: int, image_size: int):
            super().__init__(in_channels, num_classes, image_size)
            for module in list(self.modules()):
                for child_name, child in module.named_children():
                    if isinstance(child, nn.BatchNorm2d):  # per-sample normalisation instead of per-batch
                        setattr(module, child_name, nn.GroupNorm(1, child.num_features))


SETTINGS = ("recipe.epochs=2", "recipe.train_subset=128", "recipe.test_subset=200", "recipe.batch_size=32",
            "recipe.milestones=[1]", "recipe.eval_batch_size=100")


def config():
    return Bench.load(REPO / "bench.toml").resolve("at", "tinynet_nobn", "fashion-mnist", "smoke", protocol="online",
                                                   overrides=SETTINGS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str) -> None:
    from discbench.data import open_dataset
    from discbench.train import train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist = Distributed.from_env()
    cfg = config()
    device = torch.device("cpu")
    run = train(cfg, 0, open_dataset(cfg.dataset, cfg.recipe, device), device, progress=False, dist=dist)
    assert (run.record is None) == (rank != 0)  # only rank 0 assembles (and would write) the record
    if rank == 0:
        with open(out, "w") as f:
            json.dump(run.record.to_dict(), f)
    dist.close()


@requires_fashion_mnist
@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    from discbench.data import open_dataset
    from discbench.train import train

    out = tmp_path / "ddp.json"
    mp.spawn(_rank, args=(2, free_port(), str(out)), nprocs=2, join=True)
    ddp = json.loads(out.read_text())

    torch.set_num_threads(1)
    cfg = config()
    cpu = torch.device("cpu")
    single = train(cfg, 0, open_dataset(cfg.dataset, cfg.recipe, cpu), cpu, progress=False).record.to_dict()

    assert ddp["runtime"]["world_size"] == 2 and ddp["runtime"]["per_rank_batch"] == 16
    assert single["runtime"]["world_size"] == 1 and ddp["timing"]["steps"] == single["timing"]["steps"] == 8
    for e_ddp, e_one in zip(ddp["epochs"], single["epochs"], strict=True):
        assert e_ddp["lr"] == e_one["lr"] and e_ddp["train_terms"].keys() == e_one["train_terms"].keys()
        for key, value in e_one["train_terms"].items():
            assert e_ddp["train_terms"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
        for key, value in e_one["top1"].items():
            assert abs(e_ddp["top1"][key] - value) <= 100 / 200 + 1e-9, key  # at most one of 200 test images


@requires_fashion_mnist
@pytest.mark.slow
def test_torchrun_two_processes_end_to_end(tmp_path):
    results = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = ["run", "--loss", "mi_x_si", "--backbone", "tinynet", "--seeds", "1", "--quiet", "--results-dir",
            str(results), *[a for s in SETTINGS for a in ("--set", s)]]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(free_port()), "-m", "discbench", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = results.rglob("*.json")  # rank 0 alone writes
    assert sum(line.startswith("wrote ") for line in proc.stderr.splitlines()) == 1
    rec = json.loads(path.read_text())
    assert rec["runtime"]["world_size"] == 2 and rec["runtime"]["batchnorm"] == "local"
    assert rec["runtime"]["per_rank_batch"] == 16 and rec["timing"]["steps"] == 8
    assert all(0 <= v <= 100 for v in rec["final_top1"].values())
    assert not list(results.rglob("*.ckpt")) and not list(results.rglob("*.claim"))


def test_world_size_must_divide_the_batch():
    assert Distributed(rank=0, world_size=4).local_batch(128) == 32
    with pytest.raises(DiscbenchError, match="recipe.batch_size 32 is not divisible by the world size 3"):
        Distributed(rank=0, world_size=3).local_batch(32)


def test_torchrun_refusal_is_said_once(tmp_path):
    """Every rank refuses a batch the world size does not divide; the error line appears once (rank 0's), the
    exit status is non-zero. (torchrun then adds its own report of the failed children.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = ["run", "--loss", "none", "--backbone", "tinynet", "--seeds", "1", "--quiet", "--results-dir",
            str(tmp_path / "runs"), "--set", "recipe.batch_size=33"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(free_port()), "-m", "discbench", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "not divisible by the world size 2" in errors[0], proc.stderr[-3000:]
