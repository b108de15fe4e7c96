"""Run records: one JSON file per (configuration, seed), written atomically. Schema: results/README.md."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torchvision

import discbench
from discbench.config import RunConfig
from discbench.errors import DiscbenchError

SCHEMA_VERSION = 1
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


def new_record(cfg: RunConfig, seed: int, epochs: list[dict], runtime: dict, cost: dict, timing: dict) -> dict:
    """Assemble a run record from the training loop's results."""
    last_eval = next(e for e in reversed(epochs) if "top1" in e)
    best = {}
    for name in last_eval["top1"]:
        top, epoch = max((e["top1"][name], e["epoch"]) for e in epochs if "top1" in e)
        best[name] = {"top1": top, "epoch": epoch}
    return {
        "schema": SCHEMA_VERSION,
        "run_id": f"{cfg.hash}-seed{seed}",
        "config_hash": cfg.hash,
        "label": cfg.label,
        "protocol": cfg.protocol_name,
        "dataset": cfg.dataset.name,
        "budget": cfg.budget,
        "backbone": cfg.backbone,
        "loss": {"name": cfg.loss.name, "version": cfg.loss.version},
        "seed": seed,
        "final_top1": last_eval["top1"],
        "best_top1": best,
        "final_train_terms": epochs[-1]["train_terms"],
        "epochs": epochs,
        "timing": timing,
        "cost": cost,
        "runtime": runtime,
        "config": cfg.to_dict(),
        "provenance": provenance(),
    }


def record_path(results_dir: Path, cfg: RunConfig, seed: int) -> Path:
    """``<dir>/<dataset>/<budget>/<protocol>/<label>__<backbone>__<hash>__seed<k>.json``."""
    label = re.sub(r"[^A-Za-z0-9_.+-]+", "-", cfg.label).strip("-") or "run"
    name = f"{label}__{cfg.backbone}__{cfg.hash}__seed{seed}.json"
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


def write_record(path: Path, record: dict) -> None:
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def load_records(results_dir: Path) -> list[dict]:
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
        if not isinstance(record, dict) or record.get("schema") != SCHEMA_VERSION:
            raise DiscbenchError(f"{path} is not a discbench run record of schema {SCHEMA_VERSION}")
        records.append(record)
    return records
