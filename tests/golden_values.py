"""Golden values of the built-in losses (torchdistill style): fixed inputs and fixed-seed parameters -> stored values.

``tests/golden/losses.json`` maps plugin name -> version -> shape case (``discbench.contract.cases``) -> the loss
value that ``discbench.contract``'s ``build`` and ``forward`` give under seed 0 (parameters and inputs). A value
enters the file only through a reviewed update of *named* plugins, never silently for all:

    python -m tests.golden_values                      # status of every registered loss against the file
    python -m tests.golden_values --update vid crd     # (re)compute these plugins' values; review the printed diff

An update stores the plugin's current version and drops its entries of older versions (the current code cannot
reproduce them). tests/test_golden.py checks that every stored value is reproduced and that every built-in loss has
an entry for its current version.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from discbench.contract import build, cases, forward
from discbench.errors import DiscbenchError
from discbench.registry import LOSSES

GOLDEN = Path(__file__).resolve().parent / "golden" / "losses.json"
RTOL = 1e-5
ATOL = 1e-8  # only matters for values that are (near) zero


def compute(name: str) -> dict[str, float]:
    """The loss value of the registered plugin ``name`` for every shape case, seed 0."""
    cls = LOSSES.get(name)
    values = {}
    for case in cases(cls):
        loss, _, _ = forward(build(cls, case), case)
        values[case.name] = loss.item()
    return values


def load(path: Path = GOLDEN) -> dict[str, dict[str, dict[str, float]]]:
    return json.loads(path.read_text()) if path.is_file() else {}


def save(data: dict, path: Path = GOLDEN) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def builtin_names() -> list[str]:
    """Registered losses that ship with discbench (third-party plugins keep their golden values themselves)."""
    return [name for name, origin in LOSSES.origins().items() if origin.startswith("built-in")]


def close(stored: float, value: float) -> bool:
    return math.isclose(value, stored, rel_tol=RTOL, abs_tol=ATOL)


def update_command(name: str) -> str:
    return f"python -m tests.golden_values --update {name}"


def status(data: dict) -> list[str]:
    """One line per registered built-in loss: ok, missing, stale version or differing values."""
    lines = []
    for name in builtin_names():
        version = str(LOSSES.get(name).version)
        stored = data.get(name, {}).get(version)
        if stored is None:
            old = ", ".join(f"v{v}" for v in data.get(name, {}))
            lines.append(f"MISSING  {name} v{version}" + (f" (stored: {old})" if old else ""))
            continue
        values = compute(name)
        bad = [c for c, v in values.items() if c not in stored or not close(stored[c], v)]
        lines.append(f"{'DIFFERS' if bad else 'ok':<8} {name} v{version}" + (f": {', '.join(bad)}" if bad else ""))
    return lines


def update(data: dict, names: list[str]) -> list[str]:
    """Recompute the entries of ``names`` in ``data`` (in place); return lines showing old -> new for review."""
    builtins = builtin_names()
    for name in names:
        if name not in builtins:
            LOSSES.get(name)  # unknown name -> did-you-mean error
            raise DiscbenchError(f"'{name}' is not a built-in loss ({LOSSES.origins()[name]}); golden values here "
                                 f"cover discbench's own plugins")
    lines = []
    for name in names:
        version = str(LOSSES.get(name).version)
        previous = data.get(name, {})
        old = previous.get(version, {})
        values = compute(name)
        for case, value in values.items():
            before = f"{old[case]!r}" if case in old else "(none)"
            lines.append(f"{name} v{version} [{case}]: {before} -> {value!r}")
        dropped = sorted(set(previous) - {version})
        if dropped:
            lines.append(f"{name}: dropped entries of older versions {', '.join('v' + v for v in dropped)}")
        data[name] = {version: values}
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.golden_values", description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", nargs="+", metavar="NAME", default=[],
                        help="recompute and store the values of these built-in losses (review them first)")
    parser.add_argument("--file", type=Path, default=GOLDEN, help=f"fixture file (default {GOLDEN})")
    args = parser.parse_args(argv)
    data = load(args.file)
    try:
        if args.update:
            lines = update(data, args.update)
            save(data, args.file)
            lines.append(f"wrote {args.file}: review the values above before committing")
        else:
            lines = status(data)
    except DiscbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
