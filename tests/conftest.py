"""Shared fixtures: a tiny bench.toml resolution helper and the embedded dataset's location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from discbench.config import Bench

REPO = Path(__file__).resolve().parents[1]
# Triton kernel tests need TRITON_INTERPRET=1 before any kernel module is imported: their own process (Makefile).
collect_ignore = [] if os.environ.get("TRITON_INTERPRET") == "1" else ["triton"]
FASHION = Path("/usr/share/datasets/fashion-mnist")

# The tests train on tiny tensors, where torch's intra-op threads mostly spin: on this 2-core machine, busy with other
# processes, two CLI runs of 4 steps took 50 s on torch's default two threads and 7 s on one (tests/test_cli.py), and a
# selection of in-process tests 364 s against 109 s. One thread in this process (set again before every test: a test
# may change it) and, unless the caller chose otherwise, in the subprocesses the tests start, as most of them already
# ask (OMP_NUM_THREADS=1). No test depends on the thread count: the records compared with each other come from
# runs with the same setting, golden values and reference steps are compared with tolerances.
THREADS = 1
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
torch.set_num_threads(THREADS)

requires_fashion_mnist = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)",
)

# A recipe small enough for tests: a few steps on a few hundred images.
TINY = ("recipe.epochs=1", "recipe.train_subset=128", "recipe.test_subset=64", "recipe.batch_size=32",
        "recipe.milestones=[]", "recipe.eval_batch_size=64")


@pytest.fixture(scope="session")
def bench() -> Bench:
    return Bench.load(REPO / "bench.toml")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    yield
