"""What checkpointing costs: time per epoch with and without checkpoints, the time to write one, and its size.

Trains ``--steps`` steps of one configuration through ``discbench.train.train`` three times, with no checkpoint,
with the default (one at the epoch end) and with ``--checkpoint-every`` steps, and reports the wall time of each
epoch (the record's ``train_seconds``, which includes the mid-epoch checkpoints, plus the epoch-end checkpoint, timed
separately), the median time to write one checkpoint of the trained run and its size on disk. Data is the real
dataset when ``--dataset fashion-mnist`` (the smoke recipe's subset), or synthetic uint8 images of the dataset's shape
(``--synthetic``, e.g. CIFAR-sized 32x32x3 for resnet18); a short run (``--steps``) extrapolates to a full epoch
of ``--epoch-images`` images.

    python benchmarks/bench_checkpoint.py --loss mi_x_si --backbone smallnet --dataset fashion-mnist   # smoke epoch
    python benchmarks/bench_checkpoint.py --loss mi_x_si --backbone resnet18 --dataset cifar100 --synthetic \\
        --budget paper --batch 128 --steps 3 --epoch-images 50000
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from discbench.checkpoint import CheckpointPlan, Position, snapshot
from discbench.config import Bench
from discbench.data import ResidentData, open_dataset
from discbench.train import train


def synthetic(cfg, train_images: int, test_images: int) -> ResidentData:
    ds = cfg.dataset
    g = torch.Generator().manual_seed(0)

    def split(n):
        return (torch.randint(0, 256, (n, ds.channels, ds.image_size, ds.image_size), dtype=torch.uint8, generator=g),
                torch.randint(0, ds.num_classes, (n,), generator=g))

    return ResidentData(ds, split(train_images), split(test_images), torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", default="mi_x_si")
    parser.add_argument("--backbone", default="smallnet")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--budget", default="smoke")
    parser.add_argument("--synthetic", action="store_true", help="random images of the dataset's shape")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=None, help="steps to train (default: one recipe epoch)")
    parser.add_argument("--epoch-images", type=int, default=None, help="extrapolate to an epoch of this many images")
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    bench = Bench.load()
    base = bench.resolve(args.loss, args.backbone, args.dataset, args.budget)
    batch = args.batch or base.recipe.batch_size
    sets = [f"recipe.batch_size={batch}", "recipe.epochs=1", "recipe.milestones=[]", "recipe.test_subset=" + str(batch),
            f"recipe.eval_batch_size={batch}"]
    if args.steps:
        sets.append(f"recipe.train_subset={args.steps * batch}")
    cfg = bench.resolve(args.loss, args.backbone, args.dataset, args.budget, overrides=sets)
    cpu = torch.device("cpu")
    data = (synthetic(cfg, cfg.recipe.train_subset, batch) if args.synthetic
            else open_dataset(cfg.dataset, cfg.recipe, cpu))
    steps = data.steps_per_epoch(batch)

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, every in (("none", None), ("epoch end", 0), (f"every {args.checkpoint_every} steps",
                                                                   args.checkpoint_every)):
            plan = None if every is None else CheckpointPlan(Path(tmp) / f"{name.replace(' ', '_')}.ckpt", every)
            start = time.perf_counter()
            run = train(cfg, 0, data, cpu, progress=False, checkpoint=plan)
            wall = time.perf_counter() - start
            rows[name] = (run.record.timing["train_seconds"], wall)
        system = run.system
        opt = torch.optim.SGD([p for p in system.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
        for p in system.parameters():  # a momentum buffer per parameter, as a trained run's optimizer holds
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        opt.step()
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [1])
        pos = Position(epoch=0, epoch_step=1, step=1, order=torch.randperm(data.num_train),
                       sums=torch.zeros(8), keys=[], epochs=[])
        plan = CheckpointPlan(Path(tmp) / "timed.ckpt")
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            plan.save(snapshot(cfg, 0, pos, system, opt, sched, torch.Generator().manual_seed(0)))
            times.append(time.perf_counter() - t0)
        save_s, size = statistics.median(times), plan.path.stat().st_size

    per_step = rows["none"][0] / steps
    epoch_steps = (args.epoch_images // batch) if args.epoch_images else steps
    print(f"{args.loss} | {args.backbone} | {args.dataset}{' (synthetic)' if args.synthetic else ''} | batch {batch} "
          f"| {steps} steps measured | threads {torch.get_num_threads()} | load {os.getloadavg()[0]:.2f}")
    print(f"checkpoint: {size / 2**20:.1f} MiB, written in {save_s * 1000:.0f} ms (median of 3)")
    print("| checkpoints | measured train s | measured s/step | epoch of "
          f"{epoch_steps} steps, s (extrapolated) |")
    print("|---|---|---|---|")
    for name, (train_s, _) in rows.items():
        every = None if name == "none" else (0 if name == "epoch end" else args.checkpoint_every)
        measured = train_s + (save_s if every is not None else 0)  # + the epoch-end checkpoint (outside train_s)
        epoch = epoch_steps * per_step + (0 if every is None else save_s * (1 + (epoch_steps // every if every
                                                                                 else 0)))
        print(f"| {name} | {measured:.2f} | {measured / steps:.3f} | {epoch:.1f} |")


if __name__ == "__main__":
    main()
