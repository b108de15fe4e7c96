"""The one record reader: every command that reads run records (``run`` and ``sweep`` before skipping a seed,
``leaderboard``, ``publish``, ``check-records``) goes through ``read_record`` and ``collect``, so each check exists
once.

A record is parsed (strict JSON: ``NaN`` and ``Infinity`` are refused), validated against the JSON Schema shipped
with the package (``discbench/record.schema.json``, with the ``jsonschema`` package) and then built into a
``RunRecord`` (which upgrades schema 1 and checks the dataclass's keys). A file that fails any step is one
``Problem`` line and is left out; nothing here raises a traceback for a bad file.

``collect`` merges several results directories (or globs). A run id (configuration hash, seed) is counted once:

- the same run id in two files with the same numbers (a backup copy, the same records synced twice) is a
  *duplicate*: counted once, with a warning;
- the same run id with different numbers (two machines that ran the same configuration and seed) is a *conflict*:
  both are left out and flagged, never averaged; which one to publish is the user's decision.

Temporary files of the atomic writer (``.tmp-*.json``) that are older than ``ORPHAN_AGE_SECONDS`` come from killed
writers (a record is written in milliseconds); readers that may write (``run``, ``sweep``, ``check-records
--clean``) remove them, ``leaderboard`` only reports them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from glob import glob
from pathlib import Path
from typing import Any

from discbench.errors import DiscbenchError
from discbench.results import RunRecord

SCHEMA_PATH = Path(__file__).with_name("record.schema.json")
ORPHAN_AGE_SECONDS = 600.0
TMP_PREFIX = ".tmp-"


class InvalidRecord(DiscbenchError):
    """A file that is not a valid run record; its message is one line naming the file and what is wrong."""


@dataclass(frozen=True)
class Problem:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class RecordSet:
    """What ``collect`` found: valid records (each run id once), and every file left out or noticed, with why."""

    records: list[RunRecord] = field(default_factory=list)
    sources: dict[str, list[Path]] = field(default_factory=dict)  # run id -> files holding it
    problems: list[Problem] = field(default_factory=list)  # invalid files, left out
    duplicates: list[str] = field(default_factory=list)  # one line per run id found in several identical files
    conflicts: list[str] = field(default_factory=list)  # one line per run id with different numbers: left out
    orphans: list[Path] = field(default_factory=list)  # temporary files of killed writers (removed if asked)

    def messages(self) -> list[str]:
        """One line per thing a reader should know, for stderr."""
        lines = [f"skipped invalid record {p}" for p in self.problems]
        lines += [f"duplicate: {d}" for d in self.duplicates]
        lines += [f"CONFLICT (left out, not averaged): {c}" for c in self.conflicts]
        lines += [f"orphaned temporary file {p}" for p in self.orphans]
        return lines


@cache
def _validator():
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def validate_dict(data: Any) -> None:
    """Raise ``InvalidRecord`` with the first schema violation (its JSON path and message), if any."""
    if not isinstance(data, dict):
        raise InvalidRecord(f"not a JSON object but {type(data).__name__}")
    if data.get("schema") not in (1, 2):
        raise InvalidRecord(f"not a discbench run record of schema 1 or 2 (schema: {data.get('schema')!r}); "
                            f"records of other schemas are left out")
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InvalidRecord(f"schema violation at {where}: {err.message}{more}")


def parse_record(text: str, where: str = "record") -> RunRecord:
    """A ``RunRecord`` from the text of a record file, or ``InvalidRecord`` naming what is wrong."""
    if not text.strip():
        raise InvalidRecord(f"{where}: empty file")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        truncated = not text.rstrip().endswith(("}", "]"))  # a complete file ends its top-level value
        raise InvalidRecord(f"{where}: {'truncated' if truncated else 'corrupt'} JSON ({exc.msg} at line "
                            f"{exc.lineno}, column {exc.colno})") from None
    except ValueError as exc:
        raise InvalidRecord(f"{where}: {exc}") from None
    try:
        validate_dict(data)
        record = RunRecord.from_dict(data, where)
    except InvalidRecord as exc:
        raise InvalidRecord(f"{where}: {exc}") from None
    except DiscbenchError as exc:
        raise InvalidRecord(str(exc)) from None
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise InvalidRecord(f"{where}: malformed record ({type(exc).__name__}: {exc})") from None
    if record.run_id != f"{record.config_hash}-seed{record.seed}":
        raise InvalidRecord(f"{where}: run_id '{record.run_id}' does not match config_hash and seed")
    return record


def read_record(path: Path) -> RunRecord:
    """The record in ``path`` or ``InvalidRecord`` (unreadable, empty, truncated, corrupt, foreign, incomplete)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRecord(f"{path}: cannot be read ({exc})") from None
    return parse_record(text, str(path))


def _numbers(record: RunRecord) -> tuple:
    """What must agree for two files of one run id to be the same run."""
    return (tuple(sorted(record.final_top1.items())), tuple(sorted(record.final_train_terms.items())))


def _expand(paths: Iterable[Path | str]) -> list[Path]:
    """Directories as given, globs expanded (sorted); a pattern that matches nothing, or a missing directory, is an
    error: an empty table from a typo is worse than a message."""
    out: list[Path] = []
    for p in paths:
        text = str(p)
        if any(ch in text for ch in "*?["):
            matched = sorted(Path(m) for m in glob(text) if Path(m).is_dir())
            if not matched:
                raise DiscbenchError(f"--results-dir pattern '{text}' matches no directory")
            out += matched
        elif Path(text).is_dir():
            out.append(Path(text))
        else:
            raise DiscbenchError(f"results directory {text} does not exist; run 'discbench run' first or pass "
                                 f"--results-dir")
    return list(dict.fromkeys(out))


def is_orphan(path: Path, now: float | None = None) -> bool:
    """A writer's temporary file old enough that no live writer can own it."""
    try:
        age = (now or time.time()) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > ORPHAN_AGE_SECONDS


def remove_orphans(directory: Path) -> list[Path]:
    """Remove the orphaned ``.tmp-*`` files under ``directory``; the removed paths."""
    removed = []
    if Path(directory).is_dir():
        for path in sorted(Path(directory).rglob(f"{TMP_PREFIX}*")):
            if path.is_file() and is_orphan(path):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def collect(results_dirs: Iterable[Path | str], remove_orphaned: bool = False) -> RecordSet:
    """Every valid record under ``results_dirs`` (directories or globs), each run id once; see the module doc."""
    found = RecordSet()
    by_id: dict[str, list[tuple[Path, RunRecord]]] = {}
    now = time.time()
    for root in _expand(results_dirs):
        for path in sorted(root.rglob("*.json")):
            if path.name.startswith(TMP_PREFIX):
                if is_orphan(path, now):
                    if remove_orphaned:
                        path.unlink(missing_ok=True)
                    found.orphans.append(path)
                continue
            try:
                record = read_record(path)
            except InvalidRecord as exc:
                found.problems.append(Problem(path, str(exc).removeprefix(f"{path}: ")))
                continue
            by_id.setdefault(record.run_id, []).append((path, record))
    for run_id, copies in by_id.items():
        found.sources[run_id] = [p for p, _ in copies]
        distinct = {_numbers(r) for _, r in copies}
        if len(distinct) > 1:
            tops = "; ".join(f"{p} top-1 {r.last_top1(r.networks[0]):.2f}" for p, r in copies)
            found.conflicts.append(f"run {run_id} ({copies[0][1].label}, seed {copies[0][1].seed}) has different "
                                   f"numbers in {len(copies)} files: {tops}")
            continue
        if len(copies) > 1:
            found.duplicates.append(f"run {run_id} is in {len(copies)} files with the same numbers, counted once: "
                                    + ", ".join(str(p) for p, _ in copies))
        found.records.append(copies[0][1])
    return found


def load(results_dirs: Iterable[Path | str] | Path | str, remove_orphaned: bool = False,
         echo=None) -> list[RunRecord]:
    """``collect`` for commands: its messages go to ``echo`` (one line each), its records are returned."""
    if isinstance(results_dirs, (str, Path)):
        results_dirs = [results_dirs]
    found = collect(results_dirs, remove_orphaned=remove_orphaned)
    if echo is not None:
        for line in found.messages():
            echo(line)
    return found.records


def existing_valid(path: Path | None, note=print) -> Path | None:
    """``path`` if it holds a valid record, else None; an invalid one is renamed ``<name>.invalid-<time>`` (kept for
    inspection, never read again) with a one-line ``note``, so its seed is trained again."""
    if path is None:
        return None
    try:
        record = read_record(path)
        if f"__{record.config_hash}__seed{record.seed}.json" not in path.name:
            raise InvalidRecord(f"{path}: holds run {record.run_id}, not the run its name says")
    except InvalidRecord as exc:
        moved = path.with_name(f"{path.name}.invalid-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(path, moved)
        note(f"invalid record moved aside to {moved} ({str(exc).removeprefix(f'{path}: ')}); retraining its seed")
        return None
    return path
