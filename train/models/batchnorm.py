"""BatchNorm statistics from real images, for models whose weights do not matter but whose activation
ranges do: untrained detectors converted for latency figures and int8 tests quantize like trained ones
only when their normalised activations look like a trained model's."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from edge_yolov9.preprocess import letterbox, load_image


@torch.no_grad()
def estimate_batchnorm_statistics(model: nn.Module, images: Sequence[Path], imgsz: int = 256) -> nn.Module:
    """Replace every BatchNorm's running mean and variance by their averages over ``images`` (letterboxed
    to ``imgsz``, one batch); returns ``model`` in eval mode."""
    batch = torch.stack([torch.from_numpy(letterbox(load_image(p), imgsz)[0]).permute(2, 0, 1) for p in images])
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: one batch sets the statistics exactly
    model.train()(batch.float() / 255)
    return model.eval()
