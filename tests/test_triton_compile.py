"""The Triton critic kernels build for real NVIDIA GPUs (sm_80, sm_86, sm_90), down to a cubin, on this CPU-only
machine, the way a launch builds them: ``discbench.kernels.aot`` runs a real call's arguments through triton's binder
(divisibility-by-16 specialisation of sizes, strides and pointers), targets ``GPUTarget("cuda", arch, 32)`` and uses
the ptxas and cuobjdump bundled with triton.

The full matrix (every config x dtype variant x D in {64, 128, 256} x loss x kernel x architecture, 1440 builds) is
benchmarks/critic_compile_matrix.json, written by benchmarks/critic_compile_matrix.py. Here: the table holds all of
it and gives every shape the dispatcher accepts a config that fits (no spills, shared memory within the
architecture's limit); a slice of it is rebuilt and must match the table exactly (a stale table fails);
``DISCBENCH_COMPILE_MATRIX=1`` rebuilds all of it (about an hour on 2 cores). Runs in the main process because the
kernels must be JIT functions, not the interpreter's (skipped under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import pytest

from tests.conftest import REPO

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                                reason="under the interpreter the kernels are not JIT functions")

TABLE = REPO / "benchmarks" / "critic_compile_matrix.json"


@pytest.fixture(scope="module")
def table() -> dict[tuple, dict]:
    rows = json.loads(TABLE.read_text())
    return {(r["kernel"], r["variant"], r["loss"], tuple(r["config"]), r["dim"], r["arch"]): r for r in rows}


def groups(table) -> dict[tuple, list[dict]]:
    """Table rows per (kernel, variant, loss, arch, D): the configs the dispatcher can choose from for that shape."""
    out = defaultdict(list)
    for (kernel, variant, loss, _, dim, arch), row in table.items():
        out[(kernel, variant, loss, arch, dim)].append(row)
    return out


def test_the_table_holds_every_build_of_the_matrix(table):
    """Every config x dtype variant (training's fp32 codes under bf16 autocast, bf16, fp16, fp32 with TF32 and with
    IEEE dots) x D in {64, 128, 256} x loss x kernel x architecture (sm_80, sm_86, sm_90), and nothing else."""
    from discbench.kernels import aot

    jobs = {(k, v, loss, tuple(c), d, a) for k, v, loss, c, d, a in aot.all_jobs()}
    assert set(table) == jobs
    assert {a for *_, a in jobs} == {80, 86, 90} and {d for *_, d, _ in jobs} == {64, 128, 256}
    assert set(aot.VARIANTS) == {"fp32-tf32", "fp32-ieee", "fp16", "bf16", "fp32>bf16"}


def test_every_shape_the_dispatcher_accepts_has_a_config_that_fits(table):
    """The dispatcher accepts every kernel, loss, dtype variant and D <= 256 on compute capability >= 8.0; for each
    of them on sm_80, sm_86 and sm_90 some config fits (no spills, shared memory within the architecture's limit),
    and the dispatcher, which builds candidates in its preference order until one fits, reaches it."""
    from discbench.kernels import aot
    from discbench.kernels import jsd_triton as jt

    for row in table.values():
        assert row["fits"] == (row["local_bytes"] == 0 and row["shared_bytes"] <= aot.SHARED_LIMIT[row["arch"]])
    groups_ = groups(table)
    assert len(groups_) == 2 * len(aot.VARIANTS) * len(aot.LOSSES) * len(aot.DIMS) * len(aot.ARCHS)
    missing = [key for key, rows in groups_.items() if not any(r["fits"] for r in rows)]
    assert not missing, f"no config fits: {sorted(missing)}"
    # MUSE's common case, training's dtypes at B = 128, D = 128: a 128-wide column tile fits the forward everywhere
    for arch in aot.ARCHS:
        assert any(r["fits"] and r["config"][1] == 128 for r in groups_[("fwd", "fp32>bf16", "jsd", arch, 128)])
    # fp32 at IEEE precision: the dispatcher's first candidate fits every shape, so no call waits on ptxas for the
    # spilling FMA builds (minutes each) before it finds one
    first = jt.preferred_configs(128, fma=True)[0]
    for kernel, variant, loss, arch, dim in groups_:
        if variant == "fp32-ieee":
            assert table[(kernel, variant, loss, tuple(first), dim, arch)]["fits"], (kernel, loss, arch, dim)


def test_a_slice_rebuilds_exactly_as_tabulated(table):
    """The dispatcher's first choice at B = 128 (preference order, first that fits) for training's dtypes, rebuilt
    for each architecture: same registers, local memory and shared memory as the table."""
    from discbench.kernels import aot
    from discbench.kernels import jsd_triton as jt

    jobs = []
    for arch in aot.ARCHS:
        for kernel in jt.KERNELS:
            for config in jt.preferred_configs(128):
                if table[(kernel, "fp32>bf16", "jsd", tuple(config), 128, arch)]["fits"]:
                    jobs.append((kernel, "fp32>bf16", "jsd", config, 128, arch))
                    break
    assert len(jobs) == 2 * len(aot.ARCHS)
    for build in aot.matrix(jobs):
        row = table[(build.kernel, build.variant, build.loss, tuple(build.config), build.dim, build.arch)]
        assert (build.registers, build.local_bytes, build.shared_bytes) == (
            row["registers"], row["local_bytes"], row["shared_bytes"])
        assert build.fits and build.registers <= 255


@pytest.mark.skipif(os.environ.get("DISCBENCH_COMPILE_MATRIX") != "1",
                    reason="the full matrix takes about an hour on 2 cores: set DISCBENCH_COMPILE_MATRIX=1")
def test_the_whole_matrix_rebuilds_exactly_as_tabulated(table):
    from discbench.kernels import aot

    for build in aot.matrix(aot.all_jobs()):
        row = table[(build.kernel, build.variant, build.loss, tuple(build.config), build.dim, build.arch)]
        assert (build.registers, build.local_bytes, build.shared_bytes) == (
            row["registers"], row["local_bytes"], row["shared_bytes"]), build


def test_builds_get_the_run_time_specialisation():
    """Sizes and strides divisible by 16 are specialised as at run time (tt.divisibility = 16), others not."""
    from discbench.kernels import aot
    from discbench.kernels import jsd_triton as jt

    config = jt.CONFIGS[0]
    names = jt.KERNELS["fwd"].arg_names

    def divisible(b, n, d):
        _, _, _, attrs, _ = aot.specialise("fwd", "bf16", jt.JSD.value, config, 90, b, n, d)
        return {names[i] for (i,), a in attrs.items() if ["tt.divisibility", 16] in a}

    assert divisible(128, 1024, 128) == {"l_ptr", "g_ptr", "row_loss_ptr", "lse_ptr", "n_rows", "n_loc", "n_img",
                                         "dim", "stride_l", "stride_g"}
    assert divisible(130, 67, 100) == {"l_ptr", "g_ptr", "row_loss_ptr", "lse_ptr"}


def test_dots_smaller_than_16_do_not_build():
    """The check is real: a 16 x 16 x 8 half-precision dot (the interpreter runs it) fails to compile."""
    from discbench.kernels import aot
    from discbench.kernels import jsd_triton as jt

    with pytest.raises(Exception, match="K >= 16"):
        aot.compile_kernel("fwd", "bf16", jt.JSD.value, jt.Config(16, 16, 4, 1), 80, d=8, block_d=8)


def test_spills_and_shared_memory_are_detected():
    """The resource reading is real: the 128 x 128 backward spills on sm_90 at D = 128, and the 128 x 128 forward at
    D = 256 asks for more shared memory than sm_86 has, without spilling."""
    from discbench.kernels import aot
    from discbench.kernels import jsd_triton as jt

    spills = aot.build("bwd", "fp32>bf16", "jsd", jt.Config(128, 128, 8, 2), 128, 90)
    assert spills.local_bytes > 0 and spills.registers == 255 and not spills.fits
    big = aot.build("fwd", "fp32>bf16", "nce", jt.Config(128, 128, 8, 2), 256, 86)
    assert big.local_bytes == 0 and big.shared_bytes > aot.SHARED_LIMIT[86] and not big.fits
