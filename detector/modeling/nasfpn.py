"""The NAS-FPN neck: an ``Architecture`` turned into a torch module.

Every cell resamples its inputs to the exact size of its output level (nearest-neighbour going up,
max pooling going down), merges them, adds the unused same-level entries (output cells only), then
applies ReLU -> 3x3 conv -> norm. Sizes come from the input feature maps themselves, so inputs need not
be padded to a multiple of 128.
"""

from __future__ import annotations

from typing import Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from nas_errors import UserError
from search_spaces.architecture import Architecture
from search_spaces.cost import NormKind

AttentionPool = Literal["max", "avg"]


def make_norm(kind: NormKind, channels: int) -> nn.Module:
    """BatchNorm, GroupNorm or identity.

    GroupNorm uses 32 groups, or fewer when ``channels`` is small, keeping at least two channels per
    group so that a 1x1 map (the coarsest level of a small image) still has something to normalise.
    """
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and channels // g >= 2 or g == 1)
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise UserError(f"norm: unknown kind {kind!r}; expected 'bn', 'gn' or 'none'")


def resample(x: torch.Tensor, size: tuple[int, int], upsample: bool) -> torch.Tensor:
    """Resize ``x`` to exactly ``size``: nearest-neighbour up, max pooling down.

    Adaptive max pooling equals max pooling with kernel = stride whenever the sizes divide, and still
    lands on the exact size when they do not.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if upsample:
        return F.interpolate(x, size=size, mode="nearest")
    return F.adaptive_max_pool2d(x, size)


class CellPostOp(nn.Sequential):
    """ReLU -> 3x3 conv -> norm, applied to every merged feature map."""

    def __init__(self, channels: int, norm: NormKind) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=norm == "none"),
            make_norm(norm, channels),
        )


class NASFPNCell(nn.Module):
    """One repeat of the searched cell graph, with its own weights."""

    def __init__(
        self, architecture: Architecture, channels: int, norm: NormKind, attention_pool: AttentionPool
    ) -> None:
        super().__init__()
        if attention_pool not in ("max", "avg"):
            raise UserError(f"attention_pool: expected 'max' or 'avg', got {attention_pool!r}")
        self.architecture = architecture
        self.attention_pool = attention_pool
        self.post_ops = nn.ModuleList(CellPostOp(channels, norm) for _ in architecture.cells)
        self._pool_levels = architecture.pool_levels()
        # (cell, operands, unused): for global_pool the operands are ordered (fine, coarse).
        self._plan = [
            (cell, (cell.input_a, cell.input_b) if cell.op == "sum" else architecture.attention_roles(cell), unused)
            for _, cell, unused in architecture.cell_inputs()
        ]

    def forward(self, features: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        arch = self.architecture
        sizes = {level: tuple(features[level].shape[-2:]) for level in arch.levels}
        pool = [features[level] for level in arch.levels]
        for (cell, operands, unused), post_op in zip(self._plan, self.post_ops):
            level = cell.output_level
            first, second = (self._read(pool, entry, level, sizes[level]) for entry in operands)
            if cell.op == "sum":
                merged = first + second
            else:
                merged = self._attention(fine=first, coarse=second)
            for entry in unused:
                merged = merged + self._read(pool, entry, level, sizes[level])
            pool.append(post_op(merged))
        num_inputs = len(arch.levels)
        return {level: pool[num_inputs + index] for level, index in sorted(arch.output_cells().items())}

    def _read(self, pool: list[torch.Tensor], entry: int, level: int, size: tuple[int, ...]) -> torch.Tensor:
        """Pool entry ``entry`` resampled to the cell's ``level`` (upsampled if it comes from above)."""
        return resample(pool[entry], size, upsample=self._pool_levels[entry] > level)

    def _attention(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """``coarse + fine * sigmoid(global_pool(coarse))``: the coarse map gates the fine one."""
        if self.attention_pool == "max":
            gate = torch.amax(coarse, dim=(2, 3), keepdim=True)
        else:
            gate = torch.mean(coarse, dim=(2, 3), keepdim=True)
        return coarse + fine * torch.sigmoid(gate)


class NASFPNNeck(nn.Module):
    """Project each input level to ``width`` channels, then apply ``repeats`` cells in sequence.

    Takes and returns a dict ``level -> feature map`` with the architecture's levels.
    """

    def __init__(
        self,
        architecture: Architecture,
        in_channels: int | Mapping[int, int],
        width: int = 256,
        repeats: int = 7,
        norm: NormKind = "bn",
        attention_pool: AttentionPool = "max",
    ) -> None:
        super().__init__()
        if repeats < 1:
            raise UserError(f"repeats: must be at least 1, got {repeats}")
        if width < 1:
            raise UserError(f"width: must be positive, got {width}")
        self.architecture = architecture
        self.levels = architecture.levels
        channels = (
            dict(in_channels) if isinstance(in_channels, Mapping)
            else {level: in_channels for level in self.levels}
        )
        missing = [level for level in self.levels if level not in channels]
        if missing:
            raise ValueError(f"in_channels: no channel count for levels {missing}")
        self.lateral = nn.ModuleDict(
            {
                str(level): (
                    nn.Identity() if channels[level] == width
                    else nn.Sequential(
                        nn.Conv2d(channels[level], width, 1, bias=norm == "none"), make_norm(norm, width)
                    )
                )
                for level in self.levels
            }
        )
        self.cells = nn.ModuleList(
            NASFPNCell(architecture, width, norm, attention_pool) for _ in range(repeats)
        )

    def forward(self, features: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        missing = [level for level in self.levels if level not in features]
        if missing:
            raise ValueError(f"features: missing pyramid levels {missing}; got {sorted(features)}")
        out = {level: self.lateral[str(level)](features[level]) for level in self.levels}
        for cell in self.cells:
            out = cell(out)
        return out
