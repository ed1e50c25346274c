"""Sub-commands of the runtime itself: ``detect``, ``bench`` and ``doctor``."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from .cli import add_command, print_result

logger = logging.getLogger(__name__)


def _detector(args: argparse.Namespace):
    from .detector import Detector

    labels = None
    if getattr(args, "labels", None):
        labels = [line.strip() for line in Path(args.labels).read_text().splitlines() if line.strip()]
    return Detector(args.model, device=args.device, threads=args.threads, labels=labels,
                    score_threshold=getattr(args, "conf", 0.25), iou_threshold=getattr(args, "iou", 0.45),
                    max_detections=getattr(args, "max_det", 100), classes=getattr(args, "classes", None))


def _detect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .annotate import draw_detections
    from .sources import describe

    kind, total = describe(args.source)  # a missing source fails before the model loads
    detector = _detector(args)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
    sink = open(args.json, "w") if args.json else None
    failures = frames = 0
    try:
        for result in tqdm(detector.detect_many(args.source), total=total, unit="frame", disable=kind == "image"):
            frames += 1
            if result.error is not None:
                failures += 1
                logger.error("%s", result.error)
            else:
                if args.save:
                    draw_detections(result.frame.image, result.detections).save(
                        args.save / f"{result.frame.stem}.jpg", quality=90)
                if kind == "image" and not sink:
                    for det in result.detections:
                        print(f"{det.label:<16} {det.score:.3f}  " + " ".join(f"{v:.1f}" for v in det.box))
            if sink:
                sink.write(json.dumps(result.to_dict()) + "\n")
    finally:
        if sink:
            sink.close()
    if failures:
        logger.warning("%d of %d frames could not be read (listed above%s)", failures, frames,
                       f" and in {args.json}" if args.json else "")
    return 1 if failures else 0


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
        detector.detect(image)
        timing = vars(detector.timing)
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
    from .doctor import render, run_checks

    checks = run_checks(args.model)
    print_result([c.to_dict() for c in checks] if args.json else checks, args.json, render)
    return 0 if all(c.ok for c in checks if c.required) else 1


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a .tflite from `edge-yolov9 convert` (or its _edgetpu compilation)")
    parser.add_argument("--device", default="auto", help="auto, cpu, usb, usb:N, pci, pci:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the interpreter (default: all)")
    parser.add_argument("--labels", help="a file with one class name per line, for models without metadata")


def register(subparsers: argparse._SubParsersAction) -> None:
    detect = add_command(
        subparsers, "detect", _detect, help="detect objects in an image, a folder, a video or a camera",
        description="Run a converted model on SOURCE: an image, a folder of images, a video file or a camera "
                    "index (video and cameras need OpenCV: pip install 'edge-yolov9[video]'). Prints the "
                    "detections of a single image; --save writes annotated images, --json writes JSON lines "
                    "(one per frame). Unreadable frames are reported and skipped; the exit code is then 1.")
    _model_arguments(detect)
    detect.add_argument("source", help="image, folder, video file or camera index")
    detect.add_argument("--conf", type=float, default=0.25, help="score threshold")
    detect.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold")
    detect.add_argument("--max-det", type=int, default=100, help="detections per image at most")
    detect.add_argument("--classes", type=int, nargs="+", help="keep only these class ids")
    detect.add_argument("--save", type=Path, metavar="DIR", help="write annotated images here")
    detect.add_argument("--json", type=Path, metavar="FILE", help="write JSON lines here")

    bench = add_command(
        subparsers, "bench", _bench, help="latency of pre-process, invoke and post-process, and FPS",
        description="Time Detector.detect on one image (default: a fixed synthetic frame): median, p90 and p99 "
                    "of each stage after warm-up. On an Edge TPU the first inference loads the model onto the "
                    "device, which the warm-up absorbs.")
    _model_arguments(bench)
    bench.add_argument("--image", help="image to run on")
    bench.add_argument("--runs", type=int, default=100)
    bench.add_argument("--warmup", type=int, default=10)
    bench.add_argument("--json", action="store_true", help="print JSON")

    doctor = add_command(
        subparsers, "doctor", _doctor, help="check this machine for what the runtime and the Coral need",
        description="Check Python, NumPy, the TFLite interpreter packages (and the NumPy 2 clash of "
                    "tflite-runtime), the Edge TPU runtime (libedgetpu) and Coral devices on USB and PCIe; "
                    "with --model, that the model reads as TFLite, has metadata, that an Edge TPU model has "
                    "its TPU or a CPU twin, and that the interpreter loads it. Each line is OK or says the fix. "
                    "Exit 1 when a required check fails.")
    doctor.add_argument("--model", type=Path, help="also check this .tflite and what it needs to run")
    doctor.add_argument("--json", action="store_true", help="print JSON")
