"""MUSE Table 3's layout (discbench/reporting/compression.py) from synthetic records, and the table1/table3 suites."""

from __future__ import annotations

import dataclasses

import pytest

from discbench import suites
from discbench.config import Bench
from discbench.errors import DiscbenchError
from discbench.reporting.compression import compression_rows, compression_table
from tests.test_leaderboard import record

# Per-exit (params, FLOPs) of the inference paths of one backbone, as the self protocol's cost() records them.
COST = {1: (100_000, 2_000_000), 2: (400_000, 5_000_000), 3: (1_600_000, 9_000_000), 4: (4_000_000, 12_000_000)}


def with_cost(rec, exits):
    per_exit = {f"net/exit{i}": {"params": COST[i][0], "flops": COST[i][1]} for i in exits}
    return dataclasses.replace(rec, cost={**rec.cost, "per_exit": per_exit})


def runs():
    baseline = [with_cost(record("Baseline", s, {4: v}, loss="", baseline=True), [4]) for s, v in enumerate((70, 72))]
    # mean per exit: 60, 71.5, 73, 74 against the baseline's 71.0: module 2 is the smallest that beats it
    muse = [with_cost(record("MI+SI", s, {1: 60, 2: v2, 3: 73, 4: 74}, loss="mi_plus_si", hash_="m" * 16),
                      [1, 2, 3, 4]) for s, v2 in enumerate((71, 72))]
    byot = [with_cost(record("BYOT", s, {1: 50, 2: 60, 3: 65, 4: 70.5 + s}, loss="l2", hash_="b" * 16),
                      [1, 2, 3, 4]) for s in range(2)]
    return baseline + muse + byot


def test_smallest_module_beating_the_baseline_with_its_cost_and_reduction():
    rows = {r["Method"]: r for r in compression_rows(runs())}
    muse = rows["MI+SI"]
    assert muse["Module"] == "2"  # mean 71.5 > baseline mean 71.0; module 1 (60) does not beat it
    assert muse["top-1 ↑"] == "71.50 ± 0.71 (n=2)"
    assert muse["Baseline top-1"] == "71.00 ± 1.41 (n=2)"
    assert (muse["params ↓"], muse["FLOPs ↓"]) == ("0.40 M", "5.00 M")
    assert (muse["Baseline params"], muse["Baseline FLOPs"]) == ("4.00 M", "12.00 M")
    assert (muse["params ×"], muse["FLOPs ×"]) == ("10.0×", "2.4×")  # 4.0 / 0.4 and 12 / 5


def test_no_module_beats_the_baseline():
    rows = {r["Method"]: r for r in compression_rows(runs())}
    assert rows["BYOT"]["Module"] == "no module beats the baseline"  # exit 4: mean 71.0, not above 71.0
    table = compression_table(runs())
    assert "| resnet18   | BYOT     |" in table and "no module beats the baseline" in table


def test_table1_and_table3_suites():
    bench = Bench.load()
    t1, t3 = suites.load(bench, "table1"), suites.load(bench, "table3")
    assert [r.label for r in t1.rows] == ["Baseline", "BYOT", "MI+SI", "MI×SI"]
    assert [r.loss for r in t1.rows] == ["none", "l2", "mi_plus_si", "mi_x_si"]
    assert {"vgg19_bn", "resnet101", "resnet152", "efficientnet_b0"} <= set(t1.backbones)
    assert t3.layout == "compression" and t3.backbones == t1.backbones and t1.layout == "modules"
    assert suites.load(bench, "table1-tinyimagenet").backbones == ("resnet18", "resnet34", "efficientnet_b0")
    assert suites.load(bench, "table1-imagenet").datasets == ("imagenet",)
    smoke = suites.load(bench, "table1-smoke")
    assert smoke.datasets == ("fashion-mnist",) and smoke.budget == "smoke"
    assert [c.hash for c in suites.configs(bench, smoke)] == [c.hash for c in suites.configs(
        bench, suites.load(bench, "table3-smoke"))]


def test_unknown_layout_is_an_error(tmp_path):
    bench = Bench.load()
    data = {**bench.data, "suites": {**bench.data["suites"], "bad": {"extends": "table1", "layout": "pyramid"}}}
    with pytest.raises(DiscbenchError, match="suite 'bad': unknown layout 'pyramid'; valid: modules, compression"):
        suites.load(Bench(data), "bad")
