"""Run records: what a record is, where it lives, how it is written and read. The one owner of the results folder.

A record is one JSON file per (configuration, seed) (``RunRecord``, schema: ``discbench/record.schema.json`` and
results/README.md), assembled from the training loop's results by ``new_record`` and written atomically by
``write_record``. Its place: ``<results>/<dataset>/<budget>/<protocol>/<label>__<backbone>__<hash>__seed<k>.json``
(``record_path``); beside it, the seed's side files share the label-free stem ``<request hash>__seed<k>``
(``seed_files``: claim, failure record, checkpoints).

Every command that reads records (``run`` and ``sweep`` before skipping a seed, ``leaderboard``, ``publish``,
``check-records``, ``status``) goes through ``read_record`` and ``collect``, so each check exists once. A record is
parsed (strict JSON: ``NaN`` and ``Infinity`` are refused), validated against the JSON Schema, then built into a
``RunRecord`` (which upgrades older schemas and checks the dataclass's keys). A file that fails any step is one
``Problem`` line and is left out; nothing here raises a traceback for a bad file.

``collect`` merges several results directories (or globs). A run id (configuration hash, seed) is counted once:

- the same run id in two files with the same numbers (a backup copy, the same records synced twice) is a
  *duplicate*: counted once, with a warning;
- the same run id with different numbers (two machines that ran the same configuration and seed) is a *conflict*:
  both are left out and flagged, never averaged; which one to publish is the user's decision.

Temporary files of the atomic writer (``.tmp-*``) that are older than ``ORPHAN_AGE_SECONDS`` come from killed
writers (a record is written in milliseconds); readers that may write (``run``, ``sweep``, ``check-records
--clean``) remove them, ``leaderboard`` only reports them.

Reading records imports neither torch nor any plugin.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from glob import glob
from pathlib import Path
from typing import TYPE_CHECKING, Any

from discbench.atomic import TMP_PREFIX, atomic_write_text
from discbench.errors import DiscbenchError
from discbench.keys import Classifier, Term, legacy_term

if TYPE_CHECKING:
    from discbench.config import RunConfig

SCHEMA_VERSION = 3
SCHEMA_PATH = Path(__file__).with_name("record.schema.json")
DEFAULT_RESULTS_DIR = Path("runs")  # where a user's runs go by default, relative to the working directory
PUBLISHED_RESULTS = Path("results") / "runs"  # the records behind the published leaderboard (in a clone)
LABEL_CHARS = 120  # of the label in a record's file name (the record holds the whole label): names stay < 255 bytes
ORPHAN_AGE_SECONDS = 600.0


# -- what a record is ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRecord:
    """One run of one seed: what was configured, what every classifier scored, what it cost, and where it ran.

    Written as JSON (``to_dict``) and read back with ``from_dict``, which checks the keys and upgrades records of
    older schemas. Leaderboards read its fields; they never parse names such as ``exit4`` or ``mi@2``. The schema is
    documented in results/README.md.
    """

    run_id: str
    config_hash: str
    request_hash: str
    label: str
    protocol: str
    dataset: str
    budget: str
    backbone: str
    partner: str | None  # the peer (online) or teacher (offline) backbone; None for one network
    loss: dict[str, Any]  # {"name", "version", "distribution", "distribution_version", "entry_point"} (loss_source)
    seed: int
    baseline: bool  # trained without any distillation term, decided by the protocol from the configuration
    classifiers: tuple[Classifier, ...]
    final_top1: dict[str, float]  # classifier key -> top-1 (%) after the last epoch: the primary metric
    best_top1: dict[str, dict[str, float]]
    final_train_terms: dict[str, float]
    epochs: list[dict[str, Any]]
    timing: dict[str, Any]
    cost: dict[str, Any]
    runtime: dict[str, Any]
    config: dict[str, Any]
    provenance: dict[str, Any]
    teacher: dict[str, Any] | None = None  # offline: teacher_id, backbone, sha256, top1, source, store
    hardware: dict[str, Any] | None = None  # CPU model and vector extensions, GPU, driver, CUDA, threads (``hardware``)
    term_history: dict[str, Any] | None = None  # {"every", "steps", "terms": {term key: [window means]}} (train.py)
    terms: tuple[Term, ...] = ()  # the typed name of every term key above, in the loop's order
    fingerprints: dict[str, Any] | None = None  # {"init": {network: hash}, "data": hash} (discbench.seeding)
    schema: int = SCHEMA_VERSION

    def top1(self, classifier: Classifier) -> float:
        """Final top-1 (%) of ``classifier``."""
        return self.final_top1[classifier.key]

    def last_top1(self, network: str) -> float:
        """Top-1 of ``network``'s own final classifier."""
        return self.final_top1[next(c.key for c in self.classifiers if c.network == network and c.last)]

    @property
    def networks(self) -> list[str]:
        """The evaluated networks, in the protocol's order (``net``; ``net1``, ``net2``; ``student``): those with a
        final classifier (``last``). A classifier without one is recorded but reported in no table (ONE's other
        branches and its ensemble, FRSKD's self-teacher)."""
        return list(dict.fromkeys(c.network for c in self.classifiers if c.last))

    def history(self) -> dict[Term, list[float]]:
        """The term history (window means over training) by typed term; empty when the record has none."""
        keyed = (self.term_history or {}).get("terms") or {}
        return {t: keyed[t.key] for t in self.terms if t.key in keyed}

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                          if f.name not in ("schema", "classifiers", "terms")},
                "classifiers": [dataclasses.asdict(c) for c in self.classifiers],
                "terms": [t.to_dict() for t in self.terms]}

    @classmethod
    def from_dict(cls, data: Any, where: str = "record") -> RunRecord:
        """A record from its JSON form; records of schemas 1 and 2 are upgraded in memory."""
        if not isinstance(data, dict) or data.get("schema") not in (1, 2, SCHEMA_VERSION):
            raise DiscbenchError(f"{where} is not a discbench run record of schema 1, 2 or {SCHEMA_VERSION}")
        if data["schema"] == 1:
            data = _upgrade_v1(data)
        if data["schema"] == 2:
            data = _upgrade_v2(data)
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise DiscbenchError(f"{where} lacks the key '{missing[0]}'; delete it and rerun that seed")
        values = {k: v for k, v in data.items() if k in names}
        values["classifiers"] = tuple(Classifier(**c) for c in data["classifiers"])
        values["terms"] = tuple(Term.from_dict(t) for t in data["terms"])
        return cls(**values)


def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 -> 2: self-distillation records named classifiers ``exit<i>`` of one network and left the baseline
    to be guessed; the configuration they carry decides it now."""

    def rename(table: dict[str, Any]) -> dict[str, Any]:
        return {f"net/{k}": v for k, v in table.items()}

    exits = sorted(int(k.removeprefix("exit")) for k in data["final_top1"])
    out = dict(data, schema=2, request_hash=data["config_hash"], partner=None, teacher=None)
    out["baseline"] = not data["config"]["protocol"]["exits"] and not data["loss"]["name"]
    out["classifiers"] = [{"network": "net", "backbone": data["backbone"], "exit": i, "last": i == exits[-1]}
                          for i in exits]
    out["final_top1"] = rename(data["final_top1"])
    out["best_top1"] = rename(data["best_top1"])
    out["epochs"] = [dict(e, top1=rename(e["top1"])) if "top1" in e else e for e in data["epochs"]]
    out["cost"] = dict(data["cost"], per_exit=rename(data["cost"]["per_exit"]))
    return out


def _upgrade_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 2 -> 3: term keys (``mi@net1.2``) get their typed names (``terms``), read from the keys once here."""
    keys = list(dict.fromkeys([*data["final_train_terms"], *((data.get("term_history") or {}).get("terms") or {})]))
    return dict(data, schema=SCHEMA_VERSION, terms=[legacy_term(k).to_dict() for k in keys])


def loss_source(cfg: RunConfig) -> dict[str, Any]:
    """The record's ``loss``: the registry name ("" for a baseline) and plugin version, the distribution (package)
    that provided the plugin and that distribution's version (built-ins: discbench itself), and its import path
    (``module:Class``, an entry point's value). Records written before these keys existed hold the first two only."""
    if not cfg.loss.name:
        return {"name": "", "version": cfg.loss.version, "distribution": None, "distribution_version": None,
                "entry_point": None}
    from discbench.registry import LOSSES

    source = LOSSES.source(cfg.loss.name)
    return {"name": cfg.loss.name, "version": cfg.loss.version, "distribution": source.distribution,
            "distribution_version": source.distribution_version, "entry_point": source.entry_point}


def new_record(cfg: RunConfig, seed: int, epochs: list[dict], classifiers: list[Classifier], terms: list[Term],
               runtime: dict, cost: dict, timing: dict, teacher: dict | None = None,
               term_history: dict | None = None, fingerprints: dict | None = None) -> RunRecord:
    """Assemble a run record from the training loop's results (``epochs``' terms are keyed by ``Term.key``)."""
    from discbench.machine import hardware, provenance
    from discbench.registry import PROTOCOLS

    last_eval = next(e for e in reversed(epochs) if "top1" in e)
    best = {}
    for name in last_eval["top1"]:
        top, epoch = max((e["top1"][name], e["epoch"]) for e in epochs if "top1" in e)
        best[name] = {"top1": top, "epoch": epoch}
    partner_key = PROTOCOLS.get(cfg.protocol_name).partner
    return RunRecord(
        run_id=f"{cfg.hash}-seed{seed}",
        config_hash=cfg.hash,
        request_hash=cfg.request_hash,
        label=cfg.label,
        protocol=cfg.protocol_name,
        dataset=cfg.dataset.name,
        budget=cfg.budget,
        backbone=cfg.backbone,
        partner=getattr(cfg.protocol, partner_key) if partner_key else None,
        loss=loss_source(cfg),
        seed=seed,
        baseline=cfg.is_baseline,
        classifiers=tuple(classifiers),
        final_top1=last_eval["top1"],
        best_top1=best,
        final_train_terms=epochs[-1]["train_terms"],
        epochs=epochs,
        timing=timing,
        cost=cost,
        runtime=runtime,
        config=cfg.to_dict(),
        provenance=provenance(),
        teacher=teacher,
        hardware=hardware(runtime["device"]),
        term_history=term_history,
        terms=tuple(terms),
        fingerprints=fingerprints,
    )


# -- where records live ----------------------------------------------------------------------------------------------
def run_folder(results_dir: Path, cfg: RunConfig) -> Path:
    """``<dir>/<dataset>/<budget>/<protocol>``: where the records and side files of ``cfg`` live."""
    return Path(results_dir) / cfg.dataset.name / cfg.budget / cfg.protocol_name


def record_path(results_dir: Path, cfg: RunConfig, seed: int) -> Path:
    """``<dir>/<dataset>/<budget>/<protocol>/<label>__<backbone>__<hash>__seed<k>.json``."""
    label = re.sub(r"[^A-Za-z0-9_.+-]+", "-", cfg.label).strip("-")[:LABEL_CHARS].strip("-") or "run"
    backbone = cfg.backbone.replace(":", "+")  # tv:NAME, timm:NAME: no ':' in file names (Windows, URLs)
    name = f"{label}__{backbone}__{cfg.hash}__seed{seed}.json"
    return run_folder(results_dir, cfg) / name


def find_record(results_dir: Path, cfg: RunConfig, seed: int) -> Path | None:
    """An existing record of the same configuration hash and seed, whatever its label."""
    root = run_folder(results_dir, cfg)
    return next(iter(sorted(root.glob(f"*__{cfg.hash}__seed{seed}.json"))), None) if root.is_dir() else None


@dataclass(frozen=True)
class SeedFiles:
    """The side files of one (configuration, seed), beside its record: they share the label-free stem
    ``<request hash>__seed<k>``."""

    stem: Path

    @property
    def claim(self) -> Path:
        """Who trains the seed (``discbench.claims``)."""
        return self.stem.with_name(self.stem.name + ".claim")

    @property
    def failed(self) -> Path:
        """Why its last attempt failed (``discbench.claims.write_failure``)."""
        return self.stem.with_name(self.stem.name + ".failed")

    @property
    def checkpoint(self) -> Path:
        """Its newest checkpoint (``discbench.checkpoint``; ``.prev`` beside it)."""
        return self.stem.with_name(self.stem.name + ".ckpt")


def seed_files(results_dir: Path, cfg: RunConfig, seed: int) -> SeedFiles:
    return SeedFiles(run_folder(results_dir, cfg) / f"{cfg.request_hash}__seed{seed}")


def check_writable(path: Path) -> None:
    """Before training: ``path``'s directory can be written, and its name is not too long; a one-line
    ``DiscbenchError`` otherwise.

    The probe (a temporary file, written and removed) goes into the deepest directory of ``path`` that exists. No
    directory is created or removed here: concurrent sweeps on one results directory create the same folders, and a
    folder removed by one process's probe vanished under another's claim (``discbench.claims`` creates the folders
    when it claims the first seed, with its own one-line error)."""
    path = Path(path)
    existing = next((p for p in path.parents if p.exists()), Path("."))
    limit = 255
    with contextlib.suppress(OSError, ValueError):
        limit = os.pathconf(existing, "PC_NAME_MAX")
    if len(path.name.encode()) > limit:
        raise DiscbenchError(f"record file name {path.name!r} is longer than {limit} bytes; shorten --label")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=TMP_PREFIX + "probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DiscbenchError(f"cannot write records to {path.parent}: {exc.strerror or exc}; pass a writable "
                             f"--results-dir") from exc


# -- writing ---------------------------------------------------------------------------------------------------------
def strict_json(data: Any) -> str:
    """``data`` as strict JSON (no NaN or Infinity: other readers reject them), or a one-line error naming the first
    non-finite value."""
    try:
        return json.dumps(data, indent=1, allow_nan=False) + "\n"
    except ValueError:
        raise DiscbenchError(f"the record holds a non-finite number at {_first_non_finite(data)}; nothing was "
                             f"written") from None


def _first_non_finite(data: Any, where: str = "") -> str:
    if isinstance(data, float) and not math.isfinite(data):
        return where or "(top level)"
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for key, value in items:
        hit = _first_non_finite(value, f"{where}/{key}" if where else str(key))
        if hit:
            return hit
    return ""


def write_record(path: Path, record: RunRecord) -> None:
    atomic_write_text(path, strict_json(record.to_dict()))


# -- reading ---------------------------------------------------------------------------------------------------------
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

    def edited(self) -> list[Problem]:
        """The records whose configuration no longer hashes to their ``config_hash`` (edited after the run, or
        written before harness version 2), one problem each; records without a configuration are not checked."""
        from discbench.config import config_digest

        return [Problem(self.sources[r.run_id][0], f"config_hash {r.config_hash} is not the hash of its "
                        f"configuration ({config_digest(r.config)}): the configuration was edited after the run, or "
                        f"the record predates harness version 2")
                for r in self.records if r.config and config_digest(r.config) != r.config_hash]

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
    if data.get("schema") not in (1, 2, SCHEMA_VERSION):
        raise InvalidRecord(f"not a discbench run record of schema 1, 2 or {SCHEMA_VERSION} (schema: "
                            f"{data.get('schema')!r}); records of other schemas are left out")
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
    except RecursionError:
        raise InvalidRecord(f"{where}: JSON nested too deeply to be a record") from None
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
