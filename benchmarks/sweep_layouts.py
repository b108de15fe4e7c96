"""Sweep throughput of the two process layouts on this machine, measured in one run: one process with every usable CPU
as torch threads (``--launcher inline``) against one process per usable CPU with one thread each (``--launcher local
--workers N``: N worker processes that take the pending seeds as they free up, each process started once).

    python benchmarks/sweep_layouts.py --suite demo --budget zoo --seeds 2

Each layout trains the same (row, seed) runs into its own temporary results directory; the table gives the wall time
of the whole sweep and the images per second summed over its runs' records (each record says how many threads
trained it). The layouts alternate ``--repeats`` times, so outside load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from discbench.machine import usable_cpus


def sweep(layout: list[str], suite: str, budget: str, seeds: int, out: Path) -> tuple[float, float, set]:
    cmd = [sys.executable, "-m", "discbench", "sweep", "--suite", suite, "--budget", budget, "--seeds", str(seeds),
           "--results-dir", str(out), "--quiet", *layout]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    images, threads = 0.0, set()
    for f in out.rglob("*.json"):
        rec = json.loads(f.read_text())
        if isinstance(rec, dict) and "timing" in rec:
            images += rec["timing"]["steps"] * rec["config"]["recipe"]["batch_size"]
            threads.add(rec["runtime"].get("threads"))
    return wall, images / wall, threads


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="demo")
    parser.add_argument("--budget", default="zoo")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    cpus = usable_cpus()
    layouts = {f"1 process x {cpus} threads (inline)": [],
               f"{cpus} processes x 1 thread (--launcher local --workers {cpus})": ["--launcher", "local", "--workers",
                                                                                  str(cpus)]}
    rows = {name: [] for name in layouts}
    for _ in range(args.repeats):
        for name, layout in layouts.items():
            with tempfile.TemporaryDirectory() as tmp:
                rows[name].append(sweep(layout, args.suite, args.budget, args.seeds, Path(tmp)))
    print(f"suite {args.suite}, budget {args.budget}, {args.seeds} seeds, {cpus} usable CPUs\n")
    print("| layout | wall s | images/s (all runs) | threads in records |")
    print("|---|---|---|---|")
    for name, results in rows.items():
        for wall, ips, threads in results:
            print(f"| {name} | {wall:.1f} | {ips:.0f} | {sorted(t for t in threads if t is not None)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
