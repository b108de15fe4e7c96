"""How often the negative control would come out "different from the baseline" (†) over repeated draws.

A signal table's negative control is the baseline's configuration under another label, trained on other seeds
(bench.toml: ``seeds_from``). Its records and the baseline's are draws of one distribution, so every way of splitting
them into two rows of the table's sizes is a draw the table could have shown. For each suite this enumerates all those
splits (or ``--draws`` random ones where there are too many), applies the table's test (Welch's 95 % interval,
``discbench.reporting.stats.welch``) and reports how many splits mark the difference †: about 5 % is what a two-sided
5 % test promises; much more means the table's intervals are too narrow (or the seeds are not independent).

    python benchmarks/control_false_positives.py --results-dir results/runs signal-self signal-online signal-offline

Prints one markdown line per suite; exit status 1 when a suite lacks the records.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from math import comb


def top1_of_baseline(bench, name: str, records) -> tuple[str, list[float], list[float]]:
    """(configuration hash, the baseline row's per-seed top-1, the control row's) of suite ``name``."""
    from discbench import suites
    from discbench.reporting.frame import primary
    from discbench.reporting.markdown import suite_records

    suite = suites.load(bench, name)
    runs = suites.runs(bench, suite)
    by_hash: dict[str, list] = {}
    for run in runs:
        by_hash.setdefault(run.cfg.request_hash, []).append(run)
    shared = [rs for rs in by_hash.values() if len(rs) > 1]
    if not shared:
        raise SystemExit(f"{name}: no two rows share a configuration (a negative control needs one)")
    base, control = shared[0][:2]
    mine = suite_records([base, control], records)
    values = {base.cfg.label: [], control.cfg.label: []}
    for r in mine:
        values[r.label].append(primary(r))
    return base.cfg.request_hash, values[base.cfg.label], values[control.cfg.label]


def false_positive_rate(a: list[float], b: list[float], draws: int, rng: random.Random) -> tuple[int, int]:
    """(splits marked †, splits tried) over every split of a + b into rows of len(a) and len(b)."""
    from discbench.reporting.stats import welch

    pool, n = a + b, len(a)
    total = comb(len(pool), n)
    if total <= draws:
        splits = itertools.combinations(range(len(pool)), n)
    else:
        splits = (tuple(rng.sample(range(len(pool)), n)) for _ in range(draws))
    marked = tried = 0
    for chosen in splits:
        first = [pool[i] for i in chosen]
        second = [pool[i] for i in range(len(pool)) if i not in chosen]
        marked += welch(second, first).significant
        tried += 1
    return marked, tried


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="+")
    parser.add_argument("--results-dir", default="results/runs")
    parser.add_argument("--config", default=None)
    parser.add_argument("--draws", type=int, default=10000, help="random splits where there are more (default 10000)")
    args = parser.parse_args(argv)
    from discbench.config import Bench
    from discbench.records import load
    from discbench.reporting.stats import welch

    bench = Bench.load(args.config)
    records = load([args.results_dir])
    rng = random.Random(0)
    status = 0
    print("| suite | baseline seeds | control seeds | table's control Δ | splits marked † |")
    print("|---|---|---|---|---|")
    for name in args.suites:
        _, base, control = top1_of_baseline(bench, name, records)
        if len(base) < 2 or len(control) < 2:
            print(f"| {name} | {len(base)} | {len(control)} | — | not enough records |")
            status = 1
            continue
        marked, tried = false_positive_rate(base, control, args.draws, rng)
        print(f"| {name} | {len(base)} | {len(control)} | {welch(control, base).short()} | "
              f"{marked} of {tried} ({100 * marked / tried:.1f} %) |")
    return status


if __name__ == "__main__":
    sys.exit(main())
