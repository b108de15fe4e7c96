"""Leaderboard rendering from synthetic records: statistics, layout, bold, disambiguation."""

from __future__ import annotations

import dataclasses
import statistics

import pytest

from discbench.errors import DiscbenchError
from discbench.keys import Classifier
from discbench.records import RunRecord
from discbench.reporting.markdown import render
from discbench.reporting.tables import Cell


def cell(values) -> str:
    """The text of a table cell of ``values`` (a pandas Series of per-seed top-1)."""
    return Cell.of(values).text()


def record(label, seed, top1, loss="x", backbone="resnet18", hash_="h" * 16, budget="smoke", baseline=None,
           protocol="self", partner=None, networks=("net",), teacher_top1=None):
    """A synthetic record; ``top1`` maps exit -> value (one network) or network -> value (last exits)."""
    if networks == ("net",):
        exits = sorted(top1)
        classifiers = tuple(Classifier("net", backbone, i, i == exits[-1]) for i in exits)
        final = {f"net/exit{i}": v for i, v in top1.items()}
    else:
        classifiers = tuple(Classifier(n, backbone, 4, True) for n in networks)
        final = {f"{n}/exit4": top1[n] for n in networks}
    return RunRecord(
        run_id=f"{hash_}-seed{seed}", config_hash=hash_, request_hash=hash_, label=label, protocol=protocol,
        dataset="cifar100", budget=budget, backbone=backbone, partner=partner, loss={"name": loss, "version": 1},
        seed=seed, baseline=(loss == "") if baseline is None else baseline, classifiers=classifiers,
        final_top1=final, best_top1={}, final_train_terms={}, epochs=[], cost={"loss_params": 1234},
        timing={"images_per_second": 100.0, "steps_per_second": 2.0}, runtime={}, config={}, provenance={},
        teacher={"top1": teacher_top1} if teacher_top1 is not None else None,
    )


def test_cell_is_mean_sample_std_and_n():
    import pandas as pd

    values = [78.0, 79.0, 79.25]
    expected = f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n=3)"
    assert cell(pd.Series(values)) == expected == "78.75 ± 0.66 (n=3)"
    assert cell(pd.Series([70.0])) == "70.00 (n=1)"
    assert cell(pd.Series([], dtype=float)) == "—"


def test_layouts_and_bold():
    recs = [record("none", s, {4: 77.0 + s}, loss="", hash_="a" * 16) for s in range(3)]
    recs += [record("mi_x_si", s, {1: 60.0, 2: 70.0, 3: 75.0, 4: 79.0 + s}, hash_="b" * 16) for s in range(3)]
    recs += [record("l2", s, {1: 61.0, 2: 69.0, 3: 75.0, 4: 77.0}, loss="l2", hash_="c" * 16) for s in range(2)]
    text = render(recs)
    lines = text.splitlines()
    row = next(line for line in lines if "| mi_x_si" in line)
    assert "**80.00 ± 1.00 (n=3)**" in row  # best module 4
    assert "78.00 ± 1.00 (n=3)" in row  # the baseline column: none's last module
    l2_row = next(line for line in lines if "| l2 " in line and "61.00" in line)
    assert "**61.00 ± 0.00 (n=2)**" in l2_row and "| **75.00" in l2_row  # a tie: both bold
    table6 = text.split("Last module")[1].split("### Cost")[0]
    assert table6.index("| none") < table6.index("| l2") < table6.index("| mi_x_si")  # baselines first
    assert "**80.00 ± 1.00 (n=3)**" in table6
    assert "1,234" in text.split("### Cost")[1]


def test_two_configs_under_one_label_are_not_averaged():
    recs = [record("l2", 0, {1: 1.0, 4: 50.0}, hash_="a" * 16), record("l2", 0, {1: 1.0, 4: 60.0}, hash_="b" * 16)]
    text = render(recs)
    assert "l2 (aaaaaa)" in text and "l2 (bbbbbb)" in text and "55.00" not in text


def test_budget_filter():
    recs = [record("l2", 0, {1: 1.0, 4: 50.0}, budget="paper"), record("l2", 0, {1: 1.0, 4: 60.0}, hash_="z" * 16)]
    assert "paper" not in render(recs, budget="smoke")
    with pytest.raises(DiscbenchError, match="no run records with budget 'x'"):
        render(recs, budget="x")
    with pytest.raises(DiscbenchError, match="no run records found"):
        render([])


def test_baseline_column_comes_from_the_record_not_from_the_exit_count():
    """A one-exit run with a loss (e.g. exits switched off, a feature term kept) is a row, not the Baseline."""
    recs = [record("none", s, {4: 70.0 + s}, loss="") for s in range(2)]
    recs += [record("one-exit mi", s, {4: 90.0}, loss="mi", hash_="d" * 16) for s in range(2)]
    text = render(recs)
    assert "70.50 ± 0.71 (n=2)" in text.split("### Per module")[1].split("### Last")[0]
    assert "90.00" not in next(line for line in text.splitlines() if "| none" in line)


def test_online_pairs_identical_are_averaged_per_seed_different_are_side_by_side():
    same = [record("mi_plus_si", s, {"net1": 70.0 + s, "net2": 72.0 + s}, loss="mi_plus_si", backbone="resnet20",
                   partner="resnet20", protocol="online", networks=("net1", "net2")) for s in range(3)]
    diff = [record("mi_plus_si", s, {"net1": 70.0, "net2": 75.0 + s}, loss="mi_plus_si", backbone="resnet20",
                   partner="resnet56", protocol="online", networks=("net1", "net2"), hash_="e" * 16)
            for s in range(3)]
    text = render(same + diff)
    assert "resnet20 / resnet20 ↑" in text and "resnet20 / resnet56 ↑" in text
    row = next(line for line in text.splitlines() if line.startswith("| mi_plus_si"))
    assert "72.00 ± 1.00 (n=3)" in row  # per-seed means 71, 72, 73
    assert "70.00 ± 0.00 (n=3) / **76.00 ± 1.00 (n=3)**" in row or "70.00 ± 0.00 (n=3) / 76.00 ± 1.00 (n=3)" in row


def test_offline_columns_name_teacher_and_its_accuracy():
    recs = [record("KD", s, {"student": 70.0 + s}, loss="", baseline=False, backbone="resnet20", partner="resnet56",
                   protocol="offline", networks=("student",), teacher_top1=72.34) for s in range(3)]
    text = render(recs)
    assert "resnet56 (72.34) → resnet20 ↑" in text and "71.00 ± 1.00 (n=3)" in text


def on_machine(rec, cpu_model="Intel Xeon X", threads=2):
    """``rec`` as run on a CPU ``cpu_model`` with ``threads`` torch threads (same torch, same commit)."""
    hw = {"device": "cpu", "cpu_model": cpu_model, "cpu_vector_extensions": ["avx2"], "torch_threads": threads,
          "gpu_name": None, "gpu_driver": None, "cuda": None}
    return dataclasses.replace(rec, hardware=hw, provenance={"torch": "2.5.1", "git_commit": "0123456789abcdef"})


@pytest.mark.parametrize("other", [{"threads": 4}, {"cpu_model": "AMD EPYC Y"}], ids=["threads", "machine"])
def test_a_table_of_two_environments_is_refused_unless_mixed_and_then_marked(other):
    """One seed of `mi` ran with other torch threads (or on another CPU): comparing it with the rest in one table
    is refused; with ``mix`` the table shows it, the cell whose seeds span both environments marked ‡."""
    base = [on_machine(record("none", s, {4: 70.0 + s}, loss="", hash_="a" * 16)) for s in range(3)]
    mi = [on_machine(record("mi", s, {4: 72.0 + s}, loss="mi", hash_="b" * 16)) for s in range(2)]
    mi.append(on_machine(record("mi", 2, {4: 74.5}, loss="mi", hash_="b" * 16), **other))
    assert "‡" not in render(base + mi[:2])  # one environment: accepted, nothing marked
    assert "Environment: Intel Xeon X (avx2), 2 threads; torch 2.5.1; commit 0123456789ab." in render(base + mi[:2])
    with pytest.raises(DiscbenchError, match="would mix 2 environments.*--mix-environments"):
        render(base + mi)
    text = render(base + mi, mix=True)
    table6 = text.split("Last module")[1].split("### Cost")[0]
    values = [72.0, 73.0, 74.5]
    mixed = f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n=3)‡"
    row = next(line for line in table6.splitlines() if line.startswith("| mi "))
    assert mixed in row and mixed == "73.17 ± 1.26 (n=3)‡"
    none = next(line for line in table6.splitlines() if line.startswith("| none "))
    assert "71.00 ± 1.00 (n=3)" in none and "‡" not in none  # the baseline's seeds share one environment
    assert "Environments (‡ marks a cell whose seeds ran in several" in text
    assert "[1] Intel Xeon X (avx2), 2 threads" in text and "[2] " in text


def test_the_papers_cells_name_rows_and_backbones_of_their_suites():
    """Every transcribed cell of discbench/reference.toml belongs to its suite: a row label, a backbone of the suite
    (NASNet, not shipped, is left out), a module 1-4; means are those of MUSE's printed cells (spot checks)."""
    from discbench import suites as suite_defs
    from discbench.config import Bench
    from discbench.reporting.reference import load

    bench, reference = Bench.load(None), load()
    assert set(reference) == {"table1", "table2", "table5", "table6"}
    for name, (_, cells) in reference.items():
        suite = suite_defs.load(bench, name)
        labels = {row.label for row in suite.rows}
        for cell in cells:
            assert cell.row in labels and cell.backbone in suite.backbones and cell.module in (None, 1, 2, 3, 4), cell
    got = {(n, c.row, c.backbone, c.module): c.paper for n, (_, cells) in reference.items() for c in cells}
    assert got[("table1", "MI+SI", "resnet18", 4)] == "78.75 ± 0.31"  # = Table 2's ResNet18 MI+SI
    assert got[("table1", "Baseline", "resnet18", None)] == "77.43 ± 0.36"
    assert got[("table6", "MI×SI", "efficientnet_b0", 4)] == "78.81 ± 0.12"
    assert got[("table5", "(MI×SI) + CE + KD", "efficientnet_b0", 4)] == "78.89 ± 0.12"
    assert len([k for k in got if k[0] == "table1"]) == 7 * 13


def test_a_suite_of_the_paper_shows_the_papers_cells_beside_its_records():
    from discbench.reporting.reference import PaperCell, section

    reference = {"table6": ("MUSE Table 6", (PaperCell("MI+SI", "resnet18", 4, "78.63 ± 0.26"),
                                             PaperCell("VID", "resnet18", 4, "76.97 ± 0.54"),
                                             PaperCell("MI+SI", "resnet18", 2, "70.00 ± 0.10")))}
    recs = [record("MI+SI", s, {1: 60.0, 2: v - 8, 3: 70.0, 4: v}, loss="mi_plus_si") for s, v in
            enumerate([78.0, 78.5])]
    text = section("table6", recs, reference)
    assert "| MI+SI | resnet18 | 4 | 78.63 ± 0.26 | 78.25 ± 0.35 (n=2) | -0.38 |" in text
    assert "| MI+SI | resnet18 | 2 | 70.00 ± 0.10 | 70.25 ± 0.35 (n=2) | +0.25 |" in text
    assert "| VID | resnet18 | 4 | 76.97 ± 0.54 | — | — |" in text
    assert section("demo", recs, reference) == ""


def test_methods_as_columns_turns_the_last_module_table_and_joins_the_family_into_one_table():
    """MUSE Table 2's layout: one row per backbone, one column per method, the last-module entries (Δ against the
    baseline of the backbone); a CS-KD run (protocol cs_kd, family self) sits in the self table, not its own; ONE's
    extra classifiers (last = False) are recorded but no network of the table."""
    recs = []
    for backbone, shift in (("resnet18", 0.0), ("densenet121", 1.0)):
        recs += [record("Baseline", s, {4: 70.0 + shift + s}, loss="", backbone=backbone, hash_=f"a{backbone}"[:16])
                 for s in range(3)]
        recs += [record("MI+SI", s, {1: 50.0, 4: 73.0 + shift + s}, loss="mi_plus_si", backbone=backbone,
                        hash_=f"b{backbone}"[:16]) for s in range(3)]
        one = [record("ONE", s, {4: 72.0 + shift + s}, loss="", backbone=backbone, hash_=f"c{backbone}"[:16],
                      protocol="one", baseline=False) for s in range(3)]
        recs += [dataclasses.replace(r, classifiers=(*r.classifiers, Classifier("ensemble", backbone, 4, False)),
                                     final_top1={**r.final_top1, "ensemble/exit4": 99.0}) for r in one]
    text = render(recs, order=["Baseline", "ONE", "MI+SI"], layout="methods-columns")
    assert "protocol `self`" in text and "protocol `one`" not in text  # one table for the family
    table = text.split("(MUSE Table 2 layout)")[1].split("Power:")[0]
    header = next(line for line in table.splitlines() if line.startswith("| Backbone"))
    assert [h.strip() for h in header.strip("|").split("|")] == ["Backbone", "Baseline ↑", "ONE ↑", "MI+SI ↑"]
    row = _row_cells(table, "densenet121")
    assert row[1] == "72.00 ± 1.00 (n=3)" and row[2].startswith("74.00 ± 1.00 (n=3) · Δ +2.00")
    assert row[3].startswith("**75.00 ± 1.00 (n=3)** · Δ +3.00") and "99.00" not in text


def _row_cells(table: str, first: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first:
            return cells
    raise AssertionError(first)
