"""A loss from another package (examples/discbench-plugin-example) through the ``discbench.losses`` entry point.

The package is built and installed offline into a temporary directory (``pip install --target``), never into the
running environment: the CLI runs in subprocesses whose PYTHONPATH holds that directory, so importlib.metadata sees
the distribution and its entry point there and nowhere else. Nothing needs uninstalling afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import torch

from discbench.api import FeatureSpec
from discbench.contract import context
from discbench.registry import LOSSES
from tests.conftest import REPO, TINY, requires_fashion_mnist

EXAMPLE = REPO / "examples" / "discbench-plugin-example"
NAME = "cosine_hint"


def load_example_module():
    """The plugin's module straight from its file: no sys.path entry, no entry point, nothing registered."""
    path = EXAMPLE / "src" / "discbench_plugin_example" / "cosine.py"
    spec = importlib.util.spec_from_file_location("_discbench_plugin_example_cosine", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cosine_hint_closed_forms():
    """With an identity regressor: 0 for a positively scaled copy (cosine ignores the norm), 2 for the negation, 1
    for orthogonal features; the larger map is average-pooled to the smaller."""
    cosine_hint = load_example_module().CosineHint(FeatureSpec(4, 1), FeatureSpec(4, 2))
    with torch.no_grad():
        cosine_hint.regressor.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
    ctx = context(torch.Generator().manual_seed(0))
    x = torch.randn(2, 4, 3, 3)
    big = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # (2, 4, 6, 6): pools back to x exactly
    assert cosine_hint(big, 3.0 * x, ctx).loss.item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_hint(big, -x, ctx).loss.item() == pytest.approx(2.0, abs=1e-6)
    a, b = torch.zeros(1, 4, 1, 1), torch.zeros(1, 4, 1, 1)
    a[0, 0], b[0, 1] = 1.0, 5.0
    assert cosine_hint(a, b, ctx).loss.item() == pytest.approx(1.0, abs=1e-6)


def start(cmd, env, cwd=REPO) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def start_cli(env, *args, cwd=REPO) -> subprocess.Popen:
    return start([sys.executable, "-m", "discbench.cli", *args], env, cwd=cwd)


@requires_fashion_mnist
@pytest.mark.slow
def test_plugin_from_another_package(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--disable-pip-version-check", "--quiet", "--target", str(site), str(source)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}

    # The four commands below only read the installed package (the run writes into its own results directory): they
    # are independent, so they start together and are checked one after the other (each is a process that spends
    # most of its time importing torch, single-threaded).
    results = tmp_path / "runs"
    overrides = [a for o in TINY for a in ("--set", o)]
    procs = {
        "list": start_cli(env, "list", "losses"),
        "validate": start_cli(env, "validate", "--loss", NAME),
        # the package's own tests, as its CI (ci.sh) runs them
        "own": start([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], env, cwd=source),
        "run": start_cli(env, "run", "--loss", NAME, "--backbone", "smallnet", "--dataset", "fashion-mnist",
                         "--seeds", "1", "--results-dir", str(results), "--quiet", *overrides),
    }
    done = {key: finish(proc) for key, proc in procs.items()}

    listed = done["list"]
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith(NAME + " "))
    assert "entry point 'discbench_plugin_example.cosine:CosineHint' of package discbench-plugin-example" in line
    assert "hyper-parameters eps=1e-08" in line

    validated = done["validate"]
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert validated.stdout.strip().splitlines()[-1] == f"{NAME}: 9/9 checks passed"

    own = done["own"]
    assert own.returncode == 0, own.stdout + own.stderr

    ran = done["run"]
    assert ran.returncode == 0, ran.stderr
    (path,) = sorted(results.rglob("*.json"))
    record = json.loads(path.read_text())
    assert record["loss"] == {"name": NAME, "version": 1, "distribution": "discbench-plugin-example",
                              "distribution_version": "0.1.0",
                              "entry_point": "discbench_plugin_example.cosine:CosineHint"}
    assert {f"{NAME}@{i}" for i in (1, 2, 3)} <= set(record["final_train_terms"])
    # SmallNet widths 16/32/64/128: one 1x1 regressor C_i -> 128 per module pair i -> 4, no bias
    assert record["cost"]["loss_params"] == (16 + 32 + 64) * 128

    # Nothing was installed into this environment.
    assert NAME not in {ep.name for ep in entry_points(group="discbench.losses")}
    assert NAME not in LOSSES.names()
