"""Local and hosted CI are one path: the GitHub workflow's steps are the make targets of .ci/run, in the same order,
and those steps run here (check, publish, summary) against the committed records with this interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from discbench.config import Bench
from tests.conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"


def workflow_steps() -> list[str]:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    return [step["run"].strip() for step in jobs["test-and-publish"]["steps"] if "run" in step]


def ci_run_targets() -> list[str]:
    return re.findall(r"^\s*(?:time )?(make \w+)", (REPO / ".ci" / "run").read_text(), flags=re.M)


def test_the_workflow_runs_the_make_targets_of_ci_run():
    steps = workflow_steps()
    assert steps == ci_run_targets() == ["make test", "make lint", "make check", "make publish", "make summary"]
    upload = [s for s in yaml.safe_load(WORKFLOW.read_text())["jobs"]["test-and-publish"]["steps"]
              if str(s.get("uses", "")).startswith("actions/upload-pages-artifact")]
    assert upload and upload[0]["with"]["path"] == "site"


def test_the_published_suites_are_named_in_one_place():
    """bench.toml's [publish] names the published suites; the make targets name none of their own."""
    makefile = (REPO / "Makefile").read_text()
    for target in ("check", "leaderboard", "publish"):
        recipe = re.search(rf"^{target}:.*\n\t(.+)$", makefile, flags=re.M).group(1)
        assert "--suite" not in recipe and ("--published" in recipe or "--check" in recipe)
    published = Bench.load(REPO / "bench.toml").published_suites()
    assert published and len(set(published)) == len(published)


def start_make(target: str, tmp_path: Path, **env) -> subprocess.Popen:
    """A workflow step with this interpreter's environment (setup is taken as done: -o setup), started."""
    import os

    bin_dir = Path(sys.executable).parent
    return subprocess.Popen(["make", "-o", "setup", f"BIN={bin_dir}", f"SITE={tmp_path / 'site'}", target], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def make(target: str, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    """A workflow step, run to its end."""
    return finish(start_make(target, tmp_path, **env))


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_the_workflow_steps_run_locally(tmp_path):
    # check only reads (results/ and its LEADERBOARD.md) and publish writes only into SITE, a fresh directory: the
    # two steps are independent, so they run side by side (each is one single-threaded process) and are then
    # checked as before; summary needs publish's output and runs after it
    check, publish = start_make("check", tmp_path), start_make("publish", tmp_path)
    check, publish = finish(check), finish(publish)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "results/LEADERBOARD.md is up to date" in check.stderr
    assert publish.returncode == 0, publish.stderr
    site = tmp_path / "site"
    assert (site / "index.html").is_file() and list((site / "figures").glob("*.svg"))
    summary = tmp_path / "summary.md"
    done = make("summary", tmp_path, GITHUB_STEP_SUMMARY=str(summary))
    assert done.returncode == 0 and summary.read_text() == (site / "LEADERBOARD.md").read_text()


def test_check_fails_with_a_diff_on_stale_tables(tmp_path, capsys, monkeypatch):
    from tests.test_cli import discbench

    stale = tmp_path / "LEADERBOARD.md"
    stale.write_text((REPO / "results" / "LEADERBOARD.md").read_text().replace("(n=3)", "(n=4)", 1))
    status, out, err = discbench(capsys, monkeypatch, "leaderboard", "--figures", "--check", "--out", str(stale))
    assert status == 1 and "is stale" in err
    assert out.startswith("---") and "-" in out and "(n=4)" in out and "+" in out
    assert stale.read_text().count("(n=4)") == 1  # --check writes nothing
