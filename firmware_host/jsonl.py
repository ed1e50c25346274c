"""JSON lines to stdout or a file: one line per object event (``per: event``) or per detected frame.

Each line is flushed as it is written, so ``tail -f`` and a crash lose nothing already reported.
Lines that cannot be written (a full disk) do not stop detection: the error is logged once, with its
fix, and once more when writing works again.
Event lines are the MQTT ``events`` payload (``{"type", "before", "after"}``) with the ``camera`` added;
frame lines are
``{"camera", "frame_id", "timestamp", "width", "height", "detections"}``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Sequence, TextIO

from edge_yolov9.errors import output_error

from .config import JsonLinesConfig
from .hub import Snapshot
from .tracker import ObjectEvent

logger = logging.getLogger(__name__)


class JsonLinesOutput:
    def __init__(self, config: JsonLinesConfig, camera: str):
        self.config = config
        self.camera = camera
        self._sink: TextIO | None = None
        self._failing = False   # the last write failed (logged once until a write works again)

    def start(self) -> None:
        if self.config.path == "-":
            self._sink = sys.stdout
            return
        path = Path(str(self.config.path))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = open(path, "a", buffering=1)
        except OSError as err:
            raise output_error(err, path, "JSON lines (jsonl.path)") from None

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
        sink, self._sink = self._sink, None
        if sink is not None and sink is not sys.stdout:
            try:
                sink.close()
            except OSError:  # the line still buffered could not be written either: already reported
                pass

    def _write(self, record: dict) -> None:
        if self._sink is None:
            return
        try:
            self._sink.write(json.dumps(record) + "\n")
            self._sink.flush()
        except OSError as err:
            if not self._failing:
                error = output_error(err, self._where, "JSON lines")
                logger.error("%s; lines are lost until writing works again (fix: %s)", error.problem, error.fix)
            self._failing = True
        else:
            if self._failing:
                logger.info("JSON lines are written to %s again", self._where)
            self._failing = False

    @property
    def _where(self) -> str:
        return "stdout" if self.config.path == "-" else str(self.config.path)
