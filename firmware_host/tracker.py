"""Objects followed across frames, so outputs can report new / update / end events, not every box.

Greedy IoU matching per label: a detection continues the object of the same label whose last box
overlaps it most (at least ``min_iou``); an object unseen for ``end_after`` seconds ends. An 'update'
is sent when the object's best score rises or its box moves by more than a fifth of its size, and at
most once a second per object, so a still object does not flood MQTT.
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, replace
from typing import Literal, Sequence

from edge_yolov9.types import Box, Detection

UPDATE_INTERVAL = 1.0
MOVE_FRACTION = 0.2


@dataclass(frozen=True)
class TrackedObject:
    id: str
    label: str
    score: float
    top_score: float
    box: Box
    start_time: float
    last_seen: float
    end_time: float | None = None

    def to_dict(self, camera: str) -> dict:
        return {"id": self.id, "camera": camera, "label": self.label, "score": round(self.score, 4),
                "top_score": round(self.top_score, 4), "box": [round(v, 1) for v in self.box],
                "area": round(self.box.area), "start_time": round(self.start_time, 3),
                "end_time": None if self.end_time is None else round(self.end_time, 3)}


@dataclass(frozen=True)
class ObjectEvent:
    """What happened to one object (``before`` is None for 'new')."""

    type: Literal["new", "update", "end"]
    after: TrackedObject
    before: TrackedObject | None = None

    def to_dict(self, camera: str) -> dict:
        return {"type": self.type, "before": self.before.to_dict(camera) if self.before else None,
                "after": self.after.to_dict(camera)}


def _moved(old: Box, new: Box) -> bool:
    scale = max(old.width, old.height, 1.0)
    return max(abs(a - b) for a, b in zip(old, new)) > MOVE_FRACTION * scale


class Tracker:
    def __init__(self, end_after: float = 2.0, min_iou: float = 0.3):
        self.end_after = end_after
        self.min_iou = min_iou
        self.objects: dict[str, TrackedObject] = {}
        self._last_sent: dict[str, TrackedObject] = {}
        self._sent_at: dict[str, float] = {}
        self._serial = itertools.count()

    def update(self, detections: Sequence[Detection], now: float | None = None) -> list[ObjectEvent]:
        """Match ``detections`` of one frame to the tracked objects; the events this frame causes."""
        now = time.time() if now is None else now
        events: list[ObjectEvent] = []
        unmatched = set(self.objects)
        pairs = sorted(((d.box.iou(obj.box), i, key) for i, d in enumerate(detections)
                        for key, obj in self.objects.items() if obj.label == d.label), reverse=True)
        matched: set[int] = set()
        for iou, index, key in pairs:
            if iou < self.min_iou:
                break
            if index in matched or key not in unmatched:
                continue
            matched.add(index)
            unmatched.discard(key)
            det = detections[index]
            obj = self.objects[key]
            self.objects[key] = replace(obj, score=det.score, top_score=max(obj.top_score, det.score), box=det.box,
                                        last_seen=now)
            events.extend(self._maybe_update(key, now))
        for index, det in enumerate(detections):
            if index not in matched:
                key = f"{now:.3f}-{next(self._serial)}-{uuid.uuid4().hex[:6]}"
                self.objects[key] = TrackedObject(key, det.label, det.score, det.score, det.box, now, now)
                self._last_sent[key] = self.objects[key]
                self._sent_at[key] = now
                events.append(ObjectEvent("new", self.objects[key]))
        for key in list(unmatched):
            if now - self.objects[key].last_seen >= self.end_after:
                events.append(self._end(key, now))
        return events

    def end_all(self, now: float | None = None) -> list[ObjectEvent]:
        """'end' for every object still tracked (the daemon stops, or the source went offline)."""
        now = time.time() if now is None else now
        return [self._end(key, now) for key in list(self.objects)]

    def counts(self) -> dict[str, int]:
        """Objects currently tracked, per label."""
        totals: dict[str, int] = {}
        for obj in self.objects.values():
            totals[obj.label] = totals.get(obj.label, 0) + 1
        return totals

    def _maybe_update(self, key: str, now: float) -> list[ObjectEvent]:
        obj, sent = self.objects[key], self._last_sent[key]
        if now - self._sent_at[key] < UPDATE_INTERVAL:
            return []
        if obj.top_score <= sent.top_score and not _moved(sent.box, obj.box):
            return []
        self._last_sent[key] = obj
        self._sent_at[key] = now
        return [ObjectEvent("update", obj, sent)]

    def _end(self, key: str, now: float) -> ObjectEvent:
        obj = self.objects.pop(key)
        before = self._last_sent.pop(key)
        self._sent_at.pop(key)
        return ObjectEvent("end", replace(obj, end_time=now), before)
