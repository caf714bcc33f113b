"""Data-parallel helpers over ``torch.distributed``; a single process needs no process group.

Processes are started by ``torchrun`` (one per GPU, any number of nodes), which sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous variables read here.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def init_from_env(backend: str, device: torch.device) -> bool:
    """Join the process group described by torchrun's variables; False when running alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return True


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_objects(value: Any) -> list[Any]:
    """``value`` of every process, in rank order."""
    if not dist.is_initialized():
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def all_true(flag: bool) -> bool:
    """True when ``flag`` holds on every process, so all of them stop together instead of hanging."""
    if not dist.is_initialized():
        return flag
    tensor = torch.tensor([int(flag)], device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def mean_over_processes(values: dict[str, float]) -> dict[str, float]:
    """Average logged numbers over processes (every process must call this)."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return dict(zip(values, (tensor / world_size()).tolist()))


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def wrap_model(model: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """DistributedDataParallel (after optional SyncBatchNorm conversion) when in a process group."""
    if not dist.is_initialized():
        return model
    if sync_bn:
        if device.type != "cuda":
            raise ValueError("train.distributed.sync_bn: SyncBatchNorm needs CUDA; use GN on the CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
