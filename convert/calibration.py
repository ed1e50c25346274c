"""Calibration images for int8 quantization, prepared exactly as the runtime prepares its input.

The source is an image folder (searched recursively) or a YOLO ``data.yaml`` (its ``train`` split).
Images are taken in a deterministic order, spread evenly over the sorted file list so that a
dataset sorted by scene or class is still sampled across its whole range.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edge_yolov9.errors import DatasetError, ImageError
from edge_yolov9.preprocess import IMAGE_SUFFIXES, letterbox, load_image
from edge_yolov9.sources import folder_images

logger = logging.getLogger(__name__)

DEFAULT_CALIBRATION_IMAGES = 300


def _train_split_images(data_yaml: Path) -> list[Path]:
    """Images of a YOLO data.yaml's ``train`` entry (folders or .txt lists, relative to ``path``)."""
    import yaml

    try:
        data = yaml.safe_load(data_yaml.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise DatasetError(f"Cannot read {data_yaml}: {err}", "fix the YAML syntax") from None
    if not isinstance(data, dict) or not data.get("train"):
        raise DatasetError(f"{data_yaml} has no 'train' entry", "add 'train: images/train' or pass an image folder")
    root = Path(data.get("path") or ".")
    root = root if root.is_absolute() else data_yaml.parent / root
    entries = data["train"] if isinstance(data["train"], list) else [data["train"]]
    images: list[Path] = []
    for entry in entries:
        location = root / entry
        if location.is_dir():
            images += folder_images(location)
        elif location.suffix == ".txt" and location.is_file():
            lines = [line.strip() for line in location.read_text().splitlines() if line.strip()]
            images += [p if p.is_absolute() else root / p for p in map(Path, lines)]
        else:
            raise DatasetError(f"train entry {entry!r} of {data_yaml} does not exist ({location})",
                               "fix 'path'/'train' in the data.yaml")
    return sorted(images)


def find_calibration_images(source: str | os.PathLike, limit: int = DEFAULT_CALIBRATION_IMAGES) -> list[Path]:
    """Up to ``limit`` images from an image folder or a data.yaml, evenly spread, in a fixed order."""
    source = Path(source)
    if limit < 1:
        raise DatasetError(f"--calib-images must be at least 1, got {limit}", "pass e.g. --calib-images 300")
    if source.is_dir():
        images = folder_images(source)
    elif source.is_file() and source.suffix in (".yaml", ".yml"):
        images = _train_split_images(source)
    else:
        raise DatasetError(f"Calibration source not found: {source}",
                           "pass a folder of images or a YOLO data.yaml with --calib")
    if not images:
        raise DatasetError(f"No images ({', '.join(IMAGE_SUFFIXES)}) found in calibration source {source}",
                           "point --calib at a folder of representative images (a few hundred from your "
                           "training or validation set) or at your data.yaml")
    if len(images) > limit:
        picks = np.unique(np.linspace(0, len(images) - 1, limit).round().astype(int))
        images = [images[i] for i in picks]
    return images


@dataclass(frozen=True)
class CalibrationSet:
    """The chosen images and where they came from; ``inputs()`` yields the model inputs."""

    source: str
    images: tuple[Path, ...]
    imgsz: int

    def inputs(self) -> Iterator[np.ndarray]:
        """(1, H, W, 3) float32 in [0, 1], letterboxed as the runtime does; unreadable images are skipped."""
        used = 0
        for path in self.images:
            try:
                canvas, _ = letterbox(load_image(path), self.imgsz)
            except ImageError as err:
                logger.warning("Skipping calibration image: %s", err.problem)
                continue
            used += 1
            yield (canvas.astype(np.float32) / 255.0)[None]
        if used == 0:
            raise DatasetError(f"None of the {len(self.images)} calibration images from {self.source} could be read",
                               "check the files; they must be JPEG/PNG/... images")

    def to_dict(self) -> dict:
        return {"source": self.source, "images": len(self.images)}


def calibration_set(source: str | os.PathLike, imgsz: int,
                    limit: int = DEFAULT_CALIBRATION_IMAGES) -> CalibrationSet:
    return CalibrationSet(str(source), tuple(find_calibration_images(source, limit)), imgsz)
