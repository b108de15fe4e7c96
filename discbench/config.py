"""bench.toml -> frozen, type-checked, hashed run configurations.

A run resolves five sections: ``dataset``, ``recipe`` (the budget, with per-dataset overrides), ``protocol``,
``loss`` (``beta`` plus the plugin's hyper-parameters) and ``runtime``. ``--set section.key=value`` overrides one
resolved value; values are parsed as TOML literals and checked against the field's type. The resolved configuration
(without its label) is hashed; the hash and the seed name the run.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from discbench.errors import DiscbenchError
from discbench.ranges import FINITE, Range, within
from discbench.registry import BACKBONES, LOSSES, PROTOCOLS, unknown_name_message

SECTIONS = ("dataset", "recipe", "protocol", "loss", "runtime")


@dataclass(frozen=True)
class DatasetConfig:
    """A dataset's shape, normalisation and augmentation (bench.toml ``[datasets.<name>]``)."""

    name: str
    layout: str  # loader registered in discbench.data: idx | cifar-pickle | imagefolder-resident | imagefolder
    channels: int = field(metadata=within(ge=1))
    image_size: int = field(metadata=within(ge=1))
    num_classes: int = field(metadata=within(ge=2))
    mean: tuple[float, ...] = field(metadata=within(min_len=1))
    std: tuple[float, ...] = field(metadata=within(gt=0, min_len=1))
    crop_padding: int = field(metadata=within(ge=0))
    flip: bool

    def problems(self) -> list[tuple[str, Any, str]]:
        """Constraints between fields: (key, value, what is wrong)."""
        return [(key, getattr(self, key), f"must have one value per channel ({self.channels})")
                for key in ("mean", "std") if len(getattr(self, key)) != self.channels]


@dataclass(frozen=True)
class RecipeConfig:
    """An optimisation budget: SGD with a step schedule (bench.toml ``[recipes.<budget>]``)."""

    epochs: int = field(metadata=within(ge=1))
    batch_size: int = field(metadata=within(ge=1))
    lr: float = field(metadata=within(gt=0))
    momentum: float = field(metadata=within(ge=0, lt=1))
    nesterov: bool
    weight_decay: float = field(metadata=within(ge=0))
    milestones: tuple[int, ...] = field(metadata=within(ge=1))
    gamma: float = field(metadata=within(gt=0, le=1))
    train_subset: int = field(metadata=within(ge=0))  # 0: the whole split
    test_subset: int = field(metadata=within(ge=0))
    eval_every: int = field(metadata=within(ge=1))
    eval_batch_size: int = field(metadata=within(ge=1))

    def problems(self) -> list[tuple[str, Any, str]]:
        """Constraints between fields: (key, value, what is wrong)."""
        m = self.milestones
        if any(b <= a for a, b in zip(m, m[1:], strict=False)) or (m and m[-1] >= self.epochs):
            return [("milestones", list(m), f"must be strictly increasing epochs below epochs ({self.epochs})")]
        return []


@dataclass(frozen=True)
class RuntimeConfig:
    """Device switches (bf16 autocast and compile on CUDA only), recorded with their effective values."""

    amp_bf16: bool
    channels_last: bool
    compile: bool


@dataclass(frozen=True)
class LossConfig:
    """The discrepancy of a run: registry name ("" for none), plugin version, weight beta and hyper-parameters."""

    name: str
    version: int
    beta: float
    hparams: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TeacherRef:
    """The identity of a stored teacher, part of an offline student's configuration (and so of its hash).

    ``teacher_id`` is ``<teacher config hash>-seed<k>`` (or ``repdistiller-<backbone>-<sha256 prefix>``);
    ``sha256`` is the digest of its weights file, verified before every load (``discbench.teachers``).
    """

    backbone: str
    dataset: str
    num_classes: int
    teacher_id: str
    sha256: str


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's numbers, except the seed."""

    label: str
    protocol_name: str
    backbone: str
    budget: str
    dataset: DatasetConfig
    recipe: RecipeConfig
    protocol: Any  # the protocol's own frozen Config dataclass
    loss: LossConfig
    runtime: RuntimeConfig
    teacher: TeacherRef | None = None  # resolved from the teacher store for protocols that need one

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["loss"]["hparams"] = dict(sorted(self.loss.hparams.items()))
        if self.teacher is None:
            out.pop("teacher")  # configurations without a teacher hash as they did before the field existed
        return out

    @staticmethod
    def _digest(payload: dict[str, Any]) -> str:
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def hash(self) -> str:
        """16 hex digits of the SHA-256 of the canonical JSON of the configuration, without its label (with the
        teacher's identity, when there is one)."""
        payload = self.to_dict()
        payload.pop("label")
        return self._digest(payload)

    @property
    def request_hash(self) -> str:
        """The hash of what was asked for, before a teacher was looked up: suites find their records by it (a
        leaderboard can be rendered without the teacher store). Equal to ``hash`` for runs without a teacher."""
        payload = self.to_dict()
        payload.pop("label")
        payload.pop("teacher", None)
        return self._digest(payload)

    @property
    def is_baseline(self) -> bool:
        """Whether this run trains without any distillation term (its protocol decides)."""
        return PROTOCOLS.get(self.protocol_name).is_baseline(self)


# -- typed construction ----------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the type ``tp`` (int, float, bool, str, tuple[X, ...]); ints widen to floats."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return coerce(value, arg, where)
            except DiscbenchError:
                pass
        raise DiscbenchError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise DiscbenchError(f"{where}: expected a list of {_type_name(item)}, got {value!r}")
        return tuple(coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is type(None):
        if value is None:
            return None
        raise DiscbenchError(f"{where}: expected none, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise DiscbenchError(f"{where}: expected {tp.__name__}, got {value!r}")
    if not isinstance(value, tp):
        raise DiscbenchError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def unknown_key_message(where: str, key: str, valid: Sequence[str]) -> str:
    """``recipe 'smoke': unknown key 'epoch' (did you mean 'epochs'?); valid keys: ...`` (one line)."""
    close = difflib.get_close_matches(key, valid, n=2, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return f"{where}: unknown key '{key}'{hint}; valid keys: {', '.join(valid)}"


def out_of_range(where: str, key: str, value: Any, problem: str, section: str | None) -> DiscbenchError:
    """``recipe 'smoke': epochs = 0 must be >= 1; fix it in bench.toml or with --set recipe.epochs=...``"""
    fix = f"; fix it in the configuration file or with --set {section}.{key}=..." if section else ""
    shown = list(value) if isinstance(value, tuple) else value
    return DiscbenchError(f"{where}: {key} = {shown!r} {problem}{fix}")


def check_ranges(values: Mapping[str, Any], ranges: Mapping[str, Range], where: str, section: str | None) -> None:
    """Every value within its declared range; every float finite (``FINITE``) even without one."""
    for key, value in values.items():
        problem = ranges.get(key, FINITE).problem(value)
        if problem:
            raise out_of_range(where, key, value, problem, section)


def build(cls: type, table: Mapping[str, Any], where: str, section: str | None = None, **fixed: Any) -> Any:
    """Instantiate the frozen dataclass ``cls`` from ``table``: unknown, missing, mistyped or out-of-range keys
    (ranges in the fields' metadata, constraints between fields in ``cls.problems``) are one-line errors."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in fixed]
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise DiscbenchError(unknown_key_message(where, unknown[0], names))
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in table
        and f.name not in fixed
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise DiscbenchError(f"{where}: missing key '{missing[0]}'")
    values = {k: coerce(v, hints[k], f"{where}.{k}") for k, v in table.items()}
    check_ranges(values, {f.name: f.metadata["range"] for f in dataclasses.fields(cls) if "range" in f.metadata},
                 where, section)
    obj = cls(**values, **fixed)
    for key, value, problem in getattr(obj, "problems", list)():
        raise out_of_range(where, key, value, problem, section)
    return obj


def type_of_default(default: Any) -> Any:
    """The type a hyper-parameter's default implies: ``0.1`` -> float, ``(1, 2)`` -> tuple[int, ...], None -> Any."""
    if default is None:
        return Any
    if isinstance(default, tuple) and default:
        return tuple[type(default[0]), ...]
    return type(default)


def parse_override(item: str) -> tuple[str, str, Any]:
    """``"recipe.lr=0.05"`` -> ``("recipe", "lr", 0.05)``; values are TOML literals, bare words are strings."""
    if "=" not in item:
        raise DiscbenchError(f"--set '{item}': expected section.key=value, e.g. --set recipe.lr=0.05")
    key, raw = item.split("=", 1)
    section, _, name = key.strip().partition(".")
    if section not in SECTIONS or not name:
        raise DiscbenchError(f"--set '{item}': key must be <section>.<key> with section one of {', '.join(SECTIONS)}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, name, value


# -- bench.toml ------------------------------------------------------------------------------------------------------
def default_bench_path() -> Path:
    """``$DISCBENCH_CONFIG``, else ``./bench.toml``, else the repository's bench.toml."""
    env = os.environ.get("DISCBENCH_CONFIG")
    if env:
        return Path(env)
    here = Path("bench.toml")
    return here if here.is_file() else Path(__file__).resolve().parents[1] / "bench.toml"


@dataclass(frozen=True)
class SuiteRow:
    loss: str
    label: str
    overrides: tuple[str, ...]


SUITE_LAYOUTS = ("modules", "compression")


@dataclass(frozen=True)
class Suite:
    """A table of bench.toml: rows (losses or baselines) x datasets x backbones, under one protocol.

    ``partners`` (two-network protocols) pairs each backbone with a second network, position by position: the peer
    (online) or the teacher (offline); empty for self-distillation.
    """

    name: str
    protocol: str
    datasets: tuple[str, ...]
    backbones: tuple[str, ...]
    seeds: int = field(metadata=within(ge=1))
    budget: str
    rows: tuple[SuiteRow, ...]
    partners: tuple[str, ...] = ()
    layout: str = "modules"  # how the leaderboard renders it: "modules" (Tables 1/6/7) or "compression" (Table 3)

    def columns(self) -> list[tuple[str, str | None]]:
        """(backbone, partner) per column; partner None for one-network protocols."""
        if not self.partners:
            return [(b, None) for b in self.backbones]
        return list(zip(self.backbones, self.partners, strict=True))


class Bench:
    """The parsed bench.toml; ``resolve`` turns names and overrides into a ``RunConfig``."""

    def __init__(self, data: Mapping[str, Any], path: Path | str = "bench.toml"):
        self.path = Path(path)
        self.data = data
        for section in ("datasets", "recipes", "protocols", "runtime"):
            if not isinstance(data.get(section), dict):
                raise DiscbenchError(f"{self.path}: missing table [{section}]")

    @classmethod
    def load(cls, path: Path | str | None = None) -> Bench:
        path = Path(path) if path else default_bench_path()
        if not path.is_file():
            raise DiscbenchError(f"configuration file {path} not found; pass --config PATH or run from the repository")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise DiscbenchError(f"{path} is not valid TOML: {exc}") from exc
        return cls(data, path)

    # -- names ----------------------------------------------------------------------------------------------------
    def names(self, section: str) -> list[str]:
        return sorted(self.data.get(section, {}))

    def baselines(self) -> dict[str, dict[str, tuple[str, ...]]]:
        """Baseline rows: name -> protocol -> the overrides that define the row under that protocol."""
        out = {}
        for name, table in self.data.get("baselines", {}).items():
            out[name] = {protocol: tuple(f"{k}={json.dumps(v)}" for k, v in sets.items())
                         for protocol, sets in table.items()}
        return out

    def _table(self, section: str, name: str, kind: str) -> dict[str, Any]:
        tables = self.data.get(section, {})
        if name not in tables:
            raise DiscbenchError(unknown_name_message(kind, name, tables))
        return dict(tables[name])

    # -- resolution -----------------------------------------------------------------------------------------------
    def resolve(
        self,
        loss: str,
        backbone: str,
        dataset: str,
        budget: str,
        protocol: str = "self",
        overrides: Sequence[str] = (),
        label: str | None = None,
        partner: Mapping[str, str] | None = None,
        recipe_protocol: str | None = None,
    ) -> RunConfig:
        """The frozen configuration of one run.

        The recipe is the budget's table, then its ``datasets.<dataset>`` overrides, then its ``protocols.<protocol>``
        overrides (of ``recipe_protocol`` when given: a teacher is trained with the offline students' recipe).

        ``partner`` names the second network of a two-network protocol, as ``{"peer": NAME}`` (online) or
        ``{"teacher": NAME}`` (offline): the command line's ``--peer`` and ``--teacher``, a suite's ``partners``.
        """
        baselines = self.baselines()
        proto_cls = PROTOCOLS.get(protocol)
        if loss in baselines:
            if loss in LOSSES:
                raise DiscbenchError(f"'{loss}' is both a baseline in {self.path} and a registered loss; rename one")
            if protocol not in baselines[loss]:
                defined = [n for n, per in baselines.items() if protocol in per]
                raise DiscbenchError(f"baseline '{loss}' is not defined for protocol '{protocol}' in {self.path}; "
                                     f"baselines of '{protocol}': {', '.join(defined) or 'none'}")
            loss_name, base_sets = "", baselines[loss][protocol]
        elif loss in LOSSES:
            loss_name, base_sets = loss, ()
            supported = LOSSES.get(loss).protocols
            if protocol not in supported:
                raise DiscbenchError(f"loss '{loss}' is not defined for protocol '{protocol}'; it supports: "
                                     f"{', '.join(sorted(supported))}")
        else:
            raise DiscbenchError(unknown_name_message("loss", loss, [*LOSSES.names(), *baselines]))
        BACKBONES.get(backbone)  # unknown backbone -> did-you-mean error

        parsed = [parse_override(o) for o in (*base_sets, *overrides)]
        sets: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for section, key, value in parsed:
            sets[section][key] = value
        for key, name in (partner or {}).items():
            if not name:
                continue
            if key != proto_cls.partner:
                takes = f"takes --{proto_cls.partner}" if proto_cls.partner else "trains one network"
                raise DiscbenchError(f"--{key} does not apply to protocol '{protocol}', which {takes}")
            sets["protocol"][key] = name

        ds_table = self._table("datasets", dataset, "dataset")
        ds = build(DatasetConfig, {**ds_table, **sets["dataset"]}, f"dataset '{dataset}'", "dataset", name=dataset)

        recipe_table = self._table("recipes", budget, "budget")
        per_dataset = recipe_table.pop("datasets", {})
        per_protocol = recipe_table.pop("protocols", {})
        recipe = build(
            RecipeConfig,
            {**recipe_table, **per_dataset.get(dataset, {}), **per_protocol.get(recipe_protocol or protocol, {}),
             **sets["recipe"]},
            f"recipe '{budget}'",
            "recipe",
        )

        proto_table = self.data["protocols"].get(protocol, {})
        proto = build(proto_cls.Config, {**proto_table, **sets["protocol"]}, f"protocol '{protocol}'", "protocol")
        proto = self._resolve_partner(proto_cls, proto, backbone)

        runtime = build(RuntimeConfig, {**self.data["runtime"], **sets["runtime"]}, "runtime", "runtime")
        loss_cfg = self._resolve_loss(loss_name, sets["loss"])

        if label is None:
            label = loss + (f" [{', '.join(overrides)}]" if overrides else "")
        return RunConfig(
            label=label,
            protocol_name=protocol,
            backbone=backbone,
            budget=budget,
            dataset=ds,
            recipe=recipe,
            protocol=proto,
            loss=loss_cfg,
            runtime=runtime,
        )

    @staticmethod
    def _resolve_partner(proto_cls: Any, proto: Any, backbone: str) -> Any:
        """The second network of a two-network protocol: a registered backbone; an omitted peer is the run's own
        backbone (two identical networks), an omitted teacher is an error."""
        key = proto_cls.partner
        if key is None:
            return proto
        name = getattr(proto, key)
        if not name:
            if key != "peer":
                raise DiscbenchError(f"protocol '{proto_cls.name}' needs a {key}: pass --{key} BACKBONE "
                                     f"(discbench teacher list)")
            return dataclasses.replace(proto, **{key: backbone})
        if name not in BACKBONES:
            raise DiscbenchError(unknown_name_message(f"--{key} backbone", name, BACKBONES.names()))
        return proto

    def _resolve_loss(self, name: str, sets: Mapping[str, Any]) -> LossConfig:
        if not name:
            if sets:
                raise DiscbenchError(f"--set loss.{next(iter(sets))}: this row has no discrepancy to configure")
            return LossConfig(name="", version=0, beta=0.0)
        cls = LOSSES.get(name)
        defaults = {"beta": 1.0, **cls.hparams()}
        table = {**self.data.get("losses", {}).get(name, {}), **sets}
        values = {}
        for key, value in table.items():
            if key not in defaults:
                raise DiscbenchError(unknown_key_message(f"loss '{name}'", key, list(defaults)))
            values[key] = coerce(value, type_of_default(defaults[key]), f"loss '{name}'.{key}")
        merged = {**defaults, **values}
        check_ranges(merged, {"beta": Range(ge=0), **cls.ranges}, f"loss '{name}'", "loss")
        for key, value, problem in cls.problems(merged):
            raise out_of_range(f"loss '{name}'", key, value, problem, "loss")
        beta = merged.pop("beta")
        return LossConfig(name=name, version=cls.version, beta=beta, hparams=dict(sorted(merged.items())))

    # -- suites ---------------------------------------------------------------------------------------------------
    def suite(self, name: str) -> Suite:
        """The suite ``name``; ``extends = "other"`` starts from another suite's table (e.g. its rows) and overrides
        the keys it sets (datasets, backbones, budget...)."""
        table = self._table("suites", name, "suite")
        where = f"suite '{name}'"
        seen = [name]
        while "extends" in table:
            parent = table.pop("extends")
            if parent in seen:
                raise DiscbenchError(f"{where}: 'extends' goes round in a circle: {' -> '.join([*seen, parent])}")
            seen.append(parent)
            table = {**self._table("suites", parent, "suite"), **table}
        rows = []
        for i, row in enumerate(table.pop("rows", [])):
            unknown = set(row) - {"loss", "label", "set"}
            if unknown or "loss" not in row:
                raise DiscbenchError(f"{where}: row {i} needs 'loss', may have 'label' and 'set'; got {sorted(row)}")
            sets = tuple(f"{k}={json.dumps(v)}" for k, v in row.get("set", {}).items())
            rows.append(SuiteRow(loss=row["loss"], label=row.get("label", row["loss"]), overrides=sets))
        if not rows:
            raise DiscbenchError(f"{where}: no rows")
        suite = build(Suite, table, where, name=name, rows=tuple(rows))
        if suite.layout not in SUITE_LAYOUTS:
            raise DiscbenchError(f"{where}: unknown layout '{suite.layout}'; valid: {', '.join(SUITE_LAYOUTS)}")
        key = PROTOCOLS.get(suite.protocol).partner
        if bool(suite.partners) != bool(key) or (key and len(suite.partners) != len(suite.backbones)):
            need = f"one partner ({key}) per backbone" if key else "no partners"
            raise DiscbenchError(f"{where}: protocol '{suite.protocol}' needs {need}; got partners = "
                                 f"{list(suite.partners)} for backbones = {list(suite.backbones)}")
        return suite

    def suite_configs(self, suite: Suite, budget: str | None = None) -> list[RunConfig]:
        """Every (dataset, backbone, row) configuration of ``suite``, under ``budget`` or the suite's own."""
        key = PROTOCOLS.get(suite.protocol).partner
        return [self.resolve(row.loss, backbone, dataset, budget or suite.budget, suite.protocol, row.overrides,
                             row.label, partner={key: partner} if partner else None)
                for dataset in suite.datasets for backbone, partner in suite.columns() for row in suite.rows]
