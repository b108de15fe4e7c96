"""Suites: the tables of bench.toml (``[suites.<name>]``), each rows x datasets x backbones under one protocol.

A row names a method (a registered loss or a baseline, ``discbench list losses``), optionally with a label, the
protocol it runs under (default: the suite's; or a protocol of the suite's family, ``discbench.api.Protocol.family``:
MUSE Table 2 sets CS-KD, ONE, DDGSD and FRSKD, protocols with objectives of their own, beside the self rows) and a
``set`` of overrides for what the row changes beyond the method's definition (an ablation); a suite's own ``set``
applies to every row (what the whole table changes, e.g. Table 6's "without KD at the exits"). A ``set`` may neither
restate nor change what defines a method (its ``[methods]`` settings under the row's protocol, and the KD weight a
logit-distillation plugin replaces): a variant of a method is another method. ``rows = "all"`` is every method
defined for the protocols of the suite's family: the baselines, then every registered loss, then the methods of the
family's other protocols, so that a new loss or a new self-distillation method joins such a suite without an edit.
``extends = "other"`` starts from another suite's table and overrides the keys it sets.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from discbench.config import REGISTRIES, Bench, RunConfig, parse_override
from discbench.errors import DiscbenchError
from discbench.ranges import within
from discbench.typed import build

LAYOUTS = ("modules", "compression", "methods-columns")
ALL_ROWS = "all"


@dataclass(frozen=True)
class SuiteRow:
    """A row: its method, label and ``set``; ``seeds_from`` offsets its seeds (seeds_from .. seeds_from + n - 1): a
    negative control is the baseline's method under another label with other seeds. ``protocol``: the protocol it
    runs under, "" for the suite's (``Suite.protocol_of``)."""

    loss: str
    label: str
    overrides: tuple[str, ...]
    seeds_from: int = 0
    protocol: str = ""


@dataclass(frozen=True)
class SuiteRun:
    """One configuration of a suite and the seeds it trains."""

    cfg: RunConfig
    seeds: range


@dataclass(frozen=True)
class Suite:
    """A table of bench.toml: rows (methods) x datasets x backbones, under one protocol.

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
    layout: str = "modules"  # how the leaderboard renders it: "modules" (Tables 1/6/7), "compression" (Table 3) or
    #                          "methods-columns" (Table 2: backbones as rows, methods as columns, last module)
    description: str = ""
    overrides: tuple[str, ...] = ()  # the suite's `set`: applied to every row, before the row's own

    def protocol_of(self, row: SuiteRow) -> str:
        """The protocol ``row`` runs under."""
        return row.protocol or self.protocol

    def columns(self) -> list[tuple[str, str | None]]:
        """(backbone, partner) per column; partner None for one-network protocols."""
        if not self.partners:
            return [(b, None) for b in self.backbones]
        return list(zip(self.backbones, self.partners, strict=True))


def _table(bench: Bench, name: str) -> dict:
    """The suite's table with every ``extends`` applied."""
    table = bench._table("suites", name, "suite")
    seen = [name]
    while "extends" in table:
        parent = table.pop("extends")
        if parent in seen:
            raise DiscbenchError(f"suite '{name}': 'extends' goes round in a circle: {' -> '.join([*seen, parent])}")
        seen.append(parent)
        table = {**bench._table("suites", parent, "suite"), **table}
    return table


def _sets(table, where: str) -> tuple[str, ...]:
    if not isinstance(table, dict):
        raise DiscbenchError(f"{where}: 'set' must be a table of \"section.key\" = value")
    return tuple(f"{k}={json.dumps(v)}" for k, v in table.items())


def family(bench: Bench, protocol: str) -> list[str]:
    """``protocol`` and every registered protocol whose rows join its tables (``Protocol.family``)."""
    protocols = bench.plugins.protocols
    return [protocol, *(p for p in protocols.names() if p != protocol and protocols.get(p).family == protocol)]


def _rows(bench: Bench, rows, protocol: str, where: str) -> tuple[SuiteRow, ...]:
    if rows == ALL_ROWS:
        return tuple(SuiteRow(name, name, (), protocol="" if p == protocol else p) for p in family(bench, protocol)
                     for name in bench.method_names() if p in bench.method(name).protocols)
    if not isinstance(rows, list):
        raise DiscbenchError(f"{where}: rows must be a list of tables or \"{ALL_ROWS}\"")
    out = []
    for i, row in enumerate(rows):
        unknown = set(row) - {"loss", "label", "set", "seeds_from", "protocol"} if isinstance(row, dict) else {"?"}
        if unknown or "loss" not in row:
            raise DiscbenchError(f"{where}: row {i} needs 'loss', may have 'label', 'protocol', 'set' and "
                                 f"'seeds_from'; got {sorted(row) if isinstance(row, dict) else row!r}")
        label = row.get("label", row["loss"])
        sets = _sets(row.get("set", {}), f"{where}, row '{label}'")
        offset = row.get("seeds_from", 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise DiscbenchError(f"{where}, row '{label}': seeds_from must be an integer >= 0, got {offset!r}")
        row_protocol = row.get("protocol", protocol)
        if row_protocol not in family(bench, protocol):
            raise DiscbenchError(f"{where}, row '{label}': protocol {row_protocol!r} does not join the "
                                 f"'{protocol}' tables; protocols that do: {', '.join(family(bench, protocol))}")
        out.append(SuiteRow(loss=row["loss"], label=label, overrides=sets, seeds_from=offset,
                            protocol="" if row_protocol == protocol else row_protocol))
    labels = [r.label for r in out]
    if len(set(labels)) < len(labels):
        raise DiscbenchError(f"{where}: two rows are labelled '{next(x for x in labels if labels.count(x) > 1)}'; "
                             f"give each row its own label")
    return tuple(out)


def summary(bench: Bench, name: str, methods: Callable[[str], int]) -> str:
    """One line of ``discbench list suites``: protocol, budget, rows x columns x datasets x seeds = runs, read from
    the table alone (``methods(protocol)`` counts a ``rows = "all"`` suite's rows, e.g. from the catalog)."""
    table = _table(bench, name)
    protocol = table.get("protocol", "self")
    rows = table.get("rows", [])
    n_rows = methods(protocol) if rows == ALL_ROWS else len(rows) if isinstance(rows, list) else 0
    columns, datasets, seeds = len(table.get("backbones", [])), len(table.get("datasets", [])), table.get("seeds", 1)
    what = "rows (every method)" if rows == ALL_ROWS else "rows"
    about = f"{table['description']}\n" if table.get("description") else ""
    return (f"{about}{protocol}, budget {table.get('budget', '?')}: {n_rows} {what} x {columns} column(s) x "
            f"{datasets} dataset(s) x {seeds} seed(s) = {n_rows * columns * datasets * seeds} runs")


def load(bench: Bench, name: str) -> Suite:
    """The suite ``name`` of ``bench``, checked: rows, layout, one partner per backbone for two-network protocols."""
    table = _table(bench, name)
    where = f"suite '{name}'"
    protocol = table.get("protocol", "self")
    rows = _rows(bench, table.pop("rows", []), protocol, where)
    if not rows:
        raise DiscbenchError(f"{where}: no rows")
    overrides = _sets(table.pop("set", {}), where)
    suite = build(Suite, table, where, name=name, rows=rows, overrides=overrides)
    if suite.layout not in LAYOUTS:
        raise DiscbenchError(f"{where}: unknown layout '{suite.layout}'; valid: {', '.join(LAYOUTS)}")
    key = bench.plugins.protocols.get(suite.protocol).partner
    if bool(suite.partners) != bool(key) or (key and len(suite.partners) != len(suite.backbones)):
        need = f"one partner ({key}) per backbone" if key else "no partners"
        raise DiscbenchError(f"{where}: protocol '{suite.protocol}' needs {need}; got partners = "
                             f"{list(suite.partners)} for backbones = {list(suite.backbones)}")
    for row in suite.rows:
        check_row(bench, suite, row)
    return suite


def defining(bench: Bench, method: str, protocol: str) -> dict[tuple[str, str], object]:
    """What defines ``method`` under ``protocol``: its declared settings, and the protocol's KD weight (0) when its
    plugin replaces that term. (section, key) -> value."""
    m = bench.method(method)
    if protocol not in m.protocols:
        return {}
    out = {(section, key): value for section, values in m.settings(protocol).items() for key, value in values.items()}
    kd_field = bench.plugins.protocols.get(protocol).kd_field
    if m.plugin and kd_field and bench.plugins.losses.get(m.plugin).replaces_kd:
        out[("protocol", kd_field)] = 0.0
    return out


def check_row(bench: Bench, suite: Suite, row: SuiteRow) -> None:
    """A row's settings (the suite's ``set``, then its own) neither restate nor change what defines its method."""
    protocol = suite.protocol_of(row)
    declared = defining(bench, row.loss, protocol)
    for item in (*suite.overrides, *row.overrides):
        section, key, value = parse_override(item)
        if (section, key) not in declared:
            continue
        was = declared[(section, key)]
        what = "restates" if value == was else f"changes (declared: {was!r})"
        raise DiscbenchError(f"suite '{suite.name}', row '{row.label}': {section}.{key} = {value!r} {what} what "
                             f"defines method '{row.loss}' under protocol '{protocol}'; drop it (a variant of a "
                             f"method is another method: add one to [methods])")


def runs(bench: Bench, suite: Suite, budget: str | None = None, seeds: int | None = None) -> list[SuiteRun]:
    """Every (dataset, backbone, row) configuration of ``suite`` under ``budget`` (or the suite's own) with the
    ``seeds`` (or the suite's number of) seeds it trains, from the row's ``seeds_from``."""
    key = bench.plugins.protocols.get(suite.protocol).partner
    n = seeds or suite.seeds
    return [SuiteRun(bench.resolve(row.loss, backbone, dataset, budget or suite.budget, suite.protocol_of(row),
                                   (*suite.overrides, *row.overrides), row.label,
                                   partner={key: partner} if partner else None),
                     range(row.seeds_from, row.seeds_from + n))
            for dataset in suite.datasets for backbone, partner in suite.columns() for row in suite.rows]


def configs(bench: Bench, suite: Suite, budget: str | None = None) -> list[RunConfig]:
    """Every (dataset, backbone, row) configuration of ``suite``, under ``budget`` or the suite's own."""
    return [r.cfg for r in runs(bench, suite, budget)]


def resolved(bench: Bench, names: Sequence[str], budget: str | None = None) -> list[tuple[Suite, list[SuiteRun]]]:
    """Each suite of ``names`` with its runs (``load``, ``runs``), resolved against the plugin classes as their source
    declares them (``discbench.catalog.declared_plugins``: no torch, for the leaderboard) when they can be read so,
    else against the registries, which import them. Either way the same resolver reads the same declarations: the
    configurations and their hashes are the same."""
    from discbench.catalog import Unreadable, declared_plugins

    def resolve(b: Bench) -> list[tuple[Suite, list[SuiteRun]]]:
        return [(s, runs(b, s, budget)) for s in (load(b, name) for name in names)]

    declared = declared_plugins() if bench.plugins is REGISTRIES else None
    if declared is not None:
        try:
            return resolve(bench.reading(declared))
        except Unreadable:  # a declaration needs its module after all: import the plugins
            pass
    return resolve(bench)
