"""Parameter and FLOP counts, measured on the deploy form of a model (as published figures are)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from edge_yolov9.model_file import InputSize

from .yolo import YOLO


@dataclass(frozen=True)
class ModelProfile:
    name: str
    params: int
    gflops: float
    image_size: str  # WIDTHxHEIGHT

    def to_dict(self) -> dict:
        return {"name": self.name, "params": self.params, "params_m": round(self.params / 1e6, 3),
                "gflops": round(self.gflops, 2), "image_size": self.image_size}


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def profile_model(model: YOLO, image_size: int | tuple[int, int] = 640) -> ModelProfile:
    """Parameters and GFLOPs (2 x multiply-accumulates) of one forward pass at ``image_size`` (an int for a
    square, or (height, width))."""
    size = InputSize.of(image_size)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, 3, size.height, size.width))
    model.train(was_training)
    return ModelProfile(model.cfg.name, count_params(model), counter.get_total_flops() / 1e9, str(size))
