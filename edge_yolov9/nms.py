"""Greedy non-maximum suppression in numpy, class-aware."""

from __future__ import annotations

import numpy as np


def box_iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box (4,) with many (N, 4)."""
    inter_w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = inter_w * inter_h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray | None = None, *,
        iou_threshold: float = 0.7, max_detections: int = 300) -> np.ndarray:
    """Indices of the kept boxes, best score first.

    With ``class_ids`` boxes only suppress boxes of their own class: each class is shifted to its
    own region of the plane, so one pass serves all classes.
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    boxes = np.asarray(boxes, dtype=np.float32)
    if class_ids is not None:
        span = float(boxes.max() - min(boxes.min(), 0.0)) + 1.0
        boxes = boxes + (np.asarray(class_ids, dtype=np.float32) * span)[:, None]
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep = []
    while order.size and len(keep) < max_detections:
        best = order[0]
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou_one_to_many(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)
