"""The teacher store: pretrained networks that offline students are distilled from, verified before every load.

A teacher is a directory ``<store>/<teacher id>/`` with ``weights.pt`` (the backbone's state dict, saved with
``torch.save``) and ``manifest.json`` (what it is: backbone, dataset, classes, the configuration it was trained
with, its test top-1, the sha256 of ``weights.pt``, versions). Its id is ``<config hash>-seed<k>`` for a teacher
trained here (``discbench train-teacher``: the ``none`` baseline, one plain network, with the offline recipe) and
``repdistiller-<sha256 prefix>`` for an imported RepDistiller checkpoint (``discbench teacher import``).

Loading checks, in order: the manifest matches the student's dataset and class count, the file's sha256 matches
the manifest (and the student configuration's, when it names one), then ``torch.load(weights_only=True)`` (a
pickle that would run code is refused, never executed) and a strict ``load_state_dict``. Every failure is one line.
The store lives in ``$DISCBENCH_TEACHERS``, else ``$XDG_CACHE_HOME/discbench/teachers``, else
``~/.cache/discbench/teachers``; ``--teacher-store`` overrides it, and records carry the store's path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from discbench.api import Backbone
from discbench.config import Bench, RunConfig, TeacherRef, project_path
from discbench.errors import DiscbenchError
from discbench.ranges import Range, is_number
from discbench.registry import BACKBONES

IMPORTED_BUDGET = "imported"


def default_store() -> Path:
    env = os.environ.get("DISCBENCH_TEACHERS")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "discbench" / "teachers"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DiscbenchError(f"cannot read {path}: {exc.strerror or exc}; check its permissions, or re-create the "
                             f"teacher (discbench train-teacher / teacher import)") from None
    return digest.hexdigest()


def teacher_config(bench: Bench, backbone: str, dataset: str, budget: str,
                   overrides: tuple[str, ...] = ()) -> RunConfig:
    """The configuration a teacher is trained with: the ``none`` baseline (one plain network) under the offline
    students' recipe of ``budget``, with ``overrides`` (``train-teacher --set``)."""
    return bench.resolve("none", backbone, dataset, budget, protocol="self", overrides=overrides,
                         recipe_protocol="offline", label=f"teacher {backbone}")


@dataclass
class Teacher:
    """A verified teacher, ready for a protocol: the network with its weights, and its manifest."""

    network: Backbone
    manifest: dict[str, Any]
    store: Path

    def summary(self) -> dict[str, Any]:
        """What a student's record says of its teacher."""
        keys = ("teacher_id", "backbone", "dataset", "budget", "seed", "sha256", "top1", "source")
        return {**{k: self.manifest.get(k) for k in keys}, "store": str(self.store)}


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


TOP1 = Range(ge=0, le=100)
MANIFEST_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "teacher_id": ("a string", _text),
    "backbone": ("a string", _text),
    "dataset": ("a string", _text),
    "budget": ("a string", _text),
    "source": ("a string", lambda v: isinstance(v, str)),
    "num_classes": ("an integer >= 1", lambda v: is_number(v, integer=True) and v >= 1),
    "in_channels": ("an integer >= 1", lambda v: is_number(v, integer=True) and v >= 1),
    "seed": ("an integer >= 0", lambda v: is_number(v, integer=True) and v >= 0),
    "top1": ("a top-1 in [0, 100] or null", lambda v: v is None or (is_number(v) and TOP1.contains(v))),
    "sha256": ("64 hex digits", lambda v: isinstance(v, str) and len(v) == 64
               and all(c in "0123456789abcdef" for c in v)),
}


STORE_AGAIN = "delete the teacher's folder and store it again"


def check_manifest(manifest: Any, where: str, fix: str = STORE_AGAIN) -> dict[str, Any]:
    """``manifest`` if it has every field a teacher needs, each of the right type; else a one-line error."""
    if not isinstance(manifest, dict):
        raise DiscbenchError(f"{where} is not a teacher manifest (a JSON object); {fix}")
    for key, (what, ok) in MANIFEST_FIELDS.items():
        if key not in manifest:
            raise DiscbenchError(f"{where} has no '{key}'; {fix}")
        if not ok(manifest[key]):
            raise DiscbenchError(f"{where}: '{key}' must be {what}, got {manifest[key]!r}; {fix}")
    return manifest


class TeacherStore:
    """The directory of stored teachers (see the module docstring)."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root else default_store()
        self.invalid: list[str] = []  # what manifests() skipped, one line each

    def _check_root(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise DiscbenchError(f"the teacher store {self.root} is a file, not a directory; pass --teacher-store "
                                 f"DIR or set DISCBENCH_TEACHERS to a directory")

    def check_writable(self) -> None:
        """Fail in one line, before anything trains, when a teacher could not be stored here."""
        self._check_root()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            Path(tempfile.mkdtemp(dir=self.root, prefix=".tmp-")).rmdir()
        except OSError as exc:
            raise DiscbenchError(f"cannot store teachers in {self.root} ({exc.strerror or exc}); fix its "
                                 f"permissions or pass another --teacher-store") from exc

    def manifests(self) -> list[dict[str, Any]]:
        """Every valid teacher manifest, sorted by backbone, dataset, budget and seed; each invalid one is skipped
        and described in ``self.invalid``."""
        self._check_root()
        out, self.invalid = [], []
        for path in sorted(self.root.glob("*/manifest.json")) if self.root.is_dir() else []:
            try:
                out.append(self._read(path))
            except DiscbenchError as exc:
                self.invalid.append(str(exc))
        return sorted(out, key=lambda m: (m["backbone"], m["dataset"], m["budget"], m["seed"], m["teacher_id"]))

    def manifest(self, teacher_id: str) -> dict[str, Any] | None:
        self._check_root()
        path = self.root / teacher_id / "manifest.json"
        return self._read(path) if path.is_file() else None

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            reason = "too deeply nested" if isinstance(exc, RecursionError) else str(exc)
            raise DiscbenchError(f"{path} is not readable JSON ({reason}); delete {path.parent} and store the "
                                 f"teacher again") from exc
        return check_manifest(data, str(path))

    # -- finding --------------------------------------------------------------------------------------------------
    def find(self, bench: Bench, cfg: RunConfig) -> dict[str, Any]:
        """The manifest of the teacher an offline configuration names (``protocol.teacher``, ``teacher_seed``,
        ``teacher_budget``); a missing teacher is an error with the command that trains it."""
        p = cfg.protocol
        budget = p.teacher_budget or cfg.budget
        where = f"teacher '{p.teacher}' (seed {p.teacher_seed}, budget '{budget}') for {cfg.dataset.name}"
        if budget == IMPORTED_BUDGET:
            found = [m for m in self.manifests() if m["budget"] == IMPORTED_BUDGET and m["backbone"] == p.teacher
                     and m["dataset"] == cfg.dataset.name and m["seed"] == p.teacher_seed]
            if not found:
                raise DiscbenchError(f"no imported {where} in {self.root}; import one with 'discbench teacher "
                                     f"import CHECKPOINT --backbone {p.teacher} --dataset {cfg.dataset.name}'")
            return found[0]
        tcfg = teacher_config(bench, p.teacher, cfg.dataset.name, budget)
        manifest = self.manifest(f"{tcfg.hash}-seed{p.teacher_seed}")
        if manifest is None:
            found = project_path()
            extra = "" if bench.project is None or (found and found.resolve() == bench.project.resolve()) \
                else f" --config {bench.project}"
            extra += "" if self.root == default_store() else f" --teacher-store {self.root}"
            raise DiscbenchError(f"no stored {where} in {self.root}; train it with 'discbench train-teacher "
                                 f"--backbone {p.teacher} --dataset {cfg.dataset.name} --budget {budget} --seed "
                                 f"{p.teacher_seed}{extra}'")
        return manifest

    def attach(self, bench: Bench, cfg: RunConfig) -> RunConfig:
        """``cfg`` with the identity of its teacher (part of its hash)."""
        m = self.find(bench, cfg)
        ref = TeacherRef(backbone=m["backbone"], dataset=m["dataset"], num_classes=m["num_classes"],
                         teacher_id=m["teacher_id"], sha256=m["sha256"])
        return dataclasses.replace(cfg, teacher=ref)

    # -- loading --------------------------------------------------------------------------------------------------
    def load(self, cfg: RunConfig, device: torch.device | str = "cpu") -> Teacher:
        """The verified teacher of ``cfg`` (resolved by ``attach``) on ``device``."""
        ref = cfg.teacher
        if ref is None:
            raise DiscbenchError("this configuration names no teacher; resolve it with TeacherStore.attach")
        manifest = self.manifest(ref.teacher_id)
        if manifest is None:
            raise DiscbenchError(f"teacher {ref.teacher_id} is not in {self.root} (was the store moved? pass "
                                 f"--teacher-store)")
        ds = cfg.dataset
        for key, want in (("backbone", ref.backbone), ("dataset", ds.name), ("num_classes", ds.num_classes),
                          ("in_channels", ds.channels)):
            if manifest.get(key) != want:
                raise DiscbenchError(f"teacher {ref.teacher_id} was trained for {key} = {manifest.get(key)!r}, not "
                                     f"{want!r}; pick a teacher for this dataset (discbench teacher list)")
        path = self.root / ref.teacher_id / "weights.pt"
        if not path.is_file():
            raise DiscbenchError(f"{path} is missing; delete {path.parent} and store the teacher again")
        digest = sha256_of(path)
        if digest != manifest["sha256"] or digest != ref.sha256:
            raise DiscbenchError(f"{path} has sha256 {digest[:12]}..., its manifest says {manifest['sha256'][:12]}...: "
                                 f"the file was changed or truncated; delete {path.parent} and store the teacher again")
        state = load_state_dict_file(path)
        network = BACKBONES.get(ref.backbone)(in_channels=ds.channels, num_classes=ds.num_classes,
                                              image_size=ds.image_size)
        load_into(network, state, str(path))
        return Teacher(network=network.to(device), manifest=manifest, store=self.root)

    # -- storing --------------------------------------------------------------------------------------------------
    def save(self, network: nn.Module, manifest: dict[str, Any], force: bool = False) -> Path:
        """Write ``network``'s state dict and ``manifest`` (completed with the weights' sha256) as one directory,
        atomically: a killed writer leaves no half-stored teacher."""
        check_manifest({**manifest, "sha256": "0" * 64}, f"teacher {manifest.get('teacher_id')}",
                       "nothing was stored (an imported checkpoint's 'accuracy' must be a top-1 in percent)")
        self._check_root()
        target = self.root / manifest["teacher_id"]
        if target.exists() and not force:
            raise DiscbenchError(f"teacher {manifest['teacher_id']} is already stored in {self.root} (--force "
                                 f"replaces it)")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".tmp-"))
        try:
            state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
            torch.save(state, tmp / "weights.pt")
            manifest = {**manifest, "sha256": sha256_of(tmp / "weights.pt"),
                        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target


def load_checkpoint(path: Path | str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only; a pickle that would construct
    other objects (and run their code) is refused in one line, as is a file that is not a checkpoint."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError on a truncated zip, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DiscbenchError(f"{path} is not a loadable state dict (torch.load weights_only=True refused it: "
                             f"{first[:160]})") from exc


def load_state_dict_file(path: Path | str) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file (``load_checkpoint``); RepDistiller's ``{"model": ...}`` is unwrapped."""
    obj = load_checkpoint(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # RepDistiller: {"model": ..., "accuracy": ...}
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DiscbenchError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return obj


def load_into(network: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``load_state_dict(strict=True)``, with the first missing, unexpected or mis-shaped key as a one-line error."""
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shaped:
        what = (f"lacks '{missing[0]}'" if missing else f"has the unexpected key '{unexpected[0]}'" if unexpected
                else f"gives '{shaped[0]}' shape {tuple(state[shaped[0]].shape)}, not {tuple(own[shaped[0]].shape)}")
        raise DiscbenchError(f"{where} does not fit {type(network).__name__}: it {what}")
    network.load_state_dict(state, strict=True)


def import_repdistiller(bench: Bench, checkpoint: Path, backbone: str, dataset: str, seed: int, store: TeacherStore,
                        force: bool = False) -> Path:
    """Store a RepDistiller CIFAR checkpoint (``train_teacher.py``'s ``{"model": state_dict, "accuracy": ...}``) as
    the teacher ``backbone`` for ``dataset``, budget ``imported``: its keys are mapped onto discbench's backbone by
    the backbone's ``from_repdistiller`` and loaded strictly. Its top-1 is the checkpoint's own ``accuracy`` (what
    RepDistiller measured on the test split), or unknown."""
    cls = BACKBONES.get(backbone)
    if not hasattr(cls, "from_repdistiller"):
        able = [n for n in BACKBONES.names() if hasattr(BACKBONES.get(n), "from_repdistiller")]
        raise DiscbenchError(f"backbone '{backbone}' has no RepDistiller counterpart; importable: {', '.join(able)}")
    if not Path(checkpoint).is_file():
        raise DiscbenchError(f"checkpoint {checkpoint} does not exist")
    ds = bench.resolve("none", backbone, dataset, "paper").dataset
    raw = load_checkpoint(checkpoint)
    state = load_state_dict_file(checkpoint)
    network = cls(in_channels=ds.channels, num_classes=ds.num_classes, image_size=ds.image_size)
    load_into(network, network.from_repdistiller(state), str(checkpoint))
    accuracy = raw.get("accuracy") if isinstance(raw, dict) else None
    scalar = isinstance(accuracy, int | float | torch.Tensor) and torch.as_tensor(accuracy).numel() == 1
    top1 = float(accuracy) if scalar else None
    digest = sha256_of(checkpoint)
    manifest = {"teacher_id": f"repdistiller-{backbone}-{digest[:16]}", "backbone": backbone, "dataset": dataset,
                "num_classes": ds.num_classes, "in_channels": ds.channels, "image_size": ds.image_size,
                "budget": IMPORTED_BUDGET, "seed": seed, "top1": top1, "source": "repdistiller",
                "checkpoint": {"path": str(Path(checkpoint).resolve()), "sha256": digest,
                               "epoch": raw.get("epoch") if isinstance(raw, dict) else None},
                "config_hash": None, "config": None}
    return store.save(network, manifest, force=force)
