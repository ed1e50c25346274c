"""Where the detection loop leaves its newest result for the outputs (HTTP, MQTT, JSON lines) to read.

Only the newest frame is kept: an output that reads slower than frames come (a slow MJPEG client)
skips frames instead of holding memory. The annotated JPEG is encoded once per frame, when the first
reader asks for it, not for every frame.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from edge_yolov9.annotate import draw_detections
from edge_yolov9.types import Detection


@dataclass(frozen=True)
class Snapshot:
    """One detected frame: the RGB image, its detections (after the label filters) and when it was taken."""

    frame_id: int
    timestamp: float
    image: np.ndarray = field(repr=False)
    detections: tuple[Detection, ...]

    def to_dict(self) -> dict:
        height, width = self.image.shape[:2]
        return {"frame_id": self.frame_id, "timestamp": round(self.timestamp, 3), "width": width, "height": height,
                "detections": [d.to_dict() for d in self.detections]}


class Hub:
    """The newest :class:`Snapshot`, with a wait for the next one and a cached annotated JPEG."""

    def __init__(self, jpeg_quality: int = 80):
        self.jpeg_quality = jpeg_quality
        self._latest: Snapshot | None = None
        self._jpeg: tuple[int, bytes] | None = None
        self._changed = threading.Condition()
        self._encode = threading.Lock()

    def publish(self, snapshot: Snapshot) -> None:
        with self._changed:
            self._latest = snapshot
            self._changed.notify_all()

    def latest(self) -> Snapshot | None:
        return self._latest

    def wait_for_newer(self, frame_id: int, timeout: float) -> Snapshot | None:
        """The newest snapshot once it is newer than ``frame_id``; None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._latest is None or self._latest.frame_id <= frame_id:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
            return self._latest

    def annotated_jpeg(self, snapshot: Snapshot) -> bytes:
        """``snapshot`` with its boxes drawn, as JPEG (encoded once per frame)."""
        with self._encode:
            if self._jpeg is not None and self._jpeg[0] == snapshot.frame_id:
                return self._jpeg[1]
            buffer = io.BytesIO()
            draw_detections(snapshot.image, snapshot.detections).save(buffer, "JPEG", quality=self.jpeg_quality)
            self._jpeg = (snapshot.frame_id, buffer.getvalue())
            return self._jpeg[1]
