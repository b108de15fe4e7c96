"""Run records -> pandas -> tabulate -> markdown leaderboards. Tables are generated, never typed.

For every (dataset, budget, protocol) the leaderboard has these tables:

1. one network (self-distillation): MUSE Table 1's layout, per-module top-1 of each backbone x method, with the
   baseline runs' top-1 as the Baseline column (a record says whether it is a baseline: its protocol decides from
   its configuration), and MUSE Table 6's layout, last-module top-1 of each method (rows) per backbone (columns);
2. two networks (online, offline): MUSE Table 7's layout, one column per network pair;
3. cost: the losses' extra parameters and the training throughput.

Cells read ``78.75 ± 0.31 (n=3)``: mean and sample standard deviation (ddof=1) over seeds, last epoch. The best
mean of each column (within a backbone in table 1) is bold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import pandas as pd
from tabulate import tabulate

from discbench.config import RunConfig, Suite
from discbench.errors import DiscbenchError
from discbench.results import RunRecord

GROUP = ["dataset", "budget", "protocol"]


def records_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per record: identity columns, ``top1/<classifier key>`` per classifier, ``last/<network>`` (each
    network's own final classifier) and cost columns. Everything is read from the record's typed fields."""
    rows = []
    for r in records:
        row = {
            "dataset": r.dataset, "budget": r.budget, "protocol": r.protocol, "backbone": r.backbone,
            "partner": r.partner, "label": r.label, "config_hash": r.config_hash, "seed": r.seed,
            "loss": r.loss["name"], "loss_source": plugin_source(r.loss), "baseline": r.baseline,
            "loss_params": r.cost["loss_params"],
            "images_per_second": r.timing["images_per_second"], "steps_per_second": r.timing["steps_per_second"],
            "teacher_top1": r.teacher["top1"] if r.teacher else None,
        }
        row.update({f"top1/{k}": v for k, v in r.final_top1.items()})
        row.update({f"last/{net}": r.last_top1(net) for net in r.networks})
        row["top1/last"] = r.last_top1(r.networks[0])
        rows.append(row)
    if not rows:
        raise DiscbenchError("no run records found; run 'discbench run' or 'discbench sweep' first")
    df = pd.DataFrame(rows)
    # Two configurations under one label (e.g. bench.toml changed between runs), or one configuration run with two
    # versions of a third-party plugin's package, must not be averaged together.
    source = df["loss_source"].map(lambda s: f", {s}" if s else "")
    df["variant"] = df["config_hash"] + source
    n_variants = df.groupby([*GROUP, "backbone", "partner", "label"], dropna=False)["variant"].transform("nunique")
    df.loc[n_variants > 1, "label"] = df["label"] + " (" + df["config_hash"].str[:6] + source + ")"
    return df.drop(columns="variant")


def plugin_source(loss: dict) -> str:
    """``my-plugins 0.2.0`` for a loss from a third-party package, "" for a built-in, a baseline or a record written
    before records named the package (the plugin's own ``version`` is part of the configuration hash already)."""
    dist = loss.get("distribution")
    if not dist or dist == "discbench":
        return ""
    return f"{dist} {loss.get('distribution_version') or '?'}"


def cell(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "—"
    if len(values) == 1:
        return f"{values.mean():.2f} (n=1)"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f} (n={len(values)})"


def _bold_best(table: pd.DataFrame, means: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    table = table.copy()
    for col in columns:
        best = means[col].max()
        if pd.notna(best):
            hit = means[col] == best
            table.loc[hit, col] = "**" + table.loc[hit, col] + "**"
    return table


def _row_order(df: pd.DataFrame) -> list[str]:
    """Rows by their given rank (a suite's order), then baselines first, then rows without a discrepancy, then the
    rest, by label within each."""
    info = df.groupby("label").agg(rank=("rank", "min"), baseline=("baseline", "all"), loss=("loss", "first"))
    return sorted(info.index, key=lambda label: (info.at[label, "rank"], not info.at[label, "baseline"],
                                                 info.at[label, "loss"] != "", label))


def _exit_columns(df: pd.DataFrame) -> list[str]:
    """The one network's exit columns (``top1/net/exit<i>``) that have values, by exit."""
    cols = [c for c in df.columns if c.startswith("top1/net/exit") and df[c].notna().any()]
    return sorted(cols, key=lambda c: int(c.removeprefix("top1/net/exit")))


def per_module_table(df: pd.DataFrame) -> str:
    """MUSE Table 1 layout: backbone x method rows, Module 1..T columns, Baseline column."""
    exits = _exit_columns(df)
    headers = [f"Module {c.removeprefix('top1/net/exit')} ↑" for c in exits]
    blocks = []
    for backbone, sub in df.groupby("backbone", sort=True):
        baseline = sub[sub["baseline"]]
        rows = sub[~sub["baseline"]]
        labels = _row_order(rows) if not rows.empty else []
        table = pd.DataFrame(index=labels, columns=headers, dtype=object)
        means = pd.DataFrame(index=labels, columns=headers, dtype=float)
        for label in labels:
            runs = rows[rows["label"] == label]
            for col, head in zip(exits, headers, strict=True):
                table.loc[label, head] = cell(runs[col])
                means.loc[label, head] = runs[col].mean()
        table = _bold_best(table, means, headers)
        table.insert(0, "Method", labels)
        table.insert(0, "Backbone", backbone)
        table["Baseline ↑"] = cell(baseline["top1/last"]) if not baseline.empty else "—"
        blocks.append(table)
    if not blocks or all(b.empty for b in blocks):
        return "_No runs with exits._"
    return tabulate(pd.concat(blocks), headers="keys", tablefmt="pipe", showindex=False)


def last_module_table(df: pd.DataFrame) -> str:
    """MUSE Table 6 layout: methods as rows, backbones as columns, last-module top-1."""
    backbones = sorted(df["backbone"].unique())
    labels = _row_order(df)
    heads = [f"{b} ↑" for b in backbones]
    table = pd.DataFrame(index=labels, columns=heads, dtype=object)
    means = pd.DataFrame(index=labels, columns=heads, dtype=float)
    for label in labels:
        for backbone, head in zip(backbones, heads, strict=True):
            runs = df[(df["label"] == label) & (df["backbone"] == backbone)]
            table.loc[label, head] = cell(runs["top1/last"])
            means.loc[label, head] = runs["top1/last"].mean()
    table = _bold_best(table, means, heads)
    table.insert(0, "Method", labels)
    return tabulate(table, headers="keys", tablefmt="pipe", showindex=False)


def pair_table(df: pd.DataFrame) -> str:
    """MUSE Table 7 layout for two-network protocols: methods as rows, one column per network pair.

    Online (Table 7(a)): columns ``net1 / net2``; an identical pair is one cell, the mean of the two networks per
    seed (as the paper reports it), a different pair is ``net1 / net2``. Offline (Table 7(b)): columns
    ``teacher (its top-1) → student``, the student's top-1.
    """
    columns = df[["backbone", "partner"]].drop_duplicates()
    columns = columns.assign(different=columns["backbone"] != columns["partner"])  # identical pairs first, as MUSE
    columns = columns.sort_values(["different", "backbone", "partner"])[["backbone", "partner"]]
    labels = _row_order(df)
    table = pd.DataFrame(index=labels, dtype=object)
    means = pd.DataFrame(index=labels, dtype=float)
    heads = []
    for backbone, partner in columns.itertuples(index=False):
        runs = df[(df["backbone"] == backbone) & (df["partner"] == partner)]
        offline = runs["teacher_top1"].notna().any()
        if offline:
            head = f"{partner} ({runs['teacher_top1'].mean():.2f}) → {backbone} ↑"
        else:
            head = f"{backbone} / {partner} ↑"
        heads.append(head)
        for label in labels:
            mine = runs[runs["label"] == label]
            if offline:
                values = mine["last/student"]
            elif backbone == partner:
                values = (mine["last/net1"] + mine["last/net2"]) / 2
            else:
                table.loc[label, head] = f"{cell(mine['last/net1'])} / {cell(mine['last/net2'])}"
                means.loc[label, head] = mine["last/net1"].mean()
                continue
            table.loc[label, head] = cell(values)
            means.loc[label, head] = values.mean()
    table = _bold_best(table.fillna("—"), means, heads)
    table.insert(0, "Method", labels)
    return tabulate(table, headers="keys", tablefmt="pipe", showindex=False)


def cost_table(df: pd.DataFrame) -> str:
    """Extra parameters of the losses and training throughput per backbone (and partner) x method."""
    rows = []
    for (backbone, partner, label), runs in df.groupby(["backbone", "partner", "label"], sort=False, dropna=False):
        rows.append({
            "Backbone": backbone if pd.isna(partner) else f"{backbone} ({partner})", "Method": label,
            "Loss params ↓": f"{int(runs['loss_params'].iloc[0]):,}",
            "Train images/s ↑": f"{runs['images_per_second'].mean():.0f}",
            "Steps/s ↑": f"{runs['steps_per_second'].mean():.2f}",
        })
    order = {label: i for i, label in enumerate(_row_order(df))}
    rows.sort(key=lambda r: (r["Backbone"], order[r["Method"]]))
    return tabulate(rows, headers="keys", tablefmt="pipe")


def render(records: Iterable[RunRecord], budget: str | None = None, title: str = "discbench leaderboard",
           order: Iterable[str] = ()) -> str:
    """The markdown leaderboard of ``records`` (only ``budget`` if given; rows in ``order`` first, e.g. a suite's)."""
    df = records_frame(records)
    given = {label: i for i, label in enumerate(order)}
    df["rank"] = df["label"].map(lambda label: given.get(label, len(given)))
    if budget is not None:
        df = df[df["budget"] == budget]
        if df.empty:
            raise DiscbenchError(f"no run records with budget '{budget}'")
    parts = [f"# {title}", "",
             "Top-1 accuracy (%) on the test split at the last epoch, mean ± sample std over seeds (n = seeds). "
             "Generated by `discbench leaderboard` from the run records; do not edit by hand.", ""]
    for (dataset, budget_, protocol), sub in df.groupby(GROUP, sort=True):
        parts += [f"## {dataset} · budget `{budget_}` · protocol `{protocol}`", ""]
        if sub["partner"].notna().any():
            parts += ["### Network pairs (MUSE Table 7 layout)", "", pair_table(sub), ""]
        else:
            parts += ["### Per module (MUSE Table 1 layout)", "", per_module_table(sub), "",
                      "### Last module (MUSE Table 6 layout)", "", last_module_table(sub), ""]
        parts += ["### Cost", "", cost_table(sub), ""]
    return "\n".join(parts)


def render_suite(suite: Suite, configs: list[RunConfig], seeds: int, records: Iterable[RunRecord]) -> str:
    """The tables of one suite: its configurations' records for seeds 0..seeds-1, under the suite's row labels.

    A record is found by its configuration hash whatever its label (another suite or a plain ``discbench run`` may
    have produced the same configuration first), so the labels are the suite's, in the suite's order.
    """
    label_of = {c.request_hash: c.label for c in configs}
    mine = [dataclasses.replace(r, label=label_of[r.request_hash]) for r in records
            if r.request_hash in label_of and r.seed < seeds]
    if not mine:
        raise DiscbenchError(f"suite '{suite.name}' has no run records yet; run 'discbench sweep --suite {suite.name}'")
    if suite.layout == "compression":  # MUSE Table 3
        from discbench.compression import render_compression

        order = {row.label: i for i, row in enumerate(suite.rows)}
        return render_compression(sorted(mine, key=lambda r: order.get(r.label, len(order))),
                                  title=f"suite `{suite.name}`")
    return render(mine, title=f"suite `{suite.name}`", order=[row.label for row in suite.rows])
