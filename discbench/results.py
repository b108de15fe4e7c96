"""Run records: one JSON file per (configuration, seed), written atomically. Schema: results/README.md.

Reading records (``discbench.records``, leaderboards) imports neither torch nor any plugin; ``provenance`` imports torch
and torchvision when a run writes its record."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

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


def _distribution_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (None when absent), read without importing it."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


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
        "timm": _distribution_version("timm"),  # the weights and layouts of timm: backbones
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
    hardware: dict[str, Any] | None = None  # CPU model and vector extensions, GPU, driver, CUDA, threads (``hardware``)
    term_history: dict[str, Any] | None = None  # {"every", "steps", "terms": {term: [window means]}} (train.py)
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
               cost: dict, timing: dict, teacher: dict | None = None,
               term_history: dict | None = None) -> RunRecord:
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
        hardware=hardware(runtime["device"]),
        term_history=term_history,
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


VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")


def _cpuinfo() -> tuple[str | None, list[str]]:
    """CPU model name and its vector extensions (the ``flags`` / ``Features`` line of /proc/cpuinfo, in the order of
    ``VECTOR_FLAGS``); ``platform.processor()`` and no flags where /proc/cpuinfo does not exist."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or None, []
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model is None:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model or platform.processor() or None, [f for f in VECTOR_FLAGS if f in flags]


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if out else None


def hardware(device: str) -> dict[str, Any]:
    """What the numbers of a run depend on beyond the software versions (``provenance``): the CPU model and its vector
    extensions, torch's CPU kernel capability, logical CPUs, torch's thread count; on CUDA the GPU's name, the
    driver, and the CUDA and cuDNN versions torch was built with."""
    import torch

    model, flags = _cpuinfo()
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        capability = None
    return {
        "device": str(device),
        "cpu_model": model,
        "cpu_vector_extensions": flags,
        "cpu_capability": capability,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu_name": torch.cuda.get_device_name(torch.device(device)) if cuda else None,
        "gpu_driver": _nvidia_driver() if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
    }


def reset_peak_memory(device) -> None:
    """Start counting CUDA's peak allocation for this run (CPU: the process's peak RSS cannot be reset)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device) -> dict[str, Any]:
    """The run's peak memory: CUDA ``max_memory_allocated`` since ``reset_peak_memory``; on CPU the process's peak
    resident set size (``getrusage``), which includes everything the process did before (earlier seeds of the same
    command, the dataset), labelled as such."""
    import torch

    if torch.device(device).type == "cuda":
        return {"kind": "cuda_max_memory_allocated", "bytes": int(torch.cuda.max_memory_allocated(device))}
    import resource

    scale = 1 if platform.system() == "Darwin" else 1024  # Linux reports KiB, macOS bytes
    return {"kind": "cpu_process_peak_rss", "bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)}


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


def atomic_write(path: Path, write: Callable[[IO], Any], *, binary: bool = False,
                 before_replace: Callable[[], Any] | None = None) -> None:
    """``write(f)`` into a temporary file in ``path``'s directory, fsync it, run ``before_replace`` (a checkpoint
    rotates the previous one aside there), then rename it into place: a killed writer never leaves half a file,
    concurrent writers never interleave, and a failure removes the temporary file and leaves ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
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

