"""The detector in its own process, behind a watchdog.

libedgetpu calls ``abort()`` on a USB transfer fault and an inference can hang when the Coral drops
off the bus: in the daemon's own process either would end or freeze everything. Here the model runs
in a child process; the parent prepares each frame (``edge_yolov9.detector.prepare``: one letterbox) and
sends the child the model input (small: 320x320x3 bytes) and its placement over a pipe; the child runs and
decodes it, and the parent waits at most ``stall_timeout`` seconds for the detections in image pixels. A child that dies or stalls is
killed and started again on the next frame, with back-off once it restarts ``max_restarts`` times
within ``restart_window`` seconds (a Coral that keeps failing is not hammered).

The child's Detector probes libedgetpu in a process of its own before loading it (``edge_yolov9.edgetpu_probe``).
When the Edge TPU cannot be used (the probe fails, the child dies loading it) or keeps crashing the child
(``max_restarts`` within ``restart_window``), and ``model.fallback_to_cpu`` allows it, the child runs the
model's CPU twin from then on; the reason goes to the log, ``/api/stats``, ``/metrics`` and MQTT.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import struct
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Callable

from edge_yolov9.detector import Prepared
from edge_yolov9.errors import EdgeYoloError
from edge_yolov9.interpreter import parse_device
from edge_yolov9.model_file import TensorSpec, cpu_twin
from edge_yolov9.types import Box, Detection

from .config import ModelConfig, WatchdogConfig
from .stats import Stats

logger = logging.getLogger(__name__)


class DetectorUnavailable(EdgeYoloError):
    """The detector process is not running (it failed to start, died or stalled); it is restarted on the next frame."""


@dataclass(frozen=True)
class ModelSummary:
    """What the daemon needs to know of the model the child loaded."""

    labels: tuple[str, ...]
    input: TensorSpec          # the network input the parent prepares frames for
    device: str
    path: str
    fallback_reason: str | None = None  # why the CPU twin runs (the Detector's 'auto' found the Edge TPU unusable)


def _child_main(connection: Connection, model: ModelConfig) -> None:
    """Load the model and answer detect requests until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the daemon, which stops the child itself
    from edge_yolov9.detector import Detector

    try:
        detector = Detector(model.path, device=model.device, threads=model.threads,
                            score_threshold=model.score_threshold, iou_threshold=model.iou_threshold,
                            max_detections=model.max_detections, edgetpu_library=model.edgetpu_library)
    except EdgeYoloError as err:
        connection.send(("error", err.problem, err.fix))
        return
    connection.send(("ready", ModelSummary(tuple(detector.info.labels), detector.info.input, detector.device_used,
                                           str(detector.model_path), detector.fallback_reason)))
    while True:
        try:
            tensor, placement = connection.recv()
        except (EOFError, OSError):
            return
        detections = detector.decode(detector.run(tensor), placement)
        connection.send([(tuple(d.box), d.score, d.class_id, d.label) for d in detections])


def _limit_send_time(connection: Connection, seconds: float) -> None:
    """Make a write to the child fail (EAGAIN) after ``seconds`` instead of blocking: a frame is larger than the
    pipe's buffer, so a child that hangs before reading it would otherwise hold the sender, out of the
    watchdog's reach."""
    whole, fraction = divmod(seconds, 1.0)
    with socket.fromfd(connection.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # a dup: same socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(whole), int(fraction * 1e6)))


def _exit_reason(process: multiprocessing.process.BaseProcess) -> str:
    code = process.exitcode
    if code is None:
        return "it stopped answering"
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (libedgetpu aborts like this on a USB fault: check the Coral's cable and power)" \
            if -code == signal.SIGABRT else ""
        return f"it was killed by {name}{hint}"
    return f"it exited with code {code}"


class RemoteDetector:
    """A :class:`edge_yolov9.Detector` in a child process: ``detect`` a letterboxed frame, restart on failure."""

    def __init__(self, model: ModelConfig, watchdog: WatchdogConfig, stats: Stats,
                 on_status: Callable[[bool], None] = lambda online: None):
        self.model = model
        self.watchdog = watchdog
        self.stats = stats
        self.on_status = on_status  # called when the detector goes online or offline
        self.summary: ModelSummary | None = None
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded daemon
        self._process: multiprocessing.process.BaseProcess | None = None
        self._connection: Connection | None = None
        self._restarts: list[float] = []
        self._not_before = 0.0
        self._backoff = 1.0
        self._device = model.device  # 'cpu' once the Edge TPU is given up (fallback_to_cpu)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def start(self) -> ModelSummary:
        """Start the child and wait until its model is loaded; DetectorUnavailable if it cannot load it. An
        Edge TPU that cannot be loaded gives way to the CPU twin where ``model.fallback_to_cpu`` allows."""
        try:
            return self._start()
        except DetectorUnavailable as err:
            if not self._can_fall_back():
                raise
            self._fall_back(f"the Edge TPU could not be loaded: {err.problem}")
            return self._start()

    def _start(self) -> ModelSummary:
        self._stop_child()
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_child_main, args=(child, self.model.model_copy(update={
            "device": self._device})), name="edge-yolov9-detector", daemon=True)
        process.start()
        child.close()
        _limit_send_time(parent, self.watchdog.stall_timeout)
        self._process, self._connection = process, parent
        if not parent.poll(self.watchdog.start_timeout):
            self._fail(f"the detector process did not load {self.model.path} within "
                       f"{self.watchdog.start_timeout:g} s", "raise watchdog.start_timeout, or check the device")
        try:
            message = parent.recv()
        except (EOFError, OSError):
            self._fail(f"the detector process ended while loading {self.model.path}: {_exit_reason(self._join())}",
                       "run `edge-yolov9 doctor --model MODEL` to check the model and the Edge TPU")
        if message[0] == "error":
            self._fail(message[1], message[2])
        self.summary = message[1]
        if self.summary.fallback_reason:
            self._fall_back(self.summary.fallback_reason)
        self._set_online(True, device=self.summary.device, pid=process.pid)
        logger.info("Detector process %d ready: %s on %s", process.pid, self.summary.path, self.summary.device)
        return self.summary

    def _can_fall_back(self) -> bool:
        """Whether the CPU twin may take over: allowed, not already on the CPU, and there is a twin."""
        return (self.model.fallback_to_cpu and parse_device(self._device).kind != "cpu"
                and cpu_twin(self.model.path) is not None)

    def _fall_back(self, reason: str) -> None:
        self._device = "cpu"
        self.stats.detector_fallback(reason)
        logger.warning("Running the CPU model instead of the Edge TPU: %s", reason)

    def detect(self, prepared: Prepared) -> list[Detection]:
        """Detections of a prepared frame (``edge_yolov9.detector.prepare``), boxes in the frame's pixels."""
        if self._connection is None:
            self._restart()
        assert self._connection is not None
        stuck = (f"an inference took longer than {self.watchdog.stall_timeout:g} s: the detector process is stuck "
                 "and was killed", "check the Coral's USB connection and power")
        try:
            self._connection.send(tuple(prepared))
            if not self._connection.poll(self.watchdog.stall_timeout):
                self._fail(*stuck, stalled=True)
            found = self._connection.recv()
        except BlockingIOError:  # the frame did not fit in the pipe within stall_timeout: the child stopped reading
            self._fail(*stuck, stalled=True)
        except (EOFError, OSError):
            self._fail(f"the detector process died: {_exit_reason(self._join())}",
                       "it is restarted; if this repeats, run `edge-yolov9 doctor --model MODEL`")
        return [Detection(Box(*box), score, class_id, label) for box, score, class_id, label in found]

    def close(self) -> None:
        self._stop_child()
        self.stats.detector_status(False)

    # ------------------------------------------------------------------ supervision
    def _restart(self) -> None:
        """Start the child again, waiting out the back-off when it has been restarting too often."""
        now = time.monotonic()
        if now < self._not_before:
            raise DetectorUnavailable(f"detector restarts are backing off for {self._not_before - now:.0f} s more",
                                      "see the earlier errors for why it failed")
        self._restarts = [t for t in self._restarts if now - t < self.watchdog.restart_window] + [now]
        if len(self._restarts) > self.watchdog.max_restarts and self._can_fall_back():
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

    def _fail(self, problem: str, fix: str, stalled: bool = False) -> None:
        """Record the failure, kill the child and raise DetectorUnavailable."""
        self._stop_child(kill=stalled)
        self._set_online(False, error=problem)
        logger.error("Detector: %s", problem)
        raise DetectorUnavailable(problem, fix)

    def _set_online(self, online: bool, **details) -> None:
        changed = online != self.stats.detector_online
        self.stats.detector_status(online, **details)
        if changed:
            self.on_status(online)

    def _join(self) -> multiprocessing.process.BaseProcess:
        assert self._process is not None
        self._process.join(timeout=5)
        return self._process

    def _stop_child(self, kill: bool = False) -> None:
        process, connection = self._process, self._connection
        self._process = self._connection = None
        if connection is not None:
            connection.close()  # the child sees EOF and returns
        if process is None:
            return
        if kill and process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
