"""The float half of a conversion, in a second process beside the int8 half.

The float lowering and the two reference scores of the accuracy report (PyTorch, float TFLite) need nothing
from the int8 model, so a worker process does them on whatever core this process leaves idle: it is spawned
as the conversion starts and runs at the lowest CPU priority, so its imports and work fill the gaps (the
single-threaded graph export before calibration, the int8 lowering, which is pure Python) without slowing
calibration, which keeps every core busy. When this process has nothing left to do but wait, the worker
takes all cores for the scores still to come. On a single core, or when the worker dies, the same steps run
in this process.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from edge_yolov9.train.models import YOLO

from .accuracy import ModelAccuracy, ValSet, score_references
from .export import convert_float
from .metadata import build_metadata, save_with_metadata
from .stages import StageClock

logger = logging.getLogger(__name__)

BESIDE = "beside: "  # prefix of the worker's stage names in the stage summary
WORKER_NICENESS = 19  # the lowest priority: the worker runs only where this process leaves a core idle


@dataclass(frozen=True)
class FloatJob:
    """What the float half needs: the deploy model, where its .tflite goes and what describes it."""

    deployed: YOLO
    path: Path
    describe: dict[str, Any]  # build_metadata's keywords but variant
    val_set: ValSet | None
    checkpoint: Path


@dataclass(frozen=True)
class FloatResult:
    path: Path
    references: tuple[ModelAccuracy, ModelAccuracy] | None  # PyTorch fp32 and float TFLite; None without val set
    stage_seconds: dict[str, float] = field(default_factory=dict)


def run_float_job(job: FloatJob, threads: Callable[[], int | None] = lambda: None,
                  progress: bool = True) -> FloatResult:
    """Float lowering, then the reference scores; ``threads()``, asked as each step starts, the threads that
    step takes (None: unchanged); ``progress``: the scores' progress bars."""
    clock = StageClock()
    with clock.stage("float lowering"):
        count = threads()
        if count is not None:
            torch.set_num_threads(count)
        float_model = convert_float(job.deployed, job.describe["imgsz"], job.describe["layout"])
        save_with_metadata(float_model, job.path, build_metadata(float_model, variant="float", **job.describe))
    references = None
    if job.val_set is not None:
        references = score_references(job.val_set, job.deployed, job.checkpoint, job.path, threads=threads,
                                      clock=clock, progress=progress)
    return FloatResult(job.path, references, clock.seconds)


def _work(jobs: Connection, results: Connection, log_level: int, parent_waiting: Event) -> None:
    """The worker process: the job when it comes, on one core until the parent waits for it; the result, or the
    error, sent back."""
    logging.basicConfig(level=log_level, format="%(message)s")
    try:
        job = pickle.loads(jobs.recv_bytes())
    except EOFError:
        return  # the conversion ended before it handed the float half over
    cores = os.cpu_count() or 1
    try:
        outcome: FloatResult | BaseException = run_float_job(  # no progress bars: the terminal shows the parent's
            job, threads=lambda: cores if parent_waiting.is_set() else 1, progress=False)
    except BaseException as err:  # noqa: BLE001: handed to the parent, which raises it
        outcome = err
    try:
        results.send(outcome)
    except Exception:  # an error that does not pickle: its text does
        results.send(RuntimeError(f"{type(outcome).__name__}: {outcome}"))


class FloatBranch:
    """The float half of one conversion. ``spawn`` starts the worker process early (spawned: no fork of a process
    running torch threads), ``start`` hands it the job, ``result`` waits for it. A worker that dies (out of
    memory, a crash in native code) costs time, not the conversion: the job is rerun here, with a warning.
    ``in_process`` runs the job at ``start`` instead (default: on a machine with one core)."""

    def __init__(self, in_process: bool | None = None) -> None:
        self.in_process = (os.cpu_count() or 1) < 2 if in_process is None else in_process
        self.job: FloatJob | None = None
        self.done: FloatResult | None = None
        self.process: multiprocessing.process.BaseProcess | None = None
        self.jobs: Connection | None = None
        self.results: Connection | None = None
        self.parent_waiting: Event | None = None
        self.sender: threading.Thread | None = None
        self.ran_here = False  # the job ran in this process (one core, or the worker died)

    def spawn(self) -> None:
        """Start the worker now, at the lowest CPU priority; it waits for ``start``'s job."""
        if self.in_process or self.process is not None:
            return
        context = multiprocessing.get_context("spawn")
        self.results, result_sender = context.Pipe(duplex=False)
        job_receiver, self.jobs = context.Pipe(duplex=False)
        self.parent_waiting = context.Event()
        log_level = logging.getLogger("edge_yolov9").getEffectiveLevel()
        self.process = context.Process(target=_work, name="edge-yolov9 float half", daemon=True,
                                       args=(job_receiver, result_sender, log_level, self.parent_waiting))
        with _sigint_blocked():  # a Ctrl-C reaches the whole process group; this process stops the worker
            self.process.start()
        with contextlib.suppress(AttributeError, OSError):  # no priorities on this system: it just competes
            os.setpriority(os.PRIO_PROCESS, self.process.pid, WORKER_NICENESS)
        result_sender.close()  # the worker holds the only sending end: its death ends the pipe
        job_receiver.close()

    def start(self, job: FloatJob) -> None:
        self.job = job
        if self.in_process:
            self.ran_here = True
            self.done = run_float_job(job)
            return
        self.spawn()
        # The job goes as plain pickle bytes: through multiprocessing, torch would share every weight tensor as a
        # shared-memory file descriptor, hundreds of them, held open in this process after the worker is gone.
        # Sent from a thread: the worker reads it only once its imports are done, at its low priority.
        self.sender = threading.Thread(target=_send, args=(self.jobs, pickle.dumps(job)), name="edge-yolov9 float job",
                                       daemon=True)
        self.sender.start()

    def result(self) -> FloatResult:
        assert self.job is not None, "start() first"
        if self.done is not None:
            return self.done
        self.parent_waiting.set()
        try:
            outcome = self.results.recv()
        except EOFError:
            self.process.join()
            logger.warning("The float conversion's worker process died (exit code %s); converting the float model "
                           "here instead", self.process.exitcode)
            self.ran_here = True
            outcome = run_float_job(self.job)
        if isinstance(outcome, BaseException):
            raise outcome
        self.done = outcome
        return outcome

    @property
    def stage_prefix(self) -> str:
        """What the float half's stage names get in the conversion's summary: ``beside:`` when the worker ran them."""
        return "" if self.ran_here else BESIDE

    def close(self) -> None:
        """Stop the worker if it still runs (the conversion failed or was interrupted): nothing may write into
        the staging folder once it is discarded."""
        if self.process is not None:
            if self.process.is_alive():
                self.process.terminate()
            self.process.join()
            if self.sender is not None:
                self.sender.join()  # a job still unread fails to send now that the worker is gone
            self.jobs.close()
            self.results.close()
            self.process = None


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked on this thread while the worker is spawned: the worker inherits the blocked signal for its
    life (its parent stops it), and one that comes meanwhile reaches this process once unblocked or at once
    through another of its threads."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _send(connection: Connection, payload: bytes) -> None:
    with contextlib.suppress(OSError):  # the worker is gone: result() reruns the job here
        connection.send_bytes(payload)
