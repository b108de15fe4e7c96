"""Checkpoints of one seed's training: written atomically beside its future record, loaded to resume it exactly.

A checkpoint holds everything that decides the rest of the run: the protocol's ``state_dict`` (networks, exits,
plugin heads, memory banks and other buffers), the optimizer and the scheduler, every RNG state (Python, torch CPU,
CUDA, the data generator), the position (completed epochs, steps into the current epoch, global step, the current
epoch's sample order and running sums of its loss terms) and the per-epoch history. On CPU a run resumed from it
produces the record of an uninterrupted run, bit for bit (timing aside).

Files, beside the record in ``<results>/<dataset>/<budget>/<protocol>/``, named by the label-free
``<request hash>__seed<k>`` (``seed_stem``):

- ``.ckpt``: the newest checkpoint; ``.ckpt.prev``: the one before it. A new checkpoint is written to a temporary
  file, fsynced, and only then rotated in (``.ckpt`` -> ``.ckpt.prev``, temporary -> ``.ckpt``), so a kill during
  the write leaves the previous one intact and loses at most the steps since it.
- Loading tries ``.ckpt`` then ``.ckpt.prev`` with ``torch.load(weights_only=True)`` (a pickle that would run code
  is refused). A truncated or unreadable file is moved aside to ``<name>.corrupt`` (nothing is deleted) with one
  warning line and the next one is tried; a checkpoint of another configuration hash, seed or checkpoint schema is
  refused with one line (``DiscbenchError``): delete it to start the seed over. ``--force`` (rerun a seed whose
  record exists) still resumes an unfinished seed's checkpoint.

A stop request (SIGTERM, or the signal a cluster sends before preemption) is noted by a handler and acted on at the
next step boundary: the loop writes a checkpoint and raises ``Preempted`` (the CLI exits with 128 + the signal).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from discbench.atomic import atomic_write
from discbench.errors import DiscbenchError
from discbench.keys import Term

FORMAT = "discbench-checkpoint"
SCHEMA = 2  # 2: terms are stored as typed names


class Preempted(DiscbenchError):
    """Training stopped on a signal after writing a checkpoint; rerunning the same command resumes it."""

    def __init__(self, signum: int, message: str):
        self.signum = signum
        super().__init__(message)


# -- stop requests ---------------------------------------------------------------------------------------------------
_STOP: dict[str, int | None] = {"signum": None}


def stop_requested() -> int | None:
    """The signal number of a pending stop request, else None."""
    return _STOP["signum"]


def request_stop(signum: int = signal.SIGTERM) -> None:
    _STOP["signum"] = signum


@contextlib.contextmanager
def stop_on_signals(signums: tuple[int, ...] = (signal.SIGTERM,)):
    """While inside, the given signals request a stop (acted on at the next step) instead of killing the process.
    Only the main thread can install handlers; elsewhere this is a no-op. The previous handlers come back on exit."""
    _STOP["signum"] = None
    if sys.platform == "win32" or not _is_main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in signums}
    for s in signums:
        signal.signal(s, lambda signum, frame: request_stop(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _STOP["signum"] = None


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# -- files -----------------------------------------------------------------------------------------------------------
@dataclass
class CheckpointPlan:
    """Where and when one seed checkpoints.

    Args:
        path: the newest checkpoint (``<stem>.ckpt``); ``<stem>.ckpt.prev`` keeps the one before it.
        every_steps: also checkpoint every this many steps (0: at epoch ends only).
        enabled: False writes nothing (and resumes nothing); the stop request still stops the run.
        writer: False on DDP ranks other than 0, which never write.
    """

    path: Path
    every_steps: int = 0
    enabled: bool = True
    writer: bool = True

    @property
    def previous(self) -> Path:
        return self.path.with_name(self.path.name + ".prev")

    def files(self) -> list[Path]:
        return [p for p in (self.path, self.previous) if p.exists()]

    def remove(self) -> None:
        for p in (self.path, self.previous):
            p.unlink(missing_ok=True)

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` to a temporary file, fsync it, then rotate it in; the previous checkpoint stays intact
        until the new one is complete. A failed write raises one line and leaves the previous files as they were."""
        if not (self.enabled and self.writer):
            return
        path = self.path

        def rotate() -> None:
            if path.exists():
                os.replace(path, self.previous)

        try:
            atomic_write(path, lambda f: torch.save(state, f), binary=True, before_replace=rotate)
        except OSError as exc:
            raise DiscbenchError(f"could not write checkpoint {path}: {exc}; free space or fix permissions in "
                                 f"{path.parent} (the previous checkpoint is intact)") from exc

    def load(self, config_hash: str, seed: int) -> dict[str, Any] | None:
        """The newest valid checkpoint of (``config_hash``, ``seed``), or None. Unreadable files are moved aside."""
        if not self.enabled:
            return None
        for candidate in (self.path, self.previous):
            if not candidate.exists():
                continue
            try:
                state = torch.load(candidate, map_location="cpu", weights_only=True)
            except Exception as exc:  # truncated zip, bad pickle, a pickle that needs code: never executed
                aside = candidate.with_name(candidate.name + ".corrupt")
                os.replace(candidate, aside)
                print(f"warning: checkpoint {candidate} is unreadable ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}); moved to {aside}", file=sys.stderr)
                continue
            check_identity(state, candidate, config_hash, seed)
            return state
        return None


def check_identity(state: Any, where: Path, config_hash: str, seed: int) -> None:
    """Refuse, in one line, a checkpoint that is not ours: another format, schema, configuration or seed."""
    fix = f"delete {where} to start the seed over"
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DiscbenchError(f"{where} is not a discbench checkpoint; {fix}")
    if state.get("schema") != SCHEMA:
        raise DiscbenchError(f"{where} has checkpoint schema {state.get('schema')}, this discbench writes {SCHEMA}; "
                             f"{fix}")
    if state.get("config_hash") != config_hash or state.get("seed") != seed:
        raise DiscbenchError(f"{where} belongs to config {state.get('config_hash')} seed {state.get('seed')}, not "
                             f"to config {config_hash} seed {seed}; {fix}")


# -- RNG and module state --------------------------------------------------------------------------------------------
def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG a step can draw from: Python's, torch's CPU and CUDA generators, and the data generator."""
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "data": generator.get_state(),
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["data"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def load_module_state(module: nn.Module, state: dict[str, Any], where: Path) -> None:
    """A strict ``load_state_dict`` that first materialises buffers a plugin allocates lazily (registered as None
    until the first step, e.g. CRD's memory banks) with the saved shapes."""
    for name, sub in module.named_modules():
        for key, buf in list(sub._buffers.items()):
            full = f"{name}.{key}" if name else key
            if buf is None and full in state:
                sub._buffers[key] = torch.empty_like(state[full], device=_device_of(module))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DiscbenchError(f"{where} does not fit this run's networks ({str(exc).splitlines()[0]}); delete it to "
                             f"start the seed over") from exc


def _device_of(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


class TermHistory:
    """Every loss term averaged over windows of ``every`` steps (MUSE Figs. 2 and 3 plot them over training), with
    ``every`` chosen so that a run keeps at most ``max_points`` points per term: records stay small."""

    def __init__(self, total_steps: int, max_points: int = 100):
        self.every = max(1, math.ceil(total_steps / max_points))
        self.steps: list[int] = []
        self.rows: list[list[float]] = []
        self.keys: list[str] = []
        self._sum: Any = None
        self._count = 0

    def add(self, keys: list[str], values: Any) -> None:
        self.keys = keys
        self._sum = values if self._sum is None else self._sum + values
        self._count += 1
        if self._count == self.every:
            self.rows.append((self._sum / self._count).tolist())
            self.steps.append((len(self.steps) + 1) * self.every)
            self._sum, self._count = None, 0

    def state(self) -> dict:
        """Everything needed to continue after a resume (a checkpoint holds it)."""
        return {"every": self.every, "steps": self.steps, "rows": self.rows, "keys": self.keys, "sum": self._sum,
                "count": self._count}

    @classmethod
    def from_state(cls, state: dict, device) -> TermHistory:
        history = cls(1)
        history.every, history.steps, history.rows, history.keys = (state["every"], list(state["steps"]),
                                                                    [list(r) for r in state["rows"]],
                                                                    list(state["keys"]))
        history._sum = None if state["sum"] is None else state["sum"].to(device)
        history._count = state["count"]
        return history

    def to_dict(self) -> dict:
        return {"every": self.every, "steps": self.steps,
                "terms": {k: [round(row[i], 5) for row in self.rows] for i, k in enumerate(self.keys)}}


# -- the loop's position ---------------------------------------------------------------------------------------------
@dataclass
class Position:
    """Where the training loop stands: what a checkpoint must restore besides modules, optimizer and RNGs."""

    epoch: int = 0  # completed epochs
    epoch_step: int = 0  # steps done in the current epoch
    step: int = 0  # global step
    order: torch.Tensor | None = None  # the current epoch's sample order (None between epochs)
    sums: torch.Tensor | None = None  # running sums of [total, *terms] over the current epoch
    keys: list[Term] = field(default_factory=list)  # the terms of ``sums`` after the total
    epochs: list[dict[str, Any]] = field(default_factory=list)  # per-epoch history (the record's ``epochs``)
    train_seconds: float = 0.0
    resumed: list[dict[str, Any]] = field(default_factory=list)  # where each resume started (record: timing)
    history: TermHistory | None = None  # the record's term history
    critics: set[str] = field(default_factory=set)  # MI critic implementations that ran (record: runtime)
    fingerprints: dict[str, Any] = field(default_factory=dict)  # what the run started from (discbench.seeding)

    def end_epoch(self, record: dict[str, Any]) -> None:
        self.epochs.append(record)
        self.epoch += 1
        self.epoch_step, self.order, self.sums = 0, None, None


def snapshot(cfg, seed: int, pos: Position, system: nn.Module, optimizer, scheduler,
             generator: torch.Generator) -> dict[str, Any]:
    """Everything a resumed run needs, as plain containers and tensors (loadable with ``weights_only=True``)."""
    def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().cpu()

    return {
        "format": FORMAT, "schema": SCHEMA, "config_hash": cfg.hash, "seed": seed, "label": cfg.label,
        "epoch": pos.epoch, "epoch_step": pos.epoch_step, "step": pos.step, "order": cpu(pos.order),
        "sums": cpu(pos.sums), "keys": [t.to_dict() for t in pos.keys], "epochs": pos.epochs,
        "train_seconds": pos.train_seconds,
        "resumed": pos.resumed, "history": pos.history.state() if pos.history is not None else None,
        "critics": sorted(pos.critics), "fingerprints": pos.fingerprints, "system": system.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "rng": rng_state(generator), "saved_at": time.time(),
    }


def restore(state: dict[str, Any], system: nn.Module, optimizer, scheduler, generator: torch.Generator,
            device: torch.device, where: Path) -> Position:
    """Load ``state`` into the freshly built run and return its position."""
    load_module_state(system, state["system"], where)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"], generator)
    def to(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device)

    pos = Position(epoch=state["epoch"], epoch_step=state["epoch_step"], step=state["step"],
                   order=to(state["order"]), sums=to(state["sums"]), keys=[Term.from_dict(t) for t in state["keys"]],
                   epochs=list(state["epochs"]),
                   train_seconds=state["train_seconds"], resumed=list(state["resumed"]),
                   history=TermHistory.from_state(state["history"], device) if state.get("history") else None,
                   critics=set(state.get("critics", ())), fingerprints=dict(state.get("fingerprints", {})))
    pos.resumed.append({"epoch": pos.epoch, "epoch_step": pos.epoch_step, "step": pos.step})
    return pos
