"""``discbench leaderboard --suite`` (and ``--published``, ``--check``) resolves its suites' configurations against the
built-in plugins as their source declares them (``discbench.catalog.declared_plugins``), without importing torch, and
finds the same records: every suite resolves to the configurations (and hashes) the imported classes give, and
results/LEADERBOARD.md stays what the records render to. A declaration the source alone cannot give, and a suite that
names a third-party loss, import the plugins. ``--out`` under a file names the file in the way."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import typing

import pytest

from discbench import catalog, suites
from discbench.catalog import Unreadable, declared_classes, read_plugins
from discbench.config import Bench
from discbench.errors import DiscbenchError
from discbench.records import load
from discbench.registry import BACKBONES, LOSSES, PROTOCOLS
from discbench.reporting.markdown import combine, render_suite, suite_records
from tests.conftest import REPO
from tests.test_cli import discbench_in
from tests.test_cli_startup import PROBE
from tests.test_leaderboard import record

PUBLISHED_SUITES = ("signal-self", "table2-smoke")  # published: one environment each, so no --mix-environments


def probe(*args, pythonpath=()):
    """The console entry point in a fresh process (``discbench.cli.main``); returns the process and the heavy
    modules it imported (torch, torchvision, discbench.losses, discbench.api), read from ``sys.modules`` at exit."""
    path = [*map(str, pythonpath), str(REPO), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
    proc = subprocess.run([sys.executable, "-P", "-c", PROBE, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    heavy = next(line for line in proc.stderr.splitlines() if line.startswith("HEAVY "))
    return proc, heavy.removeprefix("HEAVY ")


def resolution(bench: Bench, name: str, budget: str | None):
    """What a suite resolves to: each run's label, backbone, request hash, seeds and configuration (or the error)."""
    try:
        suite = suites.load(bench, name)
        return [(r.cfg.label, r.cfg.backbone, r.cfg.request_hash, r.seeds, r.cfg.to_dict())
                for r in suites.runs(bench, suite, budget)]
    except DiscbenchError as exc:
        return f"error: {exc}"


@pytest.fixture(scope="module")
def bench() -> Bench:
    return Bench.load(REPO / "bench.toml")


def test_check_renders_the_published_leaderboard_without_torch():
    """`make check`: the published suites render, byte for byte, to the committed results/LEADERBOARD.md, and the
    process never imports torch or a plugin."""
    proc, heavy = probe("leaderboard", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "results/LEADERBOARD.md is up to date" in proc.stderr
    assert heavy == "[]"


def test_suites_render_without_torch_as_with_the_imported_plugins(bench):
    """``--suite`` prints what resolving the suites against the imported classes renders, without importing them."""
    proc, heavy = probe("leaderboard", *(a for s in PUBLISHED_SUITES for a in ("--suite", s)),
                        "--results-dir", "results/runs")
    assert proc.returncode == 0, proc.stderr
    assert heavy == "[]"
    records = load([REPO / "results" / "runs"])
    parts = []
    for name in PUBLISHED_SUITES:
        suite = suites.load(bench, name)  # bench reads the registries: the imported classes
        runs = suites.runs(bench, suite)
        parts.append((name, render_suite(suite, runs, records), suite_records(runs, records)))
    assert bench.plugins.losses is LOSSES and all(recs for _, _, recs in parts)
    assert proc.stdout == combine(parts) + "\n"


def test_every_suite_resolves_from_the_source_as_from_the_imported_classes(bench):
    """The configurations, hashes and errors of every suite of bench.toml under every budget are the same whether the
    plugins' declarations are read from their source or from the imported classes: a record is found by either
    exactly when its configuration is the row's."""
    declared = bench.reading(read_plugins())
    assert declared.plugins.losses is not LOSSES
    compared = 0
    for name in bench.names("suites"):
        for budget in (None, *bench.names("recipes")):
            from_source = resolution(declared, name, budget)
            assert from_source == resolution(bench, name, budget), (name, budget)
            compared += len(from_source) if isinstance(from_source, list) else 0
    assert compared > 1000


def _fields(config_cls: type) -> list[tuple]:
    hints = typing.get_type_hints(config_cls)
    return [(f.name, hints[f.name], f.default, f.default_factory, dict(f.metadata))
            for f in dataclasses.fields(config_cls)]


def builtins(registry, package: str) -> list[str]:
    """The registry's entries that ``package`` defines (not those other tests register in this process)."""
    return [n for n in registry.names() if (registry.source(n).entry_point or "").startswith(f"{package}.")]


def test_declared_classes_say_what_the_imported_classes_say(bench):
    """Every attribute and method the resolver reads, built-in by built-in."""
    protocols = declared_classes("PROTOCOLS")
    assert sorted(protocols) == builtins(PROTOCOLS, "discbench.protocols")
    for name, cls in protocols.items():
        real = PROTOCOLS.get(name)
        for attr in ("name", "partner", "needs_teacher", "kd_field", "family", "takes_loss"):
            assert getattr(cls, attr) == getattr(real, attr), (name, attr)
        assert _fields(cls.Config) == _fields(real.Config), name
        table = bench.data["protocols"].get(name, {})
        variants = [table] + [{**table, key: not value if isinstance(value, bool) else 0 * value}
                              for key, value in table.items() if isinstance(value, bool | int | float)]
        for values in variants:
            for loss in ("", "kd", "mi_x_si"):
                assert cls.inert(cls.Config(**values), loss) == real.inert(real.Config(**values), loss), (name, values)
    losses = declared_classes("LOSSES")
    assert sorted(losses) == builtins(LOSSES, "discbench.losses")
    for name, cls in losses.items():
        real = LOSSES.get(name)
        for attr in ("name", "version", "protocols", "replaces_kd", "ranges"):
            assert getattr(cls, attr) == getattr(real, attr), (name, attr)
        assert cls.hparams() == real.hparams(), name
        zeroed = {k: 0 * v if isinstance(v, int | float) and not isinstance(v, bool) else v
                  for k, v in real.hparams().items()}
        for values in (real.hparams(), zeroed):
            assert cls.problems(values) == real.problems(values), (name, values)
    assert sorted(declared_classes("BACKBONES")) == builtins(BACKBONES, "discbench.backbones")


@pytest.fixture
def losses_copy(tmp_path):
    copy = tmp_path / "losses"
    shutil.copytree(catalog.package_dir("discbench.losses"), copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_an_edited_default_is_read_as_it_is_and_changes_the_hash(bench, losses_copy):
    """Nothing is stored: the source is read as it is now. A changed default is another configuration, whose hash no
    record of the old default carries."""
    args = ("kd", "smallnet", "fashion-mnist", "smoke", "offline")  # offline, kd takes its default temperature
    teacher = {"partner": {"teacher": "smallnet"}}
    same = bench.reading(read_plugins({"LOSSES": losses_copy})).resolve(*args, **teacher)
    assert same.to_dict() == bench.resolve(*args, **teacher).to_dict()
    assert same.loss.hparams == {"temperature": 4.0}
    _edit(losses_copy / "kd.py", "temperature: float = 4.0", "temperature: float = 5.0")
    edited = bench.reading(read_plugins({"LOSSES": losses_copy})).resolve(*args, **teacher)
    assert edited.loss.hparams == {"temperature": 5.0}
    assert edited.request_hash != same.request_hash


@pytest.mark.parametrize("old, new", [
    ("temperature: float = 4.0", "temperature: float = TEMPERATURE"),  # a module-level value
    ('    name = "kd"\n', '    name = "kd"\n    for version in (2,):\n        pass\n'),  # set in a way not followed
])
def test_a_declaration_the_source_alone_cannot_give_is_unreadable(losses_copy, old, new):
    kd = losses_copy / "kd.py"
    _edit(kd, old, new)
    if "TEMPERATURE" in new:
        kd.write_text(kd.read_text() + "\nTEMPERATURE = 4.0\n")
    with pytest.raises(Unreadable):
        read_plugins({"LOSSES": losses_copy})


def test_a_method_that_needs_its_module_falls_back_to_the_imported_classes(bench, losses_copy, monkeypatch):
    """A declared method that calls what only its module defines raises ``Unreadable`` when called; the suites are
    then resolved against the imported classes (here the installed kd.py, whose default is 4.0, not the copy's)."""
    _edit(losses_copy / "kd.py", "temperature: float = 4.0", "temperature: float = 5.0")
    _edit(losses_copy / "kd.py", '    name = "kd"\n',
          '    name = "kd"\n\n    @classmethod\n    def problems(cls, hparams):\n        return _problems(hparams)\n')
    plugins = read_plugins({"LOSSES": losses_copy})
    with pytest.raises(Unreadable, match="_problems"):
        plugins.losses.get("kd").problems({"temperature": 5.0})
    monkeypatch.setattr(catalog, "declared_plugins", lambda: plugins)
    [(suite, runs)] = suites.resolved(bench, ["zoo-smoke-offline"])  # every loss, kd at its default
    assert {r.cfg.loss.hparams["temperature"] for r in runs if r.cfg.loss.name == "kd"} == {4.0}
    assert [r.cfg.to_dict() for r in runs] == [r.cfg.to_dict() for r in suites.runs(bench, suite)]


EXAMPLE_SRC = REPO / "examples" / "discbench-plugin-example" / "src"
SUITES = """
[suites.builtin-only]
protocol = "self"
datasets = ["fashion-mnist"]
backbones = ["smallnet"]
seeds = 1
budget = "smoke"
rows = [{loss = "mi_x_si"}]

[suites.third-party]
extends = "builtin-only"
rows = [{loss = "cosine_hint"}]
"""


def test_a_suite_that_names_a_third_party_loss_imports_it_and_only_then(tmp_path):
    """With a third-party loss installed (an entry point), a suite of built-ins still imports no torch; a suite that
    names the third-party loss imports it (its class is its only declaration) and resolves it."""
    dist = tmp_path / "site" / "discbench_plugin_example-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: discbench-plugin-example\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        "[discbench.losses]\ncosine_hint = discbench_plugin_example.cosine:CosineHint\n")
    config = tmp_path / "bench.toml"
    config.write_text(SUITES)
    common = ("--config", str(config), "--results-dir", "results/runs")
    path = (tmp_path / "site", EXAMPLE_SRC)
    proc, heavy = probe("leaderboard", "--suite", "builtin-only", *common, pythonpath=path)
    assert proc.returncode == 0, proc.stderr
    assert heavy == "[]" and "suite `builtin-only`" in proc.stdout
    proc, heavy = probe("leaderboard", "--suite", "third-party", *common, pythonpath=path)
    assert proc.returncode == 0, proc.stderr
    assert "torch" in heavy and "suite `third-party`" in proc.stdout


@pytest.fixture
def records_dir(tmp_path):
    root = tmp_path / "runs"
    for seed, label in ((0, "l2"), (1, "mi")):
        path = root / "cifar100" / "smoke" / "self" / f"{label}__resnet18__{'h' * 16}__seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record(label, seed, {1: 60.0, 4: 70.0 + seed}, loss=label,
                                          hash_=label[0] * 16).to_dict()))
    return root


@pytest.mark.parametrize("args, message", [
    (["--out", "F/x.md"], "cannot write F/x.md: F is a file, not a directory"),
    (["--out", "F/sub/x.md", "--figures"], "cannot write F/sub/x.md: F is a file, not a directory"),
    (["--out", "d/x.md", "--figures"], "cannot draw the figures into d/figures: d/figures is a file, not a directory"),
])
def test_out_under_a_file_names_the_file_in_the_way(tmp_path, records_dir, capsys, monkeypatch, args, message):
    (tmp_path / "F").write_text("mine\n")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "figures").write_text("mine\n")
    status, out, err = discbench_in(capsys, monkeypatch, tmp_path, "leaderboard", "--results-dir", str(records_dir),
                                    *args)
    assert (status, out, err) == (2, "", f"error: {message}\n")
    assert (tmp_path / "F").read_text() == (tmp_path / "d" / "figures").read_text() == "mine\n"
    status, _, err = discbench_in(capsys, monkeypatch, tmp_path, "config", "init", "F/bench.toml")
    assert (status, err) == (2, "error: cannot write F/bench.toml: F is a file, not a directory\n")
