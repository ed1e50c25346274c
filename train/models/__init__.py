"""The GELAN / YOLOv9 model zoo (PyTorch)."""

from .config import HeadConfig, ModelConfig
from .head import DetectHead, LevelOutput
from .registry import LoadReport, create_model, list_models, load_weights, model_config, register_model
from .yolo import STRIDES, YOLO, ModelOutput

__all__ = [
    "DetectHead", "HeadConfig", "LevelOutput", "LoadReport", "ModelConfig", "ModelOutput", "STRIDES", "YOLO",
    "create_model", "list_models", "load_weights", "model_config", "register_model",
]
