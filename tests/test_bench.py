"""The measuring code behind ``discbench bench`` and benchmarks/: exact CPU peak memory, the grid, the table, the
JSON file and the command."""

from __future__ import annotations

import json

import pytest
import torch

from discbench import critic_bench as bench
from discbench.errors import DiscbenchError
from tests.test_cli import discbench

KIB = 1024


def test_cpu_peak_counts_exactly_what_is_alive_together():
    def fn():
        a = torch.empty(1000)  # 4000 B
        b = torch.empty(3000)  # 12000 B: 16000 alive
        del a
        c = torch.empty(500)  # 14000 alive
        del b, c

    assert bench.cpu_peak_bytes(fn) == 16000


def test_cpu_peak_sees_backward_and_ignores_what_existed_before():
    existing = torch.randn(256, 256, requires_grad=True)  # 256 KiB, not counted

    class Twice(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.sum()

        @staticmethod
        def backward(ctx, grad):
            ones = torch.ones(256, 256)  # 256 KiB
            return ones * grad  # + 256 KiB while ``ones`` is alive

    def fn():
        Twice.apply(existing).backward()
        existing.grad = None

    assert abs(bench.cpu_peak_bytes(fn) - 512 * KIB) < 64


def test_grid_order_and_ratios():
    cases = bench.cases(["critic", "full"], ["ref", "torch"], [4, 8], [16], 8)
    assert [(c.mode, c.batch, c.impl) for c in cases[:4]] == [("critic", 4, "ref"), ("critic", 4, "torch"),
                                                              ("critic", 8, "ref"), ("critic", 8, "torch")]
    rows = [{"mode": "critic", "batch": 4, "locations": 16, "dim": 8, "impl": "ref", "ms": 6.0, "peak_mib": 3.0},
            {"mode": "critic", "batch": 4, "locations": 16, "dim": 8, "impl": "torch", "ms": 2.0, "peak_mib": 1.0},
            {"mode": "full", "batch": 4, "locations": 16, "dim": 8, "impl": "torch", "ms": 2.0, "peak_mib": 1.0}]
    bench.add_ratios(rows)
    assert rows[1]["speedup_vs_ref"] == 3.0 and rows[1]["memory_saving_vs_ref"] == 3.0
    assert rows[0]["speedup_vs_ref"] == 1.0 and rows[2]["speedup_vs_ref"] is None


@pytest.mark.parametrize("mode", ["critic", "full"])
def test_measure_runs_each_mode(mode):
    row = bench.measure(bench.Case(mode, "torch", 4, 9, 8), torch.device("cpu"), repeats=1, warmup=0)
    assert row["ms"] > 0 and row["peak_mib"] > 0
    assert row["peak_kib_per_image"] == pytest.approx(row["peak_mib"] * 1024 / 4)


def test_autocast_follows_training():
    assert bench.effective_autocast("bf16", torch.device("cuda:1")) == "bf16"
    assert bench.effective_autocast("bf16", torch.device("cpu")) == "off"
    assert bench.effective_autocast("off", torch.device("cuda")) == "off"
    with pytest.raises(DiscbenchError, match="autocast 'fp8' is not one of bf16, off"):
        bench.effective_autocast("fp8", torch.device("cpu"))
    assert [c.autocast for c in bench.cases(["critic"], ["torch"], [2], [4], 8, "bf16")] == ["bf16"]


def test_full_mode_needs_a_square_map():
    with pytest.raises(DiscbenchError, match="N = 10 is not a square"):
        bench.full_step(bench.Case("full", "ref", 2, 10, 8), torch.device("cpu"))


def test_bench_command_prints_the_table_and_writes_json(tmp_path, capsys, monkeypatch):
    out = tmp_path / "b.json"
    status, stdout, err = discbench(capsys, monkeypatch, "bench", "--batch", "4,6", "--side", "3", "--dim", "8",
                                    "--repeats", "1", "--warmup", "0", "--out", str(out), "--quiet")
    assert status == 0, err
    payload = json.loads(out.read_text())
    rows = payload["rows"]
    assert {(r["mode"], r["impl"], r["batch"]) for r in rows} == {
        (m, i, b) for m in ("critic", "full") for i in ("ref", "torch") for b in (4, 6)}
    assert all(r["locations"] == 9 and r["dim"] == 8 for r in rows)
    assert payload["machine"]["torch"] == torch.__version__ and payload["machine"]["cpu_count"] >= 1
    assert payload["settings"]["impls"] == ["ref", "torch"] and payload["settings"]["autocast"] == "off"
    assert all(r["autocast"] == "off" for r in rows)  # CPU never autocasts, like training
    assert "measuring on cpu with fp32 codes, autocast off (CPU never autocasts)" in err
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("| mode") and len(lines) == 2 + len(rows)
    assert "| critic |   6 |   9 |   8 | torch  |" in stdout


@pytest.mark.parametrize("args,message", [
    (["--impl", "triton"], "implementation(s) triton cannot run on cpu; available: ref, torch"),
    (["--batch", "4,x"], "--batch takes positive integers separated by commas, got '4,x'"),
    (["--side", "0"], "--side takes positive integers"),
    (["--side", "2,100000", "--batch", "64"], "critic ref with B=64, N=10000000000, D=4 needs at least"),
])
def test_bench_command_bad_input(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    status, _, err = discbench(capsys, monkeypatch, "bench", "--batch", "2", "--side", "2", "--dim", "4",
                               "--out", str(tmp_path / "b.json"), "--quiet", *args)
    assert status == 2 and message in err.strip().splitlines()[-1]
    assert not (tmp_path / "b.json").exists()


def test_the_memory_bound_is_the_reference_scores_and_the_codes():
    case = bench.Case("critic", "ref", batch=8, locations=16, dim=4)
    assert bench.lower_bound_bytes(case) == 2 * 4 * 8 * 16 * 4 + 2 * 4 * 8 * 8 * 16  # codes + (B, B, N) scores
    assert bench.lower_bound_bytes(bench.Case("critic", "torch", 8, 16, 4)) == 2 * 4 * 8 * 16 * 4
    huge = bench.Case("critic", "torch", batch=1, locations=2, dim=bench.device_memory(torch.device("cpu")))
    with pytest.raises(DiscbenchError, match="needs at least"):
        bench.check_memory([huge], torch.device("cpu"))  # refused before anything is allocated
