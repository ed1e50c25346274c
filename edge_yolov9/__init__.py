"""edge-yolov9 runtime: YOLOv9 detection on a Raspberry Pi CPU or a Coral Edge TPU (numpy, pillow, TFLite).

``from edge_yolov9 import Detector`` works; the detector's module (and the interpreter behind it) is
imported on first use only, so ``import edge_yolov9`` stays cheap for the CLI and the daemon's parent.
"""

from __future__ import annotations

from typing import Any

from .errors import EdgeYoloError
from .types import Box, Detection

__version__ = "0.1.0"
__all__ = ["Box", "Detection", "Detector", "EdgeYoloError", "PostprocessConfig", "__version__"]
_LAZY = {"Detector": "detector", "PostprocessConfig": "postprocess"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
