"""A Detector in a child process, for callers that must outlive the Edge TPU library.

libedgetpu calls ``abort()`` on a USB transfer fault (a Coral that browns out or is unplugged mid-run), and an
inference can hang when the device drops off the bus: in the caller's process either ends or freezes it, with
whatever it had not yet written. Here the model runs in a spawned child: the caller prepares each frame
(``edge_yolov9.detector.prepare``: one letterbox) and sends the child the input tensor and its placement over a
pipe; the child runs and decodes it, and the caller waits at most ``stall_timeout`` seconds for the detections.
A child that dies, stalls or cannot load the model raises :class:`DetectorProcessError` saying why, and is gone;
what follows is the caller's choice: ``edge-yolov9 detect`` starts it once more and retries the frame, the
daemon restarts it with back-off and may fall back to the CPU twin.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import struct
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Iterator

from .errors import EdgeYoloError
from .interpreter import parse_device
from .model_file import TensorSpec, cpu_twin
from .postprocess import PostprocessConfig
from .tflite_file import read_tflite
from .types import Box, Detection

logger = logging.getLogger(__name__)


class DetectorProcessError(EdgeYoloError):
    """The detector's child process died, stalled or could not load the model; it is no longer running."""


@dataclass(frozen=True)
class ModelSummary:
    """What the caller needs to know of the model the child loaded."""

    labels: tuple[str, ...]
    input: TensorSpec          # the network input the caller prepares frames for
    device: str
    path: str
    fallback_reason: str | None = None  # why the CPU twin runs (the Detector's 'auto' found the Edge TPU unusable)

    @classmethod
    def of(cls, detector: Any) -> "ModelSummary":
        """The summary of a loaded :class:`edge_yolov9.Detector`."""
        return cls(tuple(detector.info.labels), detector.info.input, detector.device_used, str(detector.model_path),
                   detector.fallback_reason)

    @property
    def size(self) -> tuple[int, int]:
        """The input's (height, width), as ``ModelInfo.size``."""
        return self.input.shape[1], self.input.shape[2]


@dataclass(frozen=True)
class DetectorSpec:
    """The :class:`edge_yolov9.Detector` the child builds (its arguments, picklable)."""

    model: str
    device: str = "auto"
    threads: int | None = None
    config: PostprocessConfig = field(default_factory=PostprocessConfig)
    edgetpu_library: str | None = None
    labels: tuple[str, ...] | None = None


def runs_on_edgetpu(model: str | os.PathLike, device: str) -> bool:
    """Whether ``Detector(model, device)`` would load libedgetpu: a model compiled for the Edge TPU, on any
    device but 'cpu'. A missing or unreadable file is the Detector's to report."""
    if parse_device(device).kind == "cpu":
        return False
    try:
        return read_tflite(Path(model).read_bytes(), str(model)).compiled_for_edgetpu
    except (OSError, EdgeYoloError):
        return False


def _child_main(connection: Connection, spec: DetectorSpec, log_level: int) -> None:
    """Load the model and answer detect requests until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the caller, which stops the child itself
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    from .detector import Detector, Prepared

    try:
        detector = Detector(spec.model, device=spec.device, threads=spec.threads, config=spec.config,
                            labels=spec.labels, edgetpu_library=spec.edgetpu_library)
    except EdgeYoloError as err:
        connection.send(("error", err))
        return
    connection.send(("ready", ModelSummary.of(detector)))
    while True:
        try:
            prepared = Prepared(*connection.recv())
        except (EOFError, OSError):
            return
        detections, invoke_ms, postprocess_ms = detector.detect_prepared(prepared)
        connection.send(([(tuple(d.box), d.score, d.class_id, d.label) for d in detections], invoke_ms,
                         postprocess_ms))


def _limit_send_time(connection: Connection, seconds: float) -> None:
    """Make a write to the child fail (EAGAIN) after ``seconds`` instead of blocking: a frame is larger than the
    pipe's buffer, so a child that hangs before reading it would otherwise hold the sender, out of the
    watchdog's reach."""
    whole, fraction = divmod(seconds, 1.0)
    with socket.fromfd(connection.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # a dup: same socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(whole), int(fraction * 1e6)))


def exit_reason(process: multiprocessing.process.BaseProcess) -> str:
    """Why a child process ended, for an error message."""
    code = process.exitcode
    if code is None:
        return "it stopped answering"
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (as libedgetpu aborts on a USB fault)" \
            if -code == signal.SIGABRT else ""
        return f"it was killed by {name}{hint}"
    return f"it exited with code {code}"


class DetectorProcess:
    """The Detector ``spec`` describes, in a child process (see the module docstring). ``start`` loads it,
    ``detect_prepared`` runs a prepared frame, ``close`` stops it; a context manager that closes."""

    def __init__(self, spec: DetectorSpec, *, start_timeout: float = 60.0, stall_timeout: float = 10.0):
        self.spec = spec
        self.start_timeout = start_timeout
        self.stall_timeout = stall_timeout
        self.summary: ModelSummary | None = None
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded caller
        self._process: multiprocessing.process.BaseProcess | None = None
        self._connection: Connection | None = None

    def __enter__(self) -> "DetectorProcess":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    @property
    def running(self) -> bool:
        return self._connection is not None

    @property
    def cpu_twin_can_take_over(self) -> bool:
        """Whether the child is not asked for the CPU already and the model has a CPU twin beside it."""
        return parse_device(self.spec.device).kind != "cpu" and cpu_twin(Path(self.spec.model)) is not None

    def start(self, **changes: Any) -> ModelSummary:
        """(Re)start the child, ``spec`` updated with ``changes`` (e.g. ``device='cpu'``), and wait until its model
        is loaded. An error of the Detector there (a missing model, an unusable Edge TPU) is raised as it is."""
        self.close()
        self.spec = replace(self.spec, **changes)
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_child_main, args=(child, self.spec, logger.getEffectiveLevel()),
                                        name="edge-yolov9-detector", daemon=True)
        process.start()
        child.close()
        _limit_send_time(parent, self.stall_timeout)
        self._process, self._connection = process, parent
        if not parent.poll(self.start_timeout):
            self._fail(f"the detector process did not load {self.spec.model} within {self.start_timeout:g} s",
                       "check the device with `edge-yolov9 doctor`; the daemon allows more time with "
                       "watchdog.start_timeout", stalled=True)
        try:
            message = parent.recv()
        except (EOFError, OSError):
            self._fail(f"the detector process ended while loading {self.spec.model}: {exit_reason(self._join())}",
                       "run `edge-yolov9 doctor --model MODEL` to check the model and the Edge TPU")
        if message[0] == "error":
            self.close()
            raise message[1]
        self.summary = message[1]
        return self.summary

    def detect_prepared(self, prepared: Any) -> tuple[list[Detection], float, float]:
        """Detections of a prepared frame (``edge_yolov9.detector.prepare``), boxes in the frame's pixels, and the
        child's invoke and post-processing milliseconds."""
        if self._connection is None:
            raise DetectorProcessError("the detector process is not running", "start it first")
        stuck = (f"an inference took longer than {self.stall_timeout:g} s: the detector process is stuck and was "
                 "killed", "check the Coral's USB connection and power")
        try:
            self._connection.send(tuple(prepared))
            if not self._connection.poll(self.stall_timeout):
                self._fail(*stuck, stalled=True)
            found, invoke_ms, postprocess_ms = self._connection.recv()
        except BlockingIOError:  # the frame did not fit in the pipe within stall_timeout: the child stopped reading
            self._fail(*stuck, stalled=True)
        except (EOFError, OSError):
            self._fail(f"the detector process died: {exit_reason(self._join())}",
                       "check the Coral's cable and power; `edge-yolov9 doctor` checks the rest")
        return [Detection(Box(*box), score, class_id, label) for box, score, class_id, label in found], \
            invoke_ms, postprocess_ms

    def close(self) -> None:
        """Stop the child (it sees the pipe close and returns; killed if it does not)."""
        self._stop(kill=False)

    def _fail(self, problem: str, fix: str, stalled: bool = False) -> None:
        self._stop(kill=stalled)
        raise DetectorProcessError(problem, fix)

    def _join(self) -> multiprocessing.process.BaseProcess:
        assert self._process is not None
        self._process.join(timeout=5)
        return self._process

    def _stop(self, kill: bool) -> None:
        process, connection = self._process, self._connection
        self._process = self._connection = None
        if connection is not None:
            connection.close()
        if process is None:
            return
        if kill and process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


class IsolatedDetector:
    """Detection over a batch of frames with the model in a :class:`DetectorProcess`, for a model that runs on
    the Edge TPU: a child that dies or stalls is started again and the frame retried, at most ``max_restarts``
    times in the batch; the failure after that ends the batch (a DetectorProcessError), or with device 'auto'
    and a CPU twin beside the model, hands the rest of the batch to the CPU twin (``fallback_reason`` says why).
    ``cpu_fallback=False`` keeps a batch on the device it started on (``val``: figures of two devices mixed would
    describe neither). ``detect_many`` is :meth:`edge_yolov9.Detector.detect_many`."""

    def __init__(self, spec: DetectorSpec, *, stall_timeout: float = 10.0, max_restarts: int = 2,
                 cpu_fallback: bool = True):
        self.max_restarts = max_restarts
        self.cpu_fallback = cpu_fallback
        self.restarts = 0
        self._process = DetectorProcess(spec, stall_timeout=stall_timeout)
        self.summary = self._process.start()
        self.fallback_reason = self.summary.fallback_reason

    def __enter__(self) -> "IsolatedDetector":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def device_used(self) -> str:
        return self.summary.device

    def detect_prepared(self, prepared: Any) -> tuple[list[Detection], float, float]:
        """:meth:`edge_yolov9.Detector.detect_prepared`, in the child, surviving it as the class docstring says."""
        try:
            return self._process.detect_prepared(prepared)
        except DetectorProcessError as failure:
            return self._recover(failure, prepared)

    def _recover(self, failure: EdgeYoloError, prepared: Any) -> tuple[list[Detection], float, float]:
        while self.restarts < self.max_restarts:
            self.restarts += 1
            logger.warning("%s; starting it again (%d of %d)", failure.problem, self.restarts, self.max_restarts)
            try:
                self._restart()
                return self._process.detect_prepared(prepared)
            except EdgeYoloError as again:  # a dead child, or the Edge TPU now unusable at load
                failure = again
        failed = f"failed {self.restarts + 1} times in this run (the last time: {failure.problem})"
        if not self._may_fall_back():
            instead = "; --device auto goes on with the CPU model instead" \
                if self.cpu_fallback and parse_device(self._process.spec.device).kind != "auto" else ""
            raise DetectorProcessError(
                f"The Edge TPU {failed}",
                "check the Coral's cable and power (a Pi 5 gives USB devices 600 mA unless usb_max_current_enable=1; "
                "a powered hub helps), re-plug it (or `edge-yolov9 doctor --power-cycle-usb`), then run again; "
                f"`edge-yolov9 doctor` checks the rest{instead}")
        self.fallback_reason = f"the Edge TPU {failed}"
        logger.warning("Running the CPU model for the rest of the run: %s", self.fallback_reason)
        self.summary = self._process.start(device="cpu")
        return self._process.detect_prepared(prepared)

    def _restart(self) -> None:
        """Start the child again; with device 'auto' it may load the CPU twin (the Edge TPU unusable at load),
        which is a fallback like any other."""
        summary = self._process.start()
        if summary.device != self.summary.device:
            if not self.cpu_fallback:
                self._process.close()
                raise DetectorProcessError(f"the Edge TPU could not be used again: {summary.fallback_reason}",
                                           "check the Coral with `edge-yolov9 doctor`")
            self.fallback_reason = summary.fallback_reason
        self.summary = summary

    def _may_fall_back(self) -> bool:
        return (self.cpu_fallback and parse_device(self._process.spec.device).kind == "auto"
                and self.summary.device != "cpu" and self._process.cpu_twin_can_take_over)

    def detect_many(self, source: Any, *, bgr: bool = False) -> Iterator[Any]:
        from .detector import frame_results

        return frame_results(source, self.summary.input, self.detect_prepared, bgr=bgr)

    def close(self) -> None:
        self._process.close()
