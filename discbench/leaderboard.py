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
LEGEND = ("Δ: difference of means to the baseline row `{base}` of the same column, with its 95 % confidence "
          "interval from Welch's t-test (scipy.stats, unequal variances, seeds unpaired); † marks an interval that "
          "excludes 0; n is the number of seeds.")


def device_key(r: RunRecord) -> tuple[str, str]:
    """(key, description) of the machine a record ran on: step times are compared only between equal keys.

    Records with ``hardware`` name the GPU, or the CPU model with torch's thread count; older records name only the
    device type, the platform string and the thread count, and say that the CPU model is not recorded."""
    hw = r.hardware
    if hw:
        if hw.get("gpu_name"):
            desc = f"{hw['gpu_name']} (driver {hw.get('gpu_driver') or '?'}, CUDA {hw.get('cuda') or '?'})"
        else:
            ext = ", ".join(hw.get("cpu_vector_extensions") or []) or "no vector extensions recorded"
            threads = hw.get("torch_threads")
            desc = f"{hw.get('cpu_model') or 'unknown CPU'} ({ext}), {threads} thread{'' if threads == 1 else 's'}"
        return desc, desc
    threads = r.runtime.get("threads", "?")
    name = r.runtime.get("device_name") or r.runtime.get("device") or "cpu"
    desc = f"{name}, {threads} threads, {r.provenance.get('platform', 'unknown platform')} (CPU model not recorded)"
    return desc, desc


def records_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per record: identity columns, ``top1/<classifier key>`` per classifier, ``last/<network>`` (each
    network's own final classifier), ``primary`` (the mean of the last top-1 of the networks whose backbone is the
    record's: the one network, the student, net1 of a different online pair, both nets of an identical one) and cost
    columns. Everything is read from the record's typed fields."""
    rows = []
    for r in records:
        peak = r.cost.get("peak_memory") or {}
        device, _ = device_key(r)
        steps_per_second = r.timing["steps_per_second"]
        row = {
            "dataset": r.dataset, "budget": r.budget, "protocol": r.protocol, "backbone": r.backbone,
            "partner": r.partner, "label": r.label, "config_hash": r.config_hash, "seed": r.seed,
            "run_id": r.run_id, "loss": r.loss["name"], "loss_source": plugin_source(r.loss), "baseline": r.baseline,
            "loss_params": r.cost["loss_params"],
            "images_per_second": r.timing["images_per_second"], "steps_per_second": steps_per_second,
            "step_ms": 1000.0 / steps_per_second, "device": device,
            "peak_bytes": peak.get("bytes"), "peak_kind": peak.get("kind"),
            "teacher_top1": r.teacher["top1"] if r.teacher else None,
        }
        row.update({f"top1/{k}": v for k, v in r.final_top1.items()})
        row.update({f"last/{net}": r.last_top1(net) for net in r.networks})
        row["top1/last"] = r.last_top1(r.networks[0])
        own = [r.last_top1(c.network) for c in r.classifiers if c.last and c.backbone == r.backbone]
        row["primary"] = sum(own) / len(own) if own else row["top1/last"]
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


def _values(values: pd.Series) -> list[float]:
    return [float(v) for v in values.dropna()]


def _delta(values: pd.Series, base: pd.Series | None) -> str:
    """`` · Δ ...`` of ``values`` against the baseline's values, or "" when either is missing."""
    from discbench.stats import welch

    a, b = _values(values), _values(base) if base is not None else []
    if not a or not b:
        return ""
    return " · " + welch(a, b).short()


def _runner_up_lines(samples: dict[str, dict[str, pd.Series]], title: str = "") -> list[str]:
    """Per column: the best row against the runner-up (Welch), and whether the best is significantly better.

    ``samples`` maps column -> {row label -> per-seed values} (rows without values left out)."""
    from discbench.stats import welch

    lines = []
    for col, rows in samples.items():
        rows = {k: _values(v) for k, v in rows.items() if _values(v)}
        if len(rows) < 2:
            continue
        ranked = sorted(rows, key=lambda k: -sum(rows[k]) / len(rows[k]))
        best, second = ranked[:2]
        d = welch(rows[best], rows[second])
        verdict = ("significantly better than the runner-up" if d.significant and d.diff > 0 else
                   "**not significantly better than the runner-up**")
        lines.append(f"- {title}{col.removesuffix(' ↑')}: best `{best}` vs runner-up `{second}`: {d.short()} "
                     f"(n={d.n_a} vs {d.n_b}); the best row is {verdict}.")
    return lines


def _legend(base: str | None) -> str:
    if base is None:
        return "No baseline row in this table: no Δ. n is the number of seeds."
    return LEGEND.format(base=base)


def _baseline_label(df: pd.DataFrame) -> str | None:
    base = df[df["baseline"]]
    return _row_order(base)[0] if not base.empty else None


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
    """MUSE Table 1 layout: backbone x method rows, Module 1..T columns, Baseline column; every cell's Δ is against
    the Baseline column (the plain network's top-1), the table's own comparison."""
    exits = _exit_columns(df)
    headers = [f"Module {c.removeprefix('top1/net/exit')} ↑" for c in exits]
    blocks, notes = [], []
    for backbone, sub in df.groupby("backbone", sort=True):
        baseline = sub[sub["baseline"]]
        base_values = baseline["top1/last"] if not baseline.empty else None
        rows = sub[~sub["baseline"]]
        labels = _row_order(rows) if not rows.empty else []
        table = pd.DataFrame(index=labels, columns=headers, dtype=object)
        means = pd.DataFrame(index=labels, columns=headers, dtype=float)
        deltas = pd.DataFrame(index=labels, columns=headers, dtype=object)
        samples: dict[str, dict[str, pd.Series]] = {h: {} for h in headers}
        for label in labels:
            runs = rows[rows["label"] == label]
            for col, head in zip(exits, headers, strict=True):
                table.loc[label, head] = cell(runs[col])
                means.loc[label, head] = runs[col].mean()
                deltas.loc[label, head] = _delta(runs[col], base_values)
                samples[head][label] = runs[col]
        table = _bold_best(table, means, headers)
        for head in headers:
            table[head] = table[head] + deltas[head].fillna("")
        table.insert(0, "Method", labels)
        table.insert(0, "Backbone", backbone)
        table["Baseline ↑"] = cell(baseline["top1/last"]) if not baseline.empty else "—"
        blocks.append(table)
        notes += _runner_up_lines(samples, title=f"{backbone}, ")
    if not blocks or all(b.empty for b in blocks):
        return "_No runs with exits._"
    legend = ("Δ: difference of means to the Baseline column (the plain network of the same backbone), with its 95 % "
              "confidence interval from Welch's t-test (scipy.stats, unequal variances, seeds unpaired); † marks an "
              "interval that excludes 0; n is the number of seeds.")
    return "\n".join([tabulate(pd.concat(blocks), headers="keys", tablefmt="pipe", showindex=False), "", legend,
                      *([""] + notes if notes else [])])


def last_module_table(df: pd.DataFrame) -> str:
    """MUSE Table 6 layout: methods as rows, backbones as columns, last-module top-1; Δ against the baseline row."""
    backbones = sorted(df["backbone"].unique())
    labels = _row_order(df)
    base = _baseline_label(df)
    heads = [f"{b} ↑" for b in backbones]
    table = pd.DataFrame(index=labels, columns=heads, dtype=object)
    means = pd.DataFrame(index=labels, columns=heads, dtype=float)
    deltas = pd.DataFrame(index=labels, columns=heads, dtype=object)
    samples: dict[str, dict[str, pd.Series]] = {h: {} for h in heads}
    for backbone, head in zip(backbones, heads, strict=True):
        base_runs = df[(df["label"] == base) & (df["backbone"] == backbone)]["top1/last"] if base else None
        for label in labels:
            runs = df[(df["label"] == label) & (df["backbone"] == backbone)]
            table.loc[label, head] = cell(runs["top1/last"])
            means.loc[label, head] = runs["top1/last"].mean()
            deltas.loc[label, head] = "" if label == base else _delta(runs["top1/last"], base_runs)
            samples[head][label] = runs["top1/last"]
    table = _bold_best(table, means, heads)
    for head in heads:
        table[head] = table[head] + deltas[head].fillna("")
    table.insert(0, "Method", labels)
    notes = _runner_up_lines(samples)
    return "\n".join([tabulate(table, headers="keys", tablefmt="pipe", showindex=False), "", _legend(base),
                      *([""] + notes if notes else [])])


def pair_columns(df: pd.DataFrame) -> list[tuple[str, str, str, bool]]:
    """(backbone, partner, header, offline) of each network pair, identical pairs first (as MUSE)."""
    columns = df[["backbone", "partner"]].drop_duplicates()
    columns = columns.assign(different=columns["backbone"] != columns["partner"])
    columns = columns.sort_values(["different", "backbone", "partner"])[["backbone", "partner"]]
    out = []
    for backbone, partner in columns.itertuples(index=False):
        runs = df[(df["backbone"] == backbone) & (df["partner"] == partner)]
        offline = bool(runs["teacher_top1"].notna().any())
        head = (f"{partner} ({runs['teacher_top1'].mean():.2f}) → {backbone} ↑" if offline
                else f"{backbone} / {partner} ↑")
        out.append((backbone, partner, head, offline))
    return out


def pair_values(runs: pd.DataFrame, offline: bool, identical: bool) -> list[pd.Series]:
    """The per-seed values of a pair cell: the student (offline); the mean of both networks (an identical online
    pair, as the paper reports it); net1 and net2 side by side (a different pair)."""
    if offline:
        return [runs["last/student"]]
    if identical:
        return [(runs["last/net1"] + runs["last/net2"]) / 2]
    return [runs["last/net1"], runs["last/net2"]]


def pair_table(df: pd.DataFrame) -> str:
    """MUSE Table 7 layout for two-network protocols: methods as rows, one column per network pair.

    Online (Table 7(a)): columns ``net1 / net2``; an identical pair is one cell, the mean of the two networks per
    seed (as the paper reports it), a different pair is ``net1 / net2``. Offline (Table 7(b)): columns
    ``teacher (its top-1) → student``, the student's top-1. Δ against the baseline row of the same column (for a
    different pair: net1's).
    """
    labels = _row_order(df)
    base = _baseline_label(df)
    table = pd.DataFrame(index=labels, dtype=object)
    means = pd.DataFrame(index=labels, dtype=float)
    deltas = pd.DataFrame(index=labels, dtype=object)
    heads = []
    samples: dict[str, dict[str, pd.Series]] = {}
    for backbone, partner, head, offline in pair_columns(df):
        runs = df[(df["backbone"] == backbone) & (df["partner"] == partner)]
        heads.append(head)
        samples[head] = {}
        base_values = pair_values(runs[runs["label"] == base], offline, backbone == partner) if base else None
        for label in labels:
            values = pair_values(runs[runs["label"] == label], offline, backbone == partner)
            table.loc[label, head] = " / ".join(cell(v) for v in values)
            means.loc[label, head] = values[0].mean()
            deltas.loc[label, head] = "" if label == base or base_values is None else _delta(values[0],
                                                                                            base_values[0])
            samples[head][label] = values[0]
    table = _bold_best(table.fillna("—"), means, heads)
    for head in heads:
        table[head] = table[head] + deltas[head].fillna("")
    table.insert(0, "Method", labels)
    notes = _runner_up_lines(samples)
    return "\n".join([tabulate(table, headers="keys", tablefmt="pipe", showindex=False), "", _legend(base),
                      *([""] + notes if notes else [])])


def _mib(values: pd.Series, kinds: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "not recorded"
    kind = {"cuda_max_memory_allocated": "CUDA max allocated", "cpu_process_peak_rss": "CPU process peak RSS"}
    labels = sorted({kind.get(k, str(k)) for k in kinds.dropna()})
    return f"{values.max() / 2**20:,.0f} MiB ({', '.join(labels)})"


def cost_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (backbone, partner, method, device): extra parameters of the loss, step time (ms, mean over
    seeds), step time relative to the ``none`` (baseline) row of the same backbone and partner on the same device
    (never across devices), and the peak memory of a run."""
    rows = []
    for (backbone, partner, label, device), runs in df.groupby(["backbone", "partner", "label", "device"],
                                                               sort=False, dropna=False):
        base = df[(df["backbone"] == backbone) & (df["device"] == device) & df["baseline"]
                  & ((df["partner"] == partner) | (df["partner"].isna() & pd.isna(partner)))]
        step = runs["step_ms"].mean()
        rows.append({"backbone": backbone, "partner": partner, "label": label, "device": device,
                     "loss_params": int(runs["loss_params"].iloc[0]), "step_ms": step,
                     "relative": step / base["step_ms"].mean() if not base.empty else None,
                     "peak": _mib(runs["peak_bytes"], runs["peak_kind"]), "n": len(runs)})
    return pd.DataFrame(rows)


def cost_table(df: pd.DataFrame) -> str:
    """Extra parameters of the losses, step time (absolute and relative to the baseline on the same device) and peak
    memory, per backbone (and partner) x method x device; devices are listed under the table."""
    costs = cost_frame(df)
    devices = list(dict.fromkeys(costs["device"]))
    order = {label: i for i, label in enumerate(_row_order(df))}
    costs = costs.assign(order=costs["label"].map(order)).sort_values(["backbone", "partner", "order", "device"],
                                                                      na_position="first")
    rows = [{
        "Backbone": r.backbone if pd.isna(r.partner) else f"{r.backbone} ({r.partner})", "Method": r.label,
        "Loss params ↓": f"{r.loss_params:,}", "Step (ms) ↓": f"{r.step_ms:.1f}",
        "Step vs baseline ↓": f"×{r.relative:.2f}" if pd.notna(r.relative) else "— (no baseline on this device)",
        "Peak memory ↓": r.peak, "Device": f"[{devices.index(r.device) + 1}]", "n": r.n,
    } for r in costs.itertuples()]
    legend = ["Step: training step time (train seconds / steps, evaluation excluded), mean over seeds; relative to "
              "the baseline row of the same backbone measured on the same device, never across devices. Peak "
              "memory: the largest over seeds; on CPU it is the process's peak resident memory (it includes the "
              "dataset and earlier runs of the same command). Devices:"]
    legend += [f"[{i}] {d}" for i, d in enumerate(devices, 1)]
    return "\n".join([tabulate(rows, headers="keys", tablefmt="pipe", disable_numparse=True), "",
                      legend[0], "", *(f"- {d}" for d in legend[1:])])


PROTOCOL_ORDER = ("self", "online", "offline")


def across_protocols(df: pd.DataFrame) -> str:
    """Ranks of the methods (row labels) run under more than one protocol on the same dataset, budget and backbone,
    side by side, with Kendall's tau between every two protocol columns over the methods both ran. A column is a
    protocol (and, for two networks, its partner); a method's value is its ``primary`` top-1 mean."""
    from discbench.stats import kendall

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
        shared = [label for label in _row_order(sub) if sum(label in col.index for col in columns.values()) >= 2]
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


def render(records: Iterable[RunRecord], budget: str | None = None, title: str = "discbench leaderboard",
           order: Iterable[str] = (), across: bool = True) -> str:
    """The markdown leaderboard of ``records`` (only ``budget`` if given; rows in ``order`` first, e.g. a suite's)."""
    df = _frame(records, order, budget)
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
    if across:
        parts += ["## Across protocols", "", across_protocols(df), ""]
    return "\n".join(parts)


def _frame(records: Iterable[RunRecord], order: Iterable[str] = (), budget: str | None = None) -> pd.DataFrame:
    df = records_frame(records)
    given = {label: i for i, label in enumerate(order)}
    df["rank"] = df["label"].map(lambda label: given.get(label, len(given)))
    if budget is not None:
        df = df[df["budget"] == budget]
        if df.empty:
            raise DiscbenchError(f"no run records with budget '{budget}'")
    return df


def suite_records(suite: Suite, configs: list[RunConfig], seeds: int, records: Iterable[RunRecord]) -> list[RunRecord]:
    """The suite's configurations' records for seeds 0..seeds-1, relabelled with the suite's row labels.

    A record is found by its configuration hash whatever its label (another suite or a plain ``discbench run`` may
    have produced the same configuration first)."""
    label_of = {c.request_hash: c.label for c in configs}
    return [dataclasses.replace(r, label=label_of[r.request_hash]) for r in records
            if r.request_hash in label_of and r.seed < seeds]


def missing_runs(configs: list[RunConfig], seeds: int, records: Iterable[RunRecord]) -> list[str]:
    """``label (backbone): seeds 1, 2`` for every configuration of a suite that lacks records."""
    have = {(r.request_hash, r.seed) for r in records}
    out = []
    for c in configs:
        lacking = [s for s in range(seeds) if (c.request_hash, s) not in have]
        if lacking:
            out.append(f"{c.label} ({c.backbone}): seed{'s' if len(lacking) > 1 else ''} "
                       f"{', '.join(map(str, lacking))}")
    return out


def render_suite(suite: Suite, configs: list[RunConfig], seeds: int, records: Iterable[RunRecord],
                 across: bool = False) -> str:
    """The tables of one suite: its configurations' records for seeds 0..seeds-1, under the suite's row labels, in
    the suite's order; runs without a record are listed under the tables (a suite with none says so)."""
    records = list(records)
    mine = suite_records(suite, configs, seeds, records)
    missing = missing_runs(configs, seeds, mine)
    if not mine:
        return "\n".join([f"# suite `{suite.name}`", "", f"_No run records yet: run 'discbench sweep --suite "
                          f"{suite.name}'._", ""])
    if suite.layout == "compression":  # MUSE Table 3
        from discbench.compression import render_compression

        order = {row.label: i for i, row in enumerate(suite.rows)}
        text = render_compression(sorted(mine, key=lambda r: order.get(r.label, len(order))),
                                  title=f"suite `{suite.name}`")
    else:
        text = render(mine, title=f"suite `{suite.name}`", order=[row.label for row in suite.rows], across=across)
    if missing:
        text += "\n".join(["", "Runs without a record (not in the tables):", "", *(f"- {m}" for m in missing), ""])
    return text


def sections(records: list[RunRecord], suites=(), budget: str | None = None, config_path=None) -> list[tuple]:
    """(name, markdown, records) per suite (records relabelled with the suite's rows), or one section of every record
    (name ``all``) without suites."""
    if not suites:
        if not records:
            raise DiscbenchError("no valid run records found; run 'discbench run' or 'discbench sweep' first")
        chosen = [r for r in records if budget is None or r.budget == budget]
        return [("all", render(records, budget=budget), chosen)]
    from discbench.config import Bench

    bench = Bench.load(config_path)
    out = []
    for name in suites:
        s = bench.suite(name)
        configs = bench.suite_configs(s, budget)
        out.append((name, render_suite(s, configs, s.seeds, records), suite_records(s, configs, s.seeds, records)))
    return out


def combine(parts: list[tuple]) -> str:
    """The sections' markdown, then (several suites) the across-protocols section over their records."""
    text = "\n".join(md for _, md, _ in parts)
    union = [r for _, _, recs in parts for r in recs]
    if union and len(parts) > 1:
        text += "\n" + "\n".join(["# Across protocols", "", across_protocols(_frame(union)), ""])
    return text
