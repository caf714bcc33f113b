"""FLOPs and parameter count of a NAS-FPN neck, for cost-aware rewards, computed from the architecture.

Pure arithmetic, so drawing or listing cells needs no torch. ``tests/test_neck.py`` checks it against
torch's own FLOP counter on the module built by ``detector.modeling.nasfpn``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from search_spaces.architecture import Architecture

NormKind = Literal["bn", "gn", "none"]
"""The norm after each cell's 3x3 conv: BatchNorm, GroupNorm, or none (then the conv has a bias)."""


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
) -> NeckCost:
    """The neck's convolution FLOPs at ``image_size`` (H, W), its inputs already ``width`` wide.

    Each cell ends in ReLU -> 3x3 conv (``width`` to ``width``) -> norm at its output level. Only the
    convolutions are counted (merges, resampling and norms are a rounding error next to them), as is
    usual for detector FLOP figures; the parameters are the convs' and the norms'.
    """
    conv_params = 9 * width * width
    extra_params = width if norm == "none" else 2 * width  # the conv's bias, or the norm's scale and shift
    flops = sum(
        2 * conv_params * math.prod(level_size(image_size, cell.output_level)) for cell in architecture.cells
    )
    params = len(architecture.cells) * (conv_params + extra_params)
    return NeckCost(flops=repeats * flops, params=repeats * params)
