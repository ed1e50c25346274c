"""``edge-yolov9 convert`` as a function: checkpoint -> OUT/ with the float and int8 models, their
metadata, the Edge TPU precheck, the int8 accuracy report and (optionally) the compiled Edge TPU model.

Everything is written to a staging folder inside OUT and moved into place only at the end, so a
failed run leaves no file that looks like a good product. Exit codes (:class:`ExitCode`) tell a
complete result from one where the Edge TPU step could not be done or maps ops to the CPU, or where
the int8 model loses more accuracy than allowed.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator

from tqdm import tqdm

from edge_yolov9.cli import CONVERT_INPUT_SIZES, plural
from edge_yolov9.errors import EdgeYoloError, output_error, writing
from edge_yolov9.model_file import InputSize, edgetpu_path, sidecar_path, weights_notice, write_sidecar
from edge_yolov9.train.checkpoint import choose_input_size, file_sha256, load_checkpoint
from edge_yolov9.train.evaluate import TFLitePredictor
from edge_yolov9.train.models import YOLO

from .accuracy import AccuracyReport, ValSet, announce, find_val_set, score
from .calibration import DEFAULT_CALIBRATION_IMAGES, CalibrationSet, calibration_set
from .edgetpu import (CompileResult, CompilerNotFoundError, EdgeTpuReport, ExitCode, compile_for_edgetpu,
                      find_compiler, precheck)
from .export import calibrate_int8, check_layout, lower_int8, output_specs, prepare_for_export
from .float_branch import FloatBranch, FloatJob
from .frigate import LABELMAP, write_labelmap
from .metadata import build_metadata, metadata_for_compiled, save_with_metadata
from .quiet import raise_if_interrupted
from .stages import StageClock
from .tflite_model import TFLiteModel

logger = logging.getLogger(__name__)

FLOAT_MODEL, INT8_MODEL = "model_float.tflite", "model_int8.tflite"
COMPILED_MODEL = edgetpu_path(INT8_MODEL)
PRECHECK_STEM = f"{COMPILED_MODEL.stem}_precheck"
COMPILE_REPORT_STEM = f"{COMPILED_MODEL.stem}_compile"
ACCURACY_STEM = "model_int8_accuracy"
STAGING_PREFIX, STAGING_LOCK = ".convert-", ".lock"
# Every file a run may write; ones a run does not write again are removed from OUT so none goes stale.
PRODUCTS = (FLOAT_MODEL, sidecar_path(FLOAT_MODEL).name, INT8_MODEL, sidecar_path(INT8_MODEL).name,
            f"{PRECHECK_STEM}.json", f"{PRECHECK_STEM}.md", COMPILED_MODEL.name, sidecar_path(COMPILED_MODEL).name,
            COMPILED_MODEL.with_suffix(".log").name, f"{COMPILE_REPORT_STEM}.log", f"{COMPILE_REPORT_STEM}.json",
            f"{COMPILE_REPORT_STEM}.md", f"{ACCURACY_STEM}.json", f"{ACCURACY_STEM}.md", LABELMAP)


@dataclass(frozen=True)
class ConvertOptions:
    checkpoint: Path
    imgsz: int | tuple[int, int] | None  # None: the training size; (height, width) or a square; see CONVERT_INPUT_SIZES
    calib: Path
    out_dir: Path
    calib_images: int = DEFAULT_CALIBRATION_IMAGES
    uint8_io: bool = False
    edgetpu: bool = False
    compiler: Path | None = None
    min_runtime_version: int | None = None
    allow_cpu_ops: bool = False
    layout: str = "raw"  # edge_yolov9.model_file.LAYOUTS: per-level head maps, or Frigate's yolo-generic (+ labelmap.txt)
    accuracy: bool = True  # the int8 accuracy report (needs labelled images: val, or a calib data.yaml)
    val: Path | None = None  # None: the val split of calib when it is a data.yaml
    max_drop: float = 1.0  # AP points of mAP50-95 the int8 model may lose against PyTorch


@dataclass
class ConvertResult:
    out_dir: Path
    imgsz: InputSize
    files: dict[str, Path]
    precheck: EdgeTpuReport
    compile: CompileResult | None = None
    accuracy: AccuracyReport | None = None
    exit_code: ExitCode = ExitCode.OK
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)  # of the int8 model
    stage_seconds: dict[str, float] = field(default_factory=dict)  # wall time of each stage, in order


@dataclass
class _Staging:
    """A hidden folder inside OUT; ``publish`` moves its files into OUT, ``discard`` removes all traces.

    The run holds a lock on the folder while it lives: a folder found unlocked at the next start was left
    by a run that was killed, and is removed then (a run going on beside it keeps its own)."""

    out_dir: Path
    created_out_dir: bool
    path: Path
    lock: IO[str]

    @classmethod
    def open(cls, out_dir: Path) -> "_Staging":
        created = not out_dir.exists()
        with writing(out_dir, "the converted models"):
            out_dir.mkdir(parents=True, exist_ok=True)
            _remove_abandoned_staging(out_dir)
            path = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
            lock = open(path / STAGING_LOCK, "w")
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        return cls(out_dir, created, path, lock)

    def publish(self) -> dict[str, Path]:
        written = {p.name for p in self.path.iterdir()} - {STAGING_LOCK}
        for stale in set(PRODUCTS) - written:
            (self.out_dir / stale).unlink(missing_ok=True)
        files = {}
        for name in sorted(written):
            os.replace(self.path / name, self.out_dir / name)
            files[name] = self.out_dir / name
        self._release()
        self.path.rmdir()
        return files

    def discard(self) -> None:
        self._release()
        shutil.rmtree(self.path, ignore_errors=True)
        if self.created_out_dir and not any(self.out_dir.iterdir()):
            self.out_dir.rmdir()

    def _release(self) -> None:
        (self.path / STAGING_LOCK).unlink(missing_ok=True)
        self.lock.close()


def _remove_abandoned_staging(out_dir: Path) -> None:
    """Remove the staging folders in ``out_dir`` of runs that were killed (no process holds their lock)."""
    for folder in out_dir.glob(f"{STAGING_PREFIX}*"):
        try:
            with open(folder / STAGING_LOCK, "a") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # another convert into the same folder is running
        except OSError:
            pass  # no lock to take (a folder from an older version): abandoned as well
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("Removed %s, left by an interrupted convert", folder)


def convert_checkpoint(options: ConvertOptions) -> ConvertResult:
    """Run the whole conversion; raises :class:`EdgeYoloError` (and writes nothing) on bad input."""
    if options.out_dir.exists() and not options.out_dir.is_dir():
        raise EdgeYoloError(f"Output {options.out_dir} exists and is not a folder", "pass a folder with -o")
    clock = StageClock()
    with clock.stage("load"):
        model, labels, meta = load_checkpoint(options.checkpoint)
        imgsz = choose_input_size(model.cfg, options.imgsz, options.checkpoint, CONVERT_INPUT_SIZES)
        calibration = calibration_set(options.calib, imgsz, options.calib_images)
    compiler, compiler_missing = None, None
    if options.edgetpu:
        try:
            compiler = find_compiler(options.compiler)
        except CompilerNotFoundError as err:
            if options.compiler is not None:
                raise  # an explicit --compiler that is wrong is a usage error
            compiler_missing = err
    check_layout(model, labels, options.layout)
    float_branch = FloatBranch()
    float_branch.spawn()  # its imports run while this process loads and transforms the model
    try:
        with clock.stage("load"):
            val_set = find_val_set(options.calib, options.val, labels) if options.accuracy else None
        with clock.stage("deploy transform"):
            deployed = prepare_for_export(model)
        staging = _Staging.open(options.out_dir)
        try:
            result = _convert_into(staging.path, deployed, labels, calibration, options, compiler, val_set, clock,
                                   float_branch, meta.get("weights_license"))
            with clock.stage("writing"):
                result.files = staging.publish()
        except BaseException as err:
            float_branch.close()  # before the staging folder goes: the worker writes into it
            staging.discard()
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise output_error(err, options.out_dir, "the converted models") from None
            raise
    finally:
        float_branch.close()
    if result.compile is not None:  # point at the published files, not the staging folder
        compiled = result.compile.compiled_model
        result.compile.compiled_model = result.files[compiled.name] if compiled else None
        result.compile.log_path = result.files[result.compile.log_path.name]
    if compiler_missing is not None:
        result.exit_code = ExitCode.COMPILER_MISSING
        result.notes.append(str(compiler_missing))
    _judge_accuracy(result, options)
    result.stage_seconds = dict(clock.seconds)
    logger.info("%s", clock.summary())
    return result


def _convert_into(folder: Path, deployed: YOLO, labels: list[str], calibration: CalibrationSet,
                  options: ConvertOptions, compiler: Path | None, val_set: ValSet | None,
                  clock: StageClock, float_branch: FloatBranch, weights_license: dict[str, str] | None
                  ) -> ConvertResult:
    describe = dict(model_name=deployed.cfg.name, labels=labels, imgsz=calibration.imgsz, strides=deployed.strides,
                    reg_max=deployed.head.reg_max, outputs=output_specs(deployed, options.layout),
                    layout=options.layout, checkpoint=options.checkpoint,
                    checkpoint_sha256=file_sha256(options.checkpoint), weights_license=weights_license)

    float_branch.start(FloatJob(deployed, folder / FLOAT_MODEL, describe, val_set, options.checkpoint))
    with clock.stage("outlier pass"):
        calibration = calibration.without_outliers(deployed)
    logger.info("Converting %s (%s) at %s, calibrating on %d images from %s", deployed.cfg.name,
                plural(len(labels), "class"), calibration.imgsz, len(calibration.images), calibration.source)
    logger.info("Quantizing to int8: calibration, then conversion (the float model beside it)")
    inputs = tqdm(_stopping_when_interrupted(calibration.inputs()), total=len(calibration.images), desc="calibrating",
                  unit="img", disable=None, leave=False)
    with clock.stage("int8 calibration"):
        calibrated = calibrate_int8(deployed, calibration.imgsz, inputs, options.layout)
    with clock.stage("int8 lowering", ticker=True):
        int8_model = lower_int8(calibrated)
        if options.uint8_io:
            int8_model = int8_model.with_uint8_io()
        int8_metadata = build_metadata(int8_model, variant="int8", calibration=calibration.to_dict(), **describe)
        int8_path = save_with_metadata(int8_model, folder / INT8_MODEL, int8_metadata)
        if options.layout == "frigate":
            write_labelmap(folder / LABELMAP, labels)

    with clock.stage("Edge TPU precheck"):
        report = precheck(TFLiteModel.from_bytes(int8_path.read_bytes(), source=INT8_MODEL))
    report.save(folder / PRECHECK_STEM)
    result = ConvertResult(options.out_dir, calibration.imgsz, {}, report, metadata=int8_metadata)
    if weights_license:
        result.notes.append(weights_notice(weights_license))
    if report.failed:
        result.notes.append("The int8 model fails the Edge TPU precheck (it still runs on the CPU); "
                            f"see {PRECHECK_STEM}.md")
    if val_set is not None:
        announce(val_set)
        int8_score = score(val_set, "int8 TFLite", INT8_MODEL, TFLitePredictor(int8_path), clock=clock)
    with clock.stage("waiting for the float half"):
        floats = float_branch.result()
        float_branch.close()
    clock.add(floats.stage_seconds, prefix=float_branch.stage_prefix)
    if val_set is not None:
        result.accuracy = AccuracyReport.of(val_set, calibration.imgsz, *floats.references, int8_score,
                                            max_drop=options.max_drop)
        result.accuracy.save(folder / ACCURACY_STEM)
        logger.info("%s", result.accuracy.summary())
    if compiler is not None:
        with clock.stage("edgetpu_compiler"):
            result.compile = compile_for_edgetpu(int8_path, folder, compiler=compiler,
                                                 min_runtime_version=options.min_runtime_version)
        result.compile.report.model = INT8_MODEL
        result.compile.report.save(folder / COMPILE_REPORT_STEM)
        if result.compile.ok:
            compiled = TFLiteModel.from_file(result.compile.compiled_model)
            write_sidecar(result.compile.compiled_model, metadata_for_compiled(int8_metadata, compiled))
        result.exit_code = result.compile.exit_code(allow_cpu_ops=options.allow_cpu_ops)
    return result


def _stopping_when_interrupted(inputs: Iterator[Any]) -> Iterator[Any]:
    """``inputs``, stopped by a Ctrl-C that Python dropped while the previous image ran (quiet.sigint_remembered)."""
    for image in inputs:
        raise_if_interrupted()
        yield image


def _judge_accuracy(result: ConvertResult, options: ConvertOptions) -> None:
    """Why there is no accuracy report, or the exit code of an int8 drop beyond --max-drop (it outranks
    the Edge TPU codes: the CPU models themselves fall short)."""
    report = result.accuracy
    if report is None:
        if options.accuracy:
            why = "is an image folder (no labels)" if options.calib.is_dir() else "declares no `val` split"
            result.notes.append(f"No int8 accuracy report: the calibration source {options.calib} {why}; pass "
                                "--val data.yaml to measure the int8 drop, or --no-accuracy to skip it")
    elif not report.passed:
        result.exit_code = ExitCode.ACCURACY_DROP
        result.notes.append(f"The int8 model loses {report.drop:.2f} AP of mAP50-95 against PyTorch, more than "
                            f"--max-drop {options.max_drop:g}; see {ACCURACY_STEM}.md")
