"""A command line that answers at once: ``--help``, ``list budgets``, ``list suites``, ``validate --help`` and
``leaderboard`` import neither torch nor torchvision (checked on ``sys.modules``, not timed: the times are in
benchmarks/bench_cli_startup.py), and ``leaderboard`` writes a file only when ``--out`` names one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_leaderboard import record

PROBE = ("import sys, atexit; atexit.register(lambda: print('HEAVY', sorted(m for m in ('torch', 'torchvision', "
         "'discbench.losses', 'discbench.api') if m in sys.modules), file=sys.stderr)); sys.argv[0] = 'discbench'; "
         "from discbench.cli import main; main()")


def run_cli(*args, cwd=REPO):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-P", "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    heavy = next(line for line in proc.stderr.splitlines() if line.startswith("HEAVY "))
    return proc, heavy.removeprefix("HEAVY ")


@pytest.fixture
def two_records(tmp_path):
    root = tmp_path / "runs"
    for seed, label in ((0, "l2"), (1, "mi")):
        path = root / "cifar100" / "smoke" / "self" / f"{label}__resnet18__{'h' * 16}__seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record(label, seed, {1: 60.0, 4: 70.0 + seed}, loss=label,
                                          hash_=label[0] * 16).to_dict()))
    return root


@pytest.mark.parametrize("args", [["--help"], ["list", "budgets"], ["list", "suites"], ["list", "backbones"],
                                  ["validate", "--help"], ["run", "--help"]])
def test_help_and_lists_import_no_torch(args):
    proc, heavy = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert heavy == "[]"


def test_leaderboard_renders_from_records_without_torch_or_plugins_and_writes_only_stdout(tmp_path, two_records):
    cwd = tmp_path / "elsewhere"
    (cwd / "results").mkdir(parents=True)
    proc, heavy = run_cli("leaderboard", "--results-dir", str(two_records), cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert heavy == "[]"
    assert "| resnet18   | l2" in proc.stdout and "| mi " in proc.stdout
    assert sorted(p.relative_to(cwd).as_posix() for p in cwd.rglob("*")) == ["results"]  # no LEADERBOARD.md


def test_leaderboard_writes_out_when_given(tmp_path, two_records):
    out = tmp_path / "LB.md"
    proc, heavy = run_cli("leaderboard", "--results-dir", str(two_records), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0 and heavy == "[]", proc.stderr
    assert out.read_text().strip() == proc.stdout.strip() and f"wrote {out}" in proc.stderr


def test_list_losses_reads_the_builtin_index_without_importing_torch():
    proc, heavy = run_cli("list", "losses")
    assert proc.returncode == 0, proc.stderr
    assert heavy == "[]"
    assert "mi_x_si" in proc.stdout and "none " in proc.stdout  # built-in losses and bench.toml baselines


def test_builtin_loss_index_is_current():
    """``losses/index.json`` equals what the classes say (regenerate: python -m discbench.catalog --write)."""
    from discbench.catalog import build_index, builtin_cards, index_text, losses_dir

    assert (losses_dir() / "index.json").read_text() == index_text(build_index()), \
        "losses/index.json is stale: run 'python -m discbench.catalog --write'"
    assert builtin_cards() is not None


def test_a_changed_loss_file_makes_the_index_stale_and_the_listing_imports(tmp_path):
    """An edited built-in is never described from the old index: the cards are refused and the classes read."""
    import shutil

    from discbench.catalog import LossCard, builtin_cards, losses_dir
    from discbench.registry import LOSSES

    copy = tmp_path / "losses"
    shutil.copytree(losses_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    cards = builtin_cards(copy)
    assert cards == [LossCard.of(LOSSES.get(c.name), LOSSES.origins()[c.name]) for c in cards]
    (copy / "kd.py").write_text((copy / "kd.py").read_text() + "\n# edited\n")
    assert builtin_cards(copy) is None
    (copy / "kd.py").unlink()  # a removed file, too
    assert builtin_cards(copy) is None
