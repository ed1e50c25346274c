"""Raw head outputs of one image to final detections: the shared decoder, then class-aware NMS."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from .decode import DEFAULT_STRIDES, decode_candidates, flatten_levels, make_anchors
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

    @classmethod
    def for_evaluation(cls) -> "PostprocessConfig":
        return cls(score_threshold=0.001, iou_threshold=0.7, max_detections=300, multi_label=True)


@lru_cache(maxsize=16)
def _anchors(level_shapes: tuple[tuple[int, int], ...], strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    return make_anchors(level_shapes, strides)


def postprocess(box_levels: Sequence[np.ndarray], cls_levels: Sequence[np.ndarray], *, channels_last: bool,
                config: PostprocessConfig = PostprocessConfig(),
                strides: Sequence[int] = DEFAULT_STRIDES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of one image in network-input pixels: boxes (N, 4) xyxy, scores (N,), class ids (N,).

    ``box_levels``/``cls_levels`` are the per-level float maps of one image, (C, H, W) or, with
    ``channels_last``, (H, W, C).
    """
    shapes = tuple(tuple(int(v) for v in (lvl.shape[:2] if channels_last else lvl.shape[1:])) for lvl in box_levels)
    anchors, anchor_strides = _anchors(shapes, tuple(strides))
    boxes, scores, class_ids = decode_candidates(
        flatten_levels(box_levels, channels_last), flatten_levels(cls_levels, channels_last), anchors,
        anchor_strides, score_threshold=config.score_threshold, multi_label=config.multi_label,
        classes=config.classes)
    if len(scores) > config.max_candidates:
        top = np.argpartition(-scores, config.max_candidates)[:config.max_candidates]
        boxes, scores, class_ids = boxes[top], scores[top], class_ids[top]
    keep = nms(boxes, scores, class_ids, iou_threshold=config.iou_threshold, max_detections=config.max_detections)
    return boxes[keep], scores[keep], class_ids[keep]
