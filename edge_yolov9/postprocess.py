"""Raw head outputs of one image to final detections: the shared decoder, then class-aware NMS."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from .decode import decode_boxes, flatten_level, logit, make_anchors, select_classes, sigmoid
from .errors import EdgeYoloError
from .model_file import STRIDES
from .nms import nms


@dataclass(frozen=True)
class PostprocessConfig:
    """Thresholds of post-processing. ``for_evaluation()`` gives the COCO-evaluation conventions."""

    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 100
    multi_label: bool = False
    max_candidates: int = 30000
    classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("score_threshold", "iou_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise EdgeYoloError(f"{name}={value!r} is out of range",
                                    "use a fraction in (0, 1], e.g. 0.25 for 25 % (not a percentage)")
        for name in ("max_detections", "max_candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EdgeYoloError(f"{name}={value!r} is out of range", "use a whole number of at least 1")
        if self.classes is not None:
            classes = tuple(self.classes)
            if not classes or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0 for c in classes):
                raise EdgeYoloError(f"classes={self.classes!r} are not class ids", "pass class ids 0, 1, 2, ... "
                                                                                   "(or None for every class)")
            object.__setattr__(self, "classes", tuple(int(c) for c in classes))

    @classmethod
    def for_evaluation(cls) -> "PostprocessConfig":
        return cls(score_threshold=0.001, iou_threshold=0.7, max_detections=300, multi_label=True)


@lru_cache(maxsize=16)
def _anchors(level_shapes: tuple[tuple[int, int], ...], strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    return make_anchors(level_shapes, strides)


Quantization = tuple[float, int]  # (scale, zero_point): real = (q - zero_point) * scale


def _candidates(box_levels: Sequence[np.ndarray], cls_levels: Sequence[np.ndarray], channels_last: bool,
                box_quant: Sequence[Quantization] | None, cls_quant: Sequence[Quantization] | None,
                config: PostprocessConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Anchor indices, class ids and class logits (float) of the (anchor, class) pairs above the threshold,
    and the box bins (float) of each pair's anchor. The selection runs on the raw (possibly int8) maps, so
    only what passes is dequantized."""
    cut = logit(config.score_threshold)
    anchors, class_ids, logits, boxes = [], [], [], []
    start = 0
    for level, (box, cls) in enumerate(zip(box_levels, cls_levels)):
        box, cls = flatten_level(box, channels_last), flatten_level(cls, channels_last)
        level_cut = cut if cls_quant is None else cut / cls_quant[level][0] + cls_quant[level][1]
        rows, ids = select_classes(cls, level_cut, multi_label=config.multi_label, classes=config.classes)
        chosen, box_rows = cls[rows, ids], box[rows]
        if cls_quant is not None:
            scale, zero = cls_quant[level]
            chosen = (chosen.astype(np.float32) - zero) * np.float32(scale)
        if box_quant is not None:
            scale, zero = box_quant[level]
            box_rows = (box_rows.astype(np.float32) - zero) * np.float32(scale)
        anchors.append(rows + start)
        class_ids.append(ids)
        logits.append(chosen.astype(np.float32, copy=False))
        boxes.append(box_rows.astype(np.float32, copy=False))
        start += len(box)
    return np.concatenate(anchors), np.concatenate(class_ids), np.concatenate(logits), np.concatenate(boxes)


def postprocess(box_levels: Sequence[np.ndarray], cls_levels: Sequence[np.ndarray], *, channels_last: bool,
                config: PostprocessConfig = PostprocessConfig(), strides: Sequence[int] = STRIDES,
                box_quant: Sequence[Quantization] | None = None,
                cls_quant: Sequence[Quantization] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of one image in network-input pixels: boxes (N, 4) xyxy, scores (N,), class ids (N,).

    ``box_levels``/``cls_levels`` are the per-level maps of one image, (C, H, W) or, with
    ``channels_last``, (H, W, C): float, or integer with their per-level ``*_quant`` parameters
    (then thresholding happens on the integers and only candidates are dequantized).
    """
    shapes = tuple(tuple(int(v) for v in (lvl.shape[:2] if channels_last else lvl.shape[1:])) for lvl in box_levels)
    anchors, anchor_strides = _anchors(shapes, tuple(strides))
    rows, class_ids, logits, box_bins = _candidates(box_levels, cls_levels, channels_last, box_quant, cls_quant, config)
    unique_rows, first, inverse = np.unique(rows, return_index=True, return_inverse=True)  # multi-label repeats
    boxes = decode_boxes(box_bins[first], anchors[unique_rows], anchor_strides[unique_rows])[inverse.reshape(-1)]
    scores = sigmoid(logits)
    if len(scores) > config.max_candidates:
        top = np.argpartition(-scores, config.max_candidates)[:config.max_candidates]
        boxes, scores, class_ids = boxes[top], scores[top], class_ids[top]
    keep = nms(boxes, scores, class_ids, iou_threshold=config.iou_threshold, max_detections=config.max_detections)
    return boxes[keep], scores[keep], class_ids[keep]
