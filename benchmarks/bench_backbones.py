"""CPU time of one training step of each backbone: forward, cross-entropy, backward and an SGD step at batch 32.

The bare network (no exits, no discrepancy), in train mode, channels_last as the trainer runs it, on random inputs
of a dataset's shape (default: Fashion-MNIST 1x28x28 and CIFAR-100 3x32x32). The table gives the median and the
minimum of ``--repeats`` timed steps after ``--warmup`` untimed ones, and the parameters with that class count.

    OMP_NUM_THREADS=1 python benchmarks/bench_backbones.py                              # the Table 1 backbones
    python benchmarks/bench_backbones.py --backbone resnet18 --backbone tv:regnet_y_400mf --threads 2

Measurements depend on the machine's load: the script prints the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from discbench.registry import BACKBONES

DEFAULT = ["smallnet", "resnet18", "vgg19_bn", "resnet101", "resnet152", "densenet121", "efficientnet_b0"]
SHAPES = {"fashion-mnist": (1, 28, 10), "cifar100": (3, 32, 100)}


def step_times(name: str, channels: int, size: int, classes: int, batch: int, warmup: int,
               repeats: int) -> tuple[list[float], int]:
    torch.manual_seed(0)
    net = BACKBONES.get(name)(in_channels=channels, num_classes=classes, image_size=size)
    net = net.train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits, _ = net(x)
        F.cross_entropy(logits, y).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times, sum(p.numel() for p in net.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", action="append", help=f"repeatable (default: {', '.join(DEFAULT)})")
    parser.add_argument("--dataset", action="append", choices=sorted(SHAPES), help="repeatable (default: both)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| backbone | input | params | step median (ms) | step min (ms) |")
    print("|---|---|---:|---:|---:|")
    for name in args.backbone or DEFAULT:
        for ds in args.dataset or list(SHAPES):
            channels, size, classes = SHAPES[ds]
            times, params = step_times(name, channels, size, classes, args.batch, args.warmup, args.repeats)
            print(f"| {name} | {ds} {channels}x{size}x{size} | {params / 1e6:.2f} M | "
                  f"{1e3 * statistics.median(times):.0f} | {1e3 * min(times):.0f} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
