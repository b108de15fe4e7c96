"""The table model of every leaderboard, and the builders of its layouts.

A ``Table`` has columns and rows; each (row, column) holds an ``Entry``: the ``Cell`` of each network it shows (one,
or net1 and net2 of a different online pair), whether it is the best of its column, and its difference to the
table's baseline (``discbench.reporting.stats.Difference``, on the first cell). A ``Cell`` is the per-seed values of
one classifier. The markdown writer (``discbench.reporting.markdown``) and the HTML board
(``discbench.reporting.html``) both render these objects; neither computes a number of its own.

Layouts (for one dataset, budget and protocol):

- ``per_module``: MUSE Table 1, backbone x method rows, Module 1..T columns and the Baseline column (the plain
  network), every Δ against that Baseline;
- ``last_module``: MUSE Table 6, methods as rows, backbones as columns, last-module top-1, Δ against the baseline row;
- ``pairs``: MUSE Table 7, methods as rows, one column per network pair (online: ``net1 / net2``, an identical pair
  shown as the mean of its two networks per seed; offline: ``teacher (its top-1) → student``);
- ``costs``: the losses' extra parameters, step time (relative to the baseline on the same device) and peak memory.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from discbench.reporting import frame as fr
from discbench.reporting.stats import Difference, detectable, paired, pooled_std, seeds_for, welch


@dataclass(frozen=True)
class Cell:
    """One classifier's final top-1 over seeds: ``values[i]`` is seed ``seeds[i]``'s, which started from
    ``pairing[i]`` (``frame.pairing_key``; None when unknown) in ``environments[i]``."""

    values: tuple[float, ...]
    seeds: tuple[int, ...] = ()
    pairing: tuple = ()
    environments: tuple[str, ...] = ()

    @classmethod
    def of(cls, values: pd.Series, runs: pd.DataFrame | None = None) -> Cell:
        """The non-missing ``values``; with ``runs`` (the frame rows they come from, same index) their seeds,
        pairing keys and environments, in seed order."""
        values = values.dropna()
        if runs is None:
            return cls(tuple(float(v) for v in values))
        rows = sorted(zip(runs.loc[values.index, "seed"], values, runs.loc[values.index, "pairing"],
                          runs.loc[values.index, "environment"], strict=True), key=lambda r: r[0])
        return cls(tuple(float(v) for _, v, _, _ in rows), tuple(int(s) for s, _, _, _ in rows),
                   tuple(p for _, _, p, _ in rows), tuple(e for _, _, _, e in rows))

    @property
    def mixed(self) -> bool:
        """Whether the seeds ran in more than one environment."""
        return len(set(self.environments)) > 1

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(pd.Series(self.values, dtype=float).mean())

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof = 1); NaN below two seeds."""
        return float(pd.Series(self.values, dtype=float).std(ddof=1))

    def text(self) -> str:
        """``78.75 ± 0.31 (n=3)``, ``78.75 (n=1)``, ``—``."""
        if not self.values:
            return "—"
        if self.n == 1:
            return f"{self.mean:.2f} (n=1)"
        return f"{self.mean:.2f} ± {self.std:.2f} (n={self.n})"


@dataclass(frozen=True)
class Entry:
    """What one (row, column) shows: its cells, whether it is the column's best, its Δ against the baseline (Welch)
    and, when its seeds are provably paired with the baseline's, the paired Δ."""

    cells: tuple[Cell, ...]
    best: bool = False
    delta: Difference | None = None
    paired: Difference | None = None

    @property
    def first(self) -> Cell:
        return self.cells[0]


@dataclass(frozen=True)
class Row:
    """A method's row: its label, one entry per column; ``group`` is its backbone in the per-module layout, ``tail``
    the text of trailing columns (the per-module layout's Baseline)."""

    label: str
    entries: tuple[Entry, ...]
    group: str = ""
    tail: tuple[str, ...] = ()


@dataclass(frozen=True)
class Column:
    """A column: its header, and what it holds (a module's exit, or a backbone and its partner)."""

    header: str
    backbone: str | None = None
    partner: str | None = None
    exit: int | None = None
    offline: bool = False


@dataclass(frozen=True)
class Power:
    """What a table could have detected: the seed standard deviation pooled over its cells, the smallest difference a
    two-sample t-test detects at its n seeds (80 % power, two-sided 5 %), the seeds a 0.5 pp difference needs, and
    how much narrower the paired intervals are than Welch's."""

    sigma: float
    dof: int
    n: int
    detectable: float
    seeds_for_half: float
    paired_cells: int = 0
    delta_cells: int = 0
    narrower: float = math.nan  # mean of Welch width / paired width over the paired cells


@dataclass(frozen=True)
class Table:
    layout: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    legend: str
    notes: tuple[str, ...] = ()
    group_header: str = ""
    tail_headers: tuple[str, ...] = ()
    baseline: str | None = None
    power: Power | None = None
    row_header: str = "Method"


WELCH = ("with its 95 % confidence interval from Welch's t-test (scipy.stats, unequal variances, seeds unpaired) and, "
         "where the records prove that seed k of both rows started from the same network and first epoch, the paired "
         "t-test's interval (`paired`); † marks an interval that excludes 0; n is the number of seeds.")


def legend_for(baseline: str | None) -> str:
    if baseline is None:
        return "No baseline row in this table: no Δ. n is the number of seeds."
    return f"Δ: difference of means to the baseline row `{baseline}` of the same column, {WELCH}"


def difference(values: Cell, base: Cell | None) -> Difference | None:
    """``values`` against ``base`` (Welch), or None when either is empty."""
    if base is None or not values.values or not base.values:
        return None
    return welch(values.values, base.values)


def paired_difference(values: Cell, base: Cell | None) -> Difference | None:
    """``values`` against ``base`` seed by seed, when they are provably paired: the same seeds (at least two), each
    with the same known starting point (network and first epoch) in both. None otherwise."""
    if base is None or len(values.seeds) < 2 or values.seeds != base.seeds or values is base:
        return None
    if any(p is None or p != q for p, q in zip(values.pairing, base.pairing, strict=True)):
        return None
    return paired(values.values, base.values)


def compare(cells: tuple[Cell, ...], base: Cell | None) -> Entry:
    """An entry of ``cells`` with its first cell's Δ against ``base``: Welch's, and the paired one when it applies."""
    return Entry(cells, delta=difference(cells[0], base), paired=paired_difference(cells[0], base))


def mark_best(entries: dict[str, Entry]) -> dict[str, Entry]:
    """The entries of one column with ``best`` set on those whose first cell has the largest mean (ties: all)."""
    means = {k: e.first.mean for k, e in entries.items() if not math.isnan(e.first.mean)}
    top = max(means.values(), default=None)
    return {k: dataclasses.replace(e, best=top is not None and means.get(k) == top) for k, e in entries.items()}


def power_of(entries: list[Entry]) -> Power | None:
    """The ``Power`` of a table from its entries' first cells (None without a cell of two seeds)."""
    cells = [e.first for e in entries if e.first.n]
    sigma, dof = pooled_std([c.values for c in cells])
    if not dof:
        return None
    n = Counter(c.n for c in cells).most_common(1)[0][0]
    with_delta = [e for e in entries if e.delta is not None and e.delta.has_interval]
    ratios = [(e.delta.high - e.delta.low) / (e.paired.high - e.paired.low) for e in with_delta
              if e.paired is not None and e.paired.has_interval and e.paired.high > e.paired.low]
    return Power(sigma, dof, n, detectable(sigma, n), seeds_for(0.5, sigma), len(ratios), len(with_delta),
                 sum(ratios) / len(ratios) if ratios else math.nan)


def runner_up_notes(columns: list[tuple[str, dict[str, Cell]]], title: str = "") -> list[str]:
    """Per column: the best row against the runner-up (Welch), and whether the best is significantly better."""
    lines = []
    for header, cells in columns:
        cells = {k: c for k, c in cells.items() if c.values}
        if len(cells) < 2:
            continue
        best, second = sorted(cells, key=lambda k: -cells[k].mean)[:2]
        d = welch(cells[best].values, cells[second].values)
        verdict = ("significantly better than the runner-up" if d.significant and d.diff > 0 else
                   "**not significantly better than the runner-up**")
        lines.append(f"- {title}{header.removesuffix(' ↑')}: best `{best}` vs runner-up `{second}`: {d.short()} "
                     f"(n={d.n_a} vs {d.n_b}); the best row is {verdict}.")
    return lines


def _grid(labels: list[str], columns: list[Column],
          entry: Callable[[str, Column], Entry]) -> tuple[dict[str, list[Entry]], list[tuple[str, dict[str, Cell]]]]:
    """Every (row, column) entry, the best of each column marked; and each column's first cells (for the notes)."""
    by_column = [mark_best({label: entry(label, col) for label in labels}) for col in columns]
    rows = {label: [col[label] for col in by_column] for label in labels}
    samples = [(col.header, {label: e.first for label, e in entries.items()})
               for col, entries in zip(columns, by_column, strict=True)]
    return rows, samples


# -- layouts ---------------------------------------------------------------------------------------------------------
def per_module(df: pd.DataFrame) -> Table | None:
    """MUSE Table 1 layout; None when no run has exits."""
    exits = fr.exits(df)
    columns = [Column(f"Module {i} ↑", exit=i) for i in exits]
    rows, notes = [], []
    for backbone, sub in df.groupby("backbone", sort=True):
        baseline = sub[sub["baseline"]]
        base = Cell.of(baseline["first_last"], baseline) if not baseline.empty else None
        methods = sub[~sub["baseline"]]
        labels = fr.row_order(methods) if not methods.empty else []

        def entry(label: str, col: Column, methods=methods, base=base) -> Entry:
            runs = methods[methods["label"] == label]
            return compare((Cell.of(fr.top1(runs, "net", col.exit), runs),), base)

        grid, samples = _grid(labels, columns, entry)
        tail = (base.text() if base is not None else "—",)
        rows += [Row(label, tuple(grid[label]), group=backbone, tail=tail) for label in labels]
        notes += runner_up_notes(samples, title=f"{backbone}, ")
    if not rows:
        return None
    legend = ("Δ: difference of means to the Baseline column (the plain network of the same backbone), " + WELCH)
    return Table("per-module", tuple(columns), tuple(rows), legend, tuple(notes), group_header="Backbone",
                 tail_headers=("Baseline ↑",), power=power_of([e for r in rows for e in r.entries]))


def last_module(df: pd.DataFrame) -> Table:
    """MUSE Table 6 layout: methods as rows, backbones as columns, last-module top-1; Δ against the baseline row."""
    labels = fr.row_order(df)
    base = fr.baseline_label(df)
    columns = [Column(f"{b} ↑", backbone=b) for b in sorted(df["backbone"].unique())]

    def entry(label: str, col: Column) -> Entry:
        runs = df[df["backbone"] == col.backbone]
        mine, theirs = runs[runs["label"] == label], runs[runs["label"] == base]
        base_cell = Cell.of(theirs["first_last"], theirs) if base and label != base else None
        return compare((Cell.of(mine["first_last"], mine),), base_cell)

    grid, samples = _grid(labels, columns, entry)
    rows = tuple(Row(label, tuple(grid[label])) for label in labels)
    return Table("last-module", tuple(columns), rows, legend_for(base), tuple(runner_up_notes(samples)),
                 baseline=base, power=power_of([e for r in rows for e in r.entries]))


def methods_as_columns(df: pd.DataFrame) -> Table:
    """MUSE Table 2 layout: the last-module table (``last_module``) turned: backbones as rows, methods as columns,
    the same entries (each Δ against the baseline of its backbone, bold the best of its backbone)."""
    table = last_module(df)
    columns = tuple(Column(f"{row.label} ↑") for row in table.rows)
    rows = tuple(Row(col.backbone or col.header, tuple(row.entries[j] for row in table.rows))
                 for j, col in enumerate(table.columns))
    return dataclasses.replace(table, layout="methods-columns", columns=columns, rows=rows, row_header="Backbone")


def pair_columns(df: pd.DataFrame) -> list[Column]:
    """One column per network pair, identical pairs first (as MUSE)."""
    pairs = df[["backbone", "partner"]].drop_duplicates()
    pairs = pairs.assign(different=pairs["backbone"] != pairs["partner"])
    out = []
    for backbone, partner in pairs.sort_values(["different", "backbone", "partner"])[["backbone", "partner"]] \
            .itertuples(index=False):
        runs = df[(df["backbone"] == backbone) & (df["partner"] == partner)]
        offline = bool(runs["teacher_top1"].notna().any())
        header = (f"{partner} ({runs['teacher_top1'].mean():.2f}) → {backbone} ↑" if offline
                  else f"{backbone} / {partner} ↑")
        out.append(Column(header, backbone=backbone, partner=partner, offline=offline))
    return out


def pair_cells(runs: pd.DataFrame, col: Column) -> tuple[Cell, ...]:
    """The cells of a pair: the student (offline); the mean of both networks per seed (an identical online pair,
    as the paper reports it); net1 and net2 side by side (a different pair)."""
    if col.offline:
        return (Cell.of(fr.last(runs, "student"), runs),)
    if col.backbone == col.partner:
        return (Cell.of((fr.last(runs, "net1") + fr.last(runs, "net2")) / 2, runs),)
    return Cell.of(fr.last(runs, "net1"), runs), Cell.of(fr.last(runs, "net2"), runs)


def pairs(df: pd.DataFrame) -> Table:
    """MUSE Table 7 layout for two-network protocols; Δ against the baseline row of the same column (for a different
    pair: net1's)."""
    labels = fr.row_order(df)
    base = fr.baseline_label(df)
    columns = pair_columns(df)

    def entry(label: str, col: Column) -> Entry:
        runs = df[(df["backbone"] == col.backbone) & (df["partner"] == col.partner)]
        base_cell = pair_cells(runs[runs["label"] == base], col)[0] if base and label != base else None
        return compare(pair_cells(runs[runs["label"] == label], col), base_cell)

    grid, samples = _grid(labels, columns, entry)
    rows = tuple(Row(label, tuple(grid[label])) for label in labels)
    return Table("pairs", tuple(columns), rows, legend_for(base), tuple(runner_up_notes(samples)), baseline=base,
                 power=power_of([e for r in rows for e in r.entries]))


# -- cost ------------------------------------------------------------------------------------------------------------
PEAK_KINDS = {"cuda_max_memory_allocated": "CUDA max allocated", "cpu_process_peak_rss": "CPU process peak RSS"}


@dataclass(frozen=True)
class CostRow:
    """One (backbone, partner, method, device): the losses' extra parameters, the mean step time over seeds, the step
    time relative to the baseline of the same backbone and partner on the same device (never across devices), and
    the largest peak memory over seeds."""

    backbone: str
    partner: str | None
    label: str
    device: str
    loss_params: int
    step_ms: float
    relative: float | None
    peak_bytes: float | None
    peak_kinds: tuple[str, ...]
    n: int

    def peak_text(self) -> str:
        if self.peak_bytes is None:
            return "not recorded"
        return f"{self.peak_bytes / 2**20:,.0f} MiB ({', '.join(self.peak_kinds)})"


@dataclass(frozen=True)
class CostTable:
    rows: tuple[CostRow, ...]
    devices: tuple[str, ...] = field(default=())


def costs(df: pd.DataFrame) -> CostTable:
    """The cost rows of one (dataset, budget, protocol), in the tables' row order; devices numbered as first seen."""
    rows = []
    for (backbone, partner, label, device), runs in df.groupby(["backbone", "partner", "label", "device"],
                                                               sort=False, dropna=False):
        base = df[(df["backbone"] == backbone) & (df["device"] == device) & df["baseline"]
                  & ((df["partner"] == partner) | (df["partner"].isna() & pd.isna(partner)))]
        step = runs["step_ms"].mean()
        peaks = runs["peak_bytes"].dropna()
        rows.append(CostRow(backbone, None if pd.isna(partner) else partner, label, device,
                            int(runs["loss_params"].iloc[0]), step,
                            step / base["step_ms"].mean() if not base.empty else None,
                            float(peaks.max()) if not peaks.empty else None,
                            tuple(sorted({PEAK_KINDS.get(k, str(k)) for k in runs["peak_kind"].dropna()})),
                            len(runs)))
    devices = tuple(dict.fromkeys(r.device for r in rows))
    order = {label: i for i, label in enumerate(fr.row_order(df))}
    rows.sort(key=lambda r: (r.backbone, r.partner is not None, r.partner or "", order[r.label], r.device))
    return CostTable(tuple(rows), devices)
