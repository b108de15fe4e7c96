"""Leaderboard rendering from synthetic records: statistics, layout, bold, disambiguation."""

from __future__ import annotations

import statistics

import pytest

from discbench.errors import DiscbenchError
from discbench.leaderboard import cell, render


def record(label, seed, top1, loss="x", backbone="resnet18", hash_="h" * 16, budget="smoke"):
    return {
        "dataset": "cifar100", "budget": budget, "protocol": "self", "backbone": backbone, "label": label,
        "config_hash": hash_, "seed": seed, "loss": {"name": loss, "version": 1},
        "final_top1": {f"exit{i}": v for i, v in top1.items()}, "cost": {"loss_params": 1234},
        "timing": {"images_per_second": 100.0, "steps_per_second": 2.0},
    }


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
