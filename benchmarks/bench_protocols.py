"""Step time of the three protocols on one backbone, measured in one process: what online and offline cost next to
self-distillation.

Each configuration is one training step of the real protocol module (forward, backward, SGD update over every
trainable parameter it holds) on a fixed random batch of the dataset's shape, built exactly as ``discbench run``
builds it (bench.toml's resolved configuration; channels_last as in ``[runtime]``). The configurations are measured
round-robin, ``--repeats`` rounds after ``--warmup`` rounds, and each reports the median milliseconds per step and its
ratio to the first row (self-distillation's ``ce_kd``, the reference), so noise from the machine hits every row
alike. The offline teacher is a randomly initialised network of the teacher's backbone: its speed does not depend on
its weights, and no teacher store is needed.

    python benchmarks/bench_protocols.py                                    # smallnet, Fashion-MNIST shape, batch 32
    python benchmarks/bench_protocols.py --backbone resnet20 --teacher resnet56 --dataset cifar100 --batch 64
    python benchmarks/bench_protocols.py --suite table2-smoke --threads 1   # a suite's rows (reference: its first)

A protocol that draws extra views (``Protocol.views``: CS-KD's partners, DDGSD's second distortion) draws them in
every timed step from a synthetic in-memory dataset of the same shape, as a run draws them from its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from discbench import suites
from discbench.api import LossContext
from discbench.config import Bench
from discbench.data import Batch
from discbench.errors import DiscbenchError
from discbench.protocol_check import synthetic_data
from discbench.protocols.base import build_backbone
from discbench.registry import PROTOCOLS

# (row, loss or baseline, protocol): the reference first.
ROWS = (("self ce_kd", "ce_kd", "self"), ("online kd", "ce_kd", "online"), ("offline kd", "ce_kd", "offline"))


def build(bench: Bench, loss: str, protocol: str, args: argparse.Namespace) -> torch.nn.Module:
    partner = {"online": {"peer": args.peer}, "offline": {"teacher": args.teacher or args.backbone}}.get(protocol)
    cfg = bench.resolve(loss, args.backbone, args.dataset, args.budget, protocol, partner=partner)
    teacher = build_backbone(cfg, cfg.protocol.teacher) if PROTOCOLS.get(protocol).needs_teacher else None
    system = PROTOCOLS.get(protocol)(cfg, teacher=teacher)
    if cfg.runtime.channels_last:
        system = system.to(memory_format=torch.channels_last)
    return system, cfg


def stepper(system: torch.nn.Module, cfg, batch: int, impl: str = "torch", timings: dict | None = None):
    """One closure per configuration: a training step on a fixed random batch, with the critic implementation
    ``impl``. With ``timings`` (a dict of lists) each call also appends its forward, backward and optimizer seconds,
    and the input requires grad, so that a backward hook on the backbone spans its whole backward pass (the first
    convolution's input gradient is the only extra work)."""
    ds = cfg.dataset
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, ds.channels, ds.image_size, ds.image_size, generator=gen)
    if cfg.runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if timings is not None:
        x.requires_grad_(True)
    y = torch.randint(0, ds.num_classes, (batch,), generator=gen)
    ctx = LossContext(step=0, epoch=0, protocol=cfg.protocol_name, labels=y, indices=torch.arange(batch),
                      dataset_size=batch, num_classes=ds.num_classes, critic_impl=impl)
    data = synthetic_data(cfg) if system.draws_views() else None
    drawn = Batch(x, y, torch.arange(batch) % (data.num_train if data is not None else batch))
    params = [p for p in system.parameters() if p.requires_grad]
    r = cfg.recipe
    optimizer = torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    system.train()

    def step() -> None:
        t0 = time.perf_counter()
        views = system.views(data, drawn, gen) if data is not None else {}
        out = system(x, y, dataclasses.replace(ctx, views=views) if views else ctx)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        t2 = time.perf_counter()
        optimizer.step()
        if timings is not None:
            timings["forward"].append(t1 - t0)
            timings["backward"].append(t2 - t1)
            timings["optimizer"].append(time.perf_counter() - t2)

    return step


def round_robin(steps: dict, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each step, measured in rounds that call every step once (``warmup`` rounds untimed), so
    that the machine's noise hits every step alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(warmup + repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smallnet")
    parser.add_argument("--peer", default=None, help="online peer (default: the same backbone)")
    parser.add_argument("--teacher", default=None, help="offline teacher backbone (default: the same backbone)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--budget", default="smoke")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and machine information here")
    parser.add_argument("--suite", default=None, help="time this suite's rows on --backbone (default: its first "
                                                      "backbone) instead of the three protocols")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        bench = Bench.load()
        rows = ROWS
        if args.suite:
            suite = suites.load(bench, args.suite)
            rows = tuple((r.label, r.loss, suite.protocol_of(r)) for r in suite.rows)
            if args.backbone == parser.get_default("backbone"):
                args.backbone = suite.backbones[0]
        torch.manual_seed(0)
        built = [(name, *build(bench, loss, protocol, args)) for name, loss, protocol in rows]
    except DiscbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    steps = {name: stepper(system, cfg, args.batch) for name, system, cfg in built}
    times = round_robin(steps, args.warmup, args.repeats)
    reference = statistics.median(times[rows[0][0]])
    def networks(cfg) -> str:
        key = PROTOCOLS.get(cfg.protocol_name).partner
        return cfg.backbone + (f" + {getattr(cfg.protocol, key)}" if key else f" ({cfg.protocol_name})")

    table = [{"row": name, "networks": networks(cfg), "ms_per_step": 1000 * statistics.median(times[name]),
             "ratio": statistics.median(times[name]) / reference}
            for name, _, cfg in built]
    print(f"| row | networks | ms/step (median of {args.repeats}) | × {rows[0][0]} |")
    print("|---|---|---|---|")
    for r in table:
        print(f"| {r['row']} | {r['networks']} | {r['ms_per_step']:.1f} | {r['ratio']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": table, "args": {k: str(v) for k, v in vars(args).items()},
                                         "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                                     "threads": torch.get_num_threads()}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
