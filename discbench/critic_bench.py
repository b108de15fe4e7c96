"""Time and peak memory of the MI critic, alone and inside the full MUSE loss, per implementation.

``discbench bench`` and benchmarks/ both measure through this module, so the table a user prints is the one the
benchmarks record. One measurement is forward + backward of one case:

- ``critic``: ``CRITICS["jsd"][impl]`` on given local codes (B, N, D) and global codes (B, D) (scaled by D^-1/2, as
  MUSE does), both requiring grad;
- ``full``: the MUSE ``mi`` plugin with D = dim: its local encoder on a (B, 64, H, W) channels_last map
  (N = H*W), its global encoder on a 512-d vector, and the critic: what one MUSE term costs in training.

Both run the path training takes: under ``torch.autocast("cuda", dtype=torch.bfloat16)`` on CUDA (the trainer's
default ``runtime.amp_bf16``; ``autocast="off"`` measures fp32), with fp32 codes as the encoders produce them, so the
Triton rows time the kernels reading fp32 codes with bf16 dots. Each row says what it measured: ``autocast`` (bf16 or
off; autocast never applies on CPU, like training) and, for Triton rows, the kernel configs chosen for the case.

Peak memory is the peak of bytes allocated during the call above what was allocated before it (inputs excluded;
gradients, activations and temporaries included). On CPU it is exact: the running sum of the torch profiler's
allocation and free events in time order. On CUDA it is ``torch.cuda.max_memory_allocated`` after a reset, with
the device synchronised. Time is the median of ``repeats`` calls after ``warmup`` calls; CUDA calls are
synchronised before and after, so the time is the work and not the launch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from discbench.api import FeatureSpec, LossContext
from discbench.errors import DiscbenchError
from discbench.kernels import CRITICS, available_impls

MIB = 1 << 20
SOURCE_CHANNELS = 64  # the full loss's local map (B, 64, H, W)
TARGET_FEATURES = 512  # and its global vector (B, 512)
BATCHES = (32, 64, 128, 256)
LOCATIONS = (8 * 8, 16 * 16, 32 * 32)


@dataclass(frozen=True)
class Case:
    """One measured configuration: ``mode`` (critic | full), implementation, batch B, locations N, code size D."""

    mode: str
    impl: str
    batch: int
    locations: int
    dim: int = 128
    autocast: str = "off"  # "bf16": the step runs under CUDA bf16 autocast, as training does


AUTOCAST = ("bf16", "off")


def effective_autocast(requested: str, device: torch.device) -> str:
    """What a step on ``device`` runs under: bf16 autocast only on CUDA (like the trainer), else "off"."""
    if requested not in AUTOCAST:
        raise DiscbenchError(f"autocast '{requested}' is not one of {', '.join(AUTOCAST)}")
    return requested if device.type == "cuda" else "off"


def _autocast(case: Case, device: torch.device):
    if case.autocast == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _clear_grads(tensors: list[Tensor]) -> None:
    """Free the gradients a step made, inside the step: the next step starts from none (frees of memory allocated
    before a measurement would otherwise lower its peak)."""
    for t in tensors:
        t.grad = None


def critic_step(case: Case, device: torch.device) -> Callable[[], None]:
    """Forward + backward of the JSD critic alone on fresh random codes (the inputs are created here, not timed)."""
    b, n, d = case.batch, case.locations, case.dim
    local = torch.randn(b, n, d, device=device, requires_grad=True)
    global_ = (torch.randn(b, d, device=device) * d**-0.5).requires_grad_()
    critic = CRITICS["jsd"][case.impl]

    def step() -> None:
        with _autocast(case, device):
            loss = critic(local, global_)
        loss.backward()
        _clear_grads([local, global_])

    return step


def full_step(case: Case, device: torch.device) -> Callable[[], None]:
    """Forward + backward of the MUSE ``mi`` plugin (encoders and critic) on a (B, 64, H, W) map and a 512-d vector."""
    from discbench.registry import LOSSES

    side = math.isqrt(case.locations)
    if side * side != case.locations:
        raise DiscbenchError(f"the full loss needs a square map: N = {case.locations} is not a square")
    b = case.batch
    plugin = LOSSES.get("mi")(FeatureSpec(SOURCE_CHANNELS, 1), FeatureSpec(TARGET_FEATURES, 32), dim=case.dim)
    plugin = plugin.to(device).train()
    source = torch.randn(b, SOURCE_CHANNELS, side, side, device=device).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    target = torch.randn(b, TARGET_FEATURES, device=device, requires_grad=True)
    ctx = LossContext(step=0, epoch=0, protocol="self", labels=torch.zeros(b, dtype=torch.long, device=device),
                      indices=torch.arange(b, device=device), dataset_size=b, num_classes=10, critic_impl=case.impl)
    leaves = [source, target, *plugin.parameters()]

    def step() -> None:
        with _autocast(case, device):
            loss = plugin(source, target, ctx).loss
        loss.backward()
        _clear_grads(leaves)

    return step


MODES: dict[str, Callable[[Case, torch.device], Callable[[], None]]] = {"critic": critic_step, "full": full_step}


@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """Silence file descriptor 2 (kineto prints start/stop banners there from C++)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Exact peak of CPU bytes allocated while ``fn()`` runs, above the bytes allocated before it.

    Replays the profiler's allocation (+) and free (-) events in time order; only the profiler's start and stop are
    silenced (kineto banners), ``fn`` itself runs with stderr intact.
    """
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_fd2():
        prof.__enter__()
    try:
        fn()
    finally:
        with _quiet_fd2():
            prof.__exit__(None, None, None)
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):  # stable: same-time events keep their order
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak of CUDA bytes allocated while ``fn()`` runs, above the bytes allocated before it (synchronised)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes of ``fn()`` on ``device`` (see the module docstring)."""
    return cuda_peak_bytes(fn, device) if device.type == "cuda" else cpu_peak_bytes(fn)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after ``warmup`` calls (CUDA: synchronised around each)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(case: Case, device: torch.device, repeats: int = 3, warmup: int = 1) -> dict:
    """Time and peak memory of one case: a row of the table."""
    step = MODES[case.mode](case, device)
    seconds = median_seconds(step, device, repeats, warmup)
    peak = peak_bytes(step, device)
    row = {**asdict(case), "ms": seconds * 1e3, "peak_mib": peak / MIB, "peak_kib_per_image": peak / 1024 / case.batch}
    if case.impl == "triton":
        from discbench.kernels import jsd_triton

        row["triton_configs"] = {k: v for k, v in jsd_triton.chosen_configs().items()
                                 if k.startswith(str(device)) and f"B={case.batch} D={case.dim}" in k}
        row["triton_fallbacks"] = jsd_triton.fallbacks()
    return row


def cases(modes: list[str], impls: list[str], batches: list[int], locations: list[int], dim: int,
          autocast: str = "off") -> list[Case]:
    """The grid, ordered mode, N, B, implementation (so each implementation sits next to the reference)."""
    return [Case(m, i, b, n, dim, autocast) for m in modes for n in locations for b in batches for i in impls]


def check_impls(impls: list[str], device: torch.device) -> None:
    missing = [i for i in impls if i not in available_impls(device)]
    if missing:
        raise DiscbenchError(f"implementation(s) {', '.join(missing)} cannot run on {device.type}; available: "
                             f"{', '.join(available_impls(device))}")


def lower_bound_bytes(case: Case) -> int:
    """A lower bound of the bytes one case allocates: its fp32 local codes (B, N, D) and their gradient, and for the
    reference critic the (B, B, N) scores it materialises, with their gradient."""
    codes = 2 * 4 * case.batch * case.locations * case.dim
    scores = 2 * 4 * case.batch * case.batch * case.locations if case.impl == "ref" else 0
    return codes + scores


def device_memory(device: torch.device) -> int:
    """The device's total memory in bytes (physical memory on CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(cases: list[Case], device: torch.device) -> None:
    """Refuse, before anything is allocated, a grid with a case that cannot fit on the device."""
    total = device_memory(device)
    for case in cases:
        need = lower_bound_bytes(case)
        if need > total:
            raise DiscbenchError(
                f"{case.mode} {case.impl} with B={case.batch}, N={case.locations}, D={case.dim} needs at least "
                f"{need / 2**30:,.0f} GiB, more than the {total / 2**30:,.0f} GiB of {device.type}; choose a smaller "
                f"--side or --batch")


def add_ratios(rows: list[dict]) -> list[dict]:
    """Each row's speed-up and memory saving against the reference row of the same mode, B, N and D (if measured)."""
    refs = {(r["mode"], r["batch"], r["locations"], r["dim"], r.get("autocast")): r for r in rows
            if r["impl"] == "ref"}
    for row in rows:
        ref = refs.get((row["mode"], row["batch"], row["locations"], row["dim"], row.get("autocast")))
        row["speedup_vs_ref"] = ref["ms"] / row["ms"] if ref else None
        row["memory_saving_vs_ref"] = ref["peak_mib"] / row["peak_mib"] if ref and row["peak_mib"] else None
    return rows


def render(rows: list[dict]) -> str:
    """The measured rows as a markdown table; speed-up = ref time / time, memory saving = ref peak / peak."""
    from tabulate import tabulate

    headers = ["mode", "B", "N", "D", "impl", "autocast", "fwd+bwd ms", "peak MiB", "peak KiB / image",
               "speed-up vs ref", "memory saving vs ref"]
    table = [[r["mode"], r["batch"], r["locations"], r["dim"], r["impl"], r["autocast"], r["ms"], r["peak_mib"],
              r["peak_kib_per_image"], _ratio(r["speedup_vs_ref"]), _ratio(r["memory_saving_vs_ref"])]
             for r in rows]
    return tabulate(table, headers=headers, tablefmt="pipe", floatfmt=".1f")


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def machine_info(device: torch.device) -> dict:
    """Where the numbers come from: device, CPU model, cores, threads and library versions."""
    from discbench.machine import provenance

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        **provenance(),
    }


def run(modes: list[str], impls: list[str], batches: list[int], locations: list[int], dim: int,
        device: torch.device, repeats: int = 3, warmup: int = 1,
        progress: Callable[[Case], None] | None = None, autocast: str = "off") -> list[dict]:
    """Measure every case of the grid (under ``autocast``, see ``effective_autocast``); rows come back with their
    ratios to the reference."""
    check_impls(impls, device)
    grid = list(cases(modes, impls, batches, locations, dim, effective_autocast(autocast, device)))
    check_memory(grid, device)
    rows = []
    for case in grid:
        if progress:
            progress(case)
        rows.append(measure(case, device, repeats, warmup))
    return add_ratios(rows)


def write_json(path: Path, rows: list[dict], settings: dict, device: torch.device) -> None:
    """The table as JSON: machine information, the settings of the run and the rows."""
    from discbench.atomic import atomic_write_text

    payload = {"machine": machine_info(device), "settings": settings, "rows": rows}
    atomic_write_text(Path(path), json.dumps(payload, indent=1) + "\n")
