"""Box heads: RoI features -> a vector, then class scores and class-agnostic box deltas."""

from __future__ import annotations

import torch
from torch import nn

from detector.modeling.nasfpn import make_norm


class ConvFCBoxHead(nn.Module):
    """``num_convs`` 3x3 convs at the RoI resolution, then one FC layer (or two FCs without convs).

    At the large resolution (14x14) the convs see the full RoI feature, and a learned stride-2 conv
    brings it to 7x7 before the FC layer, so the extra detail is used rather than pooled away (and the
    FC layer stays the size of a 7x7 head's).
    """

    def __init__(
        self, in_channels: int, resolution: int, num_convs: int, conv_channels: int, fc_dim: int, norm: str
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(num_convs):
            layers += [
                nn.Conv2d(channels, conv_channels, 3, padding=1, bias=norm == "none"),
                make_norm(norm, conv_channels),
                nn.ReLU(inplace=True),
            ]
            channels = conv_channels
        while resolution > 7:
            layers += [
                nn.Conv2d(channels, conv_channels, 3, stride=2, padding=1, bias=norm == "none"),
                make_norm(norm, conv_channels),
                nn.ReLU(inplace=True),
            ]
            channels = conv_channels
            resolution = (resolution + 1) // 2
        self.convs = nn.Sequential(*layers)
        fcs: list[nn.Module] = [nn.Flatten(), nn.Linear(channels * resolution * resolution, fc_dim), nn.ReLU(True)]
        if num_convs == 0:
            fcs += [nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True)]
        self.fcs = nn.Sequential(*fcs)
        self.out_dim = fc_dim

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        return self.fcs(self.convs(roi_features))


class BoxPredictor(nn.Module):
    """Class logits (background = 0) and one class-agnostic box delta per RoI."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(in_dim, 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)
