"""The GELAN detector graph, with the optional PGI auxiliary branch.

Layers are numbered as in the published YOLOv9 configs: main branch 0-21 (backbone 0-8, neck
9-21), auxiliary layers from 22 on. Each layer names its inputs by index (-1: previous layer,
``INPUT``: the image), so foreign checkpoints map onto ``layers.N`` one to one.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import torch
from torch import nn

from edge_yolov9.model_file import STRIDES

from .blocks import CBFuse, CBLinear, Concat, Conv, ELAN, SPPELAN, AConv, Upsample
from .config import ModelConfig
from .head import DetectHead, LevelOutput

INPUT = "input"
Source = Union[int, str]
Sources = tuple[Source, ...]

# Indices of the main branch's P3/P4/P5 outputs, and of the backbone features the aux branch reads.
MAIN_OUTPUTS = (15, 18, 21)
BACKBONE_P3, BACKBONE_P4, BACKBONE_P5 = 4, 6, 8


class ModelOutput(NamedTuple):
    """Raw head outputs per level; ``aux`` only in training mode and only for PGI models."""

    main: list[LevelOutput]
    aux: list[LevelOutput] | None


def _main_branch(w: int, d: int, act: str) -> list[tuple[Sources, nn.Module]]:
    """GELAN backbone and PAN neck; ``w`` is the base width (T: 16, S: 32), ``d`` the CSP depth."""
    return [
        ((INPUT,), Conv(3, w, 3, 2, act=act)),                   # 0  P1/2
        ((-1,), Conv(w, 2 * w, 3, 2, act=act)),                  # 1  P2/4
        ((-1,), ELAN(2 * w, 2 * w, 2 * w, w, 0, act=act)),       # 2  (ELAN1)
        ((-1,), AConv(2 * w, 4 * w, act=act)),                   # 3  P3/8
        ((-1,), ELAN(4 * w, 4 * w, 4 * w, 2 * w, d, act=act)),   # 4
        ((-1,), AConv(4 * w, 6 * w, act=act)),                   # 5  P4/16
        ((-1,), ELAN(6 * w, 6 * w, 6 * w, 3 * w, d, act=act)),   # 6
        ((-1,), AConv(6 * w, 8 * w, act=act)),                   # 7  P5/32
        ((-1,), ELAN(8 * w, 8 * w, 8 * w, 4 * w, d, act=act)),   # 8
        ((-1,), SPPELAN(8 * w, 8 * w, 4 * w, act=act)),          # 9
        ((-1,), Upsample()),                                     # 10
        ((-1, 6), Concat()),                                     # 11
        ((-1,), ELAN(14 * w, 6 * w, 6 * w, 3 * w, d, act=act)),  # 12
        ((-1,), Upsample()),                                     # 13
        ((-1, 4), Concat()),                                     # 14
        ((-1,), ELAN(10 * w, 4 * w, 4 * w, 2 * w, d, act=act)),  # 15 P3 out
        ((-1,), AConv(4 * w, 3 * w, act=act)),                   # 16
        ((-1, 12), Concat()),                                    # 17
        ((-1,), ELAN(9 * w, 6 * w, 6 * w, 3 * w, d, act=act)),   # 18 P4 out
        ((-1,), AConv(6 * w, 4 * w, act=act)),                   # 19
        ((-1, 9), Concat()),                                     # 20
        ((-1,), ELAN(12 * w, 8 * w, 8 * w, 4 * w, d, act=act)),  # 21 P5 out
    ]


def _fpn_aux_branch(w: int, d: int, act: str) -> tuple[list[tuple[Sources, nn.Module]], tuple[int, ...]]:
    """Official yolov9-t/s auxiliary branch: a second SPPELAN and top-down path on the backbone."""
    layers = [
        ((BACKBONE_P5,), SPPELAN(8 * w, 8 * w, 4 * w, act=act)),  # 22 aux P5
        ((-1,), Upsample()),                                     # 23
        ((-1, BACKBONE_P4), Concat()),                           # 24
        ((-1,), ELAN(14 * w, 6 * w, 6 * w, 3 * w, d, act=act)),  # 25 aux P4
        ((-1,), Upsample()),                                     # 26
        ((-1, BACKBONE_P3), Concat()),                           # 27
        ((-1,), ELAN(10 * w, 4 * w, 4 * w, 2 * w, d, act=act)),  # 28 aux P3
    ]
    return layers, (28, 25, 22)


def _reversible_aux_branch(w: int, d: int, act: str) -> tuple[list[tuple[Sources, nn.Module]], tuple[int, ...]]:
    """PGI's reversible auxiliary branch: a second backbone from the image, fused with routed
    main-backbone features (CBLinear/CBFuse), as in yolov9-m/c, at T/S widths."""
    p3, p4, p5 = 4 * w, 6 * w, 8 * w
    layers = [
        ((BACKBONE_P3,), CBLinear(p3, (p3,))),                   # 22
        ((BACKBONE_P4,), CBLinear(p4, (p3, p4))),                # 23
        ((BACKBONE_P5,), CBLinear(p5, (p3, p4, p5))),            # 24
        ((INPUT,), Conv(3, w, 3, 2, act=act)),                   # 25
        ((-1,), Conv(w, 2 * w, 3, 2, act=act)),                  # 26
        ((-1,), ELAN(2 * w, 2 * w, 2 * w, w, 0, act=act)),       # 27
        ((-1,), AConv(2 * w, p3, act=act)),                      # 28
        ((22, 23, 24, -1), CBFuse((0, 0, 0))),                   # 29
        ((-1,), ELAN(p3, p3, p3, 2 * w, d, act=act)),            # 30 aux P3
        ((-1,), AConv(p3, p4, act=act)),                         # 31
        ((23, 24, -1), CBFuse((1, 1))),                          # 32
        ((-1,), ELAN(p4, p4, p4, 3 * w, d, act=act)),            # 33 aux P4
        ((-1,), AConv(p4, p5, act=act)),                         # 34
        ((24, -1), CBFuse((2,))),                                # 35
        ((-1,), ELAN(p5, p5, p5, 4 * w, d, act=act)),            # 36 aux P5
    ]
    return layers, (30, 33, 36)


class YOLO(nn.Module):
    """GELAN main branch + detection head; with ``cfg.aux`` also the PGI auxiliary branch and head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        w, d, act = cfg.base_width, cfg.csp_depth, cfg.activation
        main = _main_branch(w, d, act)
        self.layers = nn.ModuleList(module for _, module in main)
        self._sources: list[Sources] = [sources for sources, _ in main]
        level_channels = (4 * w, 6 * w, 8 * w)
        self.head = DetectHead(cfg.num_classes, level_channels, STRIDES, cfg.head, act=act)

        self.aux_layers: nn.ModuleList | None = None
        self.aux_head: DetectHead | None = None
        self._aux_sources: list[Sources] = []
        self._aux_outputs: tuple[int, ...] = ()
        if cfg.aux != "none":
            build = _fpn_aux_branch if cfg.aux == "fpn" else _reversible_aux_branch
            aux, self._aux_outputs = build(w, d, act)
            self.aux_layers = nn.ModuleList(module for _, module in aux)
            self._aux_sources = [sources for sources, _ in aux]
            self.aux_head = DetectHead(cfg.num_classes, level_channels, STRIDES, cfg.head, act=act)

    @property
    def strides(self) -> tuple[int, ...]:
        return STRIDES

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    @staticmethod
    def _run(layers: nn.ModuleList, sources: list[Sources], image: torch.Tensor,
             outputs: list, start: int) -> None:
        """Run ``layers`` in order, appending each output to ``outputs`` (indexed by layer number)."""
        for index, (layer, srcs) in enumerate(zip(layers, sources), start):
            inputs = [image if s == INPUT else outputs[index - 1 if s == -1 else s] for s in srcs]
            outputs.append(layer(inputs if len(inputs) > 1 else inputs[0]))

    def forward(self, image: torch.Tensor) -> ModelOutput:
        outputs: list = []
        self._run(self.layers, self._sources, image, outputs, 0)
        main = self.head([outputs[i] for i in MAIN_OUTPUTS])
        aux = None
        if self.training and self.aux_layers is not None:
            self._run(self.aux_layers, self._aux_sources, image, outputs, len(self.layers))
            aux = self.aux_head([outputs[i] for i in self._aux_outputs])
        return ModelOutput(main, aux)
