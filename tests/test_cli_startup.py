"""A command line that answers at once: ``--help``, ``list budgets``, ``list suites``, ``list losses``,
``validate --help`` and ``leaderboard`` import neither torch nor torchvision (checked on ``sys.modules``, not timed:
the times are in benchmarks/bench_cli_startup.py), and ``leaderboard`` writes a file only when ``--out`` names one."""

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


def test_static_cards_equal_the_imported_classes():
    """``list losses`` describes the built-ins from their source (``catalog.static_cards``, no torch); what it reads
    equals what the imported classes say (name, origin, protocols, hyper-parameters and defaults)."""
    from discbench.catalog import imported_cards, loss_cards, static_cards

    static = static_cards()
    assert static == sorted(imported_cards(), key=lambda c: c.name)
    assert loss_cards() == static  # only built-ins installed: the listing takes the static reading
    assert {"kd", "mi_x_si", "vid"} <= {c.name for c in static}


def test_an_edited_loss_file_is_read_as_it_is_and_a_computed_default_falls_back_to_importing(tmp_path, monkeypatch):
    """Nothing is stored, so nothing goes stale: an edited built-in is described from its current source, a new file
    is listed as soon as it exists, and a file the reader cannot evaluate is refused (the classes are imported)."""
    import shutil

    from discbench import catalog
    from discbench.catalog import LossCard, Unreadable, imported_cards, static_cards
    from discbench.registry import LOSSES, PROTOCOLS

    copy = tmp_path / "losses"
    shutil.copytree(catalog.package_dir("discbench.losses"), copy, ignore=shutil.ignore_patterns("__pycache__"))
    every = tuple(p for p in PROTOCOLS.names() if PROTOCOLS.get(p).takes_loss)  # a loss runs under these
    cards = static_cards(copy)
    assert cards == [LossCard.of(LOSSES.get(c.name), LOSSES.origins()[c.name], every) for c in cards]
    kd = copy / "kd.py"
    kd.write_text(kd.read_text().replace("temperature: float = 4.0", "temperature: float = 5.0"))
    assert next(c for c in static_cards(copy) if c.name == "kd").hparams == {"temperature": "5.0"}
    kd2 = kd.read_text().replace('name = "kd"', 'name = "kd2"').replace("class KD(", "class KD2(")
    (copy / "kd2.py").write_text(kd2)
    assert next(c for c in static_cards(copy) if c.name == "kd2").hparams == {"temperature": "5.0"}
    kd.write_text(kd.read_text().replace("temperature: float = 5.0", "temperature: float = 2.0 * 2"))
    with pytest.raises(Unreadable, match=r"2\.0 \* 2"):
        static_cards(copy)
    # the listing then imports the (real) classes instead of describing them from what it cannot read
    real = catalog.package_dir
    monkeypatch.setattr(catalog, "package_dir",
                        lambda package: copy if package == "discbench.losses" else real(package))
    assert catalog.loss_cards() == imported_cards()
