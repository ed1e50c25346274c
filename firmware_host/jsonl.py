"""JSON lines to stdout or a file: one line per object event (``per: event``) or per detected frame.

Each line is flushed as it is written, so ``tail -f`` and a crash lose nothing already reported.
Event lines are the MQTT ``events`` payload (``{"type", "before", "after"}``) with the ``camera`` added;
frame lines are
``{"camera", "frame_id", "timestamp", "width", "height", "detections"}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence, TextIO

from edge_yolov9.errors import EdgeYoloError

from .config import JsonLinesConfig
from .hub import Snapshot
from .tracker import ObjectEvent


class JsonLinesOutput:
    def __init__(self, config: JsonLinesConfig, camera: str):
        self.config = config
        self.camera = camera
        self._sink: TextIO | None = None

    def start(self) -> None:
        if self.config.path == "-":
            self._sink = sys.stdout
            return
        path = Path(str(self.config.path))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = open(path, "a", buffering=1)
        except OSError as err:
            raise EdgeYoloError(f"Cannot write JSON lines to {path}: {err.strerror}",
                                "point jsonl.path at a writable file, or '-' for stdout") from None

    def on_frame(self, snapshot: Snapshot, counts: dict[str, int]) -> None:
        if self.config.per == "frame":
            self._write({"camera": self.camera, **snapshot.to_dict()})

    def on_events(self, events: Sequence[ObjectEvent]) -> None:
        if self.config.per == "event":
            for event in events:
                self._write({"camera": self.camera, **event.to_dict(self.camera)})

    def on_status(self, component: str, online: bool) -> None:
        """Status changes are in the logs and /api/stats, not in the detection stream."""

    def close(self) -> None:
        if self._sink is not None and self._sink is not sys.stdout:
            self._sink.close()
        self._sink = None

    def _write(self, record: dict) -> None:
        if self._sink is not None:
            self._sink.write(json.dumps(record) + "\n")
            self._sink.flush()
