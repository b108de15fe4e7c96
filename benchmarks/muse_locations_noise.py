"""What MUSE's location draw (``locations`` = K per image and step) costs in gradient noise, against the noise of
the minibatch itself.

SmallNet MI x SI self-distillation on Fashion-MNIST (the smoke configuration bench.toml resolves, batch 32) trains
``--steps`` SGD steps with every location (``locations = 0``), so that features and encoders are not random. Then,
on one fixed batch, it compares the gradient of the step's loss with respect to the backbone's weights:

- the MUSE part alone (the whole loss's gradient minus the gradient of the same step with MUSE's weight beta set to 0):
  cosine between K drawn locations and every location, over ``--draws`` draws, and the relative error; the same
  cosine between every-location gradients of this batch and of 8 other batches gives the scale of batch noise;
- the whole step's gradient (CE, KD and MUSE): the relative error of the K-location gradient.

    python benchmarks/muse_locations_noise.py                 # K = 64, 32, 16 after 150 steps
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from discbench.api import LossContext
from discbench.config import Bench
from discbench.data import load_idx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_protocols import build  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--k", type=int, nargs="+", default=[64, 32, 16])
    args = parser.parse_args(argv)
    bench = Bench.load()
    torch.manual_seed(0)
    build_args = argparse.Namespace(backbone="smallnet", dataset="fashion-mnist", budget="smoke", peer=None,
                                    teacher=None)
    system, cfg = build(bench, "mi_x_si", "self", build_args)
    ds, batch = cfg.dataset, 32
    (images, labels), _ = load_idx(ds, None, False)
    images = ((images.float() / 255 - ds.mean[0]) / ds.std[0]).view(-1, 1, ds.image_size, ds.image_size)

    def draw(i: int) -> tuple[torch.Tensor, torch.Tensor, LossContext]:
        x = images[i * batch:(i + 1) * batch].contiguous(memory_format=torch.channels_last)
        y = labels[i * batch:(i + 1) * batch].long()
        return x, y, LossContext(step=0, epoch=0, protocol="self", labels=y, indices=torch.arange(batch),
                                 dataset_size=batch, num_classes=ds.num_classes, critic_impl="torch")

    def set_locations(k: int) -> None:
        for plugin in system.discrepancies:
            plugin.locations = k

    params = list(system.net.parameters())

    def grad(i: int, muse: bool = True) -> torch.Tensor:
        x, y, ctx = draw(i)
        beta, system.beta = system.beta, (system.beta if muse else 0.0)  # the self protocol's weight of D
        out = system(x, y, ctx)
        system.beta = beta
        return torch.cat([g.flatten() for g in torch.autograd.grad(out.total, params)])

    system.train()
    set_locations(0)
    r = cfg.recipe
    optimizer = torch.optim.SGD([p for p in system.parameters() if p.requires_grad], lr=r.lr, momentum=r.momentum)
    for i in range(args.steps):
        x, y, ctx = draw(100 + i)
        optimizer.zero_grad()
        system(x, y, ctx).total.backward()
        optimizer.step()

    full = grad(0)
    muse_full = full - grad(0, muse=False)
    others = [grad(j) - grad(j, muse=False) for j in range(1, 9)]
    batch_cos = torch.stack([F.cosine_similarity(muse_full, o, dim=0) for o in others]).mean()
    print(f"SmallNet MI x SI after {args.steps} steps with every location, batch {batch}: |MUSE gradient| / "
          f"|CE + KD gradient| = {muse_full.norm() / (full - muse_full).norm():.3f}")
    print(f"batch noise: cosine of the MUSE gradients (every location) of two batches, mean {batch_cos:.3f}")
    print("| K | cosine with every location (MUSE part), mean / min | rel. error, MUSE part | rel. error, whole step |")
    print("|---|---|---|---|")
    for k in args.k:
        set_locations(k)
        grads = [grad(0) for _ in range(args.draws)]
        cos = torch.stack([F.cosine_similarity(muse_full, g - (full - muse_full), dim=0) for g in grads])
        rel_muse = torch.stack([(g - full).norm() / muse_full.norm() for g in grads]).mean()
        rel_all = torch.stack([(g - full).norm() / full.norm() for g in grads]).mean()
        print(f"| {k} | {cos.mean():.3f} / {cos.min():.3f} | {rel_muse:.3f} | {rel_all:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
