"""The training loss on hand-made cases: exact predictions, empty images, assignment, PGI weighting."""

from __future__ import annotations

import numpy as np
import torch

from edge_yolov9.decode import make_anchors
from edge_yolov9.train.loss import DetectionLoss, LossConfig, assign, box_ciou
from edge_yolov9.train.models import STRIDES, LevelOutput, ModelOutput, create_model

REG_MAX = 16


def exact_outputs(gt_box, label, num_classes, size=64):
    """Raw outputs whose every anchor predicts exactly ``gt_box`` (within the reachable distance range)
    and scores ``label`` high: the DFL bins put the expectation exactly on the true distances."""
    shapes = [(size // s, size // s) for s in STRIDES]
    anchors, strides = make_anchors(shapes, STRIDES)
    x1, y1, x2, y2 = gt_box
    dist = np.stack([anchors[:, 0] - x1, anchors[:, 1] - y1, x2 - anchors[:, 0], y2 - anchors[:, 1]], 1)
    dist = np.clip(dist / strides[:, None], 0, REG_MAX - 1.001)
    probs = np.full((len(anchors), 4, REG_MAX), 1e-12)
    low = np.floor(dist).astype(int)
    frac = dist - low
    rows, sides = np.indices(low.shape)
    probs[rows, sides, low] = 1 - frac
    probs[rows, sides, low + 1] += frac
    bins = torch.from_numpy(np.log(probs).reshape(len(anchors), -1)).float()
    logits = torch.full((len(anchors), num_classes), -6.0)
    logits[:, label] = 6.0
    levels, start = [], 0
    for h, w in shapes:
        n = h * w
        levels.append(LevelOutput(bins[start:start + n].T.reshape(1, -1, h, w),
                                  logits[start:start + n].T.reshape(1, -1, h, w)))
        start += n
    return levels


def test_ciou_is_one_for_identical_boxes_and_penalises_offsets():
    box = torch.tensor([[10.0, 10.0, 50.0, 30.0]])
    assert torch.allclose(box_ciou(box, box), torch.ones(1), atol=1e-6)
    shifted = box + torch.tensor([[5.0, 0.0, 5.0, 0.0]])
    iou = 35 * 20 / (40 * 20 * 2 - 35 * 20)
    assert box_ciou(box, shifted).item() < iou


def test_exact_prediction_has_near_zero_box_loss_and_a_wrong_one_does_not():
    gt = (4.0, 4.0, 36.0, 28.0)
    loss = DetectionLoss(STRIDES)
    targets = torch.tensor([[0, 1, *gt]])
    exact = loss(ModelOutput(exact_outputs(gt, 1, 3), None), targets)[1]
    off = loss(ModelOutput(exact_outputs((12.0, 4.0, 44.0, 36.0), 1, 3), None), targets)[1]
    assert off.box > 0.05, "the object must get anchors assigned, or the exact case proves nothing"
    assert exact.box.item() < 1e-4
    assert off.dfl > exact.dfl and exact.cls > 0


def test_empty_image_has_only_class_loss():
    model = create_model("yolov9-t", num_classes=4).train()
    output = model(torch.rand(2, 3, 64, 64))
    total, items = DetectionLoss(STRIDES)(output, torch.zeros(0, 6))
    assert items.box.item() == 0 and items.dfl.item() == 0 and items.cls.item() > 0
    total.backward()
    assert model.head.cls[0][-1].bias.grad.abs().sum() > 0


def test_assigner_takes_topk_anchors_inside_the_object():
    anchors = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [60.0, 60.0]])
    pred = torch.tensor([[[0, 0, 16, 8], [0, 0, 16, 8], [8, 0, 24, 8], [50, 50, 70, 70]]], dtype=torch.float32)
    scores = torch.full((1, 4, 2), 0.5)
    gt_boxes = torch.tensor([[[0.0, 0.0, 16.0, 8.0]]])
    result = assign(scores, pred, anchors, torch.tensor([[1]]), gt_boxes, torch.tensor([[True]]),
                    LossConfig(topk=2))
    assert result.fg.tolist() == [[True, True, False, False]]
    assert result.scores[0, :2, 1].max().item() == torch.tensor(1.0).item()
    assert result.scores[0, :, 0].abs().sum() == 0


def test_aux_branch_adds_a_quarter_weighted_term():
    model = create_model("yolov9-t", num_classes=2).train()
    torch.manual_seed(0)
    output = model(torch.rand(1, 3, 64, 64))
    targets = torch.tensor([[0, 1, 8.0, 8.0, 40.0, 30.0]])
    loss = DetectionLoss(STRIDES)
    with_aux = loss(output, targets)[1]
    main_only = loss(ModelOutput(output.main, None), targets)[1]
    aux_only = loss(ModelOutput(output.aux, None), targets)[1]
    for a, m, x in zip(with_aux, main_only, aux_only):
        assert torch.allclose(a, m + 0.25 * x, rtol=1e-5, atol=1e-6)
