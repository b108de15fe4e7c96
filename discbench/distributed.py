"""Data-parallel training under ``torchrun``: one process per device, DistributedDataParallel, rank 0 writes.

``torchrun --nproc-per-node N -m discbench run ...`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
``Distributed.from_env`` joins the process group (NCCL on CUDA, gloo on CPU) and the training loop then

- keeps the recipe's global batch: each rank trains on ``batch / N`` samples (an error if N does not divide it), its
  contiguous slice of every global batch, augmented as part of the whole batch (``discbench.data``), so the ranks
  together see exactly the one-process batches;
- wraps the protocol in DDP (gradients averaged over ranks, i.e. the gradient of the global-batch mean loss);
- converts BatchNorm to ``SyncBatchNorm`` on CUDA (statistics over the global batch, as one process computes them).
  On CPU ``SyncBatchNorm`` is not available in torch, so each rank normalises with its own slice's statistics
  (``batchnorm = "local"`` in the record) and running statistics come from rank 0 (DDP broadcasts buffers);
- averages the logged loss terms over ranks every step (one small all-reduce), so every rank holds the same
  numbers and stops together on a non-finite loss or a stop request;
- evaluates, checkpoints and writes records on rank 0 only; the record's ``runtime`` holds ``world_size``,
  ``per_rank_batch`` and ``batchnorm``.

Plugins that keep per-sample buffers (CRD's memory banks) update them from their own rank's samples; DDP's buffer
broadcast then replaces them with rank 0's at every step, so under DDP such banks follow rank 0's samples only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from discbench.errors import DiscbenchError


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    batchnorm: str = "global"  # global (one process), sync (SyncBatchNorm) or local (per-rank statistics)

    @classmethod
    def from_env(cls) -> Distributed:
        """The process group ``torchrun`` describes in the environment; a single process without it."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not dist.is_initialized():
            if backend == "nccl":
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend)
        return cls(rank=rank, world_size=world, local_rank=local_rank, backend=backend)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str | None) -> str | None:
        """The device of this rank: ``cuda:LOCAL_RANK`` when CUDA is used, else what was asked for."""
        if self.enabled and torch.cuda.is_available() and (requested is None or requested.startswith("cuda")):
            return f"cuda:{self.local_rank}"
        return requested

    def local_batch(self, batch_size: int) -> int:
        if batch_size % self.world_size:
            raise DiscbenchError(f"recipe.batch_size {batch_size} is not divisible by the world size "
                                 f"{self.world_size}; run with a --nproc-per-node that divides it, or change the "
                                 f"batch with --set recipe.batch_size=...")
        return batch_size // self.world_size

    def prepare(self, system: nn.Module, device: torch.device) -> nn.Module:
        """BatchNorm handling: SyncBatchNorm on CUDA, per-rank statistics on CPU (recorded in ``batchnorm``)."""
        if not self.enabled:
            return system
        if device.type == "cuda":
            self.batchnorm = "sync"
            return nn.SyncBatchNorm.convert_sync_batchnorm(system)
        self.batchnorm = "local"
        return system

    def wrap(self, system: nn.Module, device: torch.device) -> nn.Module:
        if not self.enabled:
            return system
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(system, device_ids=[device.index] if device.type == "cuda" else None)

    def average(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` over ranks (every rank gets it)."""
        if not self.enabled:
            return values
        import torch.distributed as dist

        out = values.detach().clone()
        dist.all_reduce(out)
        return out / self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is set on any rank."""
        if not self.enabled:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def runtime(self, batch_size: int) -> dict[str, Any]:
        return {"world_size": self.world_size, "per_rank_batch": self.local_batch(batch_size),
                "batchnorm": self.batchnorm}

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
