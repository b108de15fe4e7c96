"""`discbench publish`: the site's files, figures, links to records, and the page checked in a real headless browser
(Debian's chromium driven by Playwright; `make test` installs both)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from discbench.keys import TOTAL, Term
from discbench.records import read_record
from discbench.reporting.figures import pareto_front
from tests.conftest import REPO
from tests.test_cli import discbench
from tests.test_leaderboard import record
from tests.test_records import write

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = REPO / "build" / "screenshots" / "leaderboard.png"


def with_history(rec, seed):
    """A MUSE-like term history: MI and SI per module, decreasing over 5 windows of 10 steps."""
    terms = {f"{t}@{m}": [round(2.0 / m - 0.1 * k + 0.01 * seed + (0.3 if t == "si" else 0), 4) for k in range(5)]
             for t in ("mi", "si") for m in (1, 2, 3)}
    terms["loss"] = [5.0 - k for k in range(5)]
    typed = tuple(Term(t, "", m) for t in ("mi", "si") for m in (1, 2, 3)) + (TOTAL,)  # their typed names
    assert [t.key for t in typed] == list(terms)
    return dataclasses.replace(rec, term_history={"every": 10, "steps": [10, 20, 30, 40, 50], "terms": terms},
                               final_train_terms={k: v[-1] for k, v in terms.items()}, terms=typed)


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    table = {"none": ([70.0, 70.4, 69.8], "", 10.0), "mi_plus_si": ([72.0, 72.5, 71.9], "mi_plus_si", 4.0),
             "l2": ([69.0, 71.0, 70.1], "l2", 8.0), "mi_x_si": ([75.0, 74.2, 75.3], "mi_x_si", 3.5)}
    for i, (label, (values, loss, speed)) in enumerate(table.items()):
        for seed, v in enumerate(values):
            rec = record(label, seed, {1: v - 5, 2: v - 3, 3: v - 1, 4: v}, loss=loss, hash_=f"{i}" * 16)
            rec = dataclasses.replace(rec, timing={"images_per_second": speed * 32, "steps_per_second": speed})
            write(root, with_history(rec, seed) if loss.startswith("mi_") else rec)
    for seed, (a, b) in enumerate([(60.0, 61.0), (62.0, 63.0)]):  # an online pair: a second protocol to filter on
        rec = record("none", seed, {"net1": a, "net2": b}, loss="", hash_="9" * 16, protocol="online",
                     partner="resnet18", networks=("net1", "net2"))
        path = root / "cifar100" / "smoke" / "online" / f"none__resnet18__{'9' * 16}__seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(__import__("json").dumps(rec.to_dict()))
    return root


def test_pareto_front_by_definition():
    points = [(1.0, 70.0), (2.0, 72.0), (3.0, 71.0), (2.0, 69.0), (4.0, 75.0)]
    assert pareto_front(points) == [0, 1, 4]


def test_publish_writes_markdown_page_figures_and_records(runs, tmp_path, capsys, monkeypatch):
    site = tmp_path / "site"
    status, _, err = discbench(capsys, monkeypatch, "publish", "--results-dir", str(runs), "--out", str(site))
    assert status == 0, err
    md = (site / "LEADERBOARD.md").read_text()
    figures = sorted(p.name for p in (site / "figures").iterdir())
    assert "terms__all__self__resnet18__mi_plus_si.png" in figures and "terms__all__self__resnet18__mi_x_si.svg" \
        in figures and "pareto__all__cifar100__smoke__self.png" in figures
    for link in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (site / link).is_file(), link
    assert "](figures/terms__all__self__resnet18__mi_x_si.png)" in md
    page = (site / "index.html").read_text()
    hrefs = re.findall(r'href="(records/[^"]+)"', page)
    assert hrefs and all(read_record(site / h).run_id == Path(h).stem for h in hrefs)
    assert {Path(h).stem for h in hrefs} == {f"{i}" * 16 + f"-seed{s}" for i in range(4) for s in range(3)} | {
        "9" * 16 + "-seed0", "9" * 16 + "-seed1"}
    assert 'src="figures/terms__all__self__resnet18__mi_plus_si.png"' in page


def test_the_page_in_a_headless_browser_sorts_filters_and_matches_the_markdown(runs, tmp_path, capsys,
                                                                               monkeypatch):
    """Fails (never skips) without chromium or Playwright: `make setup` installs both."""
    assert Path(CHROMIUM).is_file(), "chromium is missing: run 'make setup' (apt-get install -y chromium)"
    from playwright.sync_api import sync_playwright

    site = tmp_path / "site"
    status, _, err = discbench(capsys, monkeypatch, "publish", "--results-dir", str(runs), "--out", str(site))
    assert status == 0, err
    md = (site / "LEADERBOARD.md").read_text()
    table6 = md.split("### Last module")[1].split("### Cost")[0]
    expected = {}  # method -> (cell of the markdown without bold, its Δ part)
    for line in table6.splitlines():
        m = re.match(r"\| (\S+)\s+\| (.+?)\s+\|$", line)
        if m and m.group(1) not in ("Method", ":---------"):
            number, _, delta = m.group(2).replace("**", "").partition(" · ")
            expected[m.group(1)] = (number, delta or "baseline")
    assert set(expected) == {"none", "mi_plus_si", "l2", "mi_x_si"}

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        page.goto((site / "index.html").as_uri())
        page.select_option("#filter-protocol", "self")
        visible = "#board tbody tr:visible"
        assert page.locator(visible).count() == 4  # the online row is filtered out
        page.click("th[data-key=top1]")  # numeric: largest first
        methods = page.locator(f"{visible} td.method").all_inner_texts()
        tops = page.locator(f"{visible} td.top1").all_inner_texts()
        deltas = page.locator(f"{visible} td.delta").all_inner_texts()
        means = [float(t.split(" ")[0]) for t in tops]
        assert means == sorted(means, reverse=True) and methods[0] == "mi_x_si"
        for method, top, delta in zip(methods, tops, deltas, strict=True):
            assert (top, delta) == expected[method], method
        assert page.locator(f"{visible} td.delta .sig").count() == sum("†" in d for d in deltas) >= 1
        page.click("th[data-key=top1]")  # again: ascending
        means_up = [float(t.split(" ")[0]) for t in page.locator(f"{visible} td.top1").all_inner_texts()]
        assert means_up == sorted(means)
        page.click("th[data-key=method]")
        assert page.locator(f"{visible} td.method").all_inner_texts() == sorted(methods)
        page.select_option("#filter-protocol", "online")
        assert page.locator(f"{visible} td.method").all_inner_texts() == ["none"]
        # per seed the mean of net1 and net2: 60.5 and 62.5
        assert page.locator(f"{visible} td.top1").inner_text() == "61.50 ± 1.41 (n=2)"
        page.select_option("#filter-protocol", "")
        assert page.locator(visible).count() == 5
        href = page.locator(f"{visible} td.records a").first.get_attribute("href")
        assert read_record(site / href).run_id == Path(href).stem
        assert page.locator("figure img").count() >= 3
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.select_option("#filter-protocol", "self")
        page.click("th[data-key=top1]")
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
    print(f"screenshot: {SCREENSHOT}", file=os.sys.stderr)


def test_publish_never_deletes_or_overwrites_what_it_did_not_write(runs, tmp_path, capsys, monkeypatch):
    site = tmp_path / "site"
    (site / "figures").mkdir(parents=True)
    (site / "figures" / "notes.txt").write_text("mine")
    (site / "LEADERBOARD.md").write_text("my own table")
    status, _, err = discbench(capsys, monkeypatch, "publish", "--results-dir", str(runs), "--out", str(site))
    assert status == 2 and "publish did not write (e.g. LEADERBOARD.md)" in err and "--replace" in err
    assert (site / "LEADERBOARD.md").read_text() == "my own table" and not (site / "index.html").exists()
    assert sorted(p.name for p in site.iterdir()) == ["LEADERBOARD.md", "figures"]  # no staging folder left
    status, _, err = discbench(capsys, monkeypatch, "publish", "--results-dir", str(runs), "--out", str(site),
                               "--replace")
    assert status == 0, err
    assert (site / "figures" / "notes.txt").read_text() == "mine"  # replaced only what publish writes
    assert "# Figures" in (site / "LEADERBOARD.md").read_text()
    written = set(json.loads((site / ".discbench-site.json").read_text()))
    assert {"LEADERBOARD.md", "index.html"} <= written and "figures/notes.txt" not in written
    # a second publish of fewer records: its own stale files go, the user's stay
    (site / "figures" / "stale.png").write_text("")  # the user's file of a name publish never wrote
    assert (site / "records" / f"{'1' * 16}-seed0.json").exists() and any((site / "figures").glob("terms__*"))
    for path in runs.rglob(f"*{'1' * 16}*"):  # MI+SI's records go (and, of the MUSE rows, MI×SI's term history)
        path.unlink()
    for path in runs.rglob(f"*{'3' * 16}*"):
        path.unlink()
    status, _, err = discbench(capsys, monkeypatch, "publish", "--results-dir", str(runs), "--out", str(site))
    assert status == 0, err
    assert not (site / "records" / f"{'1' * 16}-seed0.json").exists() and not any((site / "figures").glob("terms__*"))
    assert (site / "figures" / "notes.txt").exists() and (site / "figures" / "stale.png").exists()


def test_publish_never_touches_its_inputs(runs, tmp_path, capsys, monkeypatch):
    site = tmp_path / "site"
    status, _, err = discbench(capsys, monkeypatch, "publish", "--results-dir", str(runs), "--out", str(site))
    assert status == 0, err
    before = sorted((site / "records").iterdir())
    status, _, err = discbench(capsys, monkeypatch, "publish", "--results-dir", str(site / "records"),
                               "--out", str(site))
    assert status == 2 and "lies in the site's records/" in err and len(err.strip().splitlines()) == 1
    assert sorted((site / "records").iterdir()) == before


def test_publish_that_cannot_write_deletes_nothing(runs, tmp_path, capsys, monkeypatch):
    site = tmp_path / "site"
    status, _, err = discbench(capsys, monkeypatch, "publish", "--results-dir", str(runs), "--out", str(site))
    assert status == 0, err
    files = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}

    def full(*args, **kwargs):  # a disk that fills up while the site is written (root ignores chmod, ENOSPC not)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("discbench.reporting.html.render_html", full)
    status, _, err = discbench(capsys, monkeypatch, "publish", "--results-dir", str(runs), "--out", str(site))
    assert status == 2 and "cannot write the site into" in err and "No space left" in err
    assert {p: p.read_bytes() for p in site.rglob("*") if p.is_file()} == files
