"""Run records: one JSON file per (configuration, seed), written atomically. Schema: results/README.md.

Reading records (``load_records``, leaderboards) imports neither torch nor any plugin; ``provenance`` imports torch
and torchvision when a run writes its record."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discbench
from discbench.classifier import Classifier
from discbench.config import RunConfig
from discbench.errors import DiscbenchError
from discbench.registry import LOSSES, PROTOCOLS

SCHEMA_VERSION = 2
DEFAULT_RESULTS_DIR = Path("results") / "runs"


def _git_commit() -> str | None:
    """The commit of the discbench checkout (with ``-dirty`` when it has local changes), or None."""
    repo = Path(discbench.__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def provenance() -> dict[str, Any]:
    import torch
    import torchvision

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "discbench": discbench.__version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


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
    schema: int = SCHEMA_VERSION

    def last_top1(self, network: str) -> float:
        """Top-1 of ``network``'s own final classifier."""
        return self.final_top1[next(c.key for c in self.classifiers if c.network == network and c.last)]

    @property
    def networks(self) -> list[str]:
        """The evaluated networks, in the protocol's order (``net``; ``net1``, ``net2``; ``student``)."""
        return list(dict.fromkeys(c.network for c in self.classifiers))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                          if f.name not in ("schema", "classifiers")},
                "classifiers": [dataclasses.asdict(c) for c in self.classifiers]}

    @classmethod
    def from_dict(cls, data: Any, where: str = "record") -> RunRecord:
        """A record from its JSON form; schema 1 (self-distillation, keys ``exit<i>``) is upgraded in memory."""
        if not isinstance(data, dict) or data.get("schema") not in (1, SCHEMA_VERSION):
            raise DiscbenchError(f"{where} is not a discbench run record of schema 1 or {SCHEMA_VERSION}")
        if data["schema"] == 1:
            data = _upgrade_v1(data)
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise DiscbenchError(f"{where} lacks the key '{missing[0]}'; delete it and rerun that seed")
        values = {k: v for k, v in data.items() if k in names}
        values["classifiers"] = tuple(Classifier(**c) for c in data["classifiers"])
        return cls(**values)


def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 -> 2: self-distillation records named classifiers ``exit<i>`` of one network and left the baseline
    to be guessed; the configuration they carry decides it now."""

    def rename(table: dict[str, Any]) -> dict[str, Any]:
        return {f"net/{k}": v for k, v in table.items()}

    exits = sorted(int(k.removeprefix("exit")) for k in data["final_top1"])
    out = dict(data, schema=SCHEMA_VERSION, request_hash=data["config_hash"], partner=None, teacher=None)
    out["baseline"] = not data["config"]["protocol"]["exits"] and not data["loss"]["name"]
    out["classifiers"] = [{"network": "net", "backbone": data["backbone"], "exit": i, "last": i == exits[-1]}
                          for i in exits]
    out["final_top1"] = rename(data["final_top1"])
    out["best_top1"] = rename(data["best_top1"])
    out["epochs"] = [dict(e, top1=rename(e["top1"])) if "top1" in e else e for e in data["epochs"]]
    out["cost"] = dict(data["cost"], per_exit=rename(data["cost"]["per_exit"]))
    return out


def loss_source(cfg: RunConfig) -> dict[str, Any]:
    """The record's ``loss``: the registry name ("" for a baseline) and plugin version, the distribution (package)
    that provided the plugin and that distribution's version (built-ins: discbench itself), and its import path
    (``module:Class``, an entry point's value). Records written before these keys existed hold the first two only."""
    if not cfg.loss.name:
        return {"name": "", "version": cfg.loss.version, "distribution": None, "distribution_version": None,
                "entry_point": None}
    source = LOSSES.source(cfg.loss.name)
    return {"name": cfg.loss.name, "version": cfg.loss.version, "distribution": source.distribution,
            "distribution_version": source.distribution_version, "entry_point": source.entry_point}


def new_record(cfg: RunConfig, seed: int, epochs: list[dict], classifiers: list[Classifier], runtime: dict,
               cost: dict, timing: dict, teacher: dict | None = None) -> RunRecord:
    """Assemble a run record from the training loop's results."""
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
    )


LABEL_CHARS = 120  # of the label in a record's file name (the record holds the whole label): names stay < 255 bytes


def check_writable(path: Path) -> None:
    """Before training: ``path``'s directory can be created and written, and its name is not too long; a one-line
    ``DiscbenchError`` otherwise (a probe file is written and removed)."""
    path = Path(path)
    limit = 255
    with contextlib.suppress(OSError, ValueError):
        limit = os.pathconf(next((p for p in path.parents if p.is_dir()), Path(".")), "PC_NAME_MAX")
    if len(path.name.encode()) > limit:
        raise DiscbenchError(f"record file name {path.name!r} is longer than {limit} bytes; shorten --label")
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=".tmp-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DiscbenchError(f"cannot write records to {path.parent}: {exc.strerror or exc}; pass a writable "
                             f"--results-dir") from exc
    finally:
        for directory in created:  # deepest first: leave the tree as it was (the record's writer makes them again)
            with contextlib.suppress(OSError):
                directory.rmdir()


def record_path(results_dir: Path, cfg: RunConfig, seed: int) -> Path:
    """``<dir>/<dataset>/<budget>/<protocol>/<label>__<backbone>__<hash>__seed<k>.json``."""
    label = re.sub(r"[^A-Za-z0-9_.+-]+", "-", cfg.label).strip("-")[:LABEL_CHARS].strip("-") or "run"
    backbone = cfg.backbone.replace(":", "+")  # tv:NAME, timm:NAME: no ':' in file names (Windows, URLs)
    name = f"{label}__{backbone}__{cfg.hash}__seed{seed}.json"
    return Path(results_dir) / cfg.dataset.name / cfg.budget / cfg.protocol_name / name


def find_record(results_dir: Path, cfg: RunConfig, seed: int) -> Path | None:
    """An existing record of the same configuration hash and seed, whatever its label."""
    root = Path(results_dir) / cfg.dataset.name / cfg.budget / cfg.protocol_name
    return next(iter(sorted(root.glob(f"*__{cfg.hash}__seed{seed}.json"))), None) if root.is_dir() else None


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file in the same directory, then rename it into place: a killed writer
    never leaves half a file and concurrent writers never interleave."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(path: Path, record: RunRecord) -> None:
    try:
        text = json.dumps(record.to_dict(), indent=1, allow_nan=False)  # strict JSON: a NaN is never a result
    except ValueError as exc:
        raise DiscbenchError(f"record {path.name} holds a non-finite number ({exc}); it was not written") from exc
    atomic_write_text(path, text + "\n")


def load_records(results_dir: Path) -> list[RunRecord]:
    """Every record under ``results_dir``; a file that is not a record raises with its path."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise DiscbenchError(f"results directory {results_dir} does not exist; run 'discbench run' first or pass "
                             f"--results-dir")
    records = []
    for path in sorted(results_dir.rglob("*.json")):
        if path.name.startswith(".tmp-"):
            continue
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DiscbenchError(f"{path} is not valid JSON ({exc}); delete it and rerun that seed") from exc
        records.append(RunRecord.from_dict(record, str(path)))
    return records
