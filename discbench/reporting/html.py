"""``discbench publish``: a static site from run records, from the same tables as ``discbench leaderboard``.

``<out>/LEADERBOARD.md`` is the leaderboard's markdown followed by a Figures section that links the figures;
``<out>/figures/`` holds them (PNG and SVG); ``<out>/records/<run id>.json`` are the records behind the cells;
``<out>/index.html`` is one page without external resources: a table with one row per (suite, dataset, budget,
protocol, backbone or pair, method) whose columns sort on click, filters by dataset, protocol and backbone, the
significance marks, the figures, and in every row links to the run records of its seeds.
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from discbench.atomic import atomic_write_text
from discbench.errors import DiscbenchError
from discbench.records import RunRecord
from discbench.reporting import frame as fr
from discbench.reporting import tables

COLUMNS = [  # key, header, numeric
    ("suite", "Suite", False), ("dataset", "Dataset", False), ("budget", "Budget", False),
    ("protocol", "Protocol", False), ("backbone", "Backbone", False), ("method", "Method", False),
    ("top1", "Top-1 (%) ↑", True), ("delta", "Δ vs baseline (95 % CI)", True), ("n", "n", True),
    ("step_ms", "Step (ms) ↓", True), ("loss_params", "Extra params ↓", True), ("peak", "Peak memory ↓", True),
    ("device", "Device", False), ("records", "Run records", False),
]


def board_rows(name: str, records: list[RunRecord]) -> list[dict]:
    """One row per (method, column) of every last-module or pairs table of a section: the entry's text, its Δ against
    the table's baseline row, and the cost of its runs (the same numbers as the markdown)."""
    rows = []
    if not records:
        return rows
    df = fr.frame(records)
    for (dataset, budget, protocol), sub in df.groupby(fr.GROUP, sort=True):
        two = sub["partner"].notna().any()
        table = tables.pairs(sub) if two else tables.last_module(sub)
        for i, col in enumerate(table.columns):
            runs = sub[(sub["backbone"] == col.backbone) & ((sub["partner"] == col.partner) if two else True)]
            where = (f"{col.partner} → {col.backbone}" if col.offline else f"{col.backbone} / {col.partner}") if two \
                else col.backbone
            present = set(runs["label"])
            for row in table.rows:
                if row.label not in present:
                    continue
                entry, mine = row.entries[i], runs[runs["label"] == row.label]
                d = entry.delta
                peak = mine["peak_bytes"].dropna()
                devices = sorted(mine["device"].unique())
                rows.append({
                    "suite": name, "dataset": dataset, "budget": budget, "protocol": protocol, "backbone": where,
                    "method": row.label, "top1": " / ".join(c.text() for c in entry.cells),
                    "top1_sort": entry.first.mean,
                    "delta": "baseline" if row.label == table.baseline else (d.short() if d else "—"),
                    "delta_sort": d.diff if d else 0.0, "significant": bool(d and d.significant),
                    "n": len(mine), "device": "; ".join(devices),
                    # step times are never averaged across devices (LEADERBOARD.md splits such rows by device)
                    "step_ms": f"{mine['step_ms'].mean():.1f}" if len(devices) == 1 else "several devices",
                    "loss_params": f"{int(mine['loss_params'].iloc[0]):,}",
                    "peak": f"{peak.max() / 2**20:,.0f} MiB" if not peak.empty else "not recorded",
                    "peak_sort": float(peak.max()) if not peak.empty else -1.0,
                    "runs": [(int(s), rid) for s, rid in sorted(zip(mine["seed"], mine["run_id"], strict=True))],
                })
    for r in rows:
        r["step_sort"] = float(r["step_ms"]) if r["step_ms"] != "several devices" else -1.0
        r["params_sort"] = float(r["loss_params"].replace(",", ""))
    return rows


def _sort_value(row: dict, key: str) -> str:
    value = {"top1": row["top1_sort"], "delta": row["delta_sort"], "n": row["n"], "step_ms": row["step_sort"],
             "loss_params": row["params_sort"], "peak": row["peak_sort"]}.get(key, row.get(key, ""))
    return str(value)


def _cell(row: dict, key: str) -> str:
    if key == "records":
        return " ".join(f'<a href="{html.escape(link)}">seed {seed}</a>' for seed, link in row["links"])
    text = html.escape(str(row[key]))
    if key == "top1":
        first = row["links"][0][1] if row["links"] else ""
        return f'<a class="value" href="{html.escape(first)}">{text}</a>'
    if key == "delta" and row["significant"]:
        return f'<span class="sig">{text}</span>'
    return text


def _options(rows: list[dict], key: str) -> str:
    values = sorted({r[key] for r in rows})
    return "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values)


SCRIPT = """
const table = document.getElementById('board');
const body = table.tBodies[0];
let sortKey = null, ascending = true;
function sortBy(th) {
  const key = th.dataset.key, numeric = th.dataset.numeric === '1';
  ascending = sortKey === key ? !ascending : !numeric;  // numbers: largest first on the first click
  sortKey = key;
  const rows = Array.from(body.rows);
  const index = th.cellIndex;
  rows.sort((a, b) => {
    const x = a.cells[index].dataset.sort, y = b.cells[index].dataset.sort;
    const c = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
    return ascending ? c : -c;
  });
  rows.forEach(r => body.appendChild(r));
  table.querySelectorAll('th').forEach(h => h.removeAttribute('aria-sort'));
  th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
}
table.querySelectorAll('th').forEach(th => th.addEventListener('click', () => sortBy(th)));
function applyFilters() {
  const wanted = {};
  document.querySelectorAll('select.filter').forEach(s => { wanted[s.dataset.key] = s.value; });
  Array.from(body.rows).forEach(r => {
    const show = Object.entries(wanted).every(([k, v]) => !v || r.dataset[k] === v);
    r.style.display = show ? '' : 'none';
  });
}
document.querySelectorAll('select.filter').forEach(s => s.addEventListener('change', applyFilters));
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: ' ▲'; } th[aria-sort=descending]::after { content: ' ▼'; }
.sig { font-weight: bold; color: #0a5; }
figure { display: inline-block; margin: 1em; max-width: 46%; } figure img { max-width: 100%; }
"""


def render_html(rows: list[dict], figures: list[tuple[str, str]], legend: str) -> str:
    head = "".join(f'<th data-key="{k}" data-numeric="{int(num)}">{html.escape(h)}</th>' for k, h, num in COLUMNS)
    body = []
    for r in rows:
        attrs = " ".join(f'data-{k}="{html.escape(str(r[k]))}"' for k in ("dataset", "protocol", "backbone"))
        cells = "".join(f'<td class="{k}" data-sort="{html.escape(_sort_value(r, k))}">{_cell(r, k)}</td>'
                        for k, _, _ in COLUMNS)
        body.append(f"<tr {attrs}>{cells}</tr>")
    filters = "".join(f'<label>{k} <select class="filter" data-key="{k}" id="filter-{k}"><option value="">all'
                      f'</option>{_options(rows, k)}</select></label> ' for k in ("dataset", "protocol", "backbone"))
    figs = "".join(f'<figure><a href="{html.escape(path)}"><img src="{html.escape(path)}" alt="{html.escape(c)}">'
                   f'</a><figcaption>{html.escape(c)} (<a href="{html.escape(path[:-4])}.svg">SVG</a>)</figcaption>'
                   f'</figure>' for c, path in figures)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>discbench leaderboard</title><style>{STYLE}</style></head>
<body>
<h1>discbench leaderboard</h1>
<p>Top-1 accuracy (%) on the test split at the last epoch, mean ± sample std over seeds (n = seeds); the same numbers
as <a href="LEADERBOARD.md">LEADERBOARD.md</a>, generated by <code>discbench publish</code> from the run records.
Click a column header to sort; filter by dataset, protocol and backbone.</p>
<p>{filters}</p>
<table id="board"><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
<p id="legend">{html.escape(legend)}</p>
<h2>Figures</h2>
{figs or '<p>No figures: no records with a term history or with more than one row.</p>'}
<script>{SCRIPT}</script>
</body></html>
"""


LEGEND = ("Δ: difference of means to the baseline row of the same table and column, 95 % confidence interval from "
          "Welch's t-test (scipy.stats, unequal variances, seeds taken as unpaired); marked † and bold when it "
          "excludes 0. Where the records prove that two rows' seeds pair, LEADERBOARD.md also gives the paired "
          "t-test's interval; this page does not. Two-network rows of different pairs show net1 / net2 and compare "
          "net1. Step: training step time on the records' device; Peak memory: CUDA max allocated, or the CPU "
          "process's peak RSS (see LEADERBOARD.md).")


MANIFEST = ".discbench-site.json"  # the files the last publish wrote into a site directory (relative paths)


def _owned(out_dir: Path) -> set[str]:
    """What an earlier ``publish`` wrote into ``out_dir`` (its manifest); empty when there is none."""
    path = out_dir / MANIFEST
    if not path.exists():
        return set()
    try:
        owned = json.loads(path.read_text())
        if not (isinstance(owned, list) and all(isinstance(p, str) for p in owned)):
            raise ValueError("not a list of paths")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DiscbenchError(f"{path} is not a manifest publish wrote ({exc}); remove it or choose another --out") \
            from exc
    return {p for p in owned if p and not Path(p).is_absolute() and ".." not in Path(p).parts}


def publish(results_dirs: Iterable, out_dir: Path, suites=(), budget: str | None = None, config_path=None,
            echo=None, mix: bool = False, replace: bool = False) -> list[Path]:
    """Write the site into ``out_dir``; the paths written (the markdown, the page, the figures).

    A record inside ``out_dir`` (e.g. ``--out results`` over ``results/runs``) is linked where it lies; the others
    are copied into ``records/<run id>.json``. publish owns only what it wrote (``.discbench-site.json`` lists it):
    it refuses to overwrite a file it did not write unless ``replace``, removes only its own files of an earlier
    publish that this one no longer writes, never touches its inputs, and writes the whole site into a staging folder
    first, so that a failure leaves the directory as it was."""
    import glob
    import os
    import tempfile

    from discbench.records import collect
    from discbench.reporting.figures import section
    from discbench.reporting.markdown import combine, sections

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DiscbenchError(f"--out {out_dir} is a file; give a directory for the site")
    site = out_dir.resolve()
    for given in results_dirs:  # a glob is checked through what it matches, as collect() reads it
        matches = glob.glob(str(given)) if glob.has_magic(str(given)) else [given]
        if any(Path(m).resolve().is_relative_to(site / sub) for m in matches for sub in ("records", "figures")):
            raise DiscbenchError(f"--results-dir {given} lies in the site's records/ or figures/, which publish "
                                 f"rewrites; copy those records elsewhere and pass that directory")
    previous = _owned(out_dir)
    found = collect(list(results_dirs))
    for line in found.messages():
        if echo:
            echo(line)
    parts = sections(found.records, suites, budget, config_path, mix)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=out_dir))
    except OSError as exc:
        raise DiscbenchError(f"cannot write the site into {out_dir} ({exc.strerror or exc}); fix its permissions "
                             f"or choose another --out") from exc
    try:
        figures_md, figures = section(parts, staging / "figures")
        md = combine(parts) + "\n" + figures_md
        rows = [row for name, _, records in parts for row in board_rows(name, records)]
        links = {}
        for run_id in sorted({rid for row in rows for _, rid in row["runs"]}):
            source = found.sources[run_id][0].resolve()
            if source.is_relative_to(site):
                links[run_id] = Path(os.path.relpath(source, site)).as_posix()
            else:
                (staging / "records").mkdir(exist_ok=True)
                shutil.copyfile(source, staging / "records" / f"{run_id}.json")
                links[run_id] = f"records/{run_id}.json"
        for row in rows:
            row["links"] = [(seed, links[rid]) for seed, rid in row["runs"]]
        atomic_write_text(staging / "LEADERBOARD.md", md + "\n")
        atomic_write_text(staging / "index.html", render_html(rows, [(f.caption, f.png) for f in figures], LEGEND))
        new = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        foreign = [rel for rel in new if rel not in previous and (out_dir / rel).exists()]
        if foreign and not replace:
            raise DiscbenchError(f"--out {out_dir} holds {len(foreign)} file(s) publish did not write (e.g. "
                                 f"{foreign[0]}); choose an empty directory, or pass --replace to overwrite them")
        for rel in new:
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, out_dir / rel)
        for rel in sorted(previous - set(new)):  # our own files of the last publish that this one no longer writes
            (out_dir / rel).unlink(missing_ok=True)
        atomic_write_text(out_dir / MANIFEST, json.dumps(new, indent=0) + "\n")
    except OSError as exc:
        raise DiscbenchError(f"cannot write the site into {out_dir} ({exc.strerror or exc}); fix its permissions "
                             f"or choose another --out") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / "LEADERBOARD.md", out_dir / "index.html"] + [out_dir / f.png for f in figures]
