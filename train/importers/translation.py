"""What every format reader produces: a checkpoint's tensors renamed to this project's model keys.

Readers only rename; :mod:`.core` then infers the architecture from the renamed shapes, builds the
model and loads it. Keeping the checkpoint's own key next to each tensor lets reports speak in the
checkpoint's names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from edge_yolov9.model_file import STRIDES

from ..models.config import recorded_size


@dataclass
class Translation:
    """A foreign checkpoint's tensors under our keys, plus what the checkpoint says about itself.

    ``dfl`` holds the fixed DFL projections (``arange(reg_max)`` weights) the published heads carry
    as a conv; our head leaves that step to the decoder, so they are verified instead of loaded.
    ``unmapped`` lists checkpoint tensors with no place in our model; ``notes`` say what was chosen.
    ``input_size`` is the (height, width) the checkpoint says it was trained at, None when it does not say.
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    source_keys: dict[str, str] = field(default_factory=dict)
    dfl: dict[str, torch.Tensor] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    names: list[str] | None = None
    activation: str = "silu"
    input_size: tuple[int, int] | None = None

    def add(self, our_key: str, source_key: str, tensor: torch.Tensor) -> None:
        self.tensors[our_key] = tensor
        self.source_keys[our_key] = source_key


class CheckpointFormat(Protocol):
    """A foreign checkpoint layout: recognise an unpickled payload, rename its tensors."""

    name: str
    description: str
    license: str  # of the weights that project publishes (an SPDX id)

    def recognizes(self, payload: Any) -> bool: ...

    def translate(self, payload: Any, source: str) -> Translation: ...


def class_names_from(raw: Any) -> list[str] | None:
    """Class names as checkpoints store them: a list, or a ``{index: name}`` dict; None if unusable."""
    if isinstance(raw, dict):
        try:
            by_index = {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError):
            return None
        return [by_index[i] for i in range(len(by_index))] if sorted(by_index) == list(range(len(by_index))) else None
    if isinstance(raw, (list, tuple)) and raw:
        return [str(name) for name in raw]
    return None


def training_size(raw: Any) -> tuple[int, int] | None:
    """(height, width) from a recorded ``imgsz``: an int (a square) or an [h, w] pair, rounded up to a multiple of
    the largest stride as Ultralytics and the YOLOv9 repository do before training; None if unusable."""
    sides = recorded_size(raw)
    if sides is None or not all(side > 0 for side in sides):
        return None
    stride = max(STRIDES)
    height, width = (math.ceil(side / stride) * stride for side in sides)
    return height, width
