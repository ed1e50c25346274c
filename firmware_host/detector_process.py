"""The daemon's detector: the model in a child process (``edge_yolov9.isolated``), supervised.

A child that dies or stalls is started again on the next frame, with back-off once it restarts ``max_restarts``
times within ``restart_window`` seconds (a Coral that keeps failing is not hammered).

The child's Detector probes libedgetpu in a process of its own before loading it (``edge_yolov9.edgetpu_probe``).
When the Edge TPU cannot be used (the probe fails, the child dies loading it) or keeps crashing the child
(``max_restarts`` within ``restart_window``), and ``model.fallback_to_cpu`` allows it, the child runs the
model's CPU twin from then on; the reason goes to the log, ``/api/stats``, ``/metrics`` and MQTT.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Callable

from edge_yolov9 import host
from edge_yolov9.detector import Prepared
from edge_yolov9.errors import EdgeYoloError
from edge_yolov9.interpreter import parse_device
from edge_yolov9.isolated import DetectorProcess, DetectorSpec, ModelSummary
from edge_yolov9.postprocess import PostprocessConfig
from edge_yolov9.types import Detection
from edge_yolov9.usb_power import power_cycle_usb_corals

from .config import ModelConfig, WatchdogConfig
from .stats import Stats

logger = logging.getLogger(__name__)

__all__ = ["DetectorUnavailable", "ModelSummary", "RemoteDetector"]


class DetectorUnavailable(EdgeYoloError):
    """The detector process is not running (it failed to start, died or stalled); it is restarted on the next frame."""


class RemoteDetector:
    """A :class:`edge_yolov9.Detector` in a child process: ``detect`` a letterboxed frame, restart on failure."""

    def __init__(self, model: ModelConfig, watchdog: WatchdogConfig, stats: Stats,
                 on_status: Callable[[bool], None] = lambda online: None):
        self.model = model
        self.watchdog = watchdog
        self.stats = stats
        self.on_status = on_status  # called when the detector goes online or offline
        self.summary: ModelSummary | None = None
        self._process = DetectorProcess(DetectorSpec(
            str(model.path), model.device, model.threads,
            PostprocessConfig(score_threshold=model.score_threshold, iou_threshold=model.iou_threshold,
                              max_detections=model.max_detections),
            None if model.edgetpu_library is None else str(model.edgetpu_library)),
            start_timeout=watchdog.start_timeout, stall_timeout=watchdog.stall_timeout)
        self._restarts: list[float] = []
        self._not_before = 0.0
        self._backoff = 1.0
        self._power_cycled: float | None = None  # when the Coral's port was last power-cycled (monotonic)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self) -> ModelSummary:
        """Start the child and wait until its model is loaded; DetectorUnavailable if it cannot load it. An
        Edge TPU that cannot be loaded is power-cycled first where ``watchdog.power_cycle_usb`` asks (a wedged
        USB Coral fails right there), then gives way to the CPU twin where ``model.fallback_to_cpu`` allows."""
        try:
            return self._start()
        except DetectorUnavailable as err:
            failure = err
        if self._power_cycle():
            try:
                return self._start()
            except DetectorUnavailable as err:
                failure = err
        if not self._can_fall_back():
            raise failure
        self._fall_back(f"the Edge TPU could not be loaded: {failure.problem}")
        return self._start()

    def _start(self) -> ModelSummary:
        try:
            self.summary = self._process.start()
        except EdgeYoloError as err:
            self._fail(err.problem, err.fix)
        if self.summary.fallback_reason and self._may_power_cycle():  # 'auto' took the CPU twin: try the Coral
            self._fail(self.summary.fallback_reason, None)
        if self.summary.fallback_reason:
            self._fall_back(self.summary.fallback_reason)
        self._set_online(True, device=self.summary.device, pid=self._process.pid)
        logger.info("Detector process %d ready: %s on %s", self._process.pid, self.summary.path,
                    self.summary.device)
        return self.summary

    def _can_fall_back(self) -> bool:
        """Whether the CPU twin may take over: allowed, not already on the CPU, and there is a twin."""
        return self.model.fallback_to_cpu and self._process.cpu_twin_can_take_over

    def _fall_back(self, reason: str) -> None:
        self._process.spec = replace(self._process.spec, device="cpu")
        self.stats.detector_fallback(reason)
        logger.warning("Running the CPU model instead of the Edge TPU: %s", reason)

    def detect(self, prepared: Prepared) -> list[Detection]:
        """Detections of a prepared frame (``edge_yolov9.detector.prepare``), boxes in the frame's pixels."""
        if not self._process.running:
            self._restart()
        try:
            return self._process.detect_prepared(prepared)[0]
        except EdgeYoloError as err:  # the child died or stalled: it is started again on the next frame
            self._fail(err.problem, err.fix)

    def close(self) -> None:
        self._process.close()
        self.stats.detector_status(False)

    # ------------------------------------------------------------------ supervision
    def _restart(self) -> None:
        """Start the child again, waiting out the back-off when it has been restarting too often."""
        now = time.monotonic()
        if now < self._not_before:
            raise DetectorUnavailable(f"detector restarts are backing off for {self._not_before - now:.0f} s more",
                                      "see the earlier errors for why it failed")
        self._restarts = [t for t in self._restarts if now - t < self.watchdog.restart_window] + [now]
        if len(self._restarts) > self.watchdog.max_restarts and self._power_cycle():
            self._restarts.clear()
        elif len(self._restarts) > self.watchdog.max_restarts and self._can_fall_back():
            self._fall_back(f"the Edge TPU failed the detector process {len(self._restarts)} times within "
                            f"{self.watchdog.restart_window:g} s (last: {self.stats.detector_error})")
            self._restarts.clear()
        elif len(self._restarts) > self.watchdog.max_restarts:
            self._not_before = now + self._backoff
            logger.error("The detector restarted %d times in %g s; waiting %g s before the next attempt",
                         len(self._restarts) - 1, self.watchdog.restart_window, self._backoff)
            self._backoff = min(self._backoff * 2, self.watchdog.backoff_max)
            self._restarts.clear()
            raise DetectorUnavailable("the detector keeps failing; restarts are backing off",
                                      "see the earlier errors for why it failed")
        self.stats.detector_status(False, restarted=True)
        logger.warning("Restarting the detector process")
        self.start()
        self._backoff = 1.0

    def _may_power_cycle(self) -> bool:
        """``watchdog.power_cycle_usb`` asks for it, the Edge TPU is asked for, and no power cycle happened
        within the restart window."""
        return (self.watchdog.power_cycle_usb and parse_device(self._process.spec.device).kind != "cpu"
                and (self._power_cycled is None
                     or time.monotonic() - self._power_cycled >= self.watchdog.restart_window))

    def _power_cycle(self) -> bool:
        """Power-cycle the USB Coral's port where :meth:`_may_power_cycle`; whether it was done."""
        if not self._may_power_cycle():
            return False
        self._power_cycled = time.monotonic()
        try:
            cycled = power_cycle_usb_corals(host.ROOT)
        except EdgeYoloError as err:
            logger.error("Could not power-cycle the Coral: %s (fix: %s)", err.problem, err.fix)
            return False
        self.stats.usb_power_cycled()
        logger.warning("The Edge TPU keeps failing: power-cycled the Coral (%s)", ", ".join(cycled))
        return True

    def _fail(self, problem: str, fix: str | None) -> None:
        """Record the failure (the child is gone) and raise DetectorUnavailable."""
        self._process.close()
        self._set_online(False, error=problem)
        logger.error("Detector: %s", problem)
        raise DetectorUnavailable(problem, fix)

    def _set_online(self, online: bool, **details) -> None:
        changed = online != self.stats.detector_online
        self.stats.detector_status(online, **details)
        if changed:
            self.on_status(online)
