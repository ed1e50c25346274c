"""YOLOv9 training loss: a task-aligned assigner per branch, CIoU + DFL box terms, BCE class term.

Both PGI branches are scored against the same targets with their own assignment; the auxiliary
branch's terms are weighted by ``aux_weight`` (0.25), as in YOLOv9's dual-branch training.
Anchors come from the shared decoder (:func:`edge_yolov9.decode.make_anchors`), so training,
validation and the runtime agree on where every anchor is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from edge_yolov9.decode import make_anchors

from .models.head import LevelOutput
from .models.yolo import ModelOutput

EPS = 1e-9


@dataclass(frozen=True)
class LossConfig:
    box_gain: float = 7.5
    cls_gain: float = 0.5
    dfl_gain: float = 1.5
    aux_weight: float = 0.25
    topk: int = 10
    alpha: float = 0.5  # weight of the class score in the alignment metric
    beta: float = 6.0   # weight of the IoU in the alignment metric


class LossItems(NamedTuple):
    """Unweighted loss terms (per branch sum, aux already scaled by its weight), for logging."""

    box: torch.Tensor
    dfl: torch.Tensor
    cls: torch.Tensor


def box_ciou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Complete IoU of matching xyxy boxes (..., 4): IoU minus centre-distance and aspect penalties."""
    w1, h1 = (a[..., 2] - a[..., 0]).clamp(min=EPS), (a[..., 3] - a[..., 1]).clamp(min=EPS)
    w2, h2 = (b[..., 2] - b[..., 0]).clamp(min=EPS), (b[..., 3] - b[..., 1]).clamp(min=EPS)
    inter = ((torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
             * (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0))
    iou = inter / (w1 * h1 + w2 * h2 - inter + EPS)
    enclose_w = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])
    enclose_h = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
    diagonal = enclose_w ** 2 + enclose_h ** 2 + EPS
    centre_dist = ((a[..., 0] + a[..., 2] - b[..., 0] - b[..., 2]) ** 2
                   + (a[..., 1] + a[..., 3] - b[..., 1] - b[..., 3]) ** 2) / 4
    aspect = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        aspect_weight = aspect / (aspect - iou + 1 + EPS)
    return iou - (centre_dist / diagonal + aspect * aspect_weight)


def pairwise_iou(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """IoU of every gt box (B, M, 4) with every predicted box (B, A, 4): (B, M, A)."""
    gt, pred = gt[:, :, None], pred[:, None]
    inter = ((torch.minimum(gt[..., 2], pred[..., 2]) - torch.maximum(gt[..., 0], pred[..., 0])).clamp(min=0)
             * (torch.minimum(gt[..., 3], pred[..., 3]) - torch.maximum(gt[..., 1], pred[..., 1])).clamp(min=0))
    area_gt = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])
    area_pred = (pred[..., 2] - pred[..., 0]).clamp(min=0) * (pred[..., 3] - pred[..., 1]).clamp(min=0)
    return inter / (area_gt + area_pred - inter + EPS)


class Assignment(NamedTuple):
    boxes: torch.Tensor    # (B, A, 4) target box of each anchor (meaningful where fg)
    scores: torch.Tensor   # (B, A, nc) soft class targets: alignment-normalised IoU at the gt's class
    fg: torch.Tensor       # (B, A) bool: anchor is assigned to an object


@torch.no_grad()
def assign(scores: torch.Tensor, boxes: torch.Tensor, anchors: torch.Tensor, gt_labels: torch.Tensor,
           gt_boxes: torch.Tensor, gt_valid: torch.Tensor, cfg: LossConfig) -> Assignment:
    """Task-aligned assignment: each gt takes the ``topk`` anchors inside it with the best
    ``score^alpha * IoU^beta``; an anchor claimed by several gts goes to the one it overlaps most.

    scores (B, A, nc) sigmoid, boxes (B, A, 4) px, anchors (A, 2) px, gt_labels (B, M) long,
    gt_boxes (B, M, 4) px, gt_valid (B, M) bool.
    """
    batch, num_anchors, num_classes = scores.shape
    if gt_boxes.shape[1] == 0:
        return Assignment(torch.zeros_like(boxes), torch.zeros_like(scores),
                          torch.zeros(batch, num_anchors, dtype=torch.bool, device=scores.device))
    x, y = anchors[:, 0], anchors[:, 1]
    inside = ((x > gt_boxes[..., 0:1]) & (x < gt_boxes[..., 2:3]) & (y > gt_boxes[..., 1:2])
              & (y < gt_boxes[..., 3:4]) & gt_valid[..., None])                                  # (B, M, A)
    iou = pairwise_iou(gt_boxes, boxes) * inside
    class_score = scores.gather(2, gt_labels.clamp(min=0)[:, None, :].expand(-1, num_anchors, -1))
    metric = class_score.permute(0, 2, 1).pow(cfg.alpha) * iou.pow(cfg.beta) * inside          # (B, M, A)

    k = min(cfg.topk, num_anchors)
    top = metric.topk(k, dim=2).indices
    candidate = torch.zeros_like(inside).scatter_(2, top, True) & inside & (metric > 0)
    # An anchor claimed by several objects keeps the one it overlaps most.
    claimed = candidate.sum(1) > 1                                                              # (B, A)
    if claimed.any():
        best = F.one_hot(iou.argmax(1), gt_boxes.shape[1]).permute(0, 2, 1).bool()
        candidate = torch.where(claimed[:, None], best & inside, candidate)
    fg = candidate.any(1)
    gt_index = candidate.float().argmax(1)                                                      # (B, A)

    target_boxes = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))
    target_labels = gt_labels.gather(1, gt_index).clamp(min=0)
    # Soft targets: alignment scaled so each object's best anchor gets that anchor's IoU.
    metric = metric * candidate
    norm = metric / (metric.amax(2, keepdim=True) + EPS) * (iou * candidate).amax(2, keepdim=True)
    strength = norm.amax(1)                                                                     # (B, A)
    target_scores = F.one_hot(target_labels, num_classes).float() * (strength * fg)[..., None]
    return Assignment(target_boxes, target_scores, fg)


def _flatten(levels: list[LevelOutput]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-level NCHW outputs to (B, A, 4*reg_max) box bins and (B, A, nc) logits, levels in order."""
    box = torch.cat([lvl.box.flatten(2) for lvl in levels], 2).permute(0, 2, 1)
    cls = torch.cat([lvl.cls.flatten(2) for lvl in levels], 2).permute(0, 2, 1)
    return box, cls


class DetectionLoss:
    """Loss of a (PGI) model output against targets ``(N, 6)``: image index, class, x1, y1, x2, y2 in input px."""

    def __init__(self, strides: tuple[int, ...], reg_max: int = 16, cfg: LossConfig = LossConfig()):
        self.strides = strides
        self.reg_max = reg_max
        self.cfg = cfg
        self._anchor_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _anchors(self, levels: list[LevelOutput], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        shapes = tuple(tuple(lvl.box.shape[2:]) for lvl in levels)
        key = (shapes, str(device))
        if key not in self._anchor_cache:
            anchors, strides = make_anchors(shapes, self.strides)
            self._anchor_cache[key] = (torch.from_numpy(anchors).to(device), torch.from_numpy(strides).to(device))
        return self._anchor_cache[key]

    @staticmethod
    def _pad_targets(targets: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        counts = torch.bincount(targets[:, 0].long(), minlength=batch) if len(targets) else \
            torch.zeros(batch, dtype=torch.long)
        most = int(counts.max()) if batch else 0
        labels = torch.full((batch, most), -1, dtype=torch.long, device=targets.device)
        boxes = torch.zeros(batch, most, 4, device=targets.device)
        for b in range(batch):
            rows = targets[targets[:, 0] == b]
            labels[b, :len(rows)] = rows[:, 1].long()
            boxes[b, :len(rows)] = rows[:, 2:6]
        return labels, boxes, labels >= 0

    def _branch(self, levels: list[LevelOutput], gt: tuple[torch.Tensor, ...]) -> torch.Tensor:
        bins, logits = _flatten(levels)
        batch, num_anchors, _ = bins.shape
        anchors, strides = self._anchors(levels, bins.device)
        probs = bins.float().view(batch, num_anchors, 4, self.reg_max).softmax(3)
        distances = probs @ torch.arange(self.reg_max, device=bins.device, dtype=torch.float32)   # (B, A, 4)
        scaled = distances * strides[:, None]
        pred_boxes = torch.cat([anchors - scaled[..., :2], anchors + scaled[..., 2:]], -1)

        labels, gt_boxes, valid = gt
        target = assign(logits.detach().sigmoid().float(), pred_boxes.detach(), anchors, labels, gt_boxes,
                        valid, self.cfg)
        score_sum = target.scores.sum().clamp(min=1.0)
        cls_loss = F.binary_cross_entropy_with_logits(logits.float(), target.scores, reduction="sum") / score_sum
        if not target.fg.any():
            zero = pred_boxes.sum() * 0.0
            return torch.stack([zero, zero, cls_loss])
        weight = target.scores.sum(-1)[target.fg]
        box_loss = ((1.0 - box_ciou(pred_boxes[target.fg], target.boxes[target.fg])) * weight).sum() / score_sum
        # DFL: cross-entropy towards the two bins around the target distance, linearly weighted.
        fg_anchors, fg_strides = anchors.expand(batch, -1, -1)[target.fg], strides.expand(batch, -1)[target.fg]
        tbox = target.boxes[target.fg]
        target_dist = torch.cat([fg_anchors - tbox[:, :2], tbox[:, 2:] - fg_anchors], -1) / fg_strides[:, None]
        target_dist = target_dist.clamp(0, self.reg_max - 1 - 0.01)
        left = target_dist.long()
        right_weight = target_dist - left
        fg_bins = bins.float().view(batch, num_anchors, 4, self.reg_max)[target.fg]               # (F, 4, R)
        log_probs = fg_bins.log_softmax(-1)
        dfl = -(log_probs.gather(-1, left[..., None]).squeeze(-1) * (1 - right_weight)
                + log_probs.gather(-1, (left + 1)[..., None]).squeeze(-1) * right_weight).mean(-1)
        dfl_loss = (dfl * weight).sum() / score_sum
        return torch.stack([box_loss, dfl_loss, cls_loss])

    def __call__(self, output: ModelOutput, targets: torch.Tensor) -> tuple[torch.Tensor, LossItems]:
        """Total loss (scaled by the batch size, so it sums over images) and its terms."""
        batch = output.main[0].box.shape[0]
        gt = self._pad_targets(targets.to(output.main[0].box.device), batch)
        terms = self._branch(output.main, gt)
        if output.aux is not None:
            terms = terms + self.cfg.aux_weight * self._branch(output.aux, gt)
        gains = torch.tensor([self.cfg.box_gain, self.cfg.dfl_gain, self.cfg.cls_gain], device=terms.device)
        total = (terms * gains).sum() * batch
        return total, LossItems(*terms.detach())
