"""benchmarks/bench_protocols.py builds each protocol as discbench run does and measures it (timings are data)."""

from __future__ import annotations

import importlib.util
import json

from tests.conftest import REPO


def test_three_protocols_one_process(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("_bench_protocols", REPO / "benchmarks" / "bench_protocols.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "steps.json"
    status = module.main(["--backbone", "tinynet", "--teacher", "smallnet", "--batch", "2", "--repeats", "2",
                          "--warmup", "0", "--json", str(out)])
    assert status == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["row"] for r in rows] == ["self ce_kd", "online kd", "offline kd"]
    assert [r["networks"] for r in rows] == ["tinynet (exits)", "tinynet + tinynet",
                                            "tinynet + smallnet"]
    assert rows[0]["ratio"] == 1.0 and all(r["ms_per_step"] > 0 for r in rows)
    assert "| online kd |" in capsys.readouterr().out
