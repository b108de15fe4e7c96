"""The one record reader (discbench.records): invalid files are one line each and left out, a run id is counted once,
conflicting numbers are flagged and never averaged, orphaned temporary files, file modes, strict JSON, and `run`
repairing a corrupt record instead of skipping its seed."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from discbench.atomic import atomic_write_text
from discbench.errors import DiscbenchError
from discbench.records import (
    ORPHAN_AGE_SECONDS,
    collect,
    existing_valid,
    parse_record,
    read_record,
    remove_orphans,
    write_record,
)
from discbench.reporting.markdown import render
from tests.conftest import REPO, requires_fashion_mnist
from tests.test_cli import discbench, records, tiny
from tests.test_leaderboard import record

SELF = Path("cifar100") / "smoke" / "self"


def write(root: Path, rec, name: str | None = None) -> Path:
    path = root / SELF / (name or f"{rec.label}__{rec.backbone}__{rec.config_hash}__seed{rec.seed}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec.to_dict(), indent=1))
    return path


@pytest.fixture
def runs(tmp_path):
    """Three seeds of `mi` and of `none`, valid."""
    root = tmp_path / "runs"
    for seed in range(3):
        write(root, record("mi", seed, {1: 60.0, 4: 70.0 + seed}, loss="mi", hash_="a" * 16))
        write(root, record("none", seed, {4: 69.0 + seed}, loss="", hash_="b" * 16))
    return root


BAD = {
    "corrupt.json": ("{\"schema\": 2, \"run_id\": oops}", "corrupt JSON"),
    "truncated.json": (None, "truncated JSON"),  # the first half of a valid record
    "empty.json": ("", "empty file"),
    "schema99.json": (None, "schema: 99"),
    "missing.json": (None, "'final_top1' is a required property"),
    "nan.json": (None, "non-standard JSON constant NaN"),
    "list.json": ("[1, 2]", "not a JSON object"),
    "badtop1.json": (None, "schema violation at final_top1/net/exit4"),
}


def bad_files(root: Path) -> None:
    good = json.dumps(record("mi", 7, {4: 70.0}, loss="mi", hash_="c" * 16).to_dict(), indent=1)
    data = json.loads(good)
    texts = {
        "truncated.json": good[: len(good) // 2],
        "schema99.json": json.dumps({**data, "schema": 99}),
        "missing.json": json.dumps({k: v for k, v in data.items() if k != "final_top1"}),
        "nan.json": good.replace("70.0", "NaN"),
        "badtop1.json": json.dumps({**data, "final_top1": {"net/exit4": 170.0}}),
    }
    for name, (text, _) in BAD.items():
        (root / SELF / name).write_text(texts.get(name, text))


def test_each_invalid_file_is_one_line_and_left_out(runs):
    bad_files(runs)
    found = collect([runs])
    assert len(found.records) == 6
    reasons = {p.path.name: p.reason for p in found.problems}
    assert set(reasons) == set(BAD)
    for name, (_, expected) in BAD.items():
        assert expected in reasons[name], (name, reasons[name])
        assert "\n" not in reasons[name]


def test_leaderboard_and_check_records_on_a_dirty_directory(runs, capsys, monkeypatch):
    bad_files(runs)
    status, out, err = discbench(capsys, monkeypatch, "leaderboard", "--results-dir", str(runs))
    assert status == 0, err
    assert "Traceback" not in err and sum("skipped invalid record" in line for line in err.splitlines()) == len(BAD)
    assert "71.00 ± 1.00 (n=3)" in out  # the valid mi seeds, none of the bad files
    status, out, _ = discbench(capsys, monkeypatch, "check-records", str(runs))
    assert status == 1
    assert "6 valid runs, 8 invalid" in out.splitlines()[-1]
    shutil.rmtree(runs / SELF)
    (runs / SELF).mkdir(parents=True)
    status, out, err = discbench(capsys, monkeypatch, "leaderboard", "--results-dir", str(runs))
    assert status == 2 and "no valid run records" in err  # an empty directory: one line, no traceback


def test_leaderboard_refuses_records_of_two_environments_unless_mix_environments(runs, capsys, monkeypatch):
    """The `runs` fixture's records share one environment; a fourth `mi` seed trained with other torch threads
    joins its table only under --mix-environments, and its cell is then marked ‡."""
    hw = {"device": "cpu", "cpu_model": "Intel Xeon X", "cpu_vector_extensions": ["avx2"], "torch_threads": 8,
          "gpu_name": None, "gpu_driver": None, "cuda": None}
    write(runs, dataclasses.replace(record("mi", 3, {1: 60.0, 4: 73.0}, loss="mi", hash_="a" * 16), hardware=hw))
    status, out, err = discbench(capsys, monkeypatch, "leaderboard", "--results-dir", str(runs))
    assert status == 2 and "would mix 2 environments" in err and "--mix-environments" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    status, out, err = discbench(capsys, monkeypatch, "leaderboard", "--results-dir", str(runs),
                                 "--mix-environments")
    assert status == 0, err
    assert "71.50 ± 1.29 (n=4)‡" in out  # mean and sample std of 70, 71, 72, 73
    assert "70.00 ± 1.00 (n=3)" in out and "70.00 ± 1.00 (n=3)‡" not in out  # `none`: one environment


def test_a_backup_copy_is_counted_once_with_a_warning(runs):
    shutil.copytree(runs / "cifar100", runs / "backup" / "cifar100")
    found = collect([runs])
    assert len(found.records) == 6 and len(found.duplicates) == 6 and not found.conflicts
    text = render(found.records)
    assert "71.00 ± 1.00 (n=3)" in text and "(n=6)" not in text


def test_same_run_with_different_numbers_from_two_machines_is_flagged_not_averaged(runs, tmp_path, capsys,
                                                                                  monkeypatch):
    other = tmp_path / "cluster"
    write(other, record("mi", 0, {1: 60.0, 4: 90.0}, loss="mi", hash_="a" * 16))  # same run id as runs' seed 0
    write(other, record("mi", 3, {1: 60.0, 4: 73.0}, loss="mi", hash_="a" * 16))  # a new seed: merged
    found = collect([runs, other])
    assert len(found.conflicts) == 1 and "aaaaaaaaaaaaaaaa-seed0" in found.conflicts[0]
    assert "70.00" in found.conflicts[0] and "90.00" in found.conflicts[0]
    mi = sorted(r.final_top1["net/exit4"] for r in found.records if r.label == "mi")
    assert mi == [71.0, 72.0, 73.0]  # seed 0 left out (neither copy), seed 3 merged in
    status, out, err = discbench(capsys, monkeypatch, "leaderboard", "--results-dir", str(runs),
                                 "--results-dir", str(other))
    assert status == 0 and "CONFLICT" in err and "72.00 ± 1.00 (n=3)" in out
    status, out, _ = discbench(capsys, monkeypatch, "check-records", str(runs), str(other))
    assert status == 1 and "1 conflicting" in out


def test_globs_merge_directories(tmp_path):
    for i in range(2):
        write(tmp_path / f"machine{i}", record("mi", i, {4: 70.0 + i}, loss="mi", hash_="a" * 16))
    assert sorted(r.seed for r in collect([str(tmp_path / "machine*")]).records) == [0, 1]
    with pytest.raises(DiscbenchError, match="matches no directory"):
        collect([str(tmp_path / "nothing*")])
    with pytest.raises(DiscbenchError, match="does not exist"):
        collect([tmp_path / "missing"])


def test_orphaned_temporary_files_old_ones_removed_fresh_ones_kept(runs):
    old = runs / SELF / ".tmp-abc.json"
    fresh = runs / SELF / ".tmp-def.json"
    old.write_text("{\"half")
    fresh.write_text("{\"half")
    past = time.time() - ORPHAN_AGE_SECONDS - 5
    os.utime(old, (past, past))
    found = collect([runs])
    assert found.orphans == [old] and old.exists()  # reported; a reader does not delete by default
    assert not found.problems  # temporary files are never read as records
    assert remove_orphans(runs) == [old]
    assert not old.exists() and fresh.exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_get_the_umask_mode(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        path = tmp_path / "x" / "r.json"
        atomic_write_text(path, "{}")
        reference = tmp_path / "plain"
        reference.write_text("")  # what open() gives any new file under this umask
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode == stat.S_IMODE(reference.stat().st_mode)
    assert not list(path.parent.glob(".tmp-*"))


def test_records_are_strict_json(tmp_path):
    rec = record("mi", 0, {4: math.nan}, loss="mi")
    path = tmp_path / "r.json"
    with pytest.raises(DiscbenchError, match="non-finite number at final_top1/net/exit4"):
        write_record(path, rec)
    assert not path.exists() and not list(tmp_path.iterdir())
    good = record("mi", 0, {4: 70.0}, loss="mi")
    write_record(path, good)
    assert read_record(path) == good


def test_existing_valid_moves_a_corrupt_record_aside(runs):
    path = next((runs / SELF).glob("mi__*seed1.json"))
    assert existing_valid(path) == path
    path.write_text(path.read_text()[:100])
    notes = []
    assert existing_valid(path, note=notes.append) is None
    assert not path.exists() and len(notes) == 1 and "truncated JSON" in notes[0]
    moved = list((runs / SELF).glob("mi__*seed1.json.invalid-*"))
    assert len(moved) == 1 and collect([runs]).problems == []  # never read again
    other = next((runs / SELF).glob("mi__*seed2.json"))  # a valid record of another run under this name
    impostor = other.with_name(other.name.replace("seed2", "seed0"))
    impostor.unlink()
    shutil.copy(other, impostor)
    assert existing_valid(impostor, note=notes.append) is None and "holds run" in notes[-1]


def test_the_published_records_are_valid_and_their_run_ids_unique():
    found = collect([REPO / "results" / "runs"])
    assert not found.problems and not found.conflicts and not found.duplicates
    assert len(found.records) == len(list((REPO / "results" / "runs").rglob("*.json")))


def test_parse_record_reports_run_id_mismatch():
    data = record("mi", 0, {4: 70.0}, loss="mi").to_dict()
    data["run_id"] = "other-seed0"
    with pytest.raises(DiscbenchError, match="run_id 'other-seed0' does not match"):
        parse_record(json.dumps(data), "x.json")


@requires_fashion_mnist
@pytest.mark.slow
def test_run_retrains_a_seed_whose_record_is_corrupt_and_records_hardware_memory_and_terms(tmp_path, capsys,
                                                                                          monkeypatch):
    res = tmp_path / "runs"
    args = ("run", "--loss", "mi_plus_si", "--backbone", "smallnet", "--seeds", "1", "--results-dir", str(res),
            "--quiet", *tiny())
    status, _, err = discbench(capsys, monkeypatch, *args)
    assert status == 0, err
    (path,) = records(res)
    rec = read_record(path)  # validated against the schema
    hw = rec.hardware
    assert hw["device"] == "cpu" and hw["torch_threads"] >= 1 and hw["gpu_name"] is None
    if Path("/proc/cpuinfo").is_file():
        cpuinfo = Path("/proc/cpuinfo").read_text()
        assert hw["cpu_model"] and hw["cpu_model"] in cpuinfo
        assert all(f" {flag}" in cpuinfo for flag in hw["cpu_vector_extensions"])
    assert rec.cost["peak_memory"]["kind"] == "cpu_process_peak_rss" and rec.cost["peak_memory"]["bytes"] > 2**20
    hist = rec.term_history
    assert hist["every"] == 1 and hist["steps"] == [1, 2, 3, 4]  # 4 steps, at most 100 points: every step
    assert {"mi@1", "si@3", "loss"} <= set(hist["terms"]) and all(len(v) == 4 for v in hist["terms"].values())
    # the epoch mean of each term is the mean of its per-step values
    for key in ("mi@1", "si@2", "loss"):
        assert sum(hist["terms"][key]) / 4 == pytest.approx(rec.final_train_terms[key], rel=1e-4)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()

    path.write_text(path.read_text()[:200])  # truncated, as by a full disk
    status, _, err = discbench(capsys, monkeypatch, *args)
    assert status == 0, err
    assert "invalid record moved aside" in err and "truncated JSON" in err and "skip " not in err
    assert read_record(path).seed == 0  # retrained and written again
    assert len(list(path.parent.glob("*.invalid-*"))) == 1


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_suite_without_records_or_with_some_says_what_is_missing(bench):
    from discbench import suites
    from discbench.reporting.markdown import render_suite

    suite = suites.load(bench, "demo")
    runs = suites.runs(bench, suite, None, seeds=3)
    assert [list(r.seeds) for r in runs[:2]] == [[0, 1, 2], [0, 1, 2]]
    configs = [r.cfg for r in runs]
    empty = render_suite(suite, runs, [])
    assert "_No run records yet: run 'discbench sweep --suite demo'._" in empty
    first = configs[0]
    recs = [dataclasses.replace(record("x", s, {4: 70.0 + s}, loss="", hash_=first.request_hash),
                                request_hash=first.request_hash, dataset=first.dataset.name, budget=first.budget)
            for s in range(2)]
    text = render_suite(suite, runs, recs)
    assert "70.50 ± 0.71 (n=2)" in text and "Runs without a record (not in the tables):" in text
    assert f"- {first.label} ({first.backbone}): seed 2" in text
    assert f"- {configs[1].label} ({configs[1].backbone}): seeds 0, 1, 2" in text


def test_ctrl_c_says_that_finished_seeds_are_kept(monkeypatch, capsys):
    from discbench import runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_seeds", interrupted)
    status, _, err = discbench(capsys, monkeypatch, "run", "--loss", "l2", "--backbone", "smallnet", "--device", "cpu")
    assert status == 130
    from discbench.cli import INTERRUPTED

    assert err.strip().splitlines()[-1] == INTERRUPTED and "finished seeds are kept" in INTERRUPTED
    assert "Aborted" not in err


def test_term_history_keeps_window_means_and_at_most_max_points():
    import torch

    from discbench.checkpoint import TermHistory

    values = [torch.tensor([float(i), 2.0 * i]) for i in range(1, 11)]  # 10 steps of (loss, mi@1)
    hist = TermHistory(total_steps=10, max_points=4)  # every ceil(10 / 4) = 3 steps; the last, partial window dropped
    for v in values:
        hist.add(["loss", "mi@1"], v)
    out = hist.to_dict()
    assert out["every"] == 3 and out["steps"] == [3, 6, 9]
    assert out["terms"] == {"loss": [2.0, 5.0, 8.0], "mi@1": [4.0, 10.0, 16.0]}  # means of (1,2,3), (4,5,6), (7,8,9)
    assert TermHistory(total_steps=50).every == 1 and TermHistory(total_steps=78_200).every == 782


def test_check_records_recomputes_the_hash_of_each_configuration(tmp_path, capsys, monkeypatch):
    """A record whose configuration was edited while its hash was kept is invalid: the hash is recomputed."""
    from discbench.config import Bench, config_digest

    cfg = Bench.load(None).resolve("none", "tinynet", "fashion-mnist", "zoo")
    assert config_digest(cfg.to_dict()) == cfg.hash  # the function the hash property uses
    rec = dataclasses.replace(record("none", 0, {4: 80.0}, loss="", hash_=cfg.hash), config=cfg.to_dict())
    path = write(tmp_path / "runs", rec)
    status, out, _ = discbench(capsys, monkeypatch, "check-records", str(tmp_path / "runs"))
    assert status == 0 and "1 valid runs, 0 invalid" in out
    data = json.loads(path.read_text())
    data["config"]["recipe"]["lr"] = 0.5  # a better-looking learning rate, the hash kept
    path.write_text(json.dumps(data))
    status, out, _ = discbench(capsys, monkeypatch, "check-records", str(tmp_path / "runs"))
    assert status == 1 and f"config_hash {cfg.hash} is not the hash of its configuration" in out
    assert "0 valid runs, 1 invalid" in out.splitlines()[-1]
