"""Data parallelism over torch.distributed (gloo on CPU, nccl on CUDA), launched by torchrun.

Without torchrun's environment everything degrades to a single process and these helpers are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1); else a single-process DistInfo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = (device or "").startswith("cuda") or (device is None and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local_rank)


def resolve_device(device: str | None, info: DistInfo) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and info.enabled:
        device = f"cuda:{info.local_rank}"
    return torch.device(device)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_params(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Make every rank start from rank 0's trainable parameters."""
    if info.enabled:
        with torch.no_grad():
            for param in params:
                dist.broadcast(param.data, src=0)


def sum_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Sum gradients over ranks (each rank's loss is already divided by the global target count)."""
    if not info.enabled:
        return
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
