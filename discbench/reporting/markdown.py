"""Markdown leaderboards (``discbench leaderboard``): the tables of ``discbench.reporting.tables`` as pipe tables.

For every (dataset, budget, protocol) of the records: one network (self-distillation) gets the per-module and
last-module tables, two networks (online, offline) the pairs table; then the cost table. Cells read
``78.75 ± 0.31 (n=3)``: mean and sample standard deviation (ddof=1) over seeds, last epoch; the best mean of each
column (within a backbone in the per-module table) is bold; ``· Δ ...`` is the difference to the baseline.
Tables are generated, never typed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pandas as pd
from tabulate import tabulate

from discbench.errors import DiscbenchError
from discbench.records import RunRecord
from discbench.reporting import frame as fr
from discbench.reporting import tables
from discbench.reporting.frame import GROUP
from discbench.reporting.stats import MARK

if TYPE_CHECKING:
    from discbench.suites import Suite, SuiteRun


MIXED = "‡"  # a cell whose seeds ran in more than one environment (only with --mix-environments)


def entry_text(entry: tables.Entry) -> str:
    """``**78.75 ± 0.31 (n=3)** · Δ +1.32 [+0.52, +2.12]† · paired [+0.90, +1.74]†``: the cells (bold when best;
    ‡ when their seeds ran in several environments), then the Δ, Welch's and the paired one."""
    text = " / ".join(c.text() + (MIXED if c.mixed else "") for c in entry.cells)
    text = f"**{text}**" if entry.best else text
    if entry.delta is not None:
        text += f" · {entry.delta.short()}"
    if entry.paired is not None and entry.paired.has_interval:
        p = entry.paired
        text += f" · paired [{p.low:+.2f}, {p.high:+.2f}]" + (MARK if p.significant else "")
    return text


def power_text(power: tables.Power | None) -> str:
    """What the table could have detected (a line under it)."""
    if power is None:
        return "Power: no row has two seeds, so no seed spread and no detectable difference."
    at_n = (f"at n = {power.n} seeds per row a difference of {power.detectable:.2f} pp is detected with 80 % power "
            f"(two-sided 5 %, statsmodels TTestIndPower)" if power.detectable == power.detectable  # not NaN
            else f"at n = {power.n} seed per row no difference can be tested")
    text = (f"Power: seed σ pooled over the cells {power.sigma:.2f} pp ({power.dof} degrees of freedom); {at_n}; a "
            f"0.5 pp difference needs {power.seeds_for_half:.0f} seeds per row.")
    if power.delta_cells:
        text += (f" Paired intervals: {power.paired_cells} of {power.delta_cells} Δ cells" +
                 (f", on average {power.narrower:.1f}× narrower than Welch's." if power.paired_cells else "."))
    return text


def table_text(table: tables.Table | None) -> str:
    """A table, its legend, what it could have detected, and its notes."""
    if table is None:
        return "_No runs with exits._"
    headers = ([table.group_header] if table.group_header else []) + [table.row_header]
    headers += [c.header for c in table.columns]
    headers += list(table.tail_headers)
    body = [([row.group] if table.group_header else []) + [row.label] + [entry_text(e) for e in row.entries]
            + list(row.tail) for row in table.rows]
    return "\n".join([tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True), "", table.legend, "",
                      power_text(table.power), *([""] + list(table.notes) if table.notes else [])])


def environments_text(df: pd.DataFrame, mix: bool, where: str) -> str:
    """The environment line of a group of runs; more than one environment is refused unless ``mix``."""
    envs = list(dict.fromkeys(df["environment"]))
    if len(envs) > 1 and not mix:
        raise DiscbenchError(f"the table {where} would mix {len(envs)} environments ({' | '.join(envs)}); train its "
                             f"rows in one environment (machine, threads, torch, commit), or pass --mix-environments "
                             f"to show them together with the mixed cells marked {MIXED}")
    if len(envs) == 1:
        return f"Environment: {envs[0]}."
    return (f"Environments ({MIXED} marks a cell whose seeds ran in several; its Δ compares across them): "
            + "; ".join(f"[{i}] {e}" for i, e in enumerate(envs, 1)) + ".")


COST_LEGEND = ("Extra params: parameters trained beside the network(s) a row reports, exits aside: the loss's "
               "heads, ONE's other branches and gate, FRSKD's self-teacher. Step: training step time (train "
               "seconds / steps, evaluation excluded), mean over seeds; relative to "
               "the baseline row of the same backbone measured on the same device, never across devices. Peak "
               "memory: the largest over seeds; on CPU it is the process's peak resident memory (it includes the "
               "dataset and earlier runs of the same command). Devices:")


def cost_text(cost: tables.CostTable) -> str:
    """Extra parameters, step time (absolute and relative to the baseline on the same device) and peak memory per
    backbone (and partner) x method x device; the devices listed under the table."""
    rows = [{
        "Backbone": r.backbone if r.partner is None else f"{r.backbone} ({r.partner})", "Method": r.label,
        "Extra params ↓": f"{r.loss_params:,}", "Step (ms) ↓": f"{r.step_ms:.1f}",
        "Step vs baseline ↓": f"×{r.relative:.2f}" if r.relative is not None else "— (no baseline on this device)",
        "Peak memory ↓": r.peak_text(), "Device": f"[{cost.devices.index(r.device) + 1}]", "n": r.n,
    } for r in cost.rows]
    return "\n".join([tabulate(rows, headers="keys", tablefmt="pipe", disable_numparse=True), "", COST_LEGEND, "",
                      *(f"- [{i}] {d}" for i, d in enumerate(cost.devices, 1))])


def render(records: Iterable[RunRecord], budget: str | None = None, title: str = "discbench leaderboard",
           order: Iterable[str] = (), across: bool = True, mix: bool = False, layout: str = "modules") -> str:
    """The markdown leaderboard of ``records`` (only ``budget`` if given; rows in ``order`` first, e.g. a suite's).
    A table's records must come from one environment, unless ``mix``. ``layout`` "methods-columns" shows one network's
    last module with methods as columns (MUSE Table 2) instead of the per-module and last-module tables."""
    df = fr.frame(records, order, budget)
    parts = [f"# {title}", "",
             "Top-1 accuracy (%) on the test split at the last epoch, mean ± sample std over seeds (n = seeds). "
             "Generated by `discbench leaderboard` from the run records; do not edit by hand.", ""]
    for (dataset, budget_, protocol), sub in df.groupby(GROUP, sort=True):
        where = f"{dataset} · budget {budget_} · protocol {protocol}"
        parts += [f"## {dataset} · budget `{budget_}` · protocol `{protocol}`", "",
                  environments_text(sub, mix, where), ""]
        if sub["partner"].notna().any():
            parts += ["### Network pairs (MUSE Table 7 layout)", "", table_text(tables.pairs(sub)), ""]
        elif layout == "methods-columns":
            parts += ["### Last module, methods as columns (MUSE Table 2 layout)", "",
                      table_text(tables.methods_as_columns(sub)), ""]
        else:
            parts += ["### Per module (MUSE Table 1 layout)", "", table_text(tables.per_module(sub)), "",
                      "### Last module (MUSE Table 6 layout)", "", table_text(tables.last_module(sub)), ""]
        parts += ["### Cost", "", cost_text(tables.costs(sub)), ""]
    if across:
        parts += ["## Across protocols", "", across_protocols(df), ""]
    return "\n".join(parts)


PROTOCOL_ORDER = ("self", "online", "offline")


def across_protocols(df: pd.DataFrame) -> str:
    """Ranks of the methods (row labels) run under more than one protocol on the same dataset, budget and backbone,
    side by side, with Kendall's tau between every two protocol columns over the methods both ran. A column is a
    protocol (and, for two networks, its partner); a method's value is its ``primary`` top-1 mean."""
    from discbench.reporting.stats import kendall

    if "rank" not in df:
        df = df.assign(rank=0)
    parts = []
    for (dataset, budget, backbone), sub in df.groupby(["dataset", "budget", "backbone"], sort=True):
        columns: dict[str, pd.Series] = {}
        for (protocol, partner), runs in sorted(sub.groupby(["protocol", "partner"], dropna=False),
                                                key=lambda kv: (_protocol_rank(kv[0][0]), str(kv[0][1]))):
            name = protocol if pd.isna(partner) else f"{protocol} (partner {partner})"
            columns[name] = runs.groupby("label")["primary"].mean()
        protocols = sorted({c.split(" ")[0] for c in columns}, key=_protocol_rank)
        parts += [f"### {dataset} · budget `{budget}` · backbone `{backbone}`", ""]
        missing = [p for p in PROTOCOL_ORDER if p not in protocols]
        if len(protocols) < 2:
            parts += [f"Only protocol `{protocols[0]}` has records here; ranks across protocols need runs of the same "
                      f"methods under {' or '.join(f'`{p}`' for p in missing)} on this dataset and backbone.", ""]
            continue
        shared = [label for label in fr.row_order(sub) if sum(label in col.index for col in columns.values()) >= 2]
        ranks = {name: col.rank(ascending=False, method="min") for name, col in columns.items()}
        table = [{"Method": label, **{f"{name} rank (top-1)": (f"{int(ranks[name][label])} ({columns[name][label]:.2f})"
                                                               if label in columns[name].index else "—")
                                      for name in columns}} for label in shared]
        parts += [tabulate(table, headers="keys", tablefmt="pipe", disable_numparse=True), ""]
        names = list(columns)
        taus = []
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                common = [label for label in shared if label in columns[a].index and label in columns[b].index]
                tau, p = kendall([columns[a][k] for k in common], [columns[b][k] for k in common])
                tau_text = f"τ = {tau:+.2f} (p = {p:.2f})" if pd.notna(tau) else "τ undefined"
                taus.append(f"- {a} vs {b}: {tau_text} over {len(common)} methods run under both")
        parts += ["Kendall's tau-b between the rankings (scipy.stats.kendalltau; 1: same order, -1: reversed):", "",
                  *taus, ""]
        if missing:
            parts += [f"No records under {', '.join(f'`{p}`' for p in missing)} for this backbone.", ""]
    return "\n".join(parts).rstrip()


def _protocol_rank(protocol: str) -> int:
    return PROTOCOL_ORDER.index(protocol) if protocol in PROTOCOL_ORDER else len(PROTOCOL_ORDER)


def suite_records(runs: list[SuiteRun], records: Iterable[RunRecord]) -> list[RunRecord]:
    """The records of the suite's (configuration, seed) runs, relabelled with the suite's row labels.

    A record is found by its configuration hash and seed whatever its label (another suite or a plain ``discbench
    run`` may have produced the same configuration first); two rows of one configuration (a negative control: the
    baseline under another label) take their own seeds."""
    label_of = {(r.cfg.request_hash, seed): r.cfg.label for r in runs for seed in r.seeds}
    return [dataclasses.replace(r, label=label_of[(r.request_hash, r.seed)]) for r in records
            if (r.request_hash, r.seed) in label_of]


def missing_runs(runs: list[SuiteRun], records: Iterable[RunRecord]) -> list[str]:
    """``label (backbone): seeds 1, 2`` for every configuration of a suite that lacks records."""
    have = {(r.request_hash, r.seed) for r in records}
    out = []
    for run in runs:
        lacking = [s for s in run.seeds if (run.cfg.request_hash, s) not in have]
        if lacking:
            out.append(f"{run.cfg.label} ({run.cfg.backbone}): seed{'s' if len(lacking) > 1 else ''} "
                       f"{', '.join(map(str, lacking))}")
    return out


def render_suite(suite: Suite, runs: list[SuiteRun], records: Iterable[RunRecord], across: bool = False,
                 mix: bool = False) -> str:
    """The tables of one suite: its runs' records, under the suite's row labels, in the suite's order; runs without
    a record are listed under the tables (a suite with none says so)."""
    from discbench.reporting.reference import section as against_paper

    records = list(records)
    mine = suite_records(runs, records)
    missing = missing_runs(runs, mine)
    paper = against_paper(suite.name, mine)  # MUSE's published cells, for the suites that reproduce its tables
    if not mine:
        return "\n".join([f"# suite `{suite.name}`", "", f"_No run records yet: run 'discbench sweep --suite "
                          f"{suite.name}'._", "", *([paper] if paper else [])])
    if suite.layout == "compression":  # MUSE Table 3
        from discbench.reporting.compression import render_compression

        order = {row.label: i for i, row in enumerate(suite.rows)}
        text = render_compression(sorted(mine, key=lambda r: order.get(r.label, len(order))),
                                  title=f"suite `{suite.name}`")
    else:
        text = render(mine, title=f"suite `{suite.name}`", order=[row.label for row in suite.rows], across=across,
                      mix=mix, layout=suite.layout)
    if missing:
        text += "\n".join(["", "Runs without a record (not in the tables):", "", *(f"- {m}" for m in missing), ""])
    if paper:
        text += "\n" + paper
    return text


def sections(records: list[RunRecord], suites=(), budget: str | None = None, config_path=None,
             mix: bool = False) -> list[tuple]:
    """(name, markdown, records) per suite (records relabelled with the suite's rows), or one section of every record
    (name ``all``) without suites."""
    if not suites:
        if not records:
            raise DiscbenchError("no valid run records found; run 'discbench run' or 'discbench sweep' first")
        chosen = [r for r in records if budget is None or r.budget == budget]
        return [("all", render(records, budget=budget, mix=mix), chosen)]
    from discbench import suites as suite_defs
    from discbench.config import Bench

    return [(name, render_suite(s, runs, records, mix=mix), suite_records(runs, records))
            for name, (s, runs) in zip(suites, suite_defs.resolved(Bench.load(config_path), suites, budget),
                                       strict=True)]


def combine(parts: list[tuple]) -> str:
    """The sections' markdown, then (several suites) the across-protocols section over their records."""
    text = "\n".join(md for _, md, _ in parts)
    union = [r for _, _, recs in parts for r in recs]
    if union and len(parts) > 1:
        text += "\n" + "\n".join(["# Across protocols", "", across_protocols(fr.frame(union)), ""])
    return text


def leaderboard(results_dirs, suites=(), budget: str | None = None, config_path=None, echo=None,
                figures: bool = False, draw_into=None, mix: bool = False, published: bool = False) -> str:
    """What ``discbench leaderboard`` prints: every record's tables, or the tables of ``suites`` followed by the
    across-protocols section over their records; with ``figures`` a Figures section that links
    ``figures/<name>.png`` beside the markdown (drawn into ``draw_into`` when given, else only linked). The
    ``published`` leaderboard takes only records of clean commits."""
    from discbench.records import load
    from discbench.reporting.figures import section

    records = load(results_dirs, echo=echo)
    parts = sections(records, suites, budget, config_path, mix)
    if published:
        unclean = sorted({r.provenance.get("git_commit") or "no git commit" for _, _, recs in parts for r in recs
                          if not r.provenance.get("git_commit") or r.provenance["git_commit"].endswith("-dirty")})
        if unclean:
            raise DiscbenchError(f"published tables come from clean commits; records of {', '.join(unclean)} are not "
                                 f"(rerun them from a clean checkout)")
    text = combine(parts)
    if figures:
        text += "\n" + section(parts, draw_into)[0]
    return text
