"""Helpers of the session-wide converted-model fixtures (tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock

from edge_yolov9.preprocess import letterbox, load_image
from train.models import create_model

OUTPUT_NAMES = ["box_stride8", "cls_stride8", "box_stride16", "cls_stride16", "box_stride32", "cls_stride32"]
# Images of coco128 on which the imported 'ball' model has confident detections (sports balls).
CONFIDENT_IMAGES = ("000000000078.jpg", "000000000142.jpg")


def shared_artifact(tmp_path_factory, name: str, produce: Callable[[Path], None]) -> Path:
    """``produce(folder)`` once per session, even with several xdist workers (file lock + done marker)."""
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    folder = root / name
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            produce(folder)
            (folder / ".done").touch()
    return folder


def trained_like(imgs: list[Path], **overrides) -> torch.nn.Module:
    """A random GELAN-T with BatchNorm statistics estimated on real images (realistic activation ranges)."""
    torch.manual_seed(0)
    model = create_model("gelan-t", num_classes=80, **overrides)
    batch = torch.stack([torch.from_numpy(letterbox(load_image(p), 256)[0]).permute(2, 0, 1) for p in imgs]) / 255
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batch
    with torch.no_grad():
        model.train()(batch)
    return model.eval()
