"""The one decoder of raw head outputs, shared by PyTorch validation and the runtime on the Pi.

Raw outputs per pyramid level are box bins (4 sides x ``reg_max`` distance bins, side-major:
left, top, right, bottom) and class logits. Decoding: softmax over the bins, its expectation is
the distance in strides from the anchor centre; class scores are the sigmoid of the logits.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .model_file import STRIDES


def make_anchors(level_shapes: Sequence[tuple[int, int]],
                 strides: Sequence[int] = STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres (A, 2) as (x, y) in input pixels and the stride of each anchor (A,).

    ``level_shapes`` are the (H, W) of each level's output map; levels are in ``strides`` order,
    each row-major, matching :func:`flatten_level`.
    """
    if len(level_shapes) != len(strides):
        raise ValueError(f"{len(level_shapes)} output levels but {len(strides)} strides")
    centres, per_anchor = [], []
    for (h, w), stride in zip(level_shapes, strides):
        ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
        centres.append(np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1) * stride)
        per_anchor.append(np.full(h * w, stride, dtype=np.float32))
    return np.concatenate(centres), np.concatenate(per_anchor)


def flatten_level(level: np.ndarray, channels_last: bool) -> np.ndarray:
    """One level's map of one image, (C, H, W) or (H, W, C), as (H*W, C) rows in anchor order."""
    return level.reshape(-1, level.shape[-1]) if channels_last else level.reshape(level.shape[0], -1).T


def level_shapes(size: tuple[int, int], strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """The (H, W) of each level's map for an input of ``size`` (H, W)."""
    return tuple((size[0] // stride, size[1] // stride) for stride in strides)


def split_levels(rows: np.ndarray, shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """(N, C) rows of all levels, concatenated in order, each row-major (Frigate's yolo-generic layout),
    to per-level (H, W, C) views: the inverse of concatenating :func:`flatten_level` of each level."""
    sizes = [h * w for h, w in shapes]
    if sum(sizes) != len(rows):
        raise ValueError(f"{len(rows)} rows, but levels {list(shapes)} hold {sum(sizes)}")
    parts = np.split(rows, np.cumsum(sizes)[:-1])
    return [part.reshape(h, w, rows.shape[-1]) for part, (h, w) in zip(parts, shapes)]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def logit(p: float) -> float:
    p = min(max(p, 1e-7), 1 - 1e-7)
    return float(np.log(p / (1 - p)))


def dfl_distances(box_bins: np.ndarray, reg_max: int = 16) -> np.ndarray:
    """(N, 4*reg_max) bin logits to (N, 4) expected distances (l, t, r, b) in strides."""
    bins = box_bins.reshape(-1, 4, reg_max).astype(np.float32, copy=False)
    bins = np.exp(bins - bins.max(axis=2, keepdims=True))
    return (bins @ np.arange(reg_max, dtype=np.float32)) / bins.sum(axis=2)


def distances_to_boxes(distances: np.ndarray, anchors: np.ndarray, strides: np.ndarray) -> np.ndarray:
    """(N, 4) ltrb distances in strides around (N, 2) anchor centres to (N, 4) xyxy pixels."""
    scaled = distances * strides[:, None]
    return np.concatenate([anchors - scaled[:, :2], anchors + scaled[:, 2:]], axis=1)


def select_classes(logits: np.ndarray, cut: float, *, multi_label: bool = False,
                   classes: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows and class ids of the (anchor, class) pairs whose logit is above ``cut``: every such class of
    an anchor (``multi_label``, the COCO-evaluation convention) or only its best; ``classes`` limits the
    classes looked at. The one place the score threshold and the class filter apply; ``logits`` may be the
    raw integers of a quantized output with ``cut`` in the same units."""
    watched = sorted(set(classes)) if classes is not None else None
    values = logits if watched is None else logits[:, watched]
    if multi_label:
        rows, columns = np.nonzero(values > cut)
    else:
        best = values.argmax(axis=1)
        rows = np.flatnonzero(values[np.arange(len(values)), best] > cut)
        columns = best[rows]
    class_ids = columns if watched is None else np.asarray(watched, dtype=np.int64)[columns]
    return rows, class_ids.astype(np.int64)


def decode_boxes(box_bins: np.ndarray, anchors: np.ndarray, strides: np.ndarray) -> np.ndarray:
    """(N, 4 * reg_max) box bins of N anchors to (N, 4) xyxy boxes in input pixels."""
    return distances_to_boxes(dfl_distances(box_bins, box_bins.shape[1] // 4), anchors, strides).astype(np.float32)


def decode_candidates(box_bins: np.ndarray, cls_logits: np.ndarray, anchors: np.ndarray, strides: np.ndarray,
                      *, score_threshold: float, multi_label: bool = False,
                      classes: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (N, 4) xyxy in input pixels, scores (N,), class ids (N,) of every candidate above the threshold
    (float logits). The threshold is applied to logits first, so only survivors pay for the softmax."""
    logits = cls_logits.astype(np.float32, copy=False)
    rows, class_ids = select_classes(logits, logit(score_threshold), multi_label=multi_label, classes=classes)
    unique_rows, inverse = np.unique(rows, return_inverse=True)
    boxes = decode_boxes(box_bins[unique_rows], anchors[unique_rows], strides[unique_rows])[inverse]
    return boxes, sigmoid(logits[rows, class_ids]).astype(np.float32), class_ids
