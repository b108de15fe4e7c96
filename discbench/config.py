"""bench.toml -> frozen, type-checked, hashed run configurations.

Configuration comes in layers: discbench's defaults (``discbench/bench.toml``, shipped with the package: datasets,
recipes, protocols, methods, suites), then a project's own ``bench.toml`` (``--config PATH``, else
``$DISCBENCH_CONFIG``, else ``./bench.toml``), whose tables extend or override the defaults key by key (``merge``).

A run resolves five sections: ``dataset``, ``recipe`` (the budget, with per-dataset and per-protocol overrides),
``protocol``, ``loss`` (``beta`` plus the plugin's hyper-parameters) and ``runtime``. The *method* a row names (a
registered loss, or a baseline without one) contributes the settings that define it under the run's protocol
(``[methods.<name>]``); ``--set section.key=value`` overrides any resolved value, parsed as a TOML literal and checked
against the field's type and range. The resolved configuration (without its label) is hashed; the hash and the seed
name the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from discbench.errors import DiscbenchError
from discbench.ranges import Range, within
from discbench.registry import BACKBONES, LOSSES, PROTOCOLS, unknown_name_message
from discbench.typed import build, check_ranges, coerce, out_of_range, type_of_default, unknown_key_message

SECTIONS = ("dataset", "recipe", "protocol", "loss", "runtime")
# The harness's numerics version, part of every configuration hash: bump it whenever one configuration could train to
# different numbers (the loop, a protocol's objective, the seeding), as a plugin bumps its own ``version``.
# 2: BYOT's (1 - alpha) on the exits' cross-entropies; one random stream per source of randomness (discbench.seeding).
HARNESS_VERSION = 2
DEFAULTS = Path(__file__).with_name("bench.toml")  # discbench's defaults, package data


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
        if any(b <= a for a, b in zip(m, m[1:], strict=False)):
            return [("milestones", list(m), "must be strictly increasing epochs")]
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
class ProtocolConfig:
    """Base of every protocol's ``Config`` (the frozen dataclass of ``[protocols.<name>]``): a run's ``protocol``."""


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
    protocol: ProtocolConfig
    loss: LossConfig
    runtime: RuntimeConfig
    teacher: TeacherRef | None = None  # resolved from the teacher store for protocols that need one
    notes: tuple[str, ...] = ()  # what resolving changed from what was asked (not hashed: the values are)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["loss"]["hparams"] = dict(sorted(self.loss.hparams.items()))
        if self.teacher is None:
            out.pop("teacher")  # configurations without a teacher hash as they did before the field existed
        if not self.notes:
            out.pop("notes")
        else:
            out["notes"] = list(self.notes)
        return out

    @property
    def hash(self) -> str:
        """16 hex digits of the SHA-256 of the canonical JSON of the configuration, without its label (with the
        teacher's identity, when there is one)."""
        return config_digest(self.to_dict())

    @property
    def request_hash(self) -> str:
        """The hash of what was asked for, before a teacher was looked up: suites find their records by it (a
        leaderboard can be rendered without the teacher store). Equal to ``hash`` for runs without a teacher."""
        return config_digest({k: v for k, v in self.to_dict().items() if k != "teacher"})

    @property
    def is_baseline(self) -> bool:
        """Whether this run trains without any distillation term (its protocol decides)."""
        return PROTOCOLS.get(self.protocol_name).is_baseline(self)


def config_digest(config: dict[str, Any]) -> str:
    """The hash of a configuration as ``RunConfig.to_dict`` writes it (a record's ``config``): 16 hex digits of the
    SHA-256 of its canonical JSON without the label and notes, with the harness version."""
    payload = {k: v for k, v in config.items() if k not in ("label", "notes")}
    payload["harness"] = HARNESS_VERSION
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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


def override(section: str, key: str, value: Any) -> str:
    """The ``--set`` form of one value: ``override("protocol", "exits", False)`` -> ``protocol.exits=false``."""
    return f"{section}.{key}={json.dumps(value)}"


# -- the layers ------------------------------------------------------------------------------------------------------
def project_path(path: Path | str | None = None) -> Path | None:
    """The project's configuration file: ``path`` (``--config``), else ``$DISCBENCH_CONFIG``, else ``./bench.toml``
    when it exists; None when there is none (the defaults alone)."""
    if path:
        return Path(path)
    env = os.environ.get("DISCBENCH_CONFIG")
    if env:
        return Path(env)
    here = Path("bench.toml")
    return here if here.exists() else None  # a directory of that name is one line (read_toml), not passed over


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML table in ``path``; a missing, unreadable, non-UTF-8 or invalid file is one line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DiscbenchError(f"configuration file {path} not found; pass --config PATH to an existing file, or "
                             f"'discbench config init' to write one") from None
    except IsADirectoryError:
        raise DiscbenchError(f"configuration file {path} is a directory; pass --config PATH to a file") from None
    except UnicodeDecodeError as exc:
        raise DiscbenchError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise DiscbenchError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DiscbenchError(f"{path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise DiscbenchError(f"{path}: arrays or tables nested too deeply to be a configuration") from None


def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` laid over ``base``: tables merge key by key (recursively), any other value (arrays included) in ``top``
    replaces ``base``'s."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


# -- methods ---------------------------------------------------------------------------------------------------------
METHOD_KEYS = ("plugin", "description", "protocols", *SECTIONS)


@dataclass(frozen=True)
class Method:
    """What a row name means: a registered loss (``plugin``) or a baseline without one (``plugin == ""``), and the
    settings that define it under each protocol it is defined for (bench.toml ``[methods.<name>]``: sections common
    to every protocol, then ``protocols.<protocol>`` sections)."""

    name: str
    plugin: str
    description: str
    common: Mapping[str, Mapping[str, Any]]
    per_protocol: Mapping[str, Mapping[str, Mapping[str, Any]]]
    protocols: tuple[str, ...]

    def settings(self, protocol: str) -> dict[str, dict[str, Any]]:
        """Section -> key -> value that define the method under ``protocol``."""
        out: dict[str, dict[str, Any]] = {s: dict(self.common.get(s, {})) for s in SECTIONS}
        for section, values in self.per_protocol.get(protocol, {}).items():
            out[section].update(values)
        return out

    def overrides(self, protocol: str) -> tuple[str, ...]:
        """``settings`` as ``--set`` strings (for listings)."""
        return tuple(override(s, k, v) for s, values in self.settings(protocol).items() for k, v in values.items())


@dataclass(frozen=True)
class Plugins:
    """Where ``Bench`` reads the classes of protocols, losses and backbones: the registries (``REGISTRIES``, which
    import them), or what their source declares (``discbench.catalog.declared_plugins``, which imports no torch).
    Each is read through ``names()``, ``get(name)`` and ``in``."""

    protocols: Any
    losses: Any
    backbones: Any


REGISTRIES = Plugins(PROTOCOLS, LOSSES, BACKBONES)


class _RegisteredLosses(Mapping):
    """The loss registry as ``Bench.method`` reads it: each registered loss -> the protocols it supports."""

    def __init__(self, plugins: Plugins):
        self.plugins = plugins

    def __getitem__(self, name: str) -> tuple[str, ...]:
        supported = self.plugins.losses.get(name).protocols
        protocols = self.plugins.protocols
        every = tuple(p for p in protocols.names() if protocols.get(p).takes_loss)
        return every if supported is None else tuple(supported)

    def __iter__(self):
        return iter(self.plugins.losses.names())

    def __len__(self) -> int:
        return len(self.plugins.losses.names())

    def __contains__(self, name: object) -> bool:
        return name in self.plugins.losses


def _sections(table: Mapping[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """The run sections of a method table (``{"protocol": {...}, "loss": {...}}``), each checked to be a table."""
    out = {}
    for section in SECTIONS:
        values = table.get(section, {})
        if not isinstance(values, Mapping):
            raise DiscbenchError(f"{where}: '{section}' must be a table of keys, e.g. {section}.KEY = VALUE")
        out[section] = dict(values)
    return out


class Bench:
    """The merged configuration; ``resolve`` turns names and overrides into a ``RunConfig``.

    Args:
        data: the merged tables.
        layers: the files they came from, defaults first.
        plugins: where the classes of protocols, losses and backbones are read (default: the registries).
    """

    def __init__(self, data: Mapping[str, Any], layers: Sequence[Path] = (), plugins: Plugins = REGISTRIES):
        self.data = data
        self.layers = tuple(Path(p) for p in layers) or (DEFAULTS,)
        self.plugins = plugins
        for section in ("datasets", "recipes", "protocols", "runtime"):
            if not isinstance(data.get(section), dict):
                raise DiscbenchError(f"{self.describe()}: missing table [{section}]")

    @classmethod
    def load(cls, path: Path | str | None = None) -> Bench:
        """The defaults, with the project's file (``project_path(path)``) laid over them."""
        if not DEFAULTS.is_file():
            raise DiscbenchError(f"discbench's default configuration {DEFAULTS} is missing; reinstall discbench")
        layers = [DEFAULTS]
        project = project_path(path)
        if project is not None and not _same_file(project, DEFAULTS):
            layers.append(project)
        data: dict[str, Any] = {}
        for layer in layers:
            data = merge(data, read_toml(layer))
        return cls(data, layers)

    def reading(self, plugins: Plugins) -> Bench:
        """The same tables, resolved against ``plugins`` (e.g. the classes as their source declares them)."""
        return Bench(self.data, self.layers, plugins)

    @property
    def path(self) -> Path:
        """The project's file (the top layer), or the defaults when there is none."""
        return self.layers[-1]

    @property
    def project(self) -> Path | None:
        """The project's file laid over the defaults, or None."""
        return self.layers[-1] if len(self.layers) > 1 else None

    def describe(self) -> str:
        """``discbench defaults + ./bench.toml`` (where the merged values come from), for messages."""
        return "discbench defaults" + (f" + {self.project}" if self.project else "")

    # -- names ----------------------------------------------------------------------------------------------------
    def names(self, section: str) -> list[str]:
        return sorted(self.data.get(section, {}))

    def _table(self, section: str, name: str, kind: str) -> dict[str, Any]:
        tables = self.data.get(section, {})
        if name not in tables:
            raise DiscbenchError(unknown_name_message(kind, name, tables))
        return dict(tables[name])

    def published_suites(self) -> tuple[str, ...]:
        """The suites of the published leaderboard (``[publish] suites``)."""
        return tuple(self.data.get("publish", {}).get("suites", ()))

    # -- methods --------------------------------------------------------------------------------------------------
    def method_names(self, losses: Sequence[str] | None = None) -> list[str]:
        """Every method: the baselines (tables of ``[methods]`` without a plugin, in file order), then the loss methods
        (registered losses, and tables that name a ``plugin``) by name. ``losses``: the registered losses' names when
        the caller has them without the registry (``list losses`` reads them from source, importing no torch)."""
        names = self.plugins.losses.names() if losses is None else list(losses)
        tables = self.data.get("methods", {})
        baselines = [n for n, t in tables.items() if n not in names and not t.get("plugin")]
        return baselines + sorted({*names, *(n for n in tables if n not in baselines)})

    def method(self, name: str, losses: Mapping[str, Sequence[str]] | None = None,
               protocols: Sequence[str] | None = None) -> Method:
        """The method ``name``: its table in ``[methods]`` (optional for a registered loss) resolved against the
        registries. A loss method is defined for every protocol its plugin supports; a baseline for the protocols
        its table lists. ``losses`` (each registered loss -> the protocols it supports) and ``protocols`` (every
        protocol's name) stand for the registries when the caller read them without importing torch (``list
        losses``)."""
        if losses is None:
            losses = _RegisteredLosses(self.plugins)
        every_protocol = tuple(self.plugins.protocols.names() if protocols is None else protocols)
        table = self.data.get("methods", {}).get(name)
        where = f"method '{name}'"
        if table is None:
            if name not in losses:
                raise DiscbenchError(unknown_name_message("loss", name, self.method_names(list(losses))))
            table = {}
        unknown = sorted(set(table) - set(METHOD_KEYS))
        if unknown:
            raise DiscbenchError(unknown_key_message(where, unknown[0], METHOD_KEYS))
        plugin = table.get("plugin", name if name in losses else "")
        per_protocol = table.get("protocols", {})
        if not isinstance(per_protocol, Mapping):
            raise DiscbenchError(f"{where}: 'protocols' must be a table of protocol names")
        for protocol in per_protocol:
            if protocol not in every_protocol:
                raise DiscbenchError(unknown_name_message("protocol", protocol, every_protocol))
        if plugin:
            if plugin not in losses:
                self.plugins.losses.get(plugin)  # unknown or broken plugin -> its error
            supported = losses[plugin]
            protocols = tuple(p for p in every_protocol if p in supported)
        else:
            protocols = tuple(per_protocol)
            if not protocols:
                raise DiscbenchError(f"{where} has no plugin and no protocols table: name a registered loss with "
                                     f"plugin = \"...\", or define it per protocol under [methods.{name}.protocols]")
        return Method(name=name, plugin=plugin, description=str(table.get("description", "")),
                      common=_sections(table, where),
                      per_protocol={p: _sections(s, f"{where}, protocol '{p}'") for p, s in per_protocol.items()},
                      protocols=protocols)

    def home_protocol(self, name: str) -> str:
        """The protocol a run of method ``name`` takes when none is named: ``self`` where the method is defined for
        it, else the first protocol it is defined for (``cs_kd`` for CS-KD)."""
        protocols = self.method(name).protocols
        return "self" if "self" in protocols or not protocols else protocols[0]

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
        """The frozen configuration of one run of the method ``loss``.

        Settings are laid in this order, each over the one before: the method's definition under ``protocol``, then
        ``overrides`` (a suite row's ``set``, then the command line's ``--set``), then ``partner``, the second network
        of a two-network protocol as ``{"peer": NAME}`` (online) or ``{"teacher": NAME}`` (offline): the command
        line's ``--peer`` and ``--teacher``, a suite's ``partners``. The recipe is the budget's table, then its
        ``datasets.<dataset>`` overrides, then its ``protocols.<protocol>`` overrides (of ``recipe_protocol`` when
        given: a teacher is trained with the offline students' recipe).
        """
        proto_cls = self.plugins.protocols.get(protocol)
        method = self.method(loss)
        if protocol not in method.protocols:
            raise DiscbenchError(f"'{loss}' is not defined for protocol '{protocol}'; it is defined for: "
                                 f"{', '.join(method.protocols)}")
        self.plugins.backbones.get(backbone)  # unknown backbone -> did-you-mean error
        notes: list[str] = []
        sets = self._settings(method, protocol, overrides, partner, proto_cls)
        self._replace_kd(method, proto_cls, sets["protocol"], notes)
        dataset_cfg = self._dataset(dataset, sets["dataset"])
        recipe = self._recipe(budget, dataset, recipe_protocol or protocol, sets["recipe"], notes)
        protocol_cfg = self._protocol(proto_cls, sets["protocol"], backbone, method.plugin, notes)
        runtime = build(RuntimeConfig, {**self.data["runtime"], **sets["runtime"]}, "runtime", "runtime")
        loss_cfg = self._loss(method.plugin, sets["loss"])
        if label is None:
            label = loss + (f" [{', '.join(overrides)}]" if overrides else "")
        return RunConfig(label=label, protocol_name=protocol, backbone=backbone, budget=budget, dataset=dataset_cfg,
                         recipe=recipe, protocol=protocol_cfg, loss=loss_cfg, runtime=runtime, notes=tuple(notes))

    def _replace_kd(self, method: Method, proto_cls: Any, sets: dict[str, Any], notes: list[str]) -> None:
        """A logit-distillation plugin (``replaces_kd``) replaces the protocol's own KD term: its weight is 0, and a
        setting that asks for both is refused."""
        field_name = proto_cls.kd_field
        if not (method.plugin and field_name and self.plugins.losses.get(method.plugin).replaces_kd):
            return
        asked = sets.get(field_name, 0)
        if asked != 0:
            raise DiscbenchError(f"loss '{method.plugin}' replaces protocol '{proto_cls.name}''s KD term, so "
                                 f"protocol.{field_name} must be 0 (got {asked!r}); drop that setting, and weigh the "
                                 f"loss with --set loss.beta=...")
        sets[field_name] = 0.0
        notes.append(f"protocol.{field_name} = 0: loss '{method.plugin}' replaces the protocol's KD term")

    @staticmethod
    def _settings(method: Method, protocol: str, overrides: Sequence[str], partner: Mapping[str, str] | None,
                  proto_cls: Any) -> dict[str, dict[str, Any]]:
        """Section -> key -> value: the method's definition, the overrides and the partner, in that order."""
        sets = method.settings(protocol)
        for section, key, value in (parse_override(o) for o in overrides):
            sets[section][key] = value
        for key, name in (partner or {}).items():
            if not name:
                continue
            if key != proto_cls.partner:
                takes = f"takes --{proto_cls.partner}" if proto_cls.partner else "trains one network"
                raise DiscbenchError(f"--{key} does not apply to protocol '{protocol}', which {takes}")
            sets["protocol"][key] = name
        return sets

    def _dataset(self, name: str, sets: Mapping[str, Any]) -> DatasetConfig:
        table = self._table("datasets", name, "dataset")
        return build(DatasetConfig, {**table, **sets}, f"dataset '{name}'", "dataset", name=name)

    def _recipe(self, budget: str, dataset: str, protocol: str, sets: Mapping[str, Any],
                notes: list[str]) -> RecipeConfig:
        """The budget's recipe for ``dataset`` under ``protocol``. Milestones at or past the last epoch never fire in
        a step schedule; they are dropped, so that shortening a run (``--set recipe.epochs=1``) needs no other edit
        and two spellings of one schedule are one configuration."""
        table = self._table("recipes", budget, "budget")
        per_dataset = table.pop("datasets", {})
        per_protocol = table.pop("protocols", {})
        values = {**table, **per_dataset.get(dataset, {}), **per_protocol.get(protocol, {}), **sets}
        epochs, milestones = values.get("epochs"), values.get("milestones")
        if isinstance(epochs, int) and isinstance(milestones, list) and all(isinstance(m, int) for m in milestones):
            values["milestones"] = [m for m in milestones if m < epochs]
            if len(values["milestones"]) < len(milestones):
                notes.append(f"recipe.milestones {milestones} -> {values['milestones']}: a milestone at or past the "
                             f"last epoch ({epochs}) never fires")
        return build(RecipeConfig, values, f"recipe '{budget}'", "recipe")

    def _protocol(self, proto_cls: Any, sets: Mapping[str, Any], backbone: str, loss: str,
                  notes: list[str]) -> ProtocolConfig:
        """The protocol's configuration. Fields that have no effect on this run (``Protocol.inert``) take their
        default values, so one computation has one hash. The second network of a two-network protocol is a registered
        backbone (an omitted peer is the run's own backbone, an omitted teacher is an error)."""
        table = self.data["protocols"].get(proto_cls.name, {})
        where = f"protocol '{proto_cls.name}'"
        config = build(proto_cls.Config, {**table, **sets}, where, "protocol")
        inert = proto_cls.inert(config, loss)
        if inert:
            defaults = build(proto_cls.Config, {**table, **{k: v for k, v in sets.items() if k not in inert}}, where,
                             "protocol")
            changed = {k: why for k, why in inert.items() if getattr(config, k) != getattr(defaults, k)}
            notes += [f"protocol.{k} = {getattr(config, k)!r} has no effect ({why}): the default "
                      f"{getattr(defaults, k)!r} is used" for k, why in changed.items()]
            config = dataclasses.replace(config, **{k: getattr(defaults, k) for k in inert})
        key = proto_cls.partner
        if key is None:
            return config
        name = getattr(config, key)
        if not name:
            if key != "peer":
                raise DiscbenchError(f"protocol '{proto_cls.name}' needs a {key}: pass --{key} BACKBONE "
                                     f"(discbench teacher list)")
            return dataclasses.replace(config, **{key: backbone})
        backbones = self.plugins.backbones
        if name not in backbones:
            raise DiscbenchError(unknown_name_message(f"--{key} backbone", name, backbones.names()))
        return config

    def _loss(self, name: str, sets: Mapping[str, Any]) -> LossConfig:
        """The plugin's weight and hyper-parameters: its defaults, then ``sets``, each typed and range-checked."""
        if not name:
            if sets:
                raise DiscbenchError(f"--set loss.{next(iter(sets))}: this row has no discrepancy to configure")
            return LossConfig(name="", version=0, beta=0.0)
        cls = self.plugins.losses.get(name)
        defaults = {"beta": 1.0, **cls.hparams()}
        values = {}
        for key, value in sets.items():
            if key not in defaults:
                raise DiscbenchError(unknown_key_message(f"loss '{name}'", key, list(defaults)))
            values[key] = coerce(value, type_of_default(defaults[key]), f"loss '{name}'.{key}")
        merged = {**defaults, **values}
        check_ranges(merged, {"beta": Range(ge=0), **cls.ranges}, f"loss '{name}'", "loss")
        for key, value, problem in cls.problems(merged):
            raise out_of_range(f"loss '{name}'", key, value, problem, "loss")
        beta = merged.pop("beta")
        return LossConfig(name=name, version=cls.version, beta=beta, hparams=dict(sorted(merged.items())))
