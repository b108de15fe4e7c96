"""Images per second of the streamed (ImageNet-style) loader against a plain torchvision DataLoader.

Writes a synthetic JPEG ImageFolder (``--images`` random images of ``--side`` pixels in ``--classes`` folders, plus a
small val split) to a temporary directory, then reads ``--epochs`` epochs of it with

- ``discbench``: ``discbench.data.StreamedImageFolder.train_epoch`` (the run's sample order, one DataLoader whose
  workers stay alive across epochs), and
- ``torchvision``: ``DataLoader(ImageFolder(...), shuffle=True, drop_last=True)`` with the same transforms, batch and
  worker count, built once and iterated once per epoch (workers start again every epoch: the torchvision default),

and prints images/s per epoch and over all epochs (worker start-up included), with the machine's load average. Both
decode and augment the same JPEGs with the same PIL transforms (RandomResizedCrop, flip, ToTensor, Normalize).

    python benchmarks/bench_streamed_loader.py --workers 2 --images 1024 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_image_folder(root: Path, images: int, classes: int, side: int, seed: int = 0) -> None:
    """``root/{train,val}/class_<k>/<i>.JPEG``: random RGB images (val: one per class per 8 train images)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", images), ("val", max(classes, images // 8))):
        for i in range(count):
            folder = root / split / f"class_{i % classes:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:06d}.JPEG", quality=90)


def dataset_config(classes: int, image_size: int):
    from discbench.config import DatasetConfig

    return DatasetConfig(name="synthetic", layout="imagefolder", channels=3, image_size=image_size,
                         num_classes=classes, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_padding=0,
                         flip=True)


def time_epochs(batches_of_epoch, epochs: int, batch: int) -> list[float]:
    """Images/s of each epoch (the time from asking for the first batch to the last)."""
    rates = []
    for epoch in range(epochs):
        start, n = time.perf_counter(), 0
        for x in batches_of_epoch(epoch):
            n += len(x)
        rates.append(n / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--side", type=int, default=96, help="side of the stored JPEGs")
    parser.add_argument("--image-size", type=int, default=64, help="RandomResizedCrop output side")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from torch.utils.data import DataLoader
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    from discbench.data import StreamedImageFolder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_image_folder(root, args.images, args.classes, args.side)
        cfg = dataset_config(args.classes, args.image_size)
        load_before = os.getloadavg()

        streamed = StreamedImageFolder(cfg, root, torch.device("cpu"), workers=args.workers)
        generator = torch.Generator().manual_seed(0)
        ours = time_epochs(lambda e: (b.x for b in streamed.train_epoch(args.batch, generator)), args.epochs,
                           args.batch)

        tf = transforms.Compose([transforms.RandomResizedCrop(args.image_size), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor(), transforms.Normalize(cfg.mean, cfg.std)])
        plain = DataLoader(ImageFolder(str(root / "train"), tf), batch_size=args.batch, shuffle=True, drop_last=True,
                           num_workers=args.workers)
        theirs = time_epochs(lambda e: (x for x, _ in plain), args.epochs, args.batch)
        load_after = os.getloadavg()

    def overall(rates: list[float]) -> float:
        return len(rates) / sum(1 / r for r in rates)  # total images / total time (equal images per epoch)

    print(f"{args.images} JPEGs {args.side}px -> {args.image_size}px, batch {args.batch}, {args.workers} workers, "
          f"{args.epochs} epochs; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print("| loader | " + " | ".join(f"epoch {i + 1} img/s" for i in range(args.epochs)) + " | overall img/s |")
    print("|---" * (args.epochs + 2) + "|")
    for name, rates in (("discbench StreamedImageFolder", ours), ("torchvision DataLoader", theirs)):
        print(f"| {name} | " + " | ".join(f"{r:.0f}" for r in rates) + f" | {overall(rates):.0f} |")
    if args.out:
        args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "discbench": ours,
                                        "torchvision": theirs, "machine": platform.platform(),
                                        "cpus": os.cpu_count(), "load": [load_before, load_after]}, indent=1))


if __name__ == "__main__":
    main()
