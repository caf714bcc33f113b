"""One optimisation step, shared by the proxy trainer and the full trainer."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn


def move_batch(
    batch: tuple[Tensor, list[tuple[int, int]], list[dict[str, Any]]], device: torch.device
) -> tuple[Tensor, list[tuple[int, int]], list[dict[str, Any]]]:
    images, image_sizes, targets = batch
    targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    return images.to(device), image_sizes, targets


def compute_losses(
    model: nn.Module,
    batch: tuple[Tensor, list[tuple[int, int]], list[dict[str, Any]]],
    device: torch.device,
    amp: bool,
) -> dict[str, Tensor]:
    """The detector's losses on one padded batch; autocast on CUDA only."""
    images, image_sizes, targets = move_batch(batch, device)
    with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
        return model(images, image_sizes, targets)


def apply_gradients(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    params: Sequence[Tensor],
    grad_clip: float | None,
) -> float | None:
    """Backward, optional clipping of the global gradient norm, optimizer step; returns the norm
    before clipping (None without clipping)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    norm = None
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    scaler.step(optimizer)
    scaler.update()
    return norm


def loss_summary(losses: dict[str, Tensor]) -> str:
    return ", ".join(f"{name}={float(value.detach()):.4g}" for name, value in losses.items())
