"""Greedy non-maximum suppression in numpy, class-aware."""

from __future__ import annotations

import numpy as np

# Up to this many candidates the pairwise IoU matrix (N x N float32, 16 MB at 2048) is computed once;
# beyond it (validation at conf 0.001) IoUs are computed row by row for each kept box.
MATRIX_LIMIT = 2048


def _areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou_one_to_many(box: np.ndarray, area: float, boxes: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box (4,) with many (N, 4), their areas given."""
    inter_w = np.maximum(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0)
    inter_h = np.maximum(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0)
    inter = inter_w * inter_h
    return inter / np.maximum(area + areas - inter, 1e-9)


def pairwise_iou(boxes: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """IoU of every box with every box, (N, N)."""
    inter_w = np.maximum(np.minimum(boxes[:, None, 2], boxes[None, :, 2])
                         - np.maximum(boxes[:, None, 0], boxes[None, :, 0]), 0)
    inter_h = np.maximum(np.minimum(boxes[:, None, 3], boxes[None, :, 3])
                         - np.maximum(boxes[:, None, 1], boxes[None, :, 1]), 0)
    inter = inter_w * inter_h
    return inter / np.maximum(areas[:, None] + areas[None, :] - inter, 1e-9)


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
    boxes = boxes[order]
    areas = _areas(boxes)
    keep: list[int] = []
    if len(boxes) <= MATRIX_LIMIT:
        overlaps = pairwise_iou(boxes, areas) > iou_threshold
        suppressed = np.zeros(len(boxes), dtype=bool)
        for i in range(len(boxes)):
            if suppressed[i]:
                continue
            keep.append(i)
            if len(keep) == max_detections:
                break
            suppressed |= overlaps[i]
    else:
        remaining = np.arange(len(boxes))
        while remaining.size and len(keep) < max_detections:
            best, rest = remaining[0], remaining[1:]
            keep.append(best)
            iou = box_iou_one_to_many(boxes[best], areas[best], boxes[rest], areas[rest])
            remaining = rest[iou <= iou_threshold]
    return order[np.asarray(keep, dtype=np.int64)]
