"""The float half of a conversion, in a second process beside the int8 lowering.

The int8 lowering (litert-torch tracing the quantized graph) is pure Python: it keeps one core busy for a
third of a conversion and leaves the others idle. The float lowering and the two reference scores of the
accuracy report (PyTorch, float TFLite) need nothing from the int8 model, so a worker process does them on
an idle core meanwhile. The worker starts with the int8 lowering, not before: its imports would slow the
calibration, which keeps both cores busy. On a single core, or when the worker dies, the same steps run in
this process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from edge_yolov9.train.models import YOLO

from .accuracy import ModelAccuracy, ValSet, score_references
from .export import convert_float
from .metadata import build_metadata, save_with_metadata
from .stages import StageClock

logger = logging.getLogger(__name__)

BESIDE = "beside: "  # prefix of the worker's stage names in the stage summary


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


def run_float_job(job: FloatJob, threads: int | None = None) -> FloatResult:
    """Float lowering, then the reference scores; ``threads`` for torch and the interpreter (None: unchanged)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    clock = StageClock()
    with clock.stage("float lowering"):
        float_model = convert_float(job.deployed, job.describe["imgsz"], job.describe["layout"])
        save_with_metadata(float_model, job.path, build_metadata(float_model, variant="float", **job.describe))
    references = None
    if job.val_set is not None:
        references = score_references(job.val_set, job.deployed, job.checkpoint, job.path, threads=threads,
                                      clock=clock)
    return FloatResult(job.path, references, clock.seconds)


def _work(job: bytes, results: Connection, log_level: int) -> None:
    """The worker process: one core beside the int8 lowering's one; the result, or the error, sent back."""
    logging.basicConfig(level=log_level, format="%(message)s")
    try:
        outcome: FloatResult | BaseException = run_float_job(pickle.loads(job), threads=1)
    except BaseException as err:  # noqa: BLE001: handed to the parent, which raises it
        outcome = err
    try:
        results.send(outcome)
    except Exception:  # an error that does not pickle: its text does
        results.send(RuntimeError(f"{type(outcome).__name__}: {outcome}"))


class FloatBranch:
    """The float half of one conversion: ``start`` hands the job to a spawned worker process (no fork of a
    process running torch threads), ``result`` waits for it. A worker that dies (out of memory, a crash in
    native code) costs time, not the conversion: the job is rerun here, with a warning. ``in_process`` runs the
    job at ``start`` instead (default: on a machine with one core)."""

    def __init__(self, in_process: bool | None = None) -> None:
        self.in_process = (os.cpu_count() or 1) < 2 if in_process is None else in_process
        self.job: FloatJob | None = None
        self.done: FloatResult | None = None
        self.process: multiprocessing.process.BaseProcess | None = None
        self.results: Connection | None = None

    def start(self, job: FloatJob) -> None:
        self.job = job
        if self.in_process:
            self.done = run_float_job(job)
            return
        context = multiprocessing.get_context("spawn")
        self.results, sender = context.Pipe(duplex=False)
        # The job goes as plain pickle bytes: through multiprocessing, torch would share every weight tensor as a
        # shared-memory file descriptor, hundreds of them, held open in this process after the worker is gone.
        self.process = context.Process(target=_work, name="edge-yolov9 float half", daemon=True,
                                       args=(pickle.dumps(job), sender,
                                             logging.getLogger("edge_yolov9").getEffectiveLevel()))
        self.process.start()
        sender.close()  # the worker holds the only sending end: its death ends the pipe

    def result(self) -> FloatResult:
        assert self.job is not None, "start() first"
        if self.done is not None:
            return self.done
        try:
            outcome = self.results.recv()
        except EOFError:
            self.process.join()
            logger.warning("The float conversion's worker process died (exit code %s); converting the float model "
                           "here instead", self.process.exitcode)
            outcome = run_float_job(self.job)
        if isinstance(outcome, BaseException):
            raise outcome
        self.done = outcome
        return outcome

    def close(self) -> None:
        """Stop the worker if it still runs (the conversion failed or was interrupted): nothing may write into
        the staging folder once it is discarded."""
        if self.process is not None:
            if self.process.is_alive():
                self.process.terminate()
            self.process.join()
            self.results.close()
            self.process = None
