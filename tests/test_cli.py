"""End to end through the command line on the embedded dataset: records, skipping, errors, leaderboards."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys

import pytest

from discbench import __version__ as discbench_version
from discbench.cli import main
from tests.conftest import REPO, TINY, requires_fashion_mnist


def discbench(capsys, monkeypatch, *args):
    """Run the console entry point in-process in the repository; return (exit status, stdout, stderr)."""
    return discbench_in(capsys, monkeypatch, REPO, *args)


def discbench_in(capsys, monkeypatch, cwd, *args):
    """Run the console entry point in-process in ``cwd``; return (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["discbench", *args])
    monkeypatch.chdir(cwd)
    try:
        main()
        status = 0
    except SystemExit as exc:
        status = exc.code or 0
    out = capsys.readouterr()
    return status, out.out, out.err


def tiny(*extra):
    return [a for o in (*TINY, *extra) for a in ("--set", o)]


def records(root):
    return sorted(root.rglob("*.json"))


@requires_fashion_mnist
@pytest.mark.slow
def test_run_skip_force_and_leaderboard(tmp_path, capsys, monkeypatch):
    res = tmp_path / "runs"
    status, _, err = discbench(capsys, monkeypatch, "run", "--loss", "mi_x_si", "--backbone", "smallnet",
                               "--seeds", "2", "--results-dir", str(res), "--quiet", *tiny())
    assert status == 0, err
    paths = records(res)
    assert len(paths) == 2
    rec = json.loads(paths[0].read_text())
    assert rec["loss"] == {"name": "mi_x_si", "version": 2, "distribution": "discbench",
                           "distribution_version": discbench_version, "entry_point": "discbench.losses.muse:MIxSI"}
    assert rec["seed"] in (0, 1)
    assert set(rec["final_top1"]) == {"net/exit1", "net/exit2", "net/exit3", "net/exit4"}
    assert {"mi@1", "si@3", "mi_x_si@2", "ce@4", "kd@1", "loss"} <= set(rec["final_train_terms"])
    assert rec["cost"]["loss_params"] > 0 and rec["runtime"]["critic_impl"] == "torch"
    assert rec["config"]["recipe"]["train_subset"] == 128 and rec["config_hash"] in paths[0].name
    assert rec["provenance"]["torch"] and rec["timing"]["steps"] == 4
    timm = importlib.util.find_spec("timm")
    assert rec["provenance"]["timm"] == (importlib.metadata.version("timm") if timm else None)
    mtimes = [p.stat().st_mtime_ns for p in paths]

    status, _, err = discbench(capsys, monkeypatch, "run", "--loss", "mi_x_si", "--backbone", "smallnet",
                               "--seeds", "3", "--results-dir", str(res), "--quiet", *tiny())
    assert status == 0 and sum(line.startswith("skip ") for line in err.splitlines()) == 2
    assert [p.stat().st_mtime_ns for p in records(res)[:2]] == mtimes and len(records(res)) == 3

    status, _, err = discbench(capsys, monkeypatch, "run", "--loss", "mi_x_si", "--backbone", "smallnet",
                               "--seeds", "1", "--results-dir", str(res), "--quiet", "--force", *tiny())
    assert status == 0 and not any(line.startswith("skip ") for line in err.splitlines()) and len(records(res)) == 3

    status, _, _ = discbench(capsys, monkeypatch, "run", "--loss", "none", "--backbone", "smallnet", "--seeds", "2",
                             "--results-dir", str(res), "--quiet", *tiny())
    assert status == 0
    out_md = tmp_path / "LB.md"
    status, out, _ = discbench(capsys, monkeypatch, "leaderboard", "--results-dir", str(res), "--out", str(out_md))
    assert status == 0 and out_md.read_text().strip() == out.strip()
    assert "| smallnet   | mi_x_si [recipe.epochs=1" in out and "(n=3)" in out and "Baseline ↑" in out
    assert "## fashion-mnist · budget `smoke` · protocol `self`" in out


@requires_fashion_mnist
@pytest.mark.slow
def test_same_seed_same_numbers(tmp_path, capsys, monkeypatch):
    runs = []
    for name in ("a", "b"):
        status, _, err = discbench(capsys, monkeypatch, "run", "--loss", "mi_plus_si", "--backbone", "smallnet",
                                   "--seeds", "1", "--results-dir", str(tmp_path / name), "--quiet", *tiny())
        assert status == 0, err
        runs.append(json.loads(records(tmp_path / name)[0].read_text()))
    assert runs[0]["final_top1"] == runs[1]["final_top1"]
    assert runs[0]["final_train_terms"] == runs[1]["final_train_terms"]


@pytest.mark.parametrize("args,message", [
    (["run", "--loss", "mi_si"], "unknown loss 'mi_si'; did you mean 'mi_x_si'"),
    (["run", "--loss", "l2", "--backbone", "resnet19"], "unknown backbone 'resnet19'"),
    (["run", "--loss", "l2", "--dataset", "cifar1000"], "unknown dataset 'cifar1000'"),
    (["run", "--loss", "l2", "--budget", "smokey"], "unknown budget 'smokey'"),
    (["run", "--loss", "l2", "--set", "recipe.lrate=1"], "unknown key 'lrate' (did you mean 'lr'?); valid keys: epo"),
    (["run", "--loss", "l2", "--dataset", "cifar100"], "cifar100 needs a data directory: pass --data-dir"),
    (["run", "--loss", "l2", "--dataset", "cifar100", "--data-dir", "/nonexistent"],
     "cifar100 not found: expected /nonexistent/"),
    (["run", "--loss", "l2", "--dataset", "fashion-mnist", "--data-dir", "/nonexistent"],
     "fashion-mnist not found: expected train-images-idx3-ubyte.gz"),
    (["leaderboard", "--results-dir", "/nonexistent"], "results directory /nonexistent does not exist"),
    (["sweep", "--suite", "dem"], "unknown suite 'dem'; did you mean 'demo'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, message):
    res = tmp_path / "runs"
    status, out, err = discbench(capsys, monkeypatch, *args, *(["--results-dir", str(res)] if args[0] == "run"
                                                               else []))
    assert status == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], err
    assert not res.exists() or not records(res)


@requires_fashion_mnist
def test_malformed_config_file(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bench.toml"
    bad.write_text("[datasets\n")
    status, _, err = discbench(capsys, monkeypatch, "run", "--loss", "l2", "--config", str(bad), "--results-dir",
                               str(tmp_path / "runs"))
    assert status == 2 and "is not valid TOML" in err and not (tmp_path / "runs").exists()


@requires_fashion_mnist
@pytest.mark.slow
def test_non_finite_loss_stops_without_a_record(tmp_path, capsys, monkeypatch):
    res = tmp_path / "runs"
    status, _, err = discbench(capsys, monkeypatch, "run", "--loss", "mi", "--backbone", "smallnet", "--seeds", "1",
                               "--results-dir", str(res), "--quiet", *tiny("recipe.lr=1e30"))
    assert status == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: non-finite loss: term '") and "of module" in line and "step" in line
    assert not records(res)


def test_list(capsys, monkeypatch):
    status, out, _ = discbench(capsys, monkeypatch, "list", "losses")
    assert status == 0
    assert "mi_x_si" in out and "built-in (discbench.losses.muse)" in out and "baseline (discbench defaults)" in out
    status, out, _ = discbench(capsys, monkeypatch, "list", "datasets")
    assert "fashion-mnist" in out and "loader 'idx'" in out


@requires_fashion_mnist
@pytest.mark.slow
def test_sweep_runs_a_suite_and_labels_rows_as_the_suite_does(tmp_path, capsys, monkeypatch):
    tiny_sets = "{" + ", ".join(f'"{k}" = {v}' for k, v in (o.split("=", 1) for o in TINY)) + "}"
    config = tmp_path / "bench.toml"
    config.write_text((REPO / "bench.toml").read_text() + f"""
[suites.tiny]
protocol = "self"
datasets = ["fashion-mnist"]
backbones = ["smallnet"]
seeds = 2
budget = "smoke"
rows = [{{ loss = "none", label = "Baseline", set = {tiny_sets} }},
        {{ loss = "mi", label = "MI + CE + KD", set = {tiny_sets} }}]
""")
    res = tmp_path / "runs"
    # the same configuration as the suite's "MI + CE + KD" row, run first under another label
    status, _, err = discbench(capsys, monkeypatch, "run", "--loss", "mi", "--backbone", "smallnet", "--seeds", "1",
                               "--config", str(config), "--results-dir", str(res), "--quiet", "--label", "other",
                               *tiny())
    assert status == 0, err
    status, out, err = discbench(capsys, monkeypatch, "sweep", "--suite", "tiny", "--config", str(config),
                                 "--results-dir", str(res), "--quiet")
    assert status == 0, err
    assert sum(line.startswith("skip ") for line in err.splitlines()) == 1 and len(records(res)) == 4
    assert "# suite `tiny`" in out and "| MI + CE + KD |" in out and "| other" not in out
    assert "Baseline ↑" in out and out.count("(n=2)") >= 5
    lb = tmp_path / "LB.md"
    status, again, _ = discbench(capsys, monkeypatch, "leaderboard", "--suite", "tiny", "--config", str(config),
                                 "--results-dir", str(res), "--out", str(lb))
    assert status == 0 and again == out and lb.read_text().strip() == out.strip()  # tables from records alone
