"""Where a MUSE self-distillation step spends its time, next to a ``ce_kd`` step (issue 23's second target).

Two measurements, both of the real modules ``discbench run`` builds (bench.toml's resolved configuration), one SGD
step on a fixed random batch of the dataset's shape:

1. **Ratios** (no hooks): ``ce_kd``, ``mi_plus_si`` and ``mi_x_si`` under the self protocol, each MUSE row with the
   critic implementations of this device (``ref``: the naive einsum; ``torch``: the streamed autograd.Function the
   trainer picks on CPU), measured round-robin (``--repeats`` rounds after ``--warmup``) so that the machine's noise
   hits every row alike; median ms per step and the ratio to ``ce_kd``.
2. **Breakdown** (hooked): one MUSE row again, with wall-clock forward and backward hooks on the backbone, the exits
   and the MI/SI encoders, so each step splits into backbone, exits, encoders, critic and loss glue (forward: the
   discrepancy modules' time minus their encoders'; backward: what no hooked module accounts for), the rest of the
   forward (cross-entropy, KD), and the optimizer (the SGD step; zero_grad counts with backward). On CPU every op
   runs synchronously, so wall-clock hooks time what they enclose; the hooks add a little overhead, which is why
   the ratios come from (1).

    python benchmarks/profile_muse_step.py                      # SmallNet, Fashion-MNIST, smoke recipe, batch 32
    python benchmarks/profile_muse_step.py --threads 1 --json /tmp/muse_profile.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from discbench.config import Bench
from discbench.kernels import available_impls

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported: its sibling's harness
from bench_protocols import build, round_robin, stepper  # noqa: E402


def hook(module: torch.nn.Module, name: str, acc: dict) -> None:
    """Accumulate wall-clock forward and backward seconds of ``module`` into ``acc[name + ' fwd'/' bwd']``."""
    state = {}

    def fwd_pre(*_):
        state["f"] = time.perf_counter()

    def fwd_post(*_):
        acc[f"{name} fwd"] += time.perf_counter() - state["f"]

    def bwd_pre(*_):
        state["b"] = time.perf_counter()

    def bwd_post(*_):
        acc[f"{name} bwd"] += time.perf_counter() - state.get("b", time.perf_counter())

    module.register_forward_pre_hook(fwd_pre)
    module.register_forward_hook(fwd_post)
    module.register_full_backward_pre_hook(bwd_pre)
    module.register_full_backward_hook(bwd_post)


def breakdown(bench: Bench, loss: str, impl: str, args: argparse.Namespace) -> dict[str, float]:
    system, cfg = build(bench, loss, "self", args)
    acc: dict[str, float] = defaultdict(float)
    hook(system.net, "backbone", acc)
    for exit_ in system.exits:
        hook(exit_, "exits", acc)
    encoders = [m for d in system.discrepancies for n, m in d.named_children() if "encoder" in n]
    for m in encoders:
        hook(m, "encoders", acc)
    disc_fwd = {"t": 0.0}

    def pre(*_):
        disc_fwd["s"] = time.perf_counter()

    def post(*_):
        disc_fwd["t"] += time.perf_counter() - disc_fwd["s"]

    for d in system.discrepancies:
        d.register_forward_pre_hook(pre)
        d.register_forward_hook(post)
    timings: dict[str, list[float]] = defaultdict(list)
    step = stepper(system, cfg, args.batch, impl, timings)
    for _ in range(args.warmup):
        step()
    acc.clear()
    disc_fwd["t"] = 0.0
    timings.clear()
    for _ in range(args.repeats):
        step()
    n = args.repeats
    ms = {k: 1000 * v / n for k, v in acc.items()}
    fwd, bwd, opt = (1000 * sum(timings[k]) / n for k in ("forward", "backward", "optimizer"))
    disc = 1000 * disc_fwd["t"] / n
    rows = {
        "backbone forward": ms.get("backbone fwd", 0.0),
        "exits forward": ms.get("exits fwd", 0.0),
        "encoders forward": ms.get("encoders fwd", 0.0),
        "critic + MUSE glue forward": disc - ms.get("encoders fwd", 0.0),
        "CE + KD + protocol forward": fwd - ms.get("backbone fwd", 0.0) - ms.get("exits fwd", 0.0) - disc,
        "backbone backward": ms.get("backbone bwd", 0.0),
        "exits backward": ms.get("exits bwd", 0.0),
        "encoders backward": ms.get("encoders bwd", 0.0),
        "critic + losses backward (unhooked rest)": bwd - sum(ms.get(f"{k} bwd", 0.0)
                                                           for k in ("backbone", "exits", "encoders")),
        "optimizer (SGD step)": opt,
    }
    rows["total"] = fwd + bwd + opt
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smallnet")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--budget", default="smoke")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.set_defaults(peer=None, teacher=None)  # bench_protocols.build's partner options: self has none
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = Bench.load()
    torch.manual_seed(0)
    impls = [i for i in ("ref", "torch") if i in available_impls(torch.device("cpu"))]
    rows = [("ce_kd", "ce_kd", "torch")] + [(f"{loss} ({impl} critic)", loss, impl)
                                            for loss in ("mi_plus_si", "mi_x_si") for impl in impls]
    steps = {}
    for name, loss, impl in rows:
        system, cfg = build(bench, loss, "self", args)
        steps[name] = stepper(system, cfg, args.batch, impl)
    times = round_robin(steps, args.warmup, args.repeats)
    reference = statistics.median(times["ce_kd"])
    print(f"{args.backbone} on {args.dataset} ({args.budget}), batch {args.batch}, {torch.get_num_threads()} "
          f"thread(s), torch's CPU kernels {torch.backends.cpu.get_cpu_capability()}, median of {args.repeats} "
          f"round-robin steps")
    print("| row | ms/step | × ce_kd |\n|---|---|---|")
    ratio_rows = []
    for name in steps:
        med = statistics.median(times[name])
        ratio_rows.append({"row": name, "ms": 1000 * med, "ratio": med / reference})
        print(f"| {name} | {1000 * med:.1f} | {med / reference:.2f} |")
    parts = {}
    for loss in ("mi_x_si",):
        for impl in impls:
            parts[f"{loss} ({impl} critic)"] = breakdown(bench, loss, impl, args)
    print("\n| part (hooked run, ms/step) | " + " | ".join(parts) + " |")
    print("|---|" + "---|" * len(parts))
    for key in next(iter(parts.values())):
        print(f"| {key} | " + " | ".join(f"{p[key]:.1f}" for p in parts.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps({"ratios": ratio_rows, "breakdown": parts,
                                         "args": {k: str(v) for k, v in vars(args).items()},
                                         "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                                     "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                                     "threads": torch.get_num_threads()}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
