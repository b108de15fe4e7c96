"""Third-party plugins that fail safely: the mistakes plugin authors make, one fake package each (issue 11).

Each test installs a small distribution (``<name>-<version>.dist-info`` with a ``discbench.losses`` entry point, and
its module) into a temporary directory put first on ``sys.path``, makes the loss registry scan its entry points
again, and runs the command line in-process. It checks the one-line outcome, and that the other losses still list,
validate and (with the embedded dataset) run.

| mistake in a third-party plugin                  | outcome                                                         |
|--------------------------------------------------|-----------------------------------------------------------------|
| its module fails to import                       | an ERROR row in ``list losses``; using it: one line, exit 2     |
| it registers a built-in's name (``l2``)          | the built-in is kept; one warning naming the entry point        |
| the entry point names a function, not a class    | an ERROR row; using it: one line, exit 2                        |
| the loss returns shape (B,) instead of a scalar  | ``run``: pre-flight 'finite scalar' fails in one line, exit 2   |
| a parameter it owns receives no gradient         | ``run``: pre-flight 'gradients' fails in one line, exit 2       |
| it returns NaN                                   | ``validate``: one failure, the dependent checks skipped         |
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from discbench.contract import PluginCheckError, preflight
from discbench.registry import LOSSES, PROTOCOLS
from tests.conftest import REPO, TINY, requires_fashion_mnist
from tests.test_cli import discbench

PLUGIN_HEADER = """
import torch
import torch.nn.functional as F
from torch import nn

from discbench.api import Discrepancy, LossOutput, Pairing, Tap
"""


def _plugin(body: str) -> str:
    return PLUGIN_HEADER + textwrap.dedent(body)


# module name -> (distribution, entry points, module source)
BROKEN = {
    "broken_import": ("broken-import", {"broken_import": "broken_import_pkg:Loss"}, textwrap.dedent("""
        import not_a_module_that_exists_anywhere  # the author forgot a dependency
    """)),
    "clash": ("clash-with-l2", {"l2": "clash_pkg:L2Again"}, _plugin("""
        class L2Again(Discrepancy):
            name = "l2"

            def forward(self, source, target, ctx):
                return LossOutput(source.mean() * 0)
    """)),
    "function": ("function-not-class", {"function_loss": "function_pkg:make_loss"}, _plugin("""
        def make_loss(source, target):
            return None
    """)),
    "shape": ("per-sample-loss", {"per_sample": "shape_pkg:PerSample"}, _plugin("""
        class PerSample(Discrepancy):
            \"\"\"Returns one loss per sample, shape (B,), instead of their mean.\"\"\"

            name = "per_sample"
            pairing = Pairing.SAME_STAGE

            def __init__(self, source, target):
                super().__init__(source, target)
                self.proj = nn.Conv2d(source.channels, target.channels, 1)

            def forward(self, source, target, ctx):
                s = F.adaptive_avg_pool2d(self.proj(source), 1).flatten(1)
                t = F.adaptive_avg_pool2d(target.detach(), 1).flatten(1)
                return LossOutput(((s - t) ** 2).mean(dim=1))
    """)),
    "dead": ("dead-layer", {"dead_layer": "dead_pkg:DeadLayer"}, _plugin("""
        class DeadLayer(Discrepancy):
            \"\"\"Owns a layer that never enters the loss.\"\"\"

            name = "dead_layer"

            def __init__(self, source, target):
                super().__init__(source, target)
                self.proj = nn.Conv2d(source.channels, target.channels, 1)
                self.unused = nn.Linear(3, 3)

            def forward(self, source, target, ctx):
                s = F.adaptive_avg_pool2d(self.proj(source), 1).flatten(1)
                t = F.adaptive_avg_pool2d(target.detach(), 1).flatten(1)
                return LossOutput(((s - t) ** 2).mean())
    """)),
    "nan": ("nan-loss", {"nan_loss": "nan_pkg:NanLoss"}, _plugin("""
        class NanLoss(Discrepancy):
            name = "nan_loss"

            def __init__(self, source, target):
                super().__init__(source, target)
                self.scale = nn.Parameter(torch.ones(()))

            def forward(self, source, target, ctx):
                return LossOutput(self.scale * source.mean() * float("nan"))
    """)),
    "mismatch": ("name-mismatch", {"renamed": "mismatch_pkg:Original"}, _plugin("""
        class Original(Discrepancy):
            name = "original"

            def forward(self, source, target, ctx):
                return LossOutput(((source.mean() - target.detach().mean()) ** 2))
    """)),
}


def write_distribution(site: Path, module: str, dist: str, version: str, eps: dict[str, str], source: str) -> None:
    """An installed distribution as pip leaves it: the module and ``<dist>-<version>.dist-info``."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[discbench.losses]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))


@pytest.fixture
def install(tmp_path, monkeypatch):
    """``install(key)``: install the fake package ``BROKEN[key]`` and let the loss registry see it (as a fresh
    process would: the next look-up scans the entry points again). Everything is undone afterwards."""
    LOSSES.names()  # the built-ins are registered once, by import
    for attr in ("_entries", "_origins", "_sources", "_lazy", "_broken"):
        monkeypatch.setattr(LOSSES, attr, dict(getattr(LOSSES, attr)))
    monkeypatch.setattr(LOSSES, "warnings", [])
    monkeypatch.setattr(LOSSES, "_loaded", False)
    modules: list[str] = []

    def install_(key: str, version: str = "0.1.0") -> str:
        dist, eps, source = BROKEN[key]
        site = tmp_path / f"site-{key}-{version}"
        site.mkdir()
        module = next(iter(eps.values())).split(":")[0]
        write_distribution(site, module, dist, version, eps, source)
        monkeypatch.syspath_prepend(str(site))
        modules.append(module)
        return next(iter(eps))

    yield install_
    for module in modules:
        sys.modules.pop(module, None)


def error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def others_still_list_and_validate(capsys, monkeypatch) -> str:
    status, out, err = discbench(capsys, monkeypatch, "list", "losses")
    assert status == 0, err
    for name in ("l2", "kd", "mi_x_si", "crd"):
        assert any(line.startswith(f"{name} ") and "hyper-parameters" in line for line in out.splitlines()), name
    status, out, err = discbench(capsys, monkeypatch, "validate", "--loss", "kd")
    assert status == 0 and out.strip().splitlines()[-1] == "kd: 3/3 checks passed", out + err
    return out


def others_still_run(tmp_path, capsys, monkeypatch, loss: str = "kd") -> None:
    res = tmp_path / f"runs-{loss}"
    status, _, err = discbench(capsys, monkeypatch, "run", "--loss", loss, "--backbone", "smallnet", "--seeds", "1",
                               "--results-dir", str(res), "--quiet", *[a for o in TINY for a in ("--set", o)])
    assert status == 0, err
    assert len(sorted(res.rglob("*.json"))) == 1


def refused_without_record(tmp_path, capsys, monkeypatch, loss: str) -> str:
    res = tmp_path / f"refused-{loss}"
    status, _, err = discbench(capsys, monkeypatch, "run", "--loss", loss, "--backbone", "smallnet", "--seeds", "1",
                               "--results-dir", str(res), "--quiet", *[a for o in TINY for a in ("--set", o)])
    assert status == 2, err
    assert not res.exists() or not sorted(res.rglob("*.json"))
    return error_line(err)


# -- row 1: the module fails to import ----------------------------------------------------------------------------
def test_import_failure_is_an_error_row_and_one_line_when_used(install, capsys, monkeypatch):
    name = install("broken_import")
    status, out, err = discbench(capsys, monkeypatch, "list", "losses")
    assert status == 0, err
    (row,) = [line for line in out.splitlines() if line.startswith(f"{name} ")]
    assert row.split(None, 1)[1] == (
        "entry point 'broken_import_pkg:Loss' of package broken-import 0.1.0; ERROR: loss 'broken_import' (entry "
        "point 'broken_import = broken_import_pkg:Loss' of package broken-import 0.1.0) cannot be imported: "
        "ModuleNotFoundError: No module named 'not_a_module_that_exists_anywhere'; fix broken-import or uninstall "
        "it (pip uninstall broken-import)")
    others_still_list_and_validate(capsys, monkeypatch)
    for args in (["validate", "--loss", name], ["run", "--loss", name, "--backbone", "smallnet"]):
        status, _, err = discbench(capsys, monkeypatch, *args)
        assert status == 2
        line = error_line(err)
        assert "package broken-import 0.1.0" in line and "cannot be imported: ModuleNotFoundError" in line
        assert "Traceback" not in err


# -- row 2: a built-in's name -------------------------------------------------------------------------------------
WARNING = ("warning: loss 'l2' of package clash-with-l2 0.1.0 (entry point 'l2 = clash_pkg:L2Again') is skipped: "
           "the name is taken by built-in (discbench.losses.l2); rename that entry point in clash-with-l2's "
           "[project.entry-points.\"discbench.losses\"]")


def test_a_name_clash_keeps_the_builtin_and_warns_once(install, capsys, monkeypatch):
    install("clash")
    out = others_still_list_and_validate(capsys, monkeypatch)
    assert LOSSES.origins()["l2"] == "built-in (discbench.losses.l2)" and LOSSES.warnings == [WARNING[9:]]
    assert "clash_pkg" not in sys.modules  # never imported
    assert "clash" not in out
    status, out, err = discbench(capsys, monkeypatch, "validate", "--loss", "l2")
    assert status == 0 and out.splitlines()[0].startswith("l2 v1 (built-in (discbench.losses.l2))")


def test_a_name_clash_warning_is_printed_by_every_command_that_reads_the_registry(install, capsys, monkeypatch):
    install("clash")
    status, _, err = discbench(capsys, monkeypatch, "list", "losses")
    assert status == 0 and err.strip().splitlines() == [WARNING]


@requires_fashion_mnist
@pytest.mark.slow
def test_a_name_clash_does_not_stop_run(install, tmp_path, capsys, monkeypatch):
    install("clash")
    others_still_run(tmp_path, capsys, monkeypatch, "kd")
    others_still_run(tmp_path, capsys, monkeypatch, "l2")


# -- row 3: a function instead of a class -------------------------------------------------------------------------
def test_an_entry_point_to_a_function_is_reported_as_such(install, capsys, monkeypatch):
    name = install("function")
    status, out, err = discbench(capsys, monkeypatch, "list", "losses")
    assert status == 0 and "Traceback" not in err, err
    (row,) = [line for line in out.splitlines() if line.startswith(f"{name} ")]
    assert row.endswith("ERROR: loss 'function_loss' (entry point 'function_loss = function_pkg:make_loss' of package "
                        "function-not-class 0.1.0) is a function, not a subclass of discbench.api.Discrepancy; point "
                        "the entry point at the Discrepancy subclass ('function_loss = module:ClassName')")
    others_still_list_and_validate(capsys, monkeypatch)
    status, _, err = discbench(capsys, monkeypatch, "validate", "--loss", name)
    assert status == 2 and "is a function, not a subclass of discbench.api.Discrepancy" in error_line(err)


def test_a_class_name_that_differs_from_its_entry_point_is_an_error(install, capsys, monkeypatch):
    name = install("mismatch")
    status, _, err = discbench(capsys, monkeypatch, "validate", "--loss", name)
    assert status == 2
    assert error_line(err) == (
        "error: loss 'renamed' (entry point 'renamed = mismatch_pkg:Original' of package name-mismatch 0.1.0) "
        "declares name = 'original' but its entry point is called 'renamed'; make them equal: name = 'renamed' in "
        "mismatch_pkg:Original, or rename the entry point")
    others_still_list_and_validate(capsys, monkeypatch)


# -- row 4: a loss of shape (B,) ------------------------------------------------------------------------------------
def test_a_per_sample_loss_fails_the_preflight_in_one_line(install, tmp_path, capsys, monkeypatch):
    name = install("shape")
    line = refused_without_record(tmp_path, capsys, monkeypatch, name)
    assert line == (
        "error: loss 'per_sample' (entry point 'per_sample = shape_pkg:PerSample' of package per-sample-loss 0.1.0) "
        "failed the pre-flight check 'finite scalar' (protocol self, smallnet on fashion-mnist, batch 2, module 1 -> "
        "4): loss has shape (2,), expected a scalar; fix the plugin, then check it with 'discbench validate --loss "
        "per_sample'")
    status, out, _ = discbench(capsys, monkeypatch, "validate", "--loss", name)
    assert status == 1 and out.strip().splitlines()[-1] == f"{name}: 0/9 checks passed, 3 failed, 6 skipped"
    others_still_list_and_validate(capsys, monkeypatch)


# -- row 5: an owned parameter without gradient -------------------------------------------------------------------
def test_a_dead_layer_fails_the_preflight_in_one_line(install, tmp_path, capsys, monkeypatch):
    name = install("dead")
    line = refused_without_record(tmp_path, capsys, monkeypatch, name)
    assert line.startswith("error: loss 'dead_layer' (entry point 'dead_layer = dead_pkg:DeadLayer' of package "
                           "dead-layer 0.1.0) failed the pre-flight check 'gradients' (protocol self, smallnet on "
                           "fashion-mnist, batch 2, module 1 -> 4): parameters without gradient: unused.weight, "
                           "unused.bias; fix the plugin")
    others_still_list_and_validate(capsys, monkeypatch)


# -- row 6: NaN -----------------------------------------------------------------------------------------------------
def test_a_nan_loss_is_one_failure_and_no_false_determinism_report(install, tmp_path, capsys, monkeypatch):
    name = install("nan")
    status, out, _ = discbench(capsys, monkeypatch, "validate", "--loss", name)
    assert status == 1
    checks = [line for line in out.splitlines() if line.startswith(("PASS", "FAIL", "SKIP"))]
    assert [c.split()[0] for c in checks] == ["FAIL", "SKIP", "SKIP"] * 3
    assert all("loss is nan" in c for c in checks[::3])
    assert "nan vs nan" not in out and "differ" not in out
    assert out.strip().splitlines()[-1] == f"{name}: 0/9 checks passed, 3 failed, 6 skipped"
    line = refused_without_record(tmp_path, capsys, monkeypatch, name)
    assert "failed the pre-flight check 'finite scalar'" in line and line.endswith(
        "loss is nan; fix the plugin, then check it with 'discbench validate --loss nan_loss'")
    others_still_list_and_validate(capsys, monkeypatch)


@requires_fashion_mnist
@pytest.mark.slow
def test_other_losses_still_run_beside_broken_plugins(install, tmp_path, capsys, monkeypatch):
    for key in BROKEN:
        install(key)
    status, out, err = discbench(capsys, monkeypatch, "list", "losses")
    assert status == 0 and err.strip().splitlines() == [WARNING]
    assert sum("; ERROR: " in line for line in out.splitlines()) == 3  # import, function, name mismatch
    others_still_run(tmp_path, capsys, monkeypatch, "kd")
    others_still_run(tmp_path, capsys, monkeypatch, "none")


# -- the sweep checks every row before anything trains ----------------------------------------------------------
def test_sweep_checks_every_row_before_training(install, tmp_path, capsys, monkeypatch):
    name = install("dead")
    config = tmp_path / "bench.toml"
    config.write_text((REPO / "bench.toml").read_text() + f"""
[suites.with-a-broken-row]
protocol = "self"
datasets = ["fashion-mnist"]
backbones = ["smallnet"]
seeds = 1
budget = "smoke"
rows = [{{ loss = "l2" }}, {{ loss = "{name}" }}]
""")
    res = tmp_path / "runs"
    status, _, err = discbench(capsys, monkeypatch, "sweep", "--suite", "with-a-broken-row", "--config", str(config),
                               "--results-dir", str(res), "--quiet")
    assert status == 2  # the data is opened and checked, then every row is pre-flighted, then the first one trains
    assert "failed the pre-flight check 'gradients'" in error_line(err) and not res.exists()


def test_sweep_without_its_data_is_refused_before_the_pre_flight(install, tmp_path, capsys, monkeypatch):
    name = install("dead")
    config = tmp_path / "bench.toml"
    config.write_text((REPO / "bench.toml").read_text() + f"""
[suites.with-a-broken-row]
protocol = "self"
datasets = ["cifar100"]
backbones = ["smallnet"]
seeds = 1
budget = "smoke"
rows = [{{ loss = "l2" }}, {{ loss = "{name}" }}]
""")
    res = tmp_path / "runs"
    status, _, err = discbench(capsys, monkeypatch, "sweep", "--suite", "with-a-broken-row", "--config", str(config),
                               "--results-dir", str(res), "--quiet", "--data-dir", str(tmp_path / "no-data"))
    assert status == 2 and "pre-flight" not in error_line(err) and "cifar" in error_line(err).lower()
    assert not res.exists()


# -- the pre-flight check itself --------------------------------------------------------------------------------------
def preflight_params():
    for name in LOSSES.names():
        every = [p for p in PROTOCOLS.names() if PROTOCOLS.get(p).takes_loss]  # None: every protocol that takes one
        for protocol in sorted(LOSSES.get(name).protocols or every):
            yield pytest.param(name, protocol, id=f"{name}-{protocol}")


@pytest.mark.parametrize("name,protocol", list(preflight_params()))
def test_every_builtin_passes_the_preflight(bench, name, protocol):
    partner = {"online": {"peer": "tinynet"}, "offline": {"teacher": "smallnet"}}.get(protocol)
    cfg = bench.resolve(name, "smallnet", "fashion-mnist", "smoke", protocol, partner=partner)
    state = torch.get_rng_state()
    assert preflight(cfg) > 0
    assert torch.equal(torch.get_rng_state(), state)  # the run's seeding is untouched


def test_preflight_skips_runs_without_a_plugin(bench):
    assert preflight(bench.resolve("ce_kd", "smallnet", "fashion-mnist", "smoke")) == 0


def test_preflight_blames_a_plugin_that_raises(bench):
    from discbench.api import Discrepancy

    class Raises(Discrepancy):
        name = "raises_for_tests"

        def forward(self, source, target, ctx):
            raise ValueError("boom")

    LOSSES.add(Raises.name, Raises, origin="test fixture")
    try:
        cfg = bench.resolve(Raises.name, "smallnet", "fashion-mnist", "smoke")
        with pytest.raises(PluginCheckError, match=r"^loss 'raises_for_tests' \(test fixture\) failed the pre-flight "
                                                   r"check 'forward' .*: ValueError: boom; fix the plugin"):
            preflight(cfg)
    finally:
        LOSSES.unregister(Raises.name)


def test_preflight_refuses_a_bare_tensor(bench):
    from discbench.api import Discrepancy

    class Bare(Discrepancy):
        name = "bare_tensor_for_tests"

        def forward(self, source, target, ctx):
            return (source.mean() - target.detach().mean()) ** 2

    LOSSES.add(Bare.name, Bare, origin="test fixture")
    try:
        with pytest.raises(PluginCheckError, match=r"check 'finite scalar' .*: forward returned Tensor, expected a "
                                                   r"discbench.api.LossOutput\(loss, terms\); fix the plugin"):
            preflight(bench.resolve(Bare.name, "smallnet", "fashion-mnist", "smoke"))
    finally:
        LOSSES.unregister(Bare.name)


def test_record_names_the_plugin_package(install, bench):
    from discbench.records import loss_source

    name = install("dead", version="2.3.4")
    cfg = bench.resolve(name, "smallnet", "fashion-mnist", "smoke")
    assert loss_source(cfg) == {"name": "dead_layer", "version": 1, "distribution": "dead-layer",
                                "distribution_version": "2.3.4", "entry_point": "dead_pkg:DeadLayer"}
    builtin = loss_source(bench.resolve("l2", "smallnet", "fashion-mnist", "smoke"))
    assert builtin == {"name": "l2", "version": 1, "distribution": "discbench",
                       "distribution_version": __import__("discbench").__version__,
                       "entry_point": "discbench.losses.l2:L2"}
    json.dumps(builtin)
