"""Build every Triton critic kernel ahead of time for sm_80, sm_86 and sm_90 and tabulate its resources.

Every config x variant (training's fp32 codes under bf16 autocast, bf16, fp16, and fp32 with TF32 and IEEE dots)
x D in {64, 128, 256} x loss (JSD, InfoNCE) x kernel (forward, fused backward) x architecture, specialised like a
launch on (B, N) = (128, 1024) (``discbench.kernels.aot``; no GPU needed, triton's bundled ptxas). Writes
benchmarks/critic_compile_matrix.json (read by tests/test_triton_compile.py) after every build, most used cells
first, and .md (registers / local bytes / shared KiB per cell; "x" marks a build that spills or exceeds the
architecture's shared memory).

    python benchmarks/critic_compile_matrix.py                       # all 1440 builds (about an hour on 2 cores)
    python benchmarks/critic_compile_matrix.py --dim 128 --keep      # a slice, merged into the existing table
    python benchmarks/critic_compile_matrix.py --missing             # only what the table lacks
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from discbench.kernels import aot  # noqa: E402
from discbench.kernels import jsd_triton as jt  # noqa: E402

JSON, MD = HERE / "critic_compile_matrix.json", HERE / "critic_compile_matrix.md"


def dump(rows: dict) -> None:
    """The table as JSON, one build per line."""
    JSON.write_text("[\n" + ",\n".join(json.dumps(r) for r in sorted(rows.values(), key=key)) + "\n]\n")


def key(row: dict) -> tuple:
    return row["kernel"], row["variant"], row["loss"], tuple(row["config"]), row["dim"], row["arch"]


def render(rows: list[dict]) -> str:
    """One table per (kernel, loss): rows config x variant, columns arch x D; cell regs/local/shared KiB."""
    cells = {key(r): r for r in rows}
    archs = sorted({r["arch"] for r in rows})
    dims = sorted({r["dim"] for r in rows})
    out = ["# Triton critic: compile matrix", "",
           "Cell: registers per thread / local (spill) bytes per thread / shared memory KiB per block; `x` = does "
           "not fit (spills, or more shared memory than the architecture allows: "
           + ", ".join(f"sm_{a} {aot.SHARED_LIMIT[a] // 1024} KiB" for a in archs)
           + "); empty = not built. Specialised like a launch at B = 128, N = 1024. Regenerate: `python "
             "benchmarks/critic_compile_matrix.py`.", ""]
    for kernel in jt.KERNELS:
        for loss in aot.LOSSES:
            out += [f"## {kernel} / {loss}", ""]
            header = ["config", "dtype"] + [f"sm_{a} D={d}" for a in archs for d in dims]
            out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for config in jt.CONFIGS:
                for variant in aot.VARIANTS:
                    row = [str(config), variant]
                    for a in archs:
                        for d in dims:
                            r = cells.get((kernel, variant, loss, tuple(config), d, a))
                            row.append("" if r is None else f"{r['registers']}/{r['local_bytes']}/"
                                       f"{r['shared_bytes'] / 1024:.0f}{'' if r['fits'] else ' x'}")
                    out.append("| " + " | ".join(row) + " |")
            out.append("")
    fitting = defaultdict(list)
    for r in rows:
        if r["fits"]:
            fitting[(r["kernel"], r["loss"], r["variant"], r["arch"], r["dim"])].append(str(jt.Config(*r["config"])))
    out += ["## Configs that fit, per kernel, loss, dtype, architecture and D", ""]
    for k in sorted({(r["kernel"], r["loss"], r["variant"], r["arch"], r["dim"]) for r in rows}):
        out.append(f"- {' '.join(map(str, k))}: {', '.join(fitting.get(k, [])) or 'NONE'}")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", help="sm_XX to build (repeatable; default all)")
    parser.add_argument("--dim", type=int, action="append", help="D to build (repeatable; default 128, 64, 256)")
    parser.add_argument("--variant", action="append", choices=list(aot.VARIANTS), help="dtype variant (repeatable)")
    parser.add_argument("--config", action="append", help="a config BLOCK_M,BLOCK_C,WARPS,STAGES (repeatable)")
    parser.add_argument("--keep", action="store_true", help="merge into the existing table instead of replacing it")
    parser.add_argument("--missing", action="store_true", help="like --keep, building only the jobs not yet tabulated")
    parser.add_argument("--prune", action="store_true", help="only drop the groups that lack a config, and render")
    parser.add_argument("--processes", type=int, default=None)
    args = parser.parse_args()
    configs = tuple(jt.Config(*map(int, c.split(","))) for c in args.config) if args.config else jt.CONFIGS
    jobs = aot.all_jobs(archs=tuple(args.arch or aot.ARCHS), dims=tuple(args.dim or (128, 64, 256)),
                        variants=tuple(args.variant or aot.VARIANTS), configs=configs)
    merge = args.keep or args.missing or args.prune
    rows = {key(r): r for r in json.loads(JSON.read_text())} if merge and JSON.exists() else {}
    if args.missing:
        jobs = [job for job in jobs if (job[0], job[1], job[2], tuple(job[3]), job[4], job[5]) not in rows]
    if args.prune:
        groups = defaultdict(set)
        for k in rows:
            groups[k[:3] + k[4:]].add(k[3])
        whole = {g for g, have in groups.items() if have >= {tuple(c) for c in jt.CONFIGS}}
        rows = {k: r for k, r in rows.items() if k[:3] + k[4:] in whole and k[3] in {tuple(c) for c in jt.CONFIGS}}
        dump(rows)
        MD.write_text(render(list(rows.values())))
        print(f"kept {len(rows)} rows in {len(whole)} whole groups", file=sys.stderr)
        return
    start = time.time()
    for i, b in enumerate(aot.matrix(jobs, args.processes), 1):
        row = {**asdict(b), "config": list(b.config), "fits": b.fits}
        rows[key(row)] = row
        dump(rows)
        print(f"{i}/{len(jobs)} {time.time() - start:.0f}s {b.kernel} {b.variant} {b.loss} {b.config} D={b.dim} "
              f"sm_{b.arch}: {b.registers} regs, {b.local_bytes} B local, {b.shared_bytes} B shared"
              f"{'' if b.fits else ' (does not fit)'}", file=sys.stderr, flush=True)
        if i % 12 == 0 or i == len(jobs):
            MD.write_text(render(list(rows.values())))


if __name__ == "__main__":
    main()
