"""Start-up time of the command line: how long ``discbench --help``, ``list losses``, ``list budgets`` and
``leaderboard`` take from process start to exit, and whether each imported torch.

Each command runs in a fresh interpreter exactly as the ``discbench`` console script runs it (``from discbench.cli
import main; main()``, with ``-P`` so that the current directory does not shadow the installed package), ``--repeats``
times after one untimed warm-up run (the file cache); the table gives the median and the minimum wall time. The
leaderboard is written to a temporary file, never to the published one.

    python benchmarks/bench_cli_startup.py                        # the installed discbench, from the repository root
    python benchmarks/bench_cli_startup.py --tree /tmp/before     # another copy of the package (on PYTHONPATH)

Measurements depend on the machine's load: the script prints the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = "import sys; sys.argv[0] = 'discbench'; from discbench.cli import main; main()"
PROBE = ("import sys, atexit; atexit.register(lambda: print('TORCH_IMPORTED' if 'torch' in sys.modules else "
         "'TORCH_NOT_IMPORTED', file=sys.stderr)); sys.argv[0] = 'discbench'; from discbench.cli import main; main()")


def commands(out: Path) -> dict[str, list[str]]:
    return {
        "--help": ["--help"],
        "list budgets": ["list", "budgets"],
        "list losses": ["list", "losses"],
        "leaderboard": ["leaderboard", "--results-dir", str(REPO / "results" / "runs"), "--out", str(out)],
    }


def once(args: list[str], env: dict[str, str], code: str = RUN) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-P", "-c", code, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    return time.perf_counter() - start, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs per command (median reported).")
    parser.add_argument("--tree", type=Path, default=None,
                        help="A directory holding another copy of the discbench package, put first on PYTHONPATH.")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.tree:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.tree.resolve()), env.get("PYTHONPATH")]))
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in commands(Path(tmp) / "LEADERBOARD.md").items():
            _, probe = once(argv, env, PROBE)  # warm-up, and whether torch was imported
            if probe.returncode != 0:
                sys.exit(f"{name} failed with exit status {probe.returncode}:\n{probe.stderr}")
            times = [once(argv, env)[0] for _ in range(args.repeats)]
            torch = "yes" if "TORCH_IMPORTED" in probe.stderr.splitlines() else "no"
            rows.append((name, statistics.median(times), min(times), torch))
    load_after = os.getloadavg()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after; median and min of {args.repeats} runs"
          + (f"; package from {args.tree}" if args.tree else ""))
    print()
    print(f"| {'command':<14} | median (s) | min (s) | imports torch |")
    print(f"|{'-' * 16}|-----------:|--------:|---------------|")
    for name, median, minimum, torch in rows:
        print(f"| {name:<14} | {median:10.2f} | {minimum:7.2f} | {torch:<13} |")


if __name__ == "__main__":
    main()
