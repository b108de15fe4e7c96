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

from discbench.results import RunRecord


def _mean_std(values: pd.Series) -> str:
    values = values.dropna()
    if len(values) > 1:
        return f"{values.mean():.2f} ± {values.std(ddof=1):.2f} (n={len(values)})"
    return f"{values.mean():.2f} (n={len(values)})"


def _millions(value: float) -> str:
    return f"{value / 1e6:.2f} M"


def compression_rows(records: Iterable[RunRecord]) -> list[dict[str, str]]:
    """One row per (backbone, method) of one-network records of one dataset, budget and protocol."""
    rows = []
    per = [{"backbone": r.backbone, "label": r.label, "baseline": r.baseline, "seed": r.seed,
            **{f"top1/{k}": v for k, v in r.final_top1.items()}, "top1/last": r.last_top1(r.networks[0]),
            **{f"params/{k}": c["params"] for k, c in r.cost.get("per_exit", {}).items()},
            **{f"flops/{k}": c["flops"] for k, c in r.cost.get("per_exit", {}).items()},
            "last_key": next(c.key for c in r.classifiers if c.last)}
           for r in records if r.partner is None]
    if not per:
        return rows
    df = pd.DataFrame(per)
    for backbone, sub in df.groupby("backbone", sort=True):
        base = sub[sub["baseline"]]
        methods = sub[~sub["baseline"]]
        if base.empty:
            rows.append({"Backbone": backbone, "Method": "—", "Baseline top-1": "no baseline runs"})
            continue
        key = base["last_key"].iloc[0]
        base_top1 = base["top1/last"].mean()
        base_params, base_flops = base[f"params/{key}"].iloc[0], base[f"flops/{key}"].iloc[0]
        baseline_cells = {"Baseline top-1": _mean_std(base["top1/last"]), "Baseline params": _millions(base_params),
                          "Baseline FLOPs": _millions(base_flops)}
        labels = list(dict.fromkeys(methods["label"]))
        for label in labels:
            runs = methods[methods["label"] == label]
            exits = sorted((c.removeprefix("top1/") for c in runs.columns
                            if c.startswith("top1/net/exit") and runs[c].notna().any()),
                           key=lambda k: int(k.removeprefix("net/exit")))
            row = {"Backbone": backbone, "Method": label, **baseline_cells}
            beating = [k for k in exits if runs[f"top1/{k}"].mean() > base_top1]
            if not beating:
                rows.append({**row, "Module": "no module beats the baseline"})
                continue
            k = beating[0]
            params, flops = runs[f"params/{k}"].iloc[0], runs[f"flops/{k}"].iloc[0]
            rows.append({**row, "Module": k.removeprefix("net/exit"), "top-1 ↑": _mean_std(runs[f"top1/{k}"]),
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
