"""Run records as a pandas frame: one row per run, read from the records' typed fields.

Each row holds the run's identity (dataset, budget, protocol, backbone, partner, label, seed...; ``protocol`` is the
table the run joins, ``discbench.api.Protocol.family``: a CS-KD run sits in the self-distillation tables, and
``method_protocol`` the protocol it ran), its cost (the
losses' extra parameters, step time, peak memory, the machine) and its accuracies: ``top1``, a dict from the typed
(network, exit) pair of every evaluated classifier to its final top-1, ``last``, a dict from network to the top-1 of
its own final classifier, and ``primary``, the number a one-value cell shows (the mean of the last top-1 of the
networks whose backbone is the record's: the one network, the student, net1 of a different online pair, both nets of
an identical one). Nothing is parsed back out of a name.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from discbench.catalog import table_protocol
from discbench.errors import DiscbenchError
from discbench.records import RunRecord

GROUP = ["dataset", "budget", "protocol"]


def device_key(r: RunRecord) -> str:
    """The machine a record ran on: step times are compared only between equal keys.

    Records with ``hardware`` name the GPU, or the CPU model with torch's thread count; older records name only the
    device type, the platform string and the thread count, and say that the CPU model is not recorded."""
    hw = r.hardware
    if hw:
        if hw.get("gpu_name"):
            return f"{hw['gpu_name']} (driver {hw.get('gpu_driver') or '?'}, CUDA {hw.get('cuda') or '?'})"
        ext = ", ".join(hw.get("cpu_vector_extensions") or []) or "no vector extensions recorded"
        threads = hw.get("torch_threads")
        return f"{hw.get('cpu_model') or 'unknown CPU'} ({ext}), {threads} thread{'' if threads == 1 else 's'}"
    threads = r.runtime.get("threads", "?")
    name = r.runtime.get("device_name") or r.runtime.get("device") or "cpu"
    return f"{name}, {threads} threads, {r.provenance.get('platform', 'unknown platform')} (CPU model not recorded)"


def environment_key(r: RunRecord) -> str:
    """The environment a record ran in: the machine (``device_key``: CPU model or GPU, torch's threads), the torch
    version and the code (the git commit, ``-dirty`` when the checkout had changes; the discbench version without
    git). Rows of one table are compared only within one environment."""
    code = r.provenance.get("git_commit")
    code = f"commit {code[:12]}{'-dirty' if code.endswith('-dirty') else ''}" if code else \
        f"discbench {r.provenance.get('discbench', '?')} (no git commit)"
    return f"{device_key(r)}; torch {r.provenance.get('torch', '?')}; {code}"


def pairing_key(r: RunRecord) -> tuple | None:
    """What seed k of a run started from (``discbench.seeding``: each network's initial weights and the first
    epoch's order); two runs with equal keys are paired. None for records without fingerprints."""
    f = r.fingerprints or {}
    if not f.get("init") or not f.get("data"):
        return None
    return tuple(sorted(f["init"].items())), f["data"]


def plugin_source(loss: dict) -> str:
    """``my-plugins 0.2.0`` for a loss from a third-party package, "" for a built-in, a baseline or a record written
    before records named the package (the plugin's own ``version`` is part of the configuration hash already)."""
    dist = loss.get("distribution")
    if not dist or dist == "discbench":
        return ""
    return f"{dist} {loss.get('distribution_version') or '?'}"


def primary(r: RunRecord) -> float:
    own = [r.top1(c) for c in r.classifiers if c.last and c.backbone == r.backbone]
    return sum(own) / len(own) if own else r.last_top1(r.networks[0])


def runs_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per record (see the module docstring). Two configurations under one label (bench.toml changed between
    runs), or one configuration run with two versions of a third-party plugin's package, are never averaged
    together: such labels get the configuration hash (and package) appended."""
    rows = []
    for r in records:
        peak = r.cost.get("peak_memory") or {}
        steps_per_second = r.timing["steps_per_second"]
        rows.append({
            "dataset": r.dataset, "budget": r.budget, "protocol": table_protocol(r.protocol),
            "method_protocol": r.protocol, "backbone": r.backbone,
            "partner": r.partner, "label": r.label, "config_hash": r.config_hash, "seed": r.seed,
            "run_id": r.run_id, "loss": r.loss["name"], "loss_source": plugin_source(r.loss), "baseline": r.baseline,
            "loss_params": r.cost["loss_params"], "images_per_second": r.timing["images_per_second"],
            "steps_per_second": steps_per_second, "step_ms": 1000.0 / steps_per_second, "device": device_key(r),
            "peak_bytes": peak.get("bytes"), "peak_kind": peak.get("kind"),
            "teacher_top1": r.teacher["top1"] if r.teacher else None,
            "environment": environment_key(r), "pairing": pairing_key(r),
            "top1": {(c.network, c.exit): r.top1(c) for c in r.classifiers},
            "last": {net: r.last_top1(net) for net in r.networks},
            "first_last": r.last_top1(r.networks[0]), "primary": primary(r), "record": r,
        })
    if not rows:
        raise DiscbenchError("no run records found; run 'discbench run' or 'discbench sweep' first")
    df = pd.DataFrame(rows)
    source = df["loss_source"].map(lambda s: f", {s}" if s else "")
    variant = df["config_hash"] + source
    n_variants = variant.groupby([df[c] for c in [*GROUP, "backbone", "partner", "label"]], dropna=False).transform(
        "nunique")
    df.loc[n_variants > 1, "label"] = df["label"] + " (" + df["config_hash"].str[:6] + source + ")"
    return df


def frame(records: Iterable[RunRecord], order: Iterable[str] = (), budget: str | None = None) -> pd.DataFrame:
    """``runs_frame`` with each label's ``rank`` in ``order`` (a suite's rows; others after), only ``budget``'s runs
    when given."""
    df = runs_frame(records)
    given = {label: i for i, label in enumerate(order)}
    df["rank"] = df["label"].map(lambda label: given.get(label, len(given)))
    if budget is not None:
        df = df[df["budget"] == budget]
        if df.empty:
            raise DiscbenchError(f"no run records with budget '{budget}'")
    return df


def top1(runs: pd.DataFrame, network: str, exit: int) -> pd.Series:
    """The top-1 of classifier (``network``, ``exit``) per run (NaN where a run lacks it)."""
    return runs["top1"].map(lambda scores: scores.get((network, exit), float("nan"))).astype(float)


def last(runs: pd.DataFrame, network: str) -> pd.Series:
    """The top-1 of ``network``'s own final classifier per run."""
    return runs["last"].map(lambda scores: scores.get(network, float("nan"))).astype(float)


def exits(runs: pd.DataFrame, network: str = "net") -> list[int]:
    """The exits of ``network`` that some run evaluated, in order."""
    return sorted({e for scores in runs["top1"] for (n, e) in scores if n == network})


def row_order(df: pd.DataFrame) -> list[str]:
    """Labels by their given rank (a suite's order), then baselines first, then rows without a discrepancy, then the
    rest, by label within each."""
    info = df.groupby("label").agg(rank=("rank", "min"), baseline=("baseline", "all"), loss=("loss", "first"))
    return sorted(info.index, key=lambda label: (info.at[label, "rank"], not info.at[label, "baseline"],
                                                 info.at[label, "loss"] != "", label))


def baseline_label(df: pd.DataFrame) -> str | None:
    base = df[df["baseline"]]
    return row_order(base)[0] if not base.empty else None
