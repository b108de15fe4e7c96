"""One random stream per source of randomness, each derived from the run's seed, so that seeds pair across rows.

A run's seed seeds, through ``derive``, one independent stream per source:

- ``init.<network>`` (``init.net``; ``init.net1``, ``init.net2``; ``init.student``): a network's initial weights;
- ``init.exits``: self-distillation's exit branches; ``init.loss``: the discrepancy plugins' heads;
- ``data``: the epochs' sample order and the augmentation (the training loop's generator);
- ``loss``: every draw during training (sampling inside losses, such as CRD's negatives).

So seed k of two rows of a table starts from the same network and sees the same first epoch whatever their methods
build or draw on top: the rows are paired, and their difference can be tested pairwise. ``fingerprint`` hashes
what a run started from (each network's initial weights, the first epoch's order); records keep the fingerprints,
and a table pairs two rows' seed k only when they match (``discbench.reporting``).

Outside a run (``run_seed`` not entered, e.g. a test that builds a protocol), ``stream`` leaves torch's global random
state alone: construction draws from it as plain PyTorch code does.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import random
from collections.abc import Iterable, Iterator

import torch

_SEED: contextvars.ContextVar[int | None] = contextvars.ContextVar("discbench_seed", default=None)


def derive(seed: int, stream: str) -> int:
    """A 63-bit seed for ``stream`` of run seed ``seed`` (SHA-256 of both: streams are independent)."""
    return int.from_bytes(hashlib.sha256(f"discbench:{seed}:{stream}".encode()).digest()[:8], "big") >> 1


@contextlib.contextmanager
def run_seed(seed: int) -> Iterator[None]:
    """Within: ``stream`` draws from ``seed``'s streams."""
    token = _SEED.set(seed)
    try:
        yield
    finally:
        _SEED.reset(token)


@contextlib.contextmanager
def stream(name: str) -> Iterator[None]:
    """Within: torch's CPU generator and Python's ``random`` draw from stream ``name`` of the current run's seed;
    both are restored on exit. Outside a run, nothing changes."""
    seed = _SEED.get()
    if seed is None:
        yield
        return
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive(seed, name))
        random.seed(derive(seed, name))
        try:
            yield
        finally:
            random.setstate(state)


def seed_global(seed: int, name: str) -> None:
    """Seed torch's global generators and Python's ``random`` with stream ``name`` (the ``loss`` stream of a
    run's training steps)."""
    torch.manual_seed(derive(seed, name))
    random.seed(derive(seed, name))


def generator(seed: int, name: str, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with stream ``name`` (the ``data`` stream)."""
    return torch.Generator(device=device).manual_seed(derive(seed, name))


def fingerprint(tensors: Iterable[torch.Tensor]) -> str:
    """16 hex digits of the SHA-256 of the tensors' values, dtypes and shapes, in order."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]
