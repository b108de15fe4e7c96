"""Build every Triton critic kernel ahead of time for sm_80, sm_86 and sm_90 and tabulate its resources.

Every config x variant (fp32 with TF32 and IEEE dots, fp16, bf16, and training's fp32 codes under bf16 autocast)
x D in {64, 128, 256} x loss (JSD, InfoNCE) x kernel (forward, fused backward) x architecture, specialised like a
launch on (B, N) = (128, 1024) (``discbench.kernels.aot``; no GPU needed, triton's bundled ptxas). Writes
benchmarks/critic_compile_matrix.json (read by tests/test_triton_compile.py) and .md (registers / local bytes /
shared KiB per cell; "x" marks a build that spills or exceeds the architecture's shared memory).

    python benchmarks/critic_compile_matrix.py            # all cores; ~1300 builds, about 25 min on 2 cores
"""

from __future__ import annotations

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


def render(builds: list[aot.Build]) -> str:
    """One table per (kernel, loss): rows config x variant, columns arch x D; cell regs/local/shared KiB."""
    cells = {(b.kernel, b.loss, str(b.config), b.variant, b.arch, b.dim): b for b in builds}
    archs = sorted({b.arch for b in builds})
    dims = sorted({b.dim for b in builds})
    out = ["# Triton critic: compile matrix", "",
           "Cell: registers per thread / local (spill) bytes per thread / shared memory KiB per block; `x` = does "
           "not fit (spills, or more shared memory than the architecture allows: "
           + ", ".join(f"sm_{a} {aot.SHARED_LIMIT[a] // 1024} KiB" for a in archs)
           + "). Specialised like a launch at B = 128, N = 1024. Regenerate: `python "
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
                            b = cells.get((kernel, loss, str(config), variant, a, d))
                            row.append("" if b is None else f"{b.registers}/{b.local_bytes}/"
                                       f"{b.shared_bytes / 1024:.0f}{'' if b.fits else ' x'}")
                    out.append("| " + " | ".join(row) + " |")
            out.append("")
    fitting = defaultdict(list)
    for b in builds:
        if b.fits:
            fitting[(b.kernel, b.loss, b.variant, b.arch, b.dim)].append(str(b.config))
    out += ["## Configs that fit, per kernel, loss, dtype, architecture and D", ""]
    for key in sorted({(b.kernel, b.loss, b.variant, b.arch, b.dim) for b in builds}):
        out.append(f"- {' '.join(map(str, key))}: {', '.join(fitting.get(key, [])) or 'NONE'}")
    return "\n".join(out) + "\n"


def main() -> None:
    jobs = aot.all_jobs()
    start = time.time()
    builds = aot.matrix(jobs)
    print(f"{len(builds)} builds in {time.time() - start:.0f} s", file=sys.stderr)
    rows = [{**asdict(b), "config": list(b.config), "fits": b.fits} for b in builds]
    (HERE / "critic_compile_matrix.json").write_text(json.dumps(rows, indent=0) + "\n")
    (HERE / "critic_compile_matrix.md").write_text(render(builds))
    print(render(builds))


if __name__ == "__main__":
    main()
