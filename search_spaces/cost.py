"""FLOPs and parameter count of a NAS-FPN neck, for cost-aware rewards."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from search_spaces.architecture import Architecture
from search_spaces.neck import AttentionPool, NASFPNNeck, NormKind


@dataclass(frozen=True)
class NeckCost:
    flops: int
    """Floating-point operations of one forward pass on one image (a multiply-add counts as 2)."""
    params: int


def level_size(image_size: tuple[int, int], level: int) -> tuple[int, int]:
    """Feature-map size at ``level`` (stride ``2**level``) of a padded-convolution backbone."""
    stride = 2**level
    return math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride)


def neck_cost(
    architecture: Architecture,
    image_size: tuple[int, int],
    width: int = 256,
    repeats: int = 7,
    norm: NormKind = "bn",
    attention_pool: AttentionPool = "max",
) -> NeckCost:
    """Count the neck's convolution FLOPs at ``image_size`` (H, W), its inputs already ``width`` wide.

    Only convolutions are counted (the merges, resampling and norms are a rounding error next to them),
    as is usual for detector FLOP figures.
    """
    with torch.device("meta"):
        neck = NASFPNNeck(
            architecture, width, width=width, repeats=repeats, norm=norm, attention_pool=attention_pool
        ).eval()
        features = {
            level: torch.zeros(1, width, *level_size(image_size, level)) for level in architecture.levels
        }
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        neck(features)
    params = sum(p.numel() for p in neck.parameters())
    return NeckCost(flops=int(counter.get_total_flops()), params=params)
