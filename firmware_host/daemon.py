"""The daemon: source -> detector process -> tracker -> outputs (HTTP, MQTT, JSON lines).

One thread reads the source into a one-frame slot (``capture``), the detection loop here takes the
newest frame, letterboxes it and has the detector process (``detector_process``) run the model; the
detections, filtered by label, score and area, go to the hub (HTTP reads it) and through the
tracker to the outputs as object events. Everything that fails later than start-up (a frame that
cannot be read, a source that drops, a detector process that dies or hangs, a broker that goes
away) is logged, counted in ``/api/stats`` and recovered from; the loop itself keeps running and
tells systemd so (``WATCHDOG=1``), and systemd restarts the daemon if it ever stops doing that.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol, Sequence

from edge_yolov9 import __version__
from edge_yolov9.detector import prepare
from edge_yolov9.types import Detection

from . import systemd
from .capture import CapturedFrame, FrameSlot, SourceReader, describe_source
from .config import DaemonConfig
from .detector_process import DetectorUnavailable, ModelSummary, RemoteDetector
from .hub import Hub, Snapshot
from .stats import Stats
from .tracker import ObjectEvent, Tracker

logger = logging.getLogger(__name__)

IDLE_WAIT = 0.5           # seconds the loop waits for a frame before its housekeeping
WATCHDOG_PING = 5.0       # seconds between systemd watchdog pings


class Output(Protocol):
    """Where detections go besides the hub: MQTT, JSON lines."""

    def start(self) -> None: ...
    def on_frame(self, snapshot: Snapshot, counts: dict[str, int]) -> None: ...
    def on_events(self, events: Sequence[ObjectEvent]) -> None: ...
    def on_status(self, component: str, online: bool) -> None: ...
    def close(self) -> None: ...


class Daemon:
    """See the module docstring. ``run()`` blocks until ``stop()`` (or a finite source's end)."""

    def __init__(self, config: DaemonConfig):
        self.config = config
        self.stats = Stats(config.name, config.source.uri, __version__)
        self.hub = Hub(config.http.jpeg_quality)
        self.detector = RemoteDetector(config.model, config.watchdog, self.stats,
                                       on_status=lambda online: self._status("detector", online))
        self.tracker = Tracker(config.objects.end_after, config.objects.min_iou)
        self.slot = FrameSlot(self.stats)
        self.reader = SourceReader(config.source, self.slot, self.stats,
                                   on_status=lambda online: self._status("source", online))
        self.outputs: list[Output] = []
        self.http = None
        self.model: ModelSummary | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Load the model (a failure here is fatal: the error says what to fix), then open the outputs and
        the source."""
        self.model = self.detector.start()
        labels = self.model.labels
        unknown = sorted((set(self.config.objects.track) | set(self.config.objects.filters)) - set(labels))
        if unknown:
            logger.warning("objects.track/filters name labels the model does not have: %s (it has: %s)",
                           ", ".join(unknown), ", ".join(labels))
        if self.config.http.enabled:
            from .http_server import HttpServer

            self.http = HttpServer(self.config.http, self.hub, self.stats, self.config.name, labels)
            self.http.start()
            if self.config.http.host not in ("127.0.0.1", "localhost", "::1") and self.config.http.token is None:
                logger.warning("HTTP is served on %s without a token: anyone on the network can watch the camera; "
                               "set http.token", self.config.http.host)
            logger.info("HTTP on %s", self.http.url)
        if self.config.mqtt.enabled:
            from .mqtt import MqttOutput

            self.outputs.append(MqttOutput(self.config.mqtt, self.config.name, labels, self.stats, __version__,
                                           track=self.config.objects.track))
        if self.config.jsonl.path:
            from .jsonl import JsonLinesOutput

            self.outputs.append(JsonLinesOutput(self.config.jsonl, self.config.name))
        for output in self.outputs:
            output.start()
            self._call(output.on_status, "detector", True)  # it came online before the outputs existed
        self.reader.start()
        logger.info("Detecting %s with %s on %s", describe_source(self.config.source.uri), self.model.path,
                    self.model.device)

    def run(self) -> None:
        """Start, then detect until stopped; always closes what it opened. A finite source that ends in an
        error raises it, so the process exits non-zero (and systemd's Restart=on-failure restarts it)."""
        try:
            self.start()
            systemd.notify("READY=1")
            last_ping = 0.0
            while not self._stop.is_set():
                now = time.monotonic()
                if now - last_ping >= WATCHDOG_PING:
                    systemd.notify("WATCHDOG=1")
                    last_ping = now
                frame = self.slot.take(IDLE_WAIT)
                if frame is not None:
                    self._process(frame)
                elif self.reader.finished.is_set():
                    break
                else:
                    self.reader.check_stall()
                    self._dispatch(self.tracker.update([]), None)
            if self.reader.failure is not None:
                raise self.reader.failure
        finally:
            self.close()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        systemd.notify("STOPPING=1")
        self.reader.stop()
        self._dispatch(self.tracker.end_all(), None)
        for output in self.outputs:
            self._call(output.close)
        if self.http is not None:
            self.http.close()
        self.detector.close()

    # ------------------------------------------------------------------ one frame
    def _process(self, frame: CapturedFrame) -> None:
        if frame.error is not None:
            self.stats.frame_error(frame.error.problem)
            logger.warning("Skipped frame %s: %s", frame.name, frame.error.problem)
            return
        assert self.model is not None and frame.image is not None
        prepared = prepare(frame.image, self.model.input)
        started = time.perf_counter()
        try:
            found = self.detector.detect(prepared)
        except DetectorUnavailable:  # logged, counted and reported by the detector; the next frame retries
            return
        self.stats.frame_detected((time.perf_counter() - started) * 1e3)
        detections = self._keep(found)
        snapshot = Snapshot(frame.number, frame.timestamp, frame.image, tuple(detections))
        self.hub.publish(snapshot)
        self._dispatch(self.tracker.update(detections, frame.timestamp), snapshot)

    def _keep(self, found: list[Detection]) -> list[Detection]:
        """The detections that pass ``objects.track`` and the per-label filters."""
        objects = self.config.objects
        kept = []
        for detection in found:
            if objects.track and detection.label not in objects.track:
                continue
            rule = objects.filters.get(detection.label)
            if rule is not None and ((rule.min_score is not None and detection.score < rule.min_score)
                                     or detection.box.area < rule.min_area
                                     or (rule.max_area is not None and detection.box.area > rule.max_area)):
                continue
            kept.append(detection)
        return kept

    def _dispatch(self, events: list[ObjectEvent], snapshot: Snapshot | None) -> None:
        counts = self.tracker.counts()
        if events:
            self.stats.events_sent(len(events))
        for output in self.outputs:
            if snapshot is not None:
                self._call(output.on_frame, snapshot, counts)
            if events:
                self._call(output.on_events, events)

    def _status(self, component: str, online: bool) -> None:
        """A change of the source's or the detector's state: logged and told to the outputs."""
        logger.info("%s %s", component.capitalize(), "online" if online else "offline")
        for output in self.outputs:
            self._call(output.on_status, component, online)

    @staticmethod
    def _call(method, *args) -> None:
        """An output that fails (a full disk, a bug) must not stop detection: log it and go on."""
        try:
            method(*args)
        except Exception:
            logger.exception("Output %s failed", getattr(method, "__qualname__", method))
