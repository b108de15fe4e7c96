"""MUSE's published cells beside a suite's own records ("paper" beside "measured").

``discbench/reference.toml`` holds the paper's numbers per suite (MUSE Tables 1, 5 and 6 on CIFAR-100, transcribed
from the paper). Each cell names a row label of the suite, a backbone and a module (1-4; omitted: the network's last
classifier). ``section`` renders them as a table with the suite's measured mean ± std over its seeds and the
difference of means. That difference is not a test: the paper's runs are its own, on its own code and machines.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from discbench.records import RunRecord
from discbench.reporting.tables import Cell

REFERENCE = Path(__file__).resolve().parent.parent / "reference.toml"


@dataclass(frozen=True)
class PaperCell:
    row: str
    backbone: str
    module: int | None
    paper: str  # "78.75 ± 0.31", as printed

    @property
    def mean(self) -> float:
        return float(self.paper.split("±")[0])


@cache
def load(path: Path = REFERENCE) -> dict[str, tuple[str, tuple[PaperCell, ...]]]:
    """Suite name -> (the source line, its cells)."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return {name: (table["source"], tuple(PaperCell(c["row"], c["backbone"], c.get("module"), c["paper"])
                                          for c in table["cells"]))
            for name, table in data.items()}


def measured(cell: PaperCell, records: list[RunRecord]) -> list[float]:
    """The suite's per-seed top-1 of the classifier ``cell`` names: module 1-3 are the exits, module 4 (or none) the
    network's own last classifier."""
    mine = [r for r in records if r.label == cell.row and r.backbone == cell.backbone]
    if cell.module is None or cell.module == 4:
        return [r.last_top1(r.networks[0]) for r in mine]
    return [r.top1(c) for r in mine for c in r.classifiers if c.network == r.networks[0] and c.exit == cell.module]


def section(suite: str, records: Iterable[RunRecord], reference: dict | None = None) -> str:
    """The "against the paper" table of ``suite`` ("" when the paper has no cells for it)."""
    reference = load() if reference is None else reference
    if suite not in reference:
        return ""
    source, cells = reference[suite]
    records = list(records)
    lines = [f"### Against the paper: {source}", "",
             "The paper's cells (mean ± std over its 3 runs) beside this suite's records; measured − paper is a "
             "difference of means, not a test (the paper's runs are its own, on its own code).", "",
             "| Row | Backbone | Module | Paper | Measured | Measured − paper |",
             "|:----|:---------|:-------|------:|---------:|-----------------:|"]
    for cell in cells:
        mine = Cell(tuple(measured(cell, records)))  # the leaderboard's own cell: mean ± sample std (n)
        diff = f"{mine.mean - cell.mean:+.2f}" if mine.n else "—"
        module = str(cell.module) if cell.module else "last"
        lines.append(f"| {cell.row} | {cell.backbone} | {module} | {cell.paper} | {mine.text()} | {diff} |")
    return "\n".join(lines) + "\n"
