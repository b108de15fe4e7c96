"""benchmarks/bench_protocols.py builds each protocol as discbench run does and measures it (timings are data)."""

from __future__ import annotations

import importlib.util
import json

from tests.conftest import REPO


def _module():
    spec = importlib.util.spec_from_file_location("_bench_protocols", REPO / "benchmarks" / "bench_protocols.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_three_protocols_one_process(tmp_path, capsys):
    module = _module()
    out = tmp_path / "steps.json"
    status = module.main(["--backbone", "tinynet", "--teacher", "smallnet", "--batch", "2", "--repeats", "2",
                          "--warmup", "0", "--json", str(out)])
    assert status == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["row"] for r in rows] == ["self ce_kd", "online kd", "offline kd"]
    assert [r["networks"] for r in rows] == ["tinynet (self)", "tinynet + tinynet",
                                            "tinynet + smallnet"]
    assert rows[0]["ratio"] == 1.0 and all(r["ms_per_step"] > 0 for r in rows)
    assert "| online kd |" in capsys.readouterr().out


def test_a_suites_rows_with_views_step_side_by_side(tmp_path):
    """--suite times every row of a suite under its own protocol; CS-KD's and DDGSD's views are drawn each step."""
    out = tmp_path / "steps.json"
    status = _module().main(["--suite", "table2-smoke", "--backbone", "tinynet", "--batch", "4", "--repeats", "1",
                             "--warmup", "0", "--json", str(out)])
    assert status == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["row"] for r in rows] == ["Baseline", "CS-KD", "ONE", "DDGSD", "BYOT", "FRSKD", "MI+SI", "MI×SI"]
    assert rows[1]["networks"] == "tinynet (cs_kd)" and rows[0]["ratio"] == 1.0
