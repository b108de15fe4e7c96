"""MUSE Table 3's layout: the compressed network that self-distillation yields, from run records alone.

A network trained with exits can be cut after module k and answer with exit k. For every backbone and method, the
compressed network is the **smallest** module k whose exit's top-1 (mean over seeds, last epoch) beats the
baseline's full network (the mean of the baseline runs' last classifier); the row gives its top-1, parameters and
FLOPs per image, the full baseline network's, and the reduction factors (baseline / compressed). A method none of
whose exits beats the baseline says so.

Parameters and FLOPs are the records' per-exit cost (``cost.per_exit``, counted by the protocol's ``cost()``): the
inference path of exit k, modules 1..k and exit k's branch (BYOT bottleneck and classifier), for one image at the
dataset's resolution, FLOPs counted by ``torch.utils.flop_counter`` (2 per multiply-add). MUSE's Table 3 counts the
modules alone; the exit branch is what the compressed network also needs to answer.

This module needs neither torch nor the plugins (pandas and tabulate only).
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
from tabulate import tabulate

from discbench.records import RunRecord
from discbench.reporting.frame import exits, runs_frame, top1
from discbench.reporting.tables import Cell


def _millions(value: float) -> str:
    return f"{value / 1e6:.2f} M"


def compression_rows(records: Iterable[RunRecord]) -> list[dict[str, str]]:
    """One row per (backbone, method) of one-network records of one dataset, budget and protocol."""
    rows = []
    df = runs_frame([r for r in records if r.partner is None]) if any(r.partner is None for r in records) else None
    if df is None:
        return rows

    def costs(runs: pd.DataFrame, exit: int) -> tuple[float, float]:
        """Parameters and FLOPs of exit ``exit``'s inference path, from the first run's per-exit cost."""
        record = runs["record"].iloc[0]
        classifier = next(c for c in record.classifiers if c.network == "net" and c.exit == exit)
        c = record.cost["per_exit"][classifier.key]
        return c["params"], c["flops"]

    for backbone, sub in df.groupby("backbone", sort=True):
        base = sub[sub["baseline"]]
        methods = sub[~sub["baseline"]]
        if base.empty:
            rows.append({"Backbone": backbone, "Method": "—", "Baseline top-1": "no baseline runs"})
            continue
        last = next(c for c in base["record"].iloc[0].classifiers if c.last)
        base_top1 = Cell.of(base["first_last"])
        base_params, base_flops = costs(base, last.exit)
        baseline_cells = {"Baseline top-1": base_top1.text(), "Baseline params": _millions(base_params),
                          "Baseline FLOPs": _millions(base_flops)}
        for label in dict.fromkeys(methods["label"]):
            runs = methods[methods["label"] == label]
            row = {"Backbone": backbone, "Method": label, **baseline_cells}
            cells = {i: Cell.of(top1(runs, "net", i)) for i in exits(runs)}
            beating = [i for i, cell in cells.items() if cell.values and cell.mean > base_top1.mean]
            if not beating:
                rows.append({**row, "Module": "no module beats the baseline"})
                continue
            k = beating[0]
            params, flops = costs(runs, k)
            rows.append({**row, "Module": str(k), "top-1 ↑": cells[k].text(),
                         "params ↓": _millions(params), "FLOPs ↓": _millions(flops),
                         "params ×": f"{base_params / params:.1f}×", "FLOPs ×": f"{base_flops / flops:.1f}×"})
    return rows


def compression_table(records: Iterable[RunRecord]) -> str:
    """The markdown table of ``compression_rows`` (blank cells where a row has no compressed network)."""
    rows = compression_rows(records)
    if not rows:
        return "_No one-network runs._"
    columns = ["Backbone", "Method", "Baseline top-1", "Baseline params", "Baseline FLOPs", "Module", "top-1 ↑",
               "params ↓", "FLOPs ↓", "params ×", "FLOPs ×"]
    return tabulate([[r.get(c, "") for c in columns] for r in rows], headers=columns, tablefmt="pipe")


def render_compression(records: Iterable[RunRecord], title: str) -> str:
    """Table 3 for every (dataset, budget, protocol) group of ``records``."""
    records = list(records)
    groups: dict[tuple[str, str, str], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.dataset, r.budget, r.protocol), []).append(r)
    parts = [f"# {title}", "",
             "The smallest module whose exit beats the baseline's full network (top-1 %, mean over seeds, last "
             "epoch), its parameters and FLOPs per image (2 per multiply-add; the exit's inference path: modules "
             "1..k and exit k's branch) against the full baseline network's, and the reduction factors. Generated "
             "by `discbench leaderboard` from the run records; do not edit by hand.", ""]
    for (dataset, budget, protocol), sub in sorted(groups.items()):
        parts += [f"## {dataset} · budget `{budget}` · protocol `{protocol}`", "",
                  "### Compression (MUSE Table 3 layout)", "", compression_table(sub), ""]
    return "\n".join(parts)
