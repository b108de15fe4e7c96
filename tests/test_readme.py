"""The README's plugin example is real code: it registers, passes the contract and trains its head."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from discbench.config import Bench
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


# ---------------------------------------------------------------------------------------------------------------
# The tour: every command of the second bash block of "A short tour of the command line", as README.md writes it.
# ---------------------------------------------------------------------------------------------------------------

# The tour's `smoke` budget, shrunk by a project bench.toml in the scratch directory (laid over discbench's defaults key
# by key, as a user's would be): the commands run as written, `--budget smoke` and `sweep --suite demo` included.
TOUR_BENCH = """[recipes.smoke]
epochs = 1
train_subset = 64
test_subset = 64
batch_size = 32
milestones = []
eval_batch_size = 64
"""


def tour_commands() -> dict[str, tuple[list[list[str]], str]]:
    """The tour's second bash block: each command line as written -> (its argument lists, its comment). A line of
    alternatives (`discbench list a | b | c`) is one argument list per alternative."""
    tour = (REPO / "README.md").read_text().split("## A short tour of the command line", 1)[1]
    block = re.findall(r"```bash\n(.*?)```", tour, re.S)[1]
    commands: dict[str, tuple[list[list[str]], str]] = {}
    comment: list[str] = []
    last = None
    for line in block.splitlines():
        if not line.strip():
            comment, last = [], None
            continue
        if line.lstrip().startswith("#"):
            if line.startswith(" ") and last is not None:  # the trailing comment of the command above goes on
                commands[last] = (commands[last][0], commands[last][1] + " " + line.strip(" #"))
            else:
                comment.append(line.strip(" #"))
            continue
        text, _, trailing = (part.strip() for part in line.partition("#"))
        assert text.startswith("discbench "), line
        args = shlex.split(text)[1:]
        if "|" in args:
            first = args.index("|") - 1
            argv = [args[:first] + [alternative] for alternative in args[first::2]]
        else:
            argv = [args]
        commands[text] = (argv, " ".join([*comment, trailing]).strip())
        comment, last = [], text
    return commands


class Tour:
    """Runs the tour's commands as README.md writes them (plus the options that shrink or redirect them) and checks
    each one off; `run` of a command the README no longer has fails, and so does a README command no check ran."""

    def __init__(self, scratch, env):
        self.commands = tour_commands()
        self.scratch, self.env, self.ran = scratch, env, set()

    def run_each(self, text, *extra, cwd=None, swap=None) -> list[subprocess.CompletedProcess]:
        assert text in self.commands, f"README's tour no longer has `{text}`: update tests/test_readme.py"
        self.ran.add(text)
        procs = []
        for args in self.commands[text][0]:
            args = [(swap or {}).get(a, a) for a in args]
            procs.append(subprocess.run([sys.executable, "-m", "discbench", *args, *extra], cwd=cwd or self.scratch,
                                        env=self.env, capture_output=True, text=True, timeout=300))
        return procs

    def run(self, text, *extra, code=0, cwd=None, swap=None) -> subprocess.CompletedProcess:
        (proc,) = self.run_each(text, *extra, cwd=cwd, swap=swap)
        assert proc.returncode == code, (text, self.commands[text][1], proc.returncode, proc.stdout[-2000:],
                                         proc.stderr[-2000:])
        return proc


TRAIN = ("--results-dir", "results/runs", "--quiet")  # the tour's records land in the scratch directory's results/runs


def _records(root) -> dict[str, dict]:
    return {str(p.relative_to(root)): json.loads(p.read_text()) for p in sorted(root.rglob("*.json"))}


def _row(table: str, *cells: str) -> list[str]:
    """The cells (bold marks dropped) of the first table row that begins with ``cells``."""
    for line in table.splitlines():
        row = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and row[:len(cells)] == list(cells):
            return row
    raise AssertionError(f"no row {cells} in:\n{table}")


def _tour_records_lane(tour: Tour) -> None:
    """Training, then the records' leaderboard, merge, site and validation, in the README's order."""
    scratch = tour.scratch
    runs = scratch / "results" / "runs"

    # one configuration, seeds 0..2; a seed whose record exists (same config hash) is skipped unless --force
    text = "discbench run --loss mi_x_si --backbone smallnet --dataset fashion-mnist --budget smoke --seeds 3"
    tour.run(text, *TRAIN)
    seeds = _records(runs)
    assert sorted(r["seed"] for r in seeds.values()) == [0, 1, 2]
    assert len({r["config_hash"] for r in seeds.values()}) == 1
    assert all(r["config"]["recipe"]["train_subset"] == 64 for r in seeds.values())  # the shrunk budget
    stamps = {p: (runs / p).stat().st_mtime_ns for p in seeds}
    again = tour.run(text, *TRAIN)
    assert len(re.findall(r"^skip .*seed [012]: .* exists", again.stderr, re.M)) == 3, again.stderr
    assert "wrote" not in again.stderr and {p: (runs / p).stat().st_mtime_ns for p in seeds} == stamps
    forced = tour.run(text, *TRAIN, "--force", "--seeds", "1")
    assert re.search(r"^wrote .*seed0\.json", forced.stderr, re.M), forced.stderr
    assert [p for p in seeds if (runs / p).stat().st_mtime_ns != stamps[p]] == [p for p in seeds if "seed0" in p]

    # override any resolved value, type-checked (the mistyped value: the other lane)
    tour.run("discbench run --loss mi_plus_si --backbone smallnet --set loss.beta=0.5 --set loss.dim=32 "
             "--set recipe.lr=0.1", *TRAIN, "--seeds", "1")
    (overridden,) = [r for r in _records(runs).values() if r["loss"]["name"] == "mi_plus_si"]
    config = overridden["config"]
    assert (config["loss"]["beta"], config["loss"]["hparams"]["dim"], config["recipe"]["lr"]) == (0.5, 32, 0.1)
    assert overridden["label"] == "mi_plus_si [loss.beta=0.5, loss.dim=32, recipe.lr=0.1]"

    # a suite of bench.toml: every (row, backbone, dataset, seed), then its tables
    sweep = tour.run("discbench sweep --suite demo --budget smoke", *TRAIN, "--seeds", "1")
    demo = Bench.load(REPO / "bench.toml").data["suites"]["demo"]
    swept = [r for r in _records(runs).values() if r["backbone"] == "tinynet"]
    assert sorted(r["label"] for r in swept) == sorted(row["loss"] for row in demo["rows"])
    assert {(r["dataset"], r["budget"], r["seed"]) for r in swept} == {("fashion-mnist", "smoke", 0)}
    assert sweep.stdout.startswith("# suite `demo`")
    for row in demo["rows"]:
        _row(sweep.stdout, row["loss"])  # the "Last module" table has every row

    # every record under results/runs as markdown tables on stdout (--out FILE also writes them)
    out = scratch.parent / "leaderboard.md"
    board = tour.run("discbench leaderboard --results-dir results/runs --budget smoke --out /tmp/leaderboard.md",
                     swap={"/tmp/leaderboard.md": str(out)})
    assert out.read_text().strip() == board.stdout.strip()
    records = _records(runs)
    for record in records.values():
        _row(board.stdout, record["backbone"], record["label"])
    mine = _row(board.stdout, "smallnet", "mi_x_si")
    assert "(n=3)" in mine[2]

    # exit 1 with a diff when the file is stale: --check on a stale --out file of one suite
    stale = scratch.parent / "stale.md"
    stale.write_text("stale\n")
    check = tour.run("discbench leaderboard --check", "--suite", "demo", "--results-dir", "results/runs",
                     "--out", str(stale), code=1)
    assert "-stale" in check.stdout and "+# suite `demo`" in check.stdout and stale.read_text() == "stale\n"

    # records of several machines merge: this machine's runs/ and two clusters', seed 0 on two of them
    first = sorted(p for p in records if "mi_x_si__smallnet" in p)
    for folder, names in (("runs", first[:1]), ("../cluster-a/runs", first[1:2]), ("../cluster-b/runs", first)):
        (scratch / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(runs / name, scratch / folder / Path(name).name)
    merged = tour.run("discbench leaderboard --results-dir runs/ --results-dir '../cluster-*/runs'")
    assert _row(merged.stdout, "smallnet", "mi_x_si") == mine
    assert "counted once" in merged.stderr, merged.stderr

    # LEADERBOARD.md + index.html + figures/ (+ records/); it replaces or removes only files it wrote itself
    # (--replace: others too)
    text = "discbench publish --results-dir results/runs --out site/"
    site = scratch / "site"
    site.mkdir()
    (site / "notes.txt").write_text("mine\n")
    tour.run(text)
    assert (site / "index.html").is_file() and "| mi_x_si" in (site / "LEADERBOARD.md").read_text()
    figures = {p.suffix for p in (site / "figures").iterdir()}
    assert figures == {".png", ".svg"}, figures
    assert len(list((site / "records").glob("*.json"))) == len({r["run_id"] for r in records.values()})
    published = (site / "LEADERBOARD.md").read_text()
    (site / "LEADERBOARD.md").write_text("edited\n")
    tour.run(text)  # its own files are replaced; the user's file stays
    assert (site / "LEADERBOARD.md").read_text() == published and (site / "notes.txt").read_text() == "mine\n"
    other = scratch / "other-site"
    other.mkdir()
    (other / "index.html").write_text("theirs\n")
    (other / "keep.txt").write_text("keep\n")
    refused = tour.run(text, swap={"site/": "other-site/"}, code=2)
    assert "--replace" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert (other / "index.html").read_text() == "theirs\n" and not (other / "LEADERBOARD.md").exists()
    tour.run(text, "--replace", swap={"site/": "other-site/"})
    assert "<html" in (other / "index.html").read_text() and (other / "keep.txt").read_text() == "keep\n"

    # validate every record: one line per invalid file, exit 1 if any
    valid = tour.run("discbench check-records results/runs")
    assert re.search(rf"\b{len(records)} valid runs, 0 invalid\b", valid.stdout), valid.stdout
    bad = scratch / "results" / "bad"
    bad.mkdir()
    edited = dict(records[first[0]], config={**records[first[0]]["config"], "budget": "edited"})
    (bad / "edited.json").write_text(json.dumps(edited))
    (bad / "truncated.json").write_text((runs / first[1]).read_text()[:200])
    shutil.copy(runs / first[2], bad / "valid.json")
    invalid = tour.run("discbench check-records results/runs", swap={"results/runs": "results/bad"}, code=1)
    lines = invalid.stdout.strip().splitlines()
    assert sorted(Path(line.split(":")[0]).name for line in lines[:-1]) == ["edited.json", "truncated.json"], lines
    assert "1 valid runs, 2 invalid" in lines[-1], lines


def _tour_lookup_lane(tour: Tour) -> None:
    """The commands that need no record of the other lane: listings, the published leaderboard, contracts, other
    backbones and datasets, the critic benchmark."""
    from discbench.registry import BACKBONES, PROTOCOLS

    bench = Bench.load(REPO / "bench.toml").data

    # every loss and baseline, where it comes from, its hyper-parameters
    listed = tour.run("discbench list losses").stdout.splitlines()
    rows = {line.split()[0]: line for line in listed}
    losses = {n for n, origin in LOSSES.origins().items() if "(discbench." in origin}  # not tests' own
    baselines = {name for name, table in bench["methods"].items() if name not in LOSSES.names()
                 and not table.get("plugin")}
    assert set(rows) == losses | baselines, set(rows) ^ (losses | baselines)
    assert all("built-in" in rows[n] and "hyper-parameters" in rows[n] for n in losses)
    assert all("baseline" in rows[n] for n in baselines)

    # discbench list backbones; likewise list datasets, budgets, suites and protocols
    text = "discbench list backbones"
    procs = [p for what in ("backbones", "datasets", "budgets", "suites", "protocols")
             for p in tour.run_each(text, swap={"backbones": what})]
    assert [p.args[4] for p in procs] == ["backbones", "datasets", "budgets", "suites", "protocols"]
    assert all(p.returncode == 0 for p in procs), [p.stderr for p in procs]
    shipped = [n for n, origin in BACKBONES.origins().items() if "(discbench." in origin]  # not tests' own
    expected = [[*shipped, "tv:NAME", "timm:NAME"], bench["datasets"], bench["recipes"], bench["suites"],
                [n for n, origin in PROTOCOLS.origins().items() if "(discbench." in origin]]
    for proc, names in zip(procs, expected, strict=True):
        first = {line.split()[0] for line in proc.stdout.splitlines() if line.strip() and not line[0].isspace()}
        assert set(names) <= first, (proc.args[4], set(names) - first)

    # type-checked: a mistyped --set value is one line, exit 2, no record
    mistyped = tour.run("discbench run --loss mi_plus_si --backbone smallnet --set loss.beta=0.5 --set loss.dim=32 "
                        "--set recipe.lr=0.1", "--results-dir", "typo-runs", swap={"loss.dim=32": "loss.dim=lots"},
                        code=2)
    assert mistyped.stderr.strip().splitlines() == ["error: loss 'mi_plus_si'.dim: expected int, got 'lots'"]
    assert not (tour.scratch / "typo-runs").exists() or not list((tour.scratch / "typo-runs").rglob("*.json"))

    # the published tables: the suites' sections of results/LEADERBOARD.md, as committed
    def sections(markdown):
        return dict(re.findall(r"^# suite `([^`]+)`\n(.*?)(?=^# |\Z)", markdown, re.S | re.M))

    tables = tour.run("discbench leaderboard --results-dir results/runs --suite signal-self --suite signal-offline",
                      cwd=REPO)
    committed = sections((REPO / "results" / "LEADERBOARD.md").read_text())
    shown = sections(tables.stdout)
    assert list(shown) == ["signal-self", "signal-offline"]
    assert all(shown[name] == committed[name] for name in shown)

    # exit 1 with a diff when results/LEADERBOARD.md is stale: it is not, in this repository
    assert "up to date" in tour.run("discbench leaderboard --check", cwd=REPO).stderr

    # the plugin contract suite on one loss; the backbone contract: four modules, specs vs shapes, training
    vid = tour.run("discbench validate --loss vid").stdout.strip().splitlines()
    assert all(line.startswith("PASS") for line in vid[1:-1]) and re.fullmatch(r"vid: (\d+)/\1 checks passed", vid[-1])
    net = tour.run("discbench validate --backbone efficientnet_b0").stdout.strip().splitlines()
    assert [line.split("[")[0].split(maxsplit=1)[1].strip() for line in net[:3]] == [
        "four modules", "specs match shapes", "parameters train"]
    assert all(line.startswith("PASS") for line in net[:-1]) and net[-1] == "efficientnet_b0: 6/6 checks passed"

    # any torchvision classifier, any timm model: one step each on a fake CIFAR-100 (CIFAR-100 is not shipped)
    from tests.test_data import write_cifar100

    data = tour.scratch.parent / "data"
    write_cifar100(data)
    for text, backbone in (("discbench run --loss mi_x_si --backbone tv:regnet_y_400mf --dataset cifar100 "
                            "--data-dir ~/data", "tv:regnet_y_400mf"),
                           ("discbench run --loss mi_x_si --backbone timm:convnext_atto --dataset cifar100 "
                            "--data-dir ~/data", "timm:convnext_atto")):
        extra = ("--seeds", "1", "--results-dir", "cifar-runs", "--quiet")
        swap = {"~/data": str(data)}
        if backbone.startswith("timm:") and importlib.util.find_spec("timm") is None:
            proc = tour.run(text, *extra, code=2, swap=swap)
            assert "timm" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
            continue
        tour.run(text, *extra, swap=swap)
        (record,) = [r for r in _records(tour.scratch / "cifar-runs").values() if r["backbone"] == backbone]
        assert record["dataset"] == "cifar100" and record["config"]["dataset"]["num_classes"] == 100

    # time and peak memory of the MI critic per implementation (one timed call at a small code size), nothing written
    status = ["git", "status", "--porcelain", "--untracked-files=all"]
    before = subprocess.run(status, cwd=REPO, capture_output=True, text=True, check=True).stdout
    timed = tour.run("discbench bench --batch 64,128 --side 16,32", "--mode", "critic", "--repeats", "1", "--warmup",
                     "0", "--dim", "8", "--quiet", cwd=REPO)
    assert subprocess.run(status, cwd=REPO, capture_output=True, text=True, check=True).stdout == before
    cells = {}
    for line in timed.stdout.splitlines():
        row = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and row[0] == "critic":
            cells[int(row[1]), int(row[2]), row[4]] = (float(row[6]), float(row[7]))
    assert {(b, n) for b, n, _ in cells} == {(64, 256), (64, 1024), (128, 256), (128, 1024)}, timed.stdout
    assert {"ref", "torch"} <= {impl for _, _, impl in cells}
    assert all(ms > 0 and mib > 0 for ms, mib in cells.values())


def _tree(root) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@requires_fashion_mnist
@pytest.mark.slow
def test_every_command_of_the_tour_does_what_its_comment_says(tmp_path):
    """Every command of the tour's second block, read from README.md, run from a scratch directory outside the clone
    (the smoke budget shrunk by a project bench.toml, training seeds cut to one where the command names none, records
    into the scratch results/runs, CIFAR-100 faked) in two lanes of one thread each; each check is the comment's
    claim. Nothing of the repository's results/ changes."""
    scratch = tmp_path / "work"
    scratch.mkdir()
    (scratch / "bench.toml").write_text(TOUR_BENCH)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DISCBENCH_TEACHERS": str(tmp_path / "t")}
    for name in ("DISCBENCH_CONFIG", "DISCBENCH_DATA"):
        env.pop(name, None)
    results = _tree(REPO / "results")
    tour = Tour(scratch, env)
    with ThreadPoolExecutor(max_workers=2) as pool:
        lanes = [pool.submit(_tour_records_lane, tour), pool.submit(_tour_lookup_lane, tour)]
    failed = [lane.exception() for lane in lanes if lane.exception() is not None]
    if failed:
        raise failed[0] if len(failed) == 1 else ExceptionGroup("both lanes failed", failed)
    assert set(tour.commands) == tour.ran, f"no check runs {sorted(set(tour.commands) - tour.ran)}"
    assert _tree(REPO / "results") == results
