"""Data-parallel training through PyTorch's own engine: ``torchrun`` + DDP (NCCL on GPUs, gloo on CPUs).

``torchrun`` starts one process per device and sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; every
process runs the same stage call, takes its share of each epoch (``rmtdeploy.data.sampling``) and
averages gradients with the others. Only rank 0 writes files and logs. Without those variables it is
one plain process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def broadcast(self, obj):
        """``obj`` from rank 0 on every rank (pickled)."""
        if not self.active:
            return obj
        holder = [obj]
        torch.distributed.broadcast_object_list(holder, src=0)
        return holder[0]

    def all_equal(self, value) -> bool:
        """Whether every rank holds the same (picklable) ``value``."""
        if not self.active:
            return True
        values = [None] * self.world
        torch.distributed.all_gather_object(values, value)
        return all(v == values[0] for v in values)


def setup_distributed(device: torch.device) -> Distributed:
    """Join the process group ``torchrun`` describes (once per process), or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local)
        torch.distributed.init_process_group(backend=backend)
    return Distributed(rank=rank, world=world, local_rank=local, backend=backend)


def resolve_device(device: str, dist_local_rank: int | None = None) -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda`` (``cuda:LOCAL_RANK`` under torchrun)."""
    from rmtdeploy.errors import RmtdeployError

    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise RmtdeployError(f"{{param}} must be auto, cpu or cuda, got '{device}'", param="device")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RmtdeployError("{param} cuda: no CUDA device is visible to torch", param="device")
    if device.startswith("cuda:"):
        return torch.device(device)
    local = dist_local_rank if dist_local_rank is not None else int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device("cuda", local)
