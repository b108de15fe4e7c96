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
    yield
