"""Figures from run records (matplotlib, imported on first use), written as PNG and SVG.

- ``term_figure``: MUSE Figs. 2 and 3, the MI and SI loss of every module over training steps for one row (MI+SI,
  MI×SI or any loss whose terms include ``mi@...`` and ``si@...``): the mean over seeds with a band of ± one sample
  standard deviation, from the records' ``term_history`` (every ``every`` steps, a window mean).
- ``pareto_figure``: top-1 against the training step time of every row of one table, on one device, with the Pareto
  front (rows no other row beats in both accuracy and cost) marked.

Files are reproducible: no dates in the SVG or PNG metadata and a fixed SVG hash salt.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from discbench.errors import DiscbenchError
from discbench.records import RunRecord

TERMS = ("mi", "si")
METADATA = {"svg": {"Date": None, "Creator": "discbench"}, "png": {"Software": "discbench"}}


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` (``MI×SI`` -> ``MIxSI``)."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text.replace("×", "x")).strip("-") or "figure"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "discbench"
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    paths = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for ext in ("png", "svg"):
            path = out_dir / f"{stem}.{ext}"
            fig.savefig(path, dpi=110, metadata=METADATA[ext], bbox_inches="tight")
            paths.append(path)
    except OSError as exc:
        raise DiscbenchError(f"cannot draw the figures into {out_dir}: {exc.strerror or exc}") from None
    return paths


def module_terms(record: RunRecord) -> dict[str, dict[str, list[float]]]:
    """``{module: {"mi": [...], "si": [...]}}`` from a record's term history, for every module that logged both
    (modules are named as in the legend: ``1``, ``net1.2``...)."""
    out: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for term, values in record.history().items():
        if term.name in TERMS and term.module is not None:
            out[f"{term.network}.{term.module}" if term.network else str(term.module)][term.name] = values
    return {m: t for m, t in out.items() if set(t) == set(TERMS)}


def has_mi_si(record: RunRecord) -> bool:
    return bool(module_terms(record))


def term_figure(records: list[RunRecord], title: str, out_dir: Path, stem: str) -> list[Path]:
    """MI and SI per module over training steps, mean over the seeds of ``records`` (one row) with a ± std band."""
    import numpy as np

    plt = _pyplot()
    usable = [r for r in records if has_mi_si(r)]
    modules = sorted(module_terms(usable[0]), key=lambda m: [int(p) if p.isdigit() else p for p in m.split(".")])
    steps = np.array(usable[0].term_history["steps"])
    fig, axes = plt.subplots(1, len(modules), figsize=(3.2 * len(modules), 2.8), sharey=True, squeeze=False)
    for ax, module in zip(axes[0], modules, strict=True):
        for term, color in zip(TERMS, ("tab:blue", "tab:orange"), strict=True):
            runs = [module_terms(r)[module][term] for r in usable if module in module_terms(r)]
            length = min(len(v) for v in runs)
            values = np.array([v[:length] for v in runs])
            mean = values.mean(axis=0)
            ax.plot(steps[:length], mean, color=color, label=f"{term.upper()} loss")
            if len(runs) > 1:
                std = values.std(axis=0, ddof=1)
                ax.fill_between(steps[:length], mean - std, mean + std, color=color, alpha=0.25, linewidth=0)
        ax.set_title(f"module {module}")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss (window mean)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{title}: MI and SI loss per module, mean ± std over {len(usable)} seeds", fontsize=10, y=1.04)
    paths = _save(fig, out_dir, stem)
    plt.close(fig)
    return paths


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, accuracy) that no other point beats: lower-or-equal cost and higher-or-equal
    accuracy with one of them strict. Sorted by cost."""
    front = []
    for i, (c, a) in enumerate(points):
        dominated = any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for j, (c2, a2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def pareto_figure(rows: list[dict], title: str, out_dir: Path, stem: str) -> list[Path]:
    """Top-1 (mean) against step time (ms, mean) of each row (``label``, ``step_ms``, ``top1``), front marked."""
    plt = _pyplot()
    points = [(r["step_ms"], r["top1"]) for r in rows]
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="tab:gray", zorder=2)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "-o", color="tab:red", zorder=3,
            label="Pareto front")
    for r, (x, y) in zip(rows, points, strict=True):
        ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel("training step time (ms), same device")
    ax.set_ylabel("top-1 (%), mean over seeds")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths = _save(fig, out_dir, stem)
    plt.close(fig)
    return paths


@dataclass(frozen=True)
class Figure:
    """A planned figure: its caption, its file stem (``<stem>.png`` and ``.svg``) and how to draw it."""

    caption: str
    stem: str
    draw: Callable[[Path], list[Path]]

    @property
    def png(self) -> str:
        return f"figures/{self.stem}.png"


def plan(name: str, records: Iterable[RunRecord]) -> list[Figure]:
    """Every figure of one table (a suite, or all records): one MI/SI figure per row that recorded both terms over
    training, and one accuracy-vs-cost scatter per (dataset, budget, protocol) on its most common device. Nothing
    is drawn (and matplotlib is not imported) until a figure's ``draw`` is called."""
    from discbench.reporting.frame import runs_frame

    records = list(records)
    out: list[Figure] = []
    by_row: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in records:
        by_row[(r.dataset, r.budget, r.protocol, r.backbone, r.partner or "", r.label)].append(r)
    for (dataset, budget, protocol, backbone, partner, label), rows in sorted(by_row.items()):
        if not any(has_mi_si(r) for r in rows):
            continue
        pair = f"{backbone}/{partner}" if partner else backbone
        stem = slug(f"terms__{name}__{protocol}__{pair}__{label}")
        caption = f"{name}, {label} ({dataset}, {budget}, {protocol}, {pair}): MI and SI loss per module over training"
        out.append(Figure(caption, stem, partial(term_figure, rows, f"{label} · {pair} · {protocol}", stem=stem)))
    if not records:
        return out
    df = runs_frame(records)
    for (dataset, budget, protocol), sub in df.groupby(["dataset", "budget", "protocol"], sort=True):
        device = sub["device"].value_counts().index[0]  # one device: step times never compare across devices
        sub = sub[sub["device"] == device]
        grouped = sub.groupby(["label", "backbone", "partner"], dropna=False)
        rows = [{"label": label if len(sub["backbone"].unique()) == 1 else f"{label} ({backbone})",
                 "step_ms": g["step_ms"].mean(), "top1": g["primary"].mean()}
                for (label, backbone, _), g in grouped]
        if len(rows) < 2:
            continue
        stem = slug(f"pareto__{name}__{dataset}__{budget}__{protocol}")
        caption = f"{name}: top-1 against step time, Pareto front marked ({protocol}, one device)"
        out.append(Figure(caption, stem, partial(pareto_figure, rows, f"{name} · {protocol} · {short(device)}",
                                                 stem=stem)))
    return out


def lacking(name: str, records: Iterable[RunRecord]) -> list[str]:
    """Rows with MI and SI terms some of whose records predate the term history: ``name: label (k of n seeds)``."""
    rows: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        if {t.name for t in r.terms} >= set(TERMS):
            rows[r.label].append(r.term_history is None)
    return [f"{name}: {label} ({sum(old)} of {len(old)} seeds)" for label, old in sorted(rows.items()) if any(old)]


def section(parts: list[tuple], out_dir: Path | None = None) -> tuple[str, list[Figure]]:
    """The markdown "Figures" section of the leaderboard's ``parts`` (name, markdown, records), linking
    ``figures/<stem>.png`` beside the markdown; draws them into ``out_dir`` when given."""
    figures = [f for name, _, records in parts for f in plan(name, records)]
    missing = [m for name, _, records in parts for m in lacking(name, records)]
    if out_dir is not None:
        for f in figures:
            f.draw(out_dir)
    lines = ["# Figures", "", "MUSE Figs. 2 and 3 (MI and SI loss per module over training, mean ± std over seeds) "
             "for every row that recorded them, and top-1 against step time per table (PNG, SVG beside it).", ""]
    lines += [f"- {f.caption}: [PNG]({f.png}), [SVG](figures/{f.stem}.svg)" for f in figures]
    if missing:
        lines += ["", "Rows with MI and SI terms whose records predate the term history (left out of the figures; "
                  "rerun those seeds to draw them): " + "; ".join(missing) + "."]
    return "\n".join(lines), figures


def short(device: str) -> str:
    return device if len(device) <= 60 else device[:57] + "..."
