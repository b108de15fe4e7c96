"""Packaging hygiene: nothing that set-up or the tests create is tracked, so a fresh clone stays clean after
``make setup`` and ``make test`` (and every record's ``git_commit`` is clean)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                                reason="not a git checkout")


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout


def test_no_tracked_file_is_ignored():
    """A tracked file that .gitignore ignores (``discbench.egg-info/`` once was) is rewritten by set-up and makes
    the tree dirty; none may exist."""
    assert git("ls-files", "--cached", "--ignored", "--exclude-standard") == ""


@pytest.mark.parametrize("path", [".venv/bin/python", "discbench.egg-info/PKG-INFO", "build/lib/x.py",
                                  "discbench/__pycache__/cli.cpython-311.pyc", ".pytest_cache/v/x",
                                  ".ruff_cache/x", ".benchmarks/x.json", "results/demo/x.json"])
def test_what_setup_and_tests_create_is_ignored(path):
    assert git("check-ignore", "--no-index", path).strip() == path
