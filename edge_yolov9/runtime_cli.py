"""Sub-commands of the runtime itself: ``detect``, ``bench`` and ``doctor``."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .cli import add_command, existing_file, float_arg, int_arg, plural, print_result
from .errors import OutputError, output_error, writing
from .postprocess import PostprocessConfig

logger = logging.getLogger(__name__)


def _labels(args: argparse.Namespace) -> tuple[str, ...] | None:
    if not args.labels:
        return None
    return tuple(line.strip() for line in args.labels.read_text(encoding="utf-8-sig").splitlines() if line.strip())


def _detector(args: argparse.Namespace, **postprocess_options: Any):
    from .detector import Detector

    return Detector(args.model, device=args.device, threads=args.threads, labels=_labels(args), **postprocess_options)


def _batch_detector(args: argparse.Namespace, config: PostprocessConfig):
    """detect's detector: an Edge TPU model runs in a child process that a libedgetpu abort (a Coral that browns
    out or is unplugged mid-run) does not take this process, and its unwritten results, with it."""
    from .isolated import DetectorSpec, IsolatedDetector, runs_on_edgetpu

    if not runs_on_edgetpu(args.model, args.device):
        return contextlib.nullcontext(_detector(args, config=config))
    return IsolatedDetector(DetectorSpec(str(args.model), args.device, args.threads, config, labels=_labels(args)))


def _check_save_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--save {folder} is a file, not a folder", "pass a folder (it is created when missing)")
    with writing(folder, "annotated images"):
        folder.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def _json_lines(path: Path) -> Iterator[Any]:
    """``path`` opened for this run's JSON lines, and locked: a second ``detect`` writing the same file
    would interleave and corrupt lines, so it is refused before it writes anything."""
    if path.is_dir():
        raise OutputError(f"--json {path} is a folder", "pass a file name, e.g. detections.jsonl")
    with writing(path, "JSON lines"):
        path.parent.mkdir(parents=True, exist_ok=True)
        sink = open(path, "a", encoding="utf-8")
    try:
        try:
            fcntl.flock(sink.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"Another program is writing {path} (an `edge-yolov9 detect` still running?)",
                              "wait for it to finish, or write to another --json file") from None
        with writing(path, "JSON lines"):
            sink.truncate(0)
            yield sink
            sink.flush()
    finally:
        with contextlib.suppress(OSError):  # a full disk already raised above; closing must not hide it
            sink.close()


def _save_annotated(image: Any, target: Path) -> None:
    """Write one annotated JPEG; a write that fails (a full disk) leaves no truncated file behind."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, quality=90)
    except OSError as err:
        with contextlib.suppress(OSError):
            target.unlink()
        raise output_error(err, target, "an annotated image") from None


def _detect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .isolated import DetectorProcessError
    from .sources import describe

    kind, total = describe(args.source)  # a missing source fails before the model loads
    if args.save:
        _check_save_folder(args.save)
    config = PostprocessConfig(score_threshold=args.conf, iou_threshold=args.iou, max_detections=args.max_det,
                               classes=None if args.classes is None else tuple(args.classes))
    failures = frames = 0
    with contextlib.ExitStack() as stack:
        detector = stack.enter_context(_batch_detector(args, config))
        sink = stack.enter_context(_json_lines(args.json)) if args.json else None
        try:
            for result in tqdm(detector.detect_many(args.source), total=total, unit="frame", disable=kind == "image"):
                frames += 1
                failures += result.error is not None
                _report(result, args, print_detections=kind == "image" and not sink)
                if sink:
                    sink.write(json.dumps(result.to_dict()) + "\n")
                    sink.flush()  # a native crash (libedgetpu aborts) loses nothing written before it
        except DetectorProcessError as err:  # the Edge TPU gave out for good: say what is kept
            kept = f", their results are in {args.json}" if sink else ""
            raise DetectorProcessError(f"{err.problem}; {plural(frames, 'frame')} done before it{kept}",
                                       err.fix) from None
    if failures:
        logger.warning("%d of %d frames could not be read (listed above%s)", failures, frames,
                       f" and in {args.json}" if args.json else "")
    return 1 if failures else 0


def _report(result: Any, args: argparse.Namespace, print_detections: bool) -> None:
    """One frame's error logged, or its annotated image saved (--save) and its detections printed."""
    from .annotate import draw_detections

    if result.error is not None:
        logger.error("%s", result.error)
        return
    if args.save:
        _save_annotated(draw_detections(result.frame.image, result.detections, result.frame.full_size),
                        args.save / f"{result.frame.stem}.jpg")
    if print_detections:
        for det in result.detections:
            print(f"{det.label:<16} {det.score:.3f}  " + " ".join(f"{v:.1f}" for v in det.box))


def _percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values)
    return {"median": round(float(np.median(array)), 3), "p90": round(float(np.percentile(array, 90)), 3),
            "p99": round(float(np.percentile(array, 99)), 3)}


def _bench(args: argparse.Namespace) -> int:
    from .preprocess import load_image

    detector = _detector(args)
    if args.image:
        image = load_image(args.image)
    else:  # a fixed textured frame: the invoke time does not depend on the content
        image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for _ in range(args.warmup):
        detector.detect(image)
    stages: dict[str, list[float]] = {"preprocess": [], "invoke": [], "postprocess": [], "total": []}
    started = time.perf_counter()
    for _ in range(args.runs):
        timing = vars(detector.detect_with_timing(image)[1])
        for stage, value in timing.items():
            stages[stage].append(value)
        stages["total"].append(sum(timing.values()))
    elapsed = time.perf_counter() - started
    result = {"model": str(detector.model_path), "device": detector.device_used, "input": list(detector.info.size),
              "threads": args.threads, "runs": args.runs, "fps": round(args.runs / elapsed, 2),
              "latency_ms": {stage: _percentiles(values) for stage, values in stages.items()}}

    def render(r: dict) -> str:
        lines = [f"{r['model']} on {r['device']}, input {r['input'][0]}x{r['input'][1]}, {r['runs']} runs",
                 f"{'stage':<12} {'median':>8} {'p90':>8} {'p99':>8}  (ms)"]
        lines += [f"{stage:<12} {v['median']:>8.2f} {v['p90']:>8.2f} {v['p99']:>8.2f}"
                  for stage, v in r["latency_ms"].items()]
        lines.append(f"throughput   {r['fps']:.1f} FPS")
        return "\n".join(lines)

    print_result(result, args.json, render)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from . import host
    from .doctor import render, run_checks
    from .usb_power import power_cycle_usb_corals

    if args.power_cycle_usb:
        logger.info("Power-cycled %s; checking again", ", ".join(power_cycle_usb_corals(host.ROOT)))
    checks = run_checks(args.model)
    print_result([c.to_dict() for c in checks] if args.json else checks, args.json, render)
    return 0 if all(c.ok for c in checks if c.required) else 1


def _source(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty source; pass an image, a folder, a video file or a camera index "
                                         "(use . for the current folder)")
    return text


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a .tflite from `edge-yolov9 convert` (or its _edgetpu compilation)")
    parser.add_argument("--device", default="auto", help="auto, cpu, usb, usb:N, pci, pci:N")
    parser.add_argument("--threads", type=int_arg(1, 64), default=None,
                        help="CPU threads of the interpreter (default: all)")
    parser.add_argument("--labels", type=existing_file,
                        help="a file with one class name per line, for models without metadata")


def register(subparsers: argparse._SubParsersAction) -> None:
    detect = add_command(
        subparsers, "detect", _detect, help="detect objects in an image, a folder, a video or a camera",
        description="Run a converted model on SOURCE: an image, a folder of images, a video file or a camera "
                    "index (video and cameras need OpenCV: pip install 'edge-yolov9[video]'). Prints the "
                    "detections of a single image; --save writes annotated images (a folder's sub-folders "
                    "mirrored), --json writes JSON lines (one per frame). Unreadable frames are reported and "
                    "skipped; the exit code is then 1.")
    _model_arguments(detect)
    detect.add_argument("source", type=_source, help="image, folder, video file or camera index")
    detect.add_argument("--conf", type=float_arg(0, 1, low_open=True), default=PostprocessConfig.score_threshold,
                        help="score threshold")
    detect.add_argument("--iou", type=float_arg(0, 1, low_open=True), default=PostprocessConfig.iou_threshold,
                        help="NMS IoU threshold")
    detect.add_argument("--max-det", type=int_arg(1), default=PostprocessConfig.max_detections,
                        help="detections per image at most")
    detect.add_argument("--classes", type=int_arg(0), nargs="+", help="keep only these class ids")
    detect.add_argument("--save", type=Path, metavar="DIR", help="write annotated images here")
    detect.add_argument("--json", type=Path, metavar="FILE", help="write JSON lines here")

    bench = add_command(
        subparsers, "bench", _bench, help="latency of pre-process, invoke and post-process, and FPS",
        description="Time Detector.detect on one image (default: a fixed synthetic frame): median, p90 and p99 "
                    "of each stage after warm-up. On an Edge TPU the first inference loads the model onto the "
                    "device, which the warm-up absorbs.")
    _model_arguments(bench)
    bench.add_argument("--image", type=existing_file, help="image to run on")
    bench.add_argument("--runs", type=int_arg(1), default=100)
    bench.add_argument("--warmup", type=int_arg(0), default=10)
    bench.add_argument("--json", action="store_true", help="print JSON")
    doctor = add_command(
        subparsers, "doctor", _doctor, help="check this machine for what the runtime and the Coral need",
        description="Check Python, NumPy, the TFLite interpreter packages, the Edge TPU runtime (libedgetpu: "
                    "its build, the interpreter it pairs with, and a load of its delegate in a child process) "
                    "and Coral devices on USB and PCIe; "
                    "with --model, that the model reads as TFLite, has metadata, that an Edge TPU model has "
                    "its TPU or a CPU twin, and that the interpreter loads it. Each line is OK or says the fix. "
                    "Exit 1 when a required check fails.")
    doctor.add_argument("--model", type=Path, help="also check this .tflite and what it needs to run")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.add_argument("--power-cycle-usb", action="store_true",
                        help="first power-cycle the USB Coral's port with uhubctl (a Coral wedged after a USB fault; "
                             "a Pi 4 switches all its USB ports together)")
