"""The machine a run ran on: software provenance, hardware, and peak memory.

``provenance`` (versions, the git commit of the checkout, the platform) and ``hardware`` (the CPU model and its
vector extensions, torch's thread count, the GPU, driver and CUDA) are written into every run record; leaderboards
group records by them (``discbench.reporting``). torch is imported only when a run asks.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import discbench


def _git_commit() -> str | None:
    """The commit of the discbench checkout (with ``-dirty`` when it has local changes), or None."""
    repo = Path(discbench.__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def _distribution_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (None when absent), read without importing it."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def provenance() -> dict[str, Any]:
    import torch
    import torchvision

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "discbench": discbench.__version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "triton": triton_version,
        "timm": _distribution_version("timm"),  # the weights and layouts of timm: backbones
        "python": platform.python_version(),
        "platform": platform.platform(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")


def _cpuinfo() -> tuple[str | None, list[str]]:
    """CPU model name and its vector extensions (the ``flags`` / ``Features`` line of /proc/cpuinfo, in the order of
    ``VECTOR_FLAGS``); ``platform.processor()`` and no flags where /proc/cpuinfo does not exist."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or None, []
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model is None:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model or platform.processor() or None, [f for f in VECTOR_FLAGS if f in flags]


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if out else None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a Slurm or container allotment), not the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS and Windows have no affinity mask
        return os.cpu_count() or 1


def hardware(device: str) -> dict[str, Any]:
    """What the numbers of a run depend on beyond the software versions (``provenance``): the CPU model and its vector
    extensions, torch's CPU kernel capability, logical CPUs, torch's thread count; on CUDA the GPU's name, the
    driver, and the CUDA and cuDNN versions torch was built with."""
    import torch

    model, flags = _cpuinfo()
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        capability = None
    return {
        "device": str(device),
        "cpu_model": model,
        "cpu_vector_extensions": flags,
        "cpu_capability": capability,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu_name": torch.cuda.get_device_name(torch.device(device)) if cuda else None,
        "gpu_driver": _nvidia_driver() if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
    }


def reset_peak_memory(device) -> None:
    """Start counting CUDA's peak allocation for this run (CPU: the process's peak RSS cannot be reset)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device) -> dict[str, Any]:
    """The run's peak memory: CUDA ``max_memory_allocated`` since ``reset_peak_memory``; on CPU the process's peak
    resident set size (``getrusage``), which includes everything the process did before (earlier seeds of the same
    command, the dataset), labelled as such."""
    import torch

    if torch.device(device).type == "cuda":
        return {"kind": "cuda_max_memory_allocated", "bytes": int(torch.cuda.max_memory_allocated(device))}
    import resource

    scale = 1 if platform.system() == "Darwin" else 1024  # Linux reports KiB, macOS bytes
    return {"kind": "cpu_process_peak_rss", "bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)}
