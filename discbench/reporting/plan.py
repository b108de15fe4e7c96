"""``discbench plan``: how many seeds a suite needs to detect a difference, and how long they take here, read from the
records that exist before anything more is trained.

For each row: the seeds it has, its top-1 (the tables' primary number) and seed spread, and the training time of
one seed on this machine (the mean wall time of its records whose CPU or GPU is this machine's; records of other
machines are not used for time). For the suite: the seed standard deviation pooled over rows, the seeds per row a
two-sample t-test needs to detect ``detect`` percentage points with 80 % power at a two-sided 5 % level
(``discbench.reporting.stats.seeds_for``; with the paired spread of rows whose seeds pair with the baseline's, the
paired t-test's too), the runs to add, and their time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
from tabulate import tabulate

from discbench.records import RunRecord
from discbench.reporting import frame as fr
from discbench.reporting.stats import seeds_for


@dataclass(frozen=True)
class RowPlan:
    label: str
    backbone: str
    have: int
    mean: float
    std: float
    seconds: float | None  # mean wall seconds of one seed on this machine (None: no record here)
    paired_std: float | None = None  # std of the per-seed differences to the baseline, when the seeds pair


def this_machine() -> str | None:
    """This machine's CPU model (as records name it), read without torch."""
    from discbench.machine import _cpuinfo

    return _cpuinfo()[0]


def _seconds(runs: pd.DataFrame, machine: str | None) -> float | None:
    here = [r for r in runs["record"] if machine and (r.hardware or {}).get("cpu_model") == machine
            and not (r.hardware or {}).get("gpu_name")]
    return sum(r.timing.get("wall_seconds", 0.0) for r in here) / len(here) if here else None


def rows(suite_runs, records: Iterable[RunRecord], machine: str | None) -> list[RowPlan]:
    """One ``RowPlan`` per run of the suite (its configuration), from ``records`` (the suite's, relabelled)."""
    records = list(records)
    df = fr.frame(records) if records else None

    def of(run) -> pd.DataFrame | None:
        if df is None:
            return None
        mine = df[(df["label"] == run.cfg.label) & (df["backbone"] == run.cfg.backbone)]
        return None if mine.empty else mine.set_index("seed")

    baselines = {}
    for run in suite_runs:
        if run.cfg.is_baseline and run.cfg.backbone not in baselines and (found := of(run)) is not None:
            baselines[run.cfg.backbone] = found
    out = []
    for run in suite_runs:
        mine = of(run)
        if mine is None:
            out.append(RowPlan(run.cfg.label, run.cfg.backbone, 0, math.nan, math.nan, None))
            continue
        values, paired = mine["primary"], None
        base = baselines.get(run.cfg.backbone)
        if base is not None and base is not mine:
            shared = sorted(set(values.index) & set(base.index))
            if len(shared) >= 2 and all(mine.at[s, "pairing"] is not None
                                        and mine.at[s, "pairing"] == base.at[s, "pairing"] for s in shared):
                paired = float(pd.Series([values[s] - base.at[s, "primary"] for s in shared]).std(ddof=1))
        out.append(RowPlan(run.cfg.label, run.cfg.backbone, len(values), float(values.mean()),
                           float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                           _seconds(mine, machine), paired))
    return out


def render(suite_name: str, plans: list[RowPlan], seeds_now: int, detect: float, machine: str | None) -> str:
    """The plan as text: a row table, then the seeds and the time a difference of ``detect`` pp needs."""
    from discbench.reporting.stats import detectable

    table = [{"Row": p.label, "Backbone": p.backbone, "seeds": p.have,
              "top-1": "—" if math.isnan(p.mean) else f"{p.mean:.2f}",
              "σ": "—" if math.isnan(p.std) else f"{p.std:.2f}",
              "paired σ of Δ": "—" if p.paired_std is None else f"{p.paired_std:.2f}",
              "s per seed here": "—" if p.seconds is None else f"{p.seconds:.0f}"} for p in plans]
    groups = [p for p in plans if not math.isnan(p.std)]
    sigma, dof = _pooled(groups)
    lines = [f"plan for suite '{suite_name}' ({machine or 'this machine'}), to detect {detect:g} pp "
             f"(two-sided 5 %, 80 % power):", "", tabulate(table, headers="keys", tablefmt="simple",
                                                         disable_numparse=True), ""]
    if not dof:
        lines.append("No row has two seeds yet: train a few (e.g. discbench sweep --suite "
                     f"{suite_name} --seeds 2) and plan again.")
        return "\n".join(lines)
    need = seeds_for(detect, sigma)
    lines.append(f"seed σ pooled over {len(groups)} rows: {sigma:.2f} pp ({dof} degrees of freedom); at the suite's "
                 f"{seeds_now} seeds a difference of {detectable(sigma, seeds_now):.2f} pp is detectable; "
                 f"{detect:g} pp needs {need:.0f} seeds per row (two-sample t-test).")
    paired = [p.paired_std for p in plans if p.paired_std is not None and not math.isnan(p.paired_std)]
    if paired:
        from statsmodels.stats.power import TTestPower

        sd = math.sqrt(sum(s * s for s in paired) / len(paired))
        n_paired = math.ceil(TTestPower().solve_power(effect_size=detect / sd, nobs=None, alpha=0.05, power=0.8,
                                                      alternative="two-sided")) if sd > 0 else 2
        lines.append(f"paired seeds: σ of the per-seed differences to the baseline {sd:.2f} pp over {len(paired)} "
                     f"rows; the paired t-test needs {max(2, n_paired)} seeds per row.")
    to_add = [(p, max(0, int(need) - p.have)) for p in plans]
    runs = sum(n for _, n in to_add)
    known = [(p.seconds, n) for p, n in to_add if n and p.seconds is not None]
    unknown = [p.label for p, n in to_add if n and p.seconds is None]
    seconds = sum(s * n for s, n in known)
    lines.append(f"to add: {runs} runs ({need:.0f} seeds per row); time on this machine: "
                 f"{seconds / 3600:.1f} h for {sum(n for _, n in known)} of them, one process"
                 + (f"; no record of {', '.join(unknown)} on this machine, so its time is unknown" if unknown else "")
                 + ".")
    return "\n".join(lines)


def _pooled(groups: list[RowPlan]) -> tuple[float, int]:
    """Pooled σ from each row's (n, std)."""
    ss = sum((p.have - 1) * p.std ** 2 for p in groups)
    dof = sum(p.have - 1 for p in groups)
    return (math.sqrt(ss / dof), dof) if dof else (math.nan, 0)
