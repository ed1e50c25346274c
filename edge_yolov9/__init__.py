"""edge-yolov9 runtime: YOLOv9 detection on a Raspberry Pi CPU or a Coral Edge TPU (numpy, pillow, TFLite)."""

from .errors import EdgeYoloError
from .types import Box, Detection

__version__ = "0.1.0"
__all__ = ["Box", "Detection", "EdgeYoloError", "__version__"]
