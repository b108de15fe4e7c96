"""The package as a user installs it (issue 19): build the sdist and, from it, the wheel; install the wheel into a fresh
virtual environment outside the checkout; from an empty directory, run ``list``, ``validate``, one tiny ``run`` and
``leaderboard``. Nothing here may read the checkout: the run finds its recipes, datasets and methods in the package's
own bench.toml.

The fresh environment gets discbench from the wheel alone. Its dependencies (torch and the rest, gigabytes) come from
this test's interpreter through a ``.pth`` line to a folder of links to that interpreter's site-packages, from which
every trace of the editable discbench (its module, its ``__editable__`` finder, its dist-info) is left out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, requires_fashion_mnist

pytestmark = pytest.mark.slow

SHIPPED = ["discbench/bench.toml", "discbench/record.schema.json", "discbench/reference.toml",
           "discbench/protocols/offline.py", "discbench/losses/muse.py", "discbench/losses/crd.py",
           "discbench/backbones/__init__.py", "discbench/reporting/markdown.py", "discbench/kernels/__init__.py"]


def sh(*cmd, cwd, env=None, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and out.returncode:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdist and wheel (the wheel built from the unpacked sdist, as ``python -m build`` does)."""
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    sh(sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", out, REPO, cwd=out)
    return out


def test_the_sdist_and_the_wheel_carry_the_whole_package(dist):
    wheel = next(dist.glob("discbench-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [p for p in SHIPPED if p not in names]
    assert not missing, f"the wheel lacks {missing}"
    assert not any(n.startswith(("tests/", "results/", "benchmarks/")) for n in names)
    sdist = next(dist.glob("discbench-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name}
    for p in SHIPPED:
        assert p in members and members[p].isfile(), f"the sdist lacks {p} as a file (a link would not survive)"


def dependencies_dir(root: Path) -> Path:
    """Links to every entry of this interpreter's site-packages except the editable discbench."""
    site = Path(sysconfig.get_paths()["purelib"])
    deps = root / "deps"
    deps.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if name.startswith(("discbench", "__editable__")) or "discbench" in name:
            continue
        (deps / entry.name).symlink_to(entry)
    return deps


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("user")
    venv = root / "venv"
    sh(sys.executable, "-m", "venv", venv, cwd=root)
    py = venv / "bin" / "python"
    sh(py, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", next(dist.glob("discbench-*.whl")), cwd=root)
    purelib = sh(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root).stdout.strip()
    (Path(purelib) / "zz-dependencies.pth").write_text(f"{dependencies_dir(root)}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCBENCH_", "PYTHON"))}
    env.update(HOME=str(root / "home"), DISCBENCH_TEACHERS=str(root / "teachers"))
    work = root / "empty"
    work.mkdir()
    return work, env | {"PATH": f"{venv / 'bin'}:{env.get('PATH', '')}"}


def test_the_installed_package_is_the_wheel_not_the_checkout(installed):
    work, env = installed
    where = sh("python", "-c", "import discbench, discbench.losses.muse as m; print(discbench.__file__, m.__file__)",
               cwd=work, env=env).stdout
    assert str(REPO) not in where and "site-packages" in where, where


def test_list_and_validate_from_an_empty_directory(installed):
    work, env = installed
    listed = sh("discbench", "list", "losses", cwd=work, env=env).stdout
    assert "mi_x_si" in listed and "crd" in listed
    assert "smoke" in sh("discbench", "list", "budgets", cwd=work, env=env).stdout
    validated = sh("discbench", "validate", "--loss", "mi_x_si", cwd=work, env=env)
    assert "FAIL" not in validated.stdout, validated.stdout
    assert list(work.iterdir()) == [], "list and validate wrote into the working directory"


@requires_fashion_mnist
def test_a_tiny_run_and_its_leaderboard_from_an_empty_directory(installed):
    work, env = installed
    sh("discbench", "run", "--loss", "mi_x_si", "--backbone", "tinynet", "--budget", "zoo", "--seeds", "1", "--quiet",
       "--set", "recipe.train_subset=64", "--set", "recipe.test_subset=64", cwd=work, env=env)
    records = list((work / "runs").rglob("*.json"))
    assert len([r for r in records if "seed0" in r.name]) == 1, records
    board = sh("discbench", "leaderboard", cwd=work, env=env).stdout
    assert "mi_x_si" in board and "tinynet" in board, board
