"""The cost of every registered discrepancy: extra parameters and forward+backward time on one fixed feature pair.

The pair is module 1 -> module 4 of ``resnet18`` on CIFAR-size input (32x32, 100 classes) at batch 128, the pair
MUSE's self-distillation feeds the plugin: source (128, 64, 32, 32) and target (128, 512, 4, 4) for
``Tap.FEATURE``; for ``Tap.EXIT`` the source is exit 1's bottleneck output, shaped like F_4: (128, 512, 4, 4); for
``Tap.LOGITS`` both are (128, 100) logits. Shapes come from the backbone's declared ``feature_specs``.

Time: one forward and backward of the plugin alone (no backbone), post-ReLU random inputs that require grad like
network activations, median of ``--repeats`` runs after ``--warmup`` runs, one process, ``--threads`` intra-op
threads (default: torch's; on a machine others are using, 1 thread gives stable numbers).
Extra parameters are the plugin's trainable parameters; buffers (e.g. CRD's memory banks over the training set,
allocated on the first forward, sized here for CIFAR-100's 50 000 images) are counted after the warm-up.

    python benchmarks/bench_losses.py                                # every registered loss, markdown table
    python benchmarks/bench_losses.py --losses l2 mi_x_si --repeats 3 --json cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch
from torch import Tensor

from discbench.api import Discrepancy, FeatureSpec, LossContext, Tap, count_parameters
from discbench.errors import DiscbenchError
from discbench.registry import BACKBONES, LOSSES

BACKBONE, IMAGE, NUM_CLASSES, TRAIN_SIZE = "resnet18", 32, 100, 50_000


def shapes(cls: type[Discrepancy], batch: int) -> tuple[FeatureSpec, FeatureSpec, tuple[int, ...], tuple[int, ...]]:
    """Specs and tensor shapes of the (module 1, module 4) pair for the plugin's tap."""
    specs = BACKBONES.get(BACKBONE)(in_channels=3, num_classes=NUM_CLASSES, image_size=IMAGE).feature_specs
    first, last = specs[0], specs[-1]
    source, target = {Tap.FEATURE: (first, last), Tap.EXIT: (last, last),
                      Tap.LOGITS: (FeatureSpec(NUM_CLASSES, 0), FeatureSpec(NUM_CLASSES, 0))}[cls.tap]

    def shape(spec: FeatureSpec) -> tuple[int, ...]:
        side = spec.spatial(IMAGE)
        return (batch, spec.channels) if spec.is_vector else (batch, spec.channels, side, side)

    return source, target, shape(source), shape(target)


def make_input(shape: tuple[int, ...], gen: torch.Generator, channels_last: bool) -> Tensor:
    x = torch.relu(torch.randn(shape, generator=gen)) if len(shape) == 4 else torch.randn(shape, generator=gen)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


def measure(name: str, batch: int, repeats: int, warmup: int, channels_last: bool) -> dict:
    """Parameters, buffers and median forward+backward milliseconds of loss ``name`` on the fixed pair."""
    cls = LOSSES.get(name)
    source_spec, target_spec, source_shape, target_shape = shapes(cls, batch)
    torch.manual_seed(0)
    plugin = cls(source_spec, target_spec)
    gen = torch.Generator().manual_seed(0)
    source, target = make_input(source_shape, gen, channels_last), make_input(target_shape, gen, channels_last)
    ctx = LossContext(step=0, epoch=0, protocol="self", labels=torch.randint(0, NUM_CLASSES, (batch,), generator=gen),
                      indices=torch.randperm(TRAIN_SIZE, generator=gen)[:batch], dataset_size=TRAIN_SIZE,
                      num_classes=NUM_CLASSES, source_module=1, target_module=4)
    times = []
    for i in range(warmup + repeats):
        source.grad = target.grad = None
        plugin.zero_grad(set_to_none=True)
        start = time.perf_counter()
        plugin(source, target, ctx).loss.backward()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {
        "loss": name,
        "version": cls.version,
        "tap": cls.tap.value,
        "source": list(source_shape),
        "target": list(target_shape),
        "extra_params": count_parameters(plugin),
        "buffer_elements": sum(b.numel() for b in plugin.buffers()),
        "fwd_bwd_ms_median": 1000 * statistics.median(times),
        "fwd_bwd_ms_all": [1000 * t for t in times],
    }


def markdown(rows: list[dict], repeats: int) -> str:
    def shape(s: list[int]) -> str:
        return "x".join(map(str, s))

    lines = [f"| loss | tap | source -> target | extra params | buffer elements | fwd+bwd ms (median of {repeats}) |",
             "|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['loss']} (v{r['version']}) | {r['tap']} | {shape(r['source'])} -> {shape(r['target'])} | "
                     f"{r['extra_params']:,} | {r['buffer_elements']:,} | {r['fwd_bwd_ms_median']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--losses", nargs="+", metavar="NAME", help="losses to measure (default: every registered)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per loss (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (allocations, lazy buffers)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="feed 4-D inputs in channels_last, as runs do by default (bench.toml [runtime])")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's). On a busy machine use 1: with more threads "
                             "than free cores every parallel region waits for a descheduled thread (measured here: kd "
                             "took 73 ms with 2 threads under load, 0.2 ms with 1)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows and the environment as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.losses or LOSSES.names()
    try:
        for name in names:
            LOSSES.get(name)  # fail on a misspelt name before measuring anything
    except DiscbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = []
    for name in names:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        rows.append(measure(name, args.batch, args.repeats, args.warmup, args.channels_last))
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
           "processor": platform.processor() or platform.machine(), "batch": args.batch, "repeats": args.repeats,
           "warmup": args.warmup, "channels_last": args.channels_last, "backbone": BACKBONE, "image_size": IMAGE}
    print(f"Discrepancy cost: {BACKBONE} module 1 -> module 4, CIFAR-size input, batch {args.batch}, CPU, "
          f"{env['threads']} threads, torch {env['torch']}\n")
    print(markdown(rows, args.repeats))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": rows}, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
