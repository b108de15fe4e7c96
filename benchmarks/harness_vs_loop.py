"""The harness against hand-written training loops on the same network: does ``discbench run`` train as fast as the
loop a researcher would write? (issue 23 keeps it at least as fast.)

Every configuration trains the plain network (the ``none`` row: cross-entropy on its classifier; SGD with the
recipe's lr, momentum, weight decay and milestones; a random horizontal flip per image, the dataset's normalisation)
of one backbone on the first ``train_subset`` images of Fashion-MNIST at the recipe's batch size, for the recipe's
epochs, on ``--threads`` CPU threads, and reports training images per second (evaluation excluded):

- ``harness``: ``discbench run --loss none --budget BUDGET --seeds 1`` in its own process (what a user runs), with
  ``OMP_NUM_THREADS`` set; images/s from the record it writes (``timing.images_per_second``: training steps only).
- ``loop (DataLoader)``: the loop of the PyTorch tutorials and of RepDistiller's ``train_student.py``: a ``Dataset``
  that transforms one image at a time (torchvision ``transforms.v2``: flip, to float, normalise), a ``DataLoader``
  (shuffle, ``num_workers=0``: the cores are the training's), ``model.train()``, forward, cross-entropy, backward,
  SGD step, scheduler step per epoch.
- ``loop (tensors)``: the fastest plain loop: the subset normalised once into one float tensor, batches by a random
  permutation, the flip applied to the batch with ``torch.where``.
- ``loop (tensors, channels_last)``: the same with the network and its batches in channels_last memory format, as
  the harness runs them (``[runtime] channels_last``): what is left of the difference is the harness's own.

The loops build the backbone class the harness builds (same architecture, PyTorch's default initialisation), the
first two in contiguous memory format, as a hand-written loop would. They read the
IDX files themselves (gzip + numpy), not through discbench. Configurations run alternately, ``--repeats`` rounds, in
separate processes for the harness and in this process for the loops; the ratio is harness images/s over loop
images/s, medians over rounds.

    python benchmarks/harness_vs_loop.py                          # tinynet and smallnet, smoke recipe, 1 thread
    python benchmarks/harness_vs_loop.py --backbones smallnet --threads 2 --repeats 3 --json /tmp/loop.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from discbench.config import Bench
from discbench.errors import DiscbenchError
from discbench.registry import BACKBONES

FASHION = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format): magic, dimension sizes (big-endian int32), then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


class ImageDataset(torch.utils.data.Dataset):
    """uint8 images transformed one at a time, as torchvision's datasets do."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def train_loop(model: torch.nn.Module, batches, epochs: int, recipe) -> tuple[int, float]:
    """The hand-written loop: images trained and training seconds (the data pipeline's time included)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(recipe.milestones), gamma=recipe.gamma)
    model.train()
    images, seconds = 0, 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        for x, y in batches():
            logits, _ = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            images += len(y)
        scheduler.step()
        seconds += time.perf_counter() - start
    return images, seconds


def loops(backbone: str, cfg, images: torch.Tensor, labels: torch.Tensor):
    """The hand-written loops of one backbone: name -> a callable returning images per second."""
    ds, r = cfg.dataset, cfg.recipe
    mean, std = list(ds.mean), list(ds.std)

    def model(memory_format: torch.memory_format = torch.contiguous_format) -> torch.nn.Module:
        net = BACKBONES.get(backbone)(in_channels=ds.channels, num_classes=ds.num_classes, image_size=ds.image_size)
        return net.to(memory_format=memory_format)

    def dataloader() -> float:
        transform = v2.Compose([v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                                v2.Normalize(mean, std)])
        loader = torch.utils.data.DataLoader(ImageDataset(images.unsqueeze(1), labels, transform),
                                             batch_size=r.batch_size, shuffle=True, num_workers=0)
        n, s = train_loop(model(), lambda: loader, r.epochs, r)
        return n / s

    def tensors(memory_format: torch.memory_format) -> Callable[[], float]:
        m, sd = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        x_all = (images.unsqueeze(1).float() / 255 - m) / sd

        def batches():
            order = torch.randperm(len(labels))
            for i in range(0, len(order), r.batch_size):
                idx = order[i:i + r.batch_size]
                x = x_all[idx]
                flip = torch.rand(len(idx), 1, 1, 1) < 0.5
                yield torch.where(flip, x.flip(3), x).contiguous(memory_format=memory_format), labels[idx]

        def rate() -> float:
            n, s = train_loop(model(memory_format), batches, r.epochs, r)
            return n / s

        return rate

    return {"loop (DataLoader)": dataloader, "loop (tensors)": tensors(torch.contiguous_format),
            "loop (tensors, channels_last)": tensors(torch.channels_last)}


def harness(backbone: str, budget: str, threads: int) -> float:
    """``discbench run`` in its own process; the training images/s of the record it writes."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        done = subprocess.run([sys.executable, "-m", "discbench", "run", "--loss", "none", "--backbone", backbone,
                               "--budget", budget, "--seeds", "1", "--results-dir", tmp], env=env,
                              capture_output=True, text=True)
        if done.returncode:
            raise DiscbenchError(f"discbench run failed: {done.stderr.strip().splitlines()[-1:]}")
        (record,) = Path(tmp).rglob("*.json")
        return json.loads(record.read_text())["timing"]["images_per_second"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="tinynet,smallnet", help="comma-separated")
    parser.add_argument("--budget", default="smoke")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and machine information here")
    args = parser.parse_args(argv)
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        print(f"error: Fashion-MNIST not found in {FASHION}: apt-get install dataset-fashion-mnist", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    bench = Bench.load()
    backbones = args.backbones.split(",")
    try:
        cfgs = {b: bench.resolve("none", b, "fashion-mnist", args.budget, "self") for b in backbones}
    except DiscbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    subset = next(iter(cfgs.values())).recipe.train_subset or None
    images = torch.from_numpy(read_idx(FASHION / "train-images-idx3-ubyte.gz")[:subset].copy())
    labels = torch.from_numpy(read_idx(FASHION / "train-labels-idx1-ubyte.gz")[:subset].astype(np.int64))
    rates: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(args.repeats):
            for b in backbones:
                rates.setdefault((b, "harness"), []).append(harness(b, args.budget, args.threads))
                for name, loop in loops(b, cfgs[b], images, labels).items():
                    torch.manual_seed(0)
                    rates.setdefault((b, name), []).append(loop())
    except DiscbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = []
    print(f"the `none` row, Fashion-MNIST {args.budget} recipe ({len(labels)} images, batch "
          f"{cfgs[backbones[0]].recipe.batch_size}), {args.threads} thread(s), torch {torch.__version__}, "
          f"median of {args.repeats} rounds")
    print("| backbone | configuration | images/s (each round) | harness ÷ this |")
    print("|---|---|---|---|")
    for (b, name), values in rates.items():
        median = statistics.median(values)
        ratio = statistics.median(rates[(b, "harness")]) / median
        rows.append({"backbone": b, "configuration": name, "images_per_second": values, "harness_ratio": ratio})
        print(f"| {b} | {name} | {median:.0f} ({', '.join(f'{v:.0f}' for v in values)}) | ×{ratio:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "budget": args.budget, "threads": args.threads,
                                         "torch": torch.__version__, "machine": platform.processor() or
                                         platform.machine()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
