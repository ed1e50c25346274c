"""The shared decoder and NMS on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from edge_yolov9.decode import decode_candidates, dfl_distances, flatten_level, make_anchors, sigmoid
from edge_yolov9.nms import nms
from edge_yolov9.postprocess import PostprocessConfig, postprocess

pytestmark = pytest.mark.runtime


def one_hot_bins(distances, reg_max=16, sharpness=50.0):
    """Bin logits whose softmax is (almost exactly) one-hot at integer ``distances`` (l, t, r, b)."""
    bins = np.zeros((4, reg_max), dtype=np.float32)
    bins[np.arange(4), distances] = sharpness
    return bins.reshape(-1)


def test_anchors_are_cell_centres_level_by_level():
    anchors, strides = make_anchors([(2, 3), (1, 2)], (8, 16))
    assert anchors.shape == (8, 2)
    np.testing.assert_allclose(anchors[:3], [[4, 4], [12, 4], [20, 4]])
    np.testing.assert_allclose(anchors[3], [4, 12])
    np.testing.assert_allclose(anchors[6:], [[8, 8], [24, 8]])
    np.testing.assert_array_equal(strides, [8] * 6 + [16] * 2)


def test_dfl_expectation_of_one_hot_and_uniform_bins():
    np.testing.assert_allclose(dfl_distances(one_hot_bins([1, 2, 3, 15])[None]), [[1, 2, 3, 15]], atol=1e-4)
    np.testing.assert_allclose(dfl_distances(np.zeros((1, 64), np.float32)), [[7.5] * 4], atol=1e-5)


def test_flatten_level_agrees_between_layouts():
    rng = np.random.default_rng(0)
    levels = [rng.normal(size=(5, 4, 6)).astype(np.float32), rng.normal(size=(5, 2, 3)).astype(np.float32)]
    nchw = np.concatenate([flatten_level(lvl, channels_last=False) for lvl in levels])
    nhwc = np.concatenate([flatten_level(lvl.transpose(1, 2, 0), channels_last=True) for lvl in levels])
    np.testing.assert_array_equal(nchw, nhwc)
    assert nchw.shape == (4 * 6 + 2 * 3, 5)


def test_decode_places_box_around_its_anchor():
    anchors, strides = make_anchors([(2, 2)], (16,))
    box_bins = np.full((4, 64), -10.0, np.float32)
    box_bins[3] = one_hot_bins([1, 1, 2, 0])
    logits = np.full((4, 3), -9.0, np.float32)
    logits[3, 2] = 2.0
    boxes, scores, classes = decode_candidates(box_bins, logits, anchors, strides, score_threshold=0.5)
    np.testing.assert_allclose(boxes, [[24 - 16, 24 - 16, 24 + 32, 24]], atol=1e-3)
    np.testing.assert_allclose(scores, sigmoid(np.float32(2.0)), rtol=1e-6)
    assert classes.tolist() == [2]


def test_multi_label_and_class_filter():
    anchors, strides = make_anchors([(1, 1)], (8,))
    logits = np.array([[3.0, 2.0, -5.0]], np.float32)
    bins = np.zeros((1, 64), np.float32)
    _, scores, classes = decode_candidates(bins, logits, anchors, strides, score_threshold=0.5, multi_label=True)
    assert sorted(classes.tolist()) == [0, 1]
    _, _, classes = decode_candidates(bins, logits, anchors, strides, score_threshold=0.5, classes=[1])
    assert classes.tolist() == [1]


def test_nms_suppresses_within_class_only():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, iou_threshold=0.5).tolist() == [0, 3]
    assert nms(boxes, scores, np.array([0, 0, 1, 0]), iou_threshold=0.5).tolist() == [0, 2, 3]
    assert nms(boxes, scores, iou_threshold=0.5, max_detections=1).tolist() == [0]
    assert nms(np.zeros((0, 4)), np.zeros(0)).size == 0


def test_postprocess_end_to_end_on_raw_levels():
    rng = np.random.default_rng(1)
    box_levels = [rng.normal(size=(64, s, s)).astype(np.float32) for s in (8, 4, 2)]
    cls_levels = [np.full((2, s, s), -8.0, np.float32) for s in (8, 4, 2)]
    cls_levels[1][1, 2, 3] = 4.0  # one confident object on the stride-16 level
    boxes, scores, classes = postprocess(box_levels, cls_levels, channels_last=False,
                                         config=PostprocessConfig(score_threshold=0.3))
    assert classes.tolist() == [1] and scores[0] == pytest.approx(sigmoid(4.0), rel=1e-5)
    centre = (boxes[0, :2] + boxes[0, 2:]) / 2
    assert 0 <= centre[0] <= 128 and 0 <= centre[1] <= 128


def test_quantized_levels_give_the_same_detections_as_their_float_values():
    rng = np.random.default_rng(2)
    shapes = [(8, 8), (4, 4), (2, 2)]
    box_q = [rng.integers(-128, 128, size=(h, w, 64), dtype=np.int8) for h, w in shapes]
    cls_q = [np.full((h, w, 3), -120, np.int8) for h, w in shapes]
    cls_q[0][2, 5, 1] = 90
    cls_q[1][1, 1, 2] = 60
    cls_q[2][0, 1, 0] = 100
    box_params, cls_params = [(0.08, -3), (0.07, 2), (0.09, 0)], [(0.05, 10), (0.06, -5), (0.04, 0)]
    dequant = lambda levels, params: [(q.astype(np.float32) - z) * np.float32(s) for q, (s, z) in zip(levels, params)]
    config = PostprocessConfig(score_threshold=0.5, classes=(0, 1))
    quantized = postprocess(box_q, cls_q, channels_last=True, config=config, box_quant=box_params, cls_quant=cls_params)
    floats = postprocess(dequant(box_q, box_params), dequant(cls_q, cls_params), channels_last=True, config=config)
    for a, b in zip(quantized, floats):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert sorted(quantized[2].tolist()) == [0, 1]  # class 2 filtered out, the others found


def test_matrix_and_row_by_row_nms_agree(monkeypatch):
    import edge_yolov9.nms as nms_module

    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 200, (400, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (400, 2)).astype(np.float32)], 1)
    scores = rng.random(400).astype(np.float32)
    classes = rng.integers(0, 3, 400)
    by_matrix = nms(boxes, scores, classes, iou_threshold=0.5, max_detections=50)
    monkeypatch.setattr(nms_module, "MATRIX_LIMIT", 0)
    by_rows = nms(boxes, scores, classes, iou_threshold=0.5, max_detections=50)
    assert by_matrix.tolist() == by_rows.tolist() and len(by_matrix) == 50
