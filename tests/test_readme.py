"""The README's plugin example is real code: it registers, passes the contract and trains its head."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from discbench.contract import run_checks
from discbench.registry import LOSSES
from tests.conftest import REPO, requires_fashion_mnist


def test_readme_plugin_example_passes_the_contract():
    text = (REPO / "README.md").read_text().split("## Writing a loss plugin", 1)[1]
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {"__name__": "readme_example"}
    try:
        exec(compile(code, "README.md", "exec"), namespace)
        cls = LOSSES.get("cosine_hint")
        results = list(run_checks(cls))
        assert results and all(r.passed for r in results), [r for r in results if not r.passed]
        assert cls.hparams() == {"eps": 1e-8}
    finally:
        LOSSES.unregister("cosine_hint")


@requires_fashion_mnist
@pytest.mark.slow
def test_the_quick_start_trains_two_rows_into_the_users_directory_and_prints_their_table(tmp_path):
    """The README's quick start, command by command, from an empty directory outside the clone: each command exits
    0, the records land in ./runs (never in the published results/runs), and the table has both rows."""
    tour = (REPO / "README.md").read_text().split("## A short tour of the command line", 1)[1]
    block = re.search(r"```bash\n(.*?)```", tour, re.S).group(1)
    commands = [line for line in block.splitlines() if line.startswith("discbench ")]
    assert len(commands) == 3 and commands[-1].startswith("discbench leaderboard")
    published = sorted((REPO / "results" / "runs").rglob("*.json"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("DISCBENCH_CONFIG", None)
    outputs = []
    for command in commands:
        args = shlex.split(command)[1:]
        proc = subprocess.run([sys.executable, "-m", "discbench", *args, *(["--quiet"] if args[0] == "run" else [])],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
        outputs.append(proc.stdout)
    assert len(list((tmp_path / "runs").rglob("*.json"))) == 2
    table = outputs[-1]
    assert re.search(r"\| mi_x_si\s+\|", table) and re.search(r"\| none\s+\|", table) and "(n=1)" in table
    assert sorted((REPO / "results" / "runs").rglob("*.json")) == published


def test_every_relative_link_of_the_readme_and_docs_resolves():
    """A moved module or document breaks no link: every `[text](path)` of README.md and docs/*.md that is not a URL
    names a file or folder of the repository."""
    broken = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO)}: {target}")
    assert not broken, broken
