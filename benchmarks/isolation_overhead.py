"""What running the model in a child process costs per frame: ``edge-yolov9 detect`` runs an Edge TPU model
in one (``edge_yolov9.isolated``) so that a libedgetpu abort does not take the command with it, and the daemon
always does.

The same int8 model, on the CPU, in this process (``Detector.detect_prepared``) and in a child
(``DetectorProcess.detect_prepared``: the input tensor and its placement over a pipe, the detections back),
frame for frame alternating, on real-image inputs; the difference of the medians is the price of the child.
It does not depend on the device that runs the model.

    python benchmarks/isolation_overhead.py [--model M.tflite ...] [--frames 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from latency import DEFAULT_WORK, calibration_source, converted


def time_frames(model: Path, frames: int, threads: int, warmup: int = 10) -> tuple[list[float], list[float]]:
    """Milliseconds per frame in this process and in a child, alternating, over ``frames`` real images."""
    from edge_yolov9.detector import Detector
    from edge_yolov9.isolated import DetectorProcess, DetectorSpec
    from edge_yolov9.sources import folder_images

    here = Detector(model, device="cpu", threads=threads)
    images = folder_images(calibration_source())
    prepared = [here.prepare(images[i % len(images)]) for i in range(min(frames, 64))]
    inside, child = [], []
    with DetectorProcess(DetectorSpec(str(model), "cpu", threads)) as process:
        process.start()
        for index in range(warmup + frames):
            frame = prepared[index % len(prepared)]
            for detect, spent in ((here.detect_prepared, inside), (process.detect_prepared, child)):
                started = time.perf_counter()
                detect(frame)
                if index >= warmup:
                    spent.append((time.perf_counter() - started) * 1e3)
    return inside, child


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, nargs="+", help="int8 .tflite files (default: GELAN-T at 320 and "
                                                               "640, converted and cached as latency.py does)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    models = args.model or [converted("gelan-t", size, 8, DEFAULT_WORK, False)[1] for size in (320, 640)]
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; {args.frames} frames, "
          f"{args.threads} interpreter threads, load before: {os.getloadavg()[0]:.2f}")
    print("| model | in this process, median / p90 ms | in a child process | child - here (median) |")
    print("|---|---|---|---|")
    for model in models:
        inside, child = time_frames(model, args.frames, args.threads)
        print(f"| {model.name} | {np.median(inside):.2f} / {np.percentile(inside, 90):.2f} | "
              f"{np.median(child):.2f} / {np.percentile(child, 90):.2f} | "
              f"{np.median(child) - np.median(inside):+.2f} ms |")


if __name__ == "__main__":
    main()
