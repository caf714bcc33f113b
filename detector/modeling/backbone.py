"""ResNet backbones from torchvision returning C2..C5, with frozen BN, BN or GN and optional WS."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

from detector.ops import convert_to_ws

BackboneNorm = Literal["frozen_bn", "bn", "gn"]

_RESNETS: dict[int, Callable[..., resnet.ResNet]] = {
    18: resnet.resnet18,
    34: resnet.resnet34,
    50: resnet.resnet50,
    101: resnet.resnet101,
}
_STAGES = ("layer1", "layer2", "layer3", "layer4")
_FROZEN_ORDER = ("conv1", "bn1", *_STAGES)
"""Frozen first by ``frozen_stages``: 1 is the stem (conv1 + bn1), each further one adds a stage."""


def _norm_layer(kind: BackboneNorm) -> Callable[[int], nn.Module]:
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "bn":
        return nn.BatchNorm2d
    return lambda channels: nn.GroupNorm(32, channels)


class ResNetBackbone(nn.Module):
    """Returns ``{2: C2, 3: C3, 4: C4, 5: C5}`` (strides 4 to 32)."""

    def __init__(
        self,
        depth: int = 50,
        norm: BackboneNorm = "frozen_bn",
        frozen_stages: int = 1,
        weights: Path | None = None,
        weight_standardization: bool = False,
    ) -> None:
        super().__init__()
        net = _RESNETS[depth](weights=None, norm_layer=_norm_layer(norm))
        if weights is not None:
            load_backbone_weights(net, weights, depth)
        if weight_standardization:
            convert_to_ws(net)
        # Frozen children get no gradient and stay in eval mode, so their BN statistics never change.
        self.frozen = _FROZEN_ORDER[: frozen_stages + 1] if frozen_stages else ()
        for name in self.frozen:
            getattr(net, name).requires_grad_(False)
        self.body = IntermediateLayerGetter(net, {name: str(level) for level, name in enumerate(_STAGES, 2)})
        width = 64 if depth < 50 else 256
        self.out_channels = {level: width * 2 ** (level - 2) for level in range(2, 6)}

    def train(self, mode: bool = True) -> "ResNetBackbone":
        """Training mode for the trainable stages only: a frozen stage's BN keeps its running statistics
        (with ``norm: bn``, training mode would silently keep updating them)."""
        super().train(mode)
        for name in self.frozen:
            getattr(self.body, name).eval()
        return self

    def forward(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        return {int(level): feature for level, feature in self.body(images).items()}


def load_backbone_weights(net: resnet.ResNet, path: Path, depth: int) -> None:
    """Load a local torchvision ResNet checkpoint; the classifier (``fc``) is not needed and skipped."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = OrderedDict((k, v) for k, v in state.items() if not k.startswith("fc."))
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a ResNet-{depth} checkpoint: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
