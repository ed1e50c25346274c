"""Detection head: per level, a box branch (4 x reg_max distance bins) and a class branch (logits).

The head stops at raw outputs. Decoding (DFL expectation, anchors, strides, sigmoid) is done by
the one shared numpy decoder in :mod:`edge_yolov9.decode`, for validation here and on the Pi alike.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from .blocks import Conv
from .config import HeadConfig


class LevelOutput(NamedTuple):
    """Raw outputs of one pyramid level, NCHW: box bins (B, 4*reg_max, H, W), class logits (B, nc, H, W)."""

    box: torch.Tensor
    cls: torch.Tensor


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


class DetectHead(nn.Module):
    def __init__(self, num_classes: int, in_channels: tuple[int, ...], strides: tuple[int, ...],
                 cfg: HeadConfig, *, act: str = "silu"):
        super().__init__()
        self.num_classes = num_classes
        self.reg_max = cfg.reg_max
        self.strides = tuple(strides)
        first = in_channels[0]
        box_width = _round_up(max(first // 4, 4 * cfg.reg_max, 16), cfg.box_groups)
        cls_width = cfg.cls_width or max(first, min(cfg.cls_width_factor * num_classes, cfg.cls_width_cap))
        self.box = nn.ModuleList(
            nn.Sequential(
                Conv(c, box_width, 3, act=act),
                Conv(box_width, box_width, 3, groups=cfg.box_groups, act=act),
                nn.Conv2d(box_width, 4 * cfg.reg_max, 1, groups=cfg.box_groups),
            )
            for c in in_channels
        )
        self.cls = nn.ModuleList(self._class_branch(c, cls_width, num_classes, cfg, act) for c in in_channels)
        self.reset_biases()

    @staticmethod
    def _class_branch(c_in: int, width: int, num_classes: int, cfg: HeadConfig, act: str) -> nn.Sequential:
        if cfg.cls_depthwise:  # Ultralytics >= 8.3: (depthwise 3x3 + pointwise 1x1) twice
            return nn.Sequential(
                nn.Sequential(Conv(c_in, c_in, 3, groups=c_in, act=act), Conv(c_in, width, 1, act=act)),
                nn.Sequential(Conv(width, width, 3, groups=width, act=act), Conv(width, width, 1, act=act)),
                nn.Conv2d(width, num_classes, 1),
            )
        return nn.Sequential(Conv(c_in, width, 3, act=act), Conv(width, width, 3, act=act),
                             nn.Conv2d(width, num_classes, 1))

    def reset_biases(self, image_size: int = 640) -> None:
        """Start boxes at distance ~1 bin and class scores at the prior of ~5 objects per image."""
        for box, cls, stride in zip(self.box, self.cls, self.strides):
            nn.init.constant_(box[-1].bias, 1.0)
            prior = 5 / self.num_classes / (image_size / stride) ** 2
            nn.init.constant_(cls[-1].bias, math.log(prior))

    def forward(self, features: list[torch.Tensor]) -> list[LevelOutput]:
        return [LevelOutput(box(x), cls(x)) for x, box, cls in zip(features, self.box, self.cls)]
