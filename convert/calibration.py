"""Calibration images for int8 quantization, prepared exactly as the runtime prepares its input.

The source is an image folder (searched recursively) or a YOLO ``data.yaml`` (its ``train`` split).
Images are taken in a deterministic order, spread evenly over the sorted file list so that a
dataset sorted by scene or class is still sampled across its whole range.

Images whose activations peak far above the other images' are left out (:meth:`CalibrationSet.
without_outliers`): each activation tensor gets one int8 range for all inputs, and a few such images
stretch the ranges of the whole network for every other image (what that costs and what leaving them
out recovers is measured in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
from tqdm import tqdm

from edge_yolov9.errors import DatasetError, ImageError
from edge_yolov9.model_file import InputSize
from edge_yolov9.preprocess import IMAGE_SUFFIXES, letterbox, load_image
from edge_yolov9.sources import folder_images

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

DEFAULT_CALIBRATION_IMAGES = 300
# An image is an outlier when its largest |activation| exceeds OUTLIER_PEAK_RATIO times the median image's in
# at least OUTLIER_LAYER_SHARE of the layers: the whole network runs in another regime for it. An image that
# is extreme in a few layers only (a rare class lighting up its head) is not one: its values are the ones
# those layers' ranges exist for. At most MAX_OUTLIER_SHARE of the images are left out (the strongest
# first), and none from sets smaller than MIN_IMAGES_FOR_OUTLIERS, where a median says little.
OUTLIER_PEAK_RATIO = 3.0
OUTLIER_LAYER_SHARE = 0.25
MAX_OUTLIER_SHARE = 0.1
MIN_IMAGES_FOR_OUTLIERS = 20
OUTLIER_PASS_BATCH = 16  # images per forward pass of the outlier pass (a batch runs several times faster per image)


def find_calibration_images(source: str | os.PathLike, limit: int = DEFAULT_CALIBRATION_IMAGES) -> list[Path]:
    """Up to ``limit`` images from an image folder or a data.yaml, evenly spread, in a fixed order."""
    source = Path(source)
    if limit < 1:
        raise DatasetError(f"--calib-images must be at least 1, got {limit}", "pass e.g. --calib-images 300")
    if source.is_dir():
        images = folder_images(source)
    elif source.is_file() and source.suffix in (".yaml", ".yml"):
        from edge_yolov9.train.data import list_images, load_data_config  # the one reader of data.yaml (it imports yaml)

        images = list_images(load_data_config(source), "train")
    elif source.is_file():
        raise DatasetError(f"Calibration source {source} is a file, not a folder of images or a data.yaml",
                           "pass the folder that holds your calibration images, or your data.yaml (.yaml)")
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
    imgsz: tuple[int, int]  # (height, width)
    outliers: tuple[Path, ...] = ()  # left out by without_outliers

    def inputs(self) -> Iterator[np.ndarray]:
        """(1, H, W, 3) float32 in [0, 1], letterboxed as the runtime does; unreadable images are skipped."""
        for _, image in self._read():
            yield image

    def _read(self) -> Iterator[tuple[Path, np.ndarray]]:
        used = 0
        for path in self.images:
            try:
                canvas, _ = letterbox(load_image(path), self.imgsz)
            except ImageError as err:
                logger.warning("Skipping calibration image: %s", err.problem)
                continue
            used += 1
            yield path, (canvas.astype(np.float32) / 255.0)[None]
        if used == 0:
            raise DatasetError(f"None of the {len(self.images)} calibration images from {self.source} could be read",
                               "check the files; they must be JPEG/PNG/... images")

    def without_outliers(self, model: "nn.Module") -> "CalibrationSet":
        """This set less the images whose activations in the float ``model`` (NCHW input) peak far above the
        others' (see OUTLIER_PEAK_RATIO); one float pass over the images."""
        if len(self.images) < MIN_IMAGES_FOR_OUTLIERS:
            return self
        images = tqdm(self._read(), total=len(self.images), desc="outlier pass", unit="img", disable=None, leave=False)
        paths, peaks = activation_peaks(model, images)
        outliers = [paths[row] for row in outlier_rows(peaks)]
        if not outliers:
            return self
        logger.info("Leaving %d of %d calibration images out: in %d %% of the layers or more their activations peak "
                    "%g times above the median image's, which would stretch the int8 ranges for all the others "
                    "(e.g. %s)", len(outliers), len(paths), round(100 * OUTLIER_LAYER_SHARE), OUTLIER_PEAK_RATIO,
                    ", ".join(p.name for p in outliers[:3]))
        left_out = set(outliers)
        return replace(self, images=tuple(p for p in self.images if p not in left_out), outliers=tuple(outliers))

    def to_dict(self) -> dict:
        return {"source": self.source, "images": len(self.images), "outliers_left_out": len(self.outliers)}


def activation_peaks(model: "nn.Module", inputs: Iterator[tuple[Path, np.ndarray]],
                     batch_size: int = OUTLIER_PASS_BATCH) -> tuple[list[Path], np.ndarray]:
    """The paths, and (images, modules) the largest |output| of each leaf module of ``model`` per image;
    ``inputs`` are (path, (1, H, W, 3)) pairs, run ``batch_size`` at a time (each image's peaks are its own)."""
    import torch

    current: list["torch.Tensor"] = []
    leaves = [m for m in model.modules() if not any(m.children())]

    def record(_module: "nn.Module", _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            current.append(output.detach().abs().amax(dim=tuple(range(1, output.ndim))))

    hooks = [m.register_forward_hook(record) for m in leaves]
    paths: list[Path] = []
    rows: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def run() -> None:
        current.clear()
        model(torch.from_numpy(np.concatenate(batch)).permute(0, 3, 1, 2))
        rows.extend(torch.stack(current, dim=1).double().numpy())
        batch.clear()

    try:
        with torch.no_grad():
            for path, image in inputs:
                paths.append(path)
                batch.append(image)
                if len(batch) == batch_size:
                    run()
            if batch:
                run()
    finally:
        for hook in hooks:
            hook.remove()
    return paths, np.array(rows, dtype=np.float64)


def outlier_rows(peaks: np.ndarray, ratio: float = OUTLIER_PEAK_RATIO, layer_share: float = OUTLIER_LAYER_SHARE,
                 max_share: float = MAX_OUTLIER_SHARE) -> list[int]:
    """Rows (images) of ``peaks`` above ``ratio`` times the column's median in at least ``layer_share`` of the
    columns, the most widespread first (then the largest mean log ratio), at most ``max_share`` of the rows.
    Columns whose median is 0 (dead outputs) do not count."""
    median = np.median(peaks, axis=0)
    live = median > 0
    if not live.any():
        return []
    ratios = peaks[:, live] / median[live]
    extreme = (ratios > ratio).mean(axis=1)
    strength = np.log(np.maximum(ratios, np.finfo(np.float64).tiny)).mean(axis=1)
    order = [int(row) for row in np.lexsort((-strength, -extreme)) if extreme[row] >= layer_share]
    return order[:int(max_share * len(peaks))]


def calibration_set(source: str | os.PathLike, imgsz: int | tuple[int, int],
                    limit: int = DEFAULT_CALIBRATION_IMAGES) -> CalibrationSet:
    return CalibrationSet(str(source), tuple(find_calibration_images(source, limit)), InputSize.of(imgsz))
