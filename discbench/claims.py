"""Claims: at most one process trains a (configuration, seed) at a time, and a failed seed says why.

Beside a seed's future record, in ``<results>/<dataset>/<budget>/<protocol>/``, the files of one seed share the
label-free stem ``<request hash>__seed<k>`` (``discbench.records.seed_files``):

- ``.claim``: JSON ``{host, pid, started, heartbeat, token, job}`` written by the process that trains the seed and
  refreshed by a heartbeat thread. Claims are created, taken over and released under an exclusive ``flock`` on
  ``.claims.lock`` in that directory, and written atomically (temporary file, then rename). Another process skips
  a claimed seed and says where it runs. A claim is *stale*, and taken over with one warning line, when its process
  is gone (same host) or its heartbeat is older than ``stale_after`` seconds (any host, e.g. a dead node);
- ``.failed``: ``{reason, host, pid, job, time, ...}`` of the last failed attempt (one line); ``discbench status``
  shows it and the next run or sweep retries the seed (the file goes when the record is written);
- ``.ckpt`` and ``.ckpt.prev``: the checkpoints (``discbench.checkpoint``).

Nothing here imports torch: ``discbench status`` reads these files as they are.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from discbench.atomic import atomic_write_text
from discbench.errors import DiscbenchError
from discbench.ranges import is_number
from discbench.records import SeedFiles

DEFAULT_STALE_AFTER = 600.0  # seconds without a heartbeat before another host takes a claim over
LOCK_NAME = ".claims.lock"


def job_id() -> str | None:
    """The scheduler's job id, when there is one (Slurm, or submitit's local executor)."""
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID", "SUBMITIT_LOCAL_JOB_ID"):
        if os.environ.get(key):
            task = os.environ.get("SLURM_ARRAY_TASK_ID") if key == "SLURM_ARRAY_JOB_ID" else None
            return os.environ[key] + (f"_{task}" if task else "")
    return None


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return {}  # unreadable: treated as stale
    return data if isinstance(data, dict) else {}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):  # no such process; no pid at all (< 0 or >= 2^31)
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (Linux's /proc/<pid>/stat, field 22), or None where
    it cannot be read: with the pid it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces and parentheses
    return fields[19] if len(fields) > 19 else None


def _fields(claim: dict[str, Any]) -> tuple[str, int, float] | None:
    """A claim's (host, pid, heartbeat), or None when a field is missing or not what a claim writes (a garbage pid,
    a heartbeat that is not a finite number): such a claim is unreadable, hence stale."""
    try:
        host, pid, heartbeat = claim["host"], claim["pid"], claim["heartbeat"]
    except (KeyError, TypeError):
        return None
    if not isinstance(host, str) or not is_number(pid, integer=True) or pid <= 0 or not is_number(heartbeat):
        return None
    return host, pid, float(heartbeat)


def stale_reason(claim: dict[str, Any], stale_after: float, now: float | None = None) -> str | None:
    """Why ``claim`` is stale (its process is gone, its heartbeat is too old, it is unreadable), or None if live.

    A claim of this host is judged by its process alone: while the pid lives, the claim holds whatever its heartbeat
    says (a busy machine can delay a heartbeat; a second process must never train the same seed). The heartbeat
    decides only for claims of other hosts, whose processes cannot be asked."""
    now = time.time() if now is None else now
    fields = _fields(claim) if claim else None
    if fields is None:
        return "the claim file is unreadable"
    host, pid, heartbeat = fields
    if host == socket.gethostname():
        if not pid_alive(pid):
            return f"process {pid} on {host} is gone"
        recorded = claim.get("pid_start")
        if recorded is not None and process_start(pid) not in (None, recorded):
            return f"process {pid} on {host} is gone (that pid now belongs to another process)"
        return None
    age = now - heartbeat
    if age > stale_after:
        return f"its heartbeat is {age:.0f} s old (threshold {stale_after:.0f} s)"
    return None


def describe(claim: dict[str, Any], now: float | None = None) -> str:
    """``host pid 123 (job 45), since 2026-01-01 10:00:00, heartbeat 12 s ago`` (``?`` for what is unreadable)."""
    now = time.time() if now is None else now
    job = f" (job {claim['job']})" if claim.get("job") else ""
    started, heartbeat = (float(claim[k]) if is_number(claim.get(k)) else None for k in ("started", "heartbeat"))
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started is not None else "?"
    except (OverflowError, OSError, ValueError):  # a time no clock can show
        since = "?"
    beat = f"{now - heartbeat:.0f} s ago" if heartbeat is not None else "?"
    return f"{claim.get('host')} pid {claim.get('pid')}{job}, since {since}, heartbeat {beat}"


@contextlib.contextmanager
def _locked(folder: Path):
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class HeldClaim:
    """A claim this process holds; a daemon thread refreshes its heartbeat until ``release``."""

    def __init__(self, path: Path, content: dict[str, Any], interval: float):
        self.path, self.content, self.interval = path, content, interval
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_forever, name="discbench-heartbeat", daemon=True)
        self._thread.start()

    def _beat_forever(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        try:
            with _locked(self.path.parent):
                current = read_json(self.path)
                if not current or current.get("token") != self.content["token"]:
                    if not self.lost:
                        print(f"warning: the claim {self.path} was taken over by another process; this one will "
                              f"not write the seed's record", file=sys.stderr)
                    self.lost = True
                    return
                self.content["heartbeat"] = time.time()
                atomic_write_text(self.path, json.dumps(self.content) + "\n")
        except OSError:
            pass  # a transient file-system error: the next beat tries again

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError), _locked(self.path.parent):
            current = read_json(self.path)
            if current and current.get("token") == self.content["token"]:
                self.path.unlink(missing_ok=True)


def acquire(path: Path, stale_after: float = DEFAULT_STALE_AFTER) -> HeldClaim | dict[str, Any]:
    """Claim ``path`` for this process: a ``HeldClaim``, or the live claim of another process (a dict).

    An unwritable directory is a one-line ``DiscbenchError`` before anything trains."""
    now = time.time()
    content = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid()),
               "started": now, "heartbeat": now,
               "token": uuid.uuid4().hex, "job": job_id()}
    try:
        with _locked(path.parent):
            existing = read_json(path)
            if existing is not None:
                reason = stale_reason(existing, stale_after, now)
                if reason is None:
                    return existing
                print(f"taking over the claim {path}: {reason}", file=sys.stderr)
            atomic_write_text(path, json.dumps(content) + "\n")
    except OSError as exc:
        raise DiscbenchError(f"cannot write in the results directory {path.parent} ({exc}); fix its permissions or "
                             f"free space, or pass another --results-dir") from exc
    return HeldClaim(path, content, interval=max(0.5, min(60.0, stale_after / 4)))


def write_failure(files: SeedFiles, cfg, seed: int, exc: BaseException) -> None:
    """The one-line reason a seed failed, for ``discbench status`` (best effort: never hides the error itself)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    reason = text if isinstance(exc, DiscbenchError) else f"{type(exc).__name__}: {text}"
    failure = {"reason": reason, "label": cfg.label, "config_hash": cfg.hash, "request_hash": cfg.request_hash,
               "seed": seed, "host": socket.gethostname(), "pid": os.getpid(), "job": job_id(),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with contextlib.suppress(OSError):
        atomic_write_text(files.failed, json.dumps(failure) + "\n")
