"""Atomic file writes: a killed writer never leaves half a file, concurrent writers never interleave.

Every writer of discbench (records, checkpoints, claims, manifests, leaderboards) goes through ``atomic_write``: the
content goes to a temporary file ``.tmp-*`` in the destination's directory, is fsynced, then renamed into place. A
temporary file that outlives its writer is an orphan (``discbench.records`` finds and removes them).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TMP_PREFIX = ".tmp-"  # every temporary file of a writer starts with it


def atomic_write(path: Path, write: Callable[[IO], Any], *, binary: bool = False,
                 before_replace: Callable[[], Any] | None = None) -> None:
    """``write(f)`` into a temporary file in ``path``'s directory, fsync it, run ``before_replace`` (a checkpoint
    rotates the previous one aside there), then rename it into place: a killed writer never leaves half a file,
    concurrent writers never interleave, and a failure removes the temporary file and leaves ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=path.suffix)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; the file gets the mode any new file would get
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """``text`` written to ``path`` by ``atomic_write``."""
    atomic_write(path, lambda f: f.write(text))


def _umask() -> int:
    """The process's umask (read by setting and restoring it; /proc is not everywhere)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
