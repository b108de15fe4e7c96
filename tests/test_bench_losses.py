"""benchmarks/bench_losses.py runs and measures the pair the issue names (no timing assertions: timings are data)."""

from __future__ import annotations

import importlib.util
import json

from tests.conftest import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("_bench_losses", REPO / "benchmarks" / "bench_losses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_loss_per_tap_at_batch_2(tmp_path, capsys):
    out = tmp_path / "cost.json"
    status = load_script().main(["--losses", "l2", "kd", "mi", "--batch", "2", "--repeats", "2", "--warmup", "0",
                                 "--json", str(out)])  # not --threads: it would change this process's threads
    assert status == 0
    rows = {r["loss"]: r for r in json.loads(out.read_text())["rows"]}
    # resnet18 on 32x32: module 1 is 64 x 32 x 32, module 4 is 512 x 4 x 4; exits are shaped like module 4
    assert (rows["mi"]["source"], rows["mi"]["target"]) == ([2, 64, 32, 32], [2, 512, 4, 4])
    assert (rows["l2"]["source"], rows["l2"]["target"]) == ([2, 512, 4, 4], [2, 512, 4, 4])
    assert (rows["kd"]["source"], rows["kd"]["target"]) == ([2, 100], [2, 100])
    assert rows["l2"]["extra_params"] == rows["kd"]["extra_params"] == 0
    # MI's heads: local encoder on 64 channels and global encoder on 512, D = 64 (see losses/muse.py)
    d = 64
    encoder = {c: c * d + 2 * d + d * d + d + c * d + 2 * d for c in (64, 512)}  # linear, BN, linear, shortcut, LN
    assert rows["mi"]["extra_params"] == encoder[64] + encoder[512]
    assert all(len(r["fwd_bwd_ms_all"]) == 2 for r in rows.values())
    table = capsys.readouterr().out
    assert "| mi (v2) | feature | 2x64x32x32 -> 2x512x4x4 |" in table
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + 3  # header and three rows


def test_unknown_loss_is_one_line(capsys):
    assert load_script().main(["--losses", "kd", "mi_si"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown loss 'mi_si'; did you mean 'mi_x_si'")
