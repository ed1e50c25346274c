"""Float vs int8 TFLite invoke latency (median, p90) with ai-edge-litert on 2 threads, GELAN-T and GELAN-S
at 320, 416 and 640 (issue "Convert").

The models have random weights with BatchNorm statistics estimated on real images
(``train.models.batchnorm``): latency does not depend on the weights, but realistic activation ranges keep
the float model clear of denormals and give the int8 model the ranges a trained one has. The int8
model is calibrated on a few coco128 images from ../shared, or on the built-in synthetic shapes
when ../shared is absent. Conversions are the slow part, so both models of each (variant, size)
are cached under ``--work``. Float and int8 invokes alternate, so background load hits both alike.

    python benchmarks/latency.py [--models gelan-t gelan-s] [--sizes 320 416 640] [--runs 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COCO128 = ROOT.parent / "shared" / "data" / "coco128" / "images" / "train2017"
DEFAULT_WORK = Path.home() / ".cache" / "edge-yolov9" / "bench"


def calibration_source() -> Path:
    """coco128 from ../shared, else a small built-in synthetic set (generated once, cached)."""
    if COCO128.is_dir():
        return COCO128
    from edge_yolov9.train.synthetic import builtin_dataset

    return builtin_dataset(num_train=16, num_val=1)


def converted(name: str, size: int, calib_images: int, work: Path, fresh: bool) -> tuple[Path, Path]:
    """The float and int8 .tflite of ``name`` at ``size``, converted unless cached in ``work``."""
    paths = work / f"{name}_{size}_float.tflite", work / f"{name}_{size}_int8.tflite"
    if not fresh and all(p.is_file() for p in paths):
        return paths
    import torch

    from edge_yolov9.convert.calibration import calibration_set
    from edge_yolov9.convert.export import convert_float, convert_int8, prepare_for_export
    from edge_yolov9.train.models import create_model
    from edge_yolov9.train.models.batchnorm import estimate_batchnorm_statistics

    calibration = calibration_set(calibration_source(), size, calib_images)
    torch.manual_seed(0)
    model = prepare_for_export(estimate_batchnorm_statistics(create_model(name, num_classes=80), calibration.images))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    convert_float(model, size).save(paths[0])
    convert_int8(model, size, calibration.inputs()).save(paths[1])
    print(f"converted {name} at {size} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return paths


def time_invokes(paths: tuple[Path, Path], threads: int, runs: int, warmup: int) -> list[dict[str, float]]:
    """Median and p90 invoke ms of each model, invokes alternating between them, on a real-image input."""
    from ai_edge_litert.interpreter import Interpreter

    from edge_yolov9.convert.calibration import calibration_set

    interpreters = []
    for path in paths:
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
        [detail] = interpreter.get_input_details()
        size = int(detail["shape"][1])
        image = next(calibration_set(calibration_source(), size, 1).inputs())
        if detail["dtype"] == np.int8:  # the runtime feeds pixel - 128
            image = (np.round(image * 255).astype(np.uint8) ^ 0x80).view(np.int8)
        interpreter.set_tensor(detail["index"], image)
        interpreters.append(interpreter)
    times: list[list[float]] = [[] for _ in interpreters]
    for run in range(warmup + runs):
        for interpreter, spent in zip(interpreters, times):
            started = time.perf_counter()
            interpreter.invoke()
            if run >= warmup:
                spent.append((time.perf_counter() - started) * 1e3)
    return [{"median_ms": round(float(np.median(t)), 2), "p90_ms": round(float(np.percentile(t, 90)), 2)}
            for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["gelan-t", "gelan-s"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 416, 640])
    parser.add_argument("--runs", type=int, default=100, help="timed invokes of each model")
    parser.add_argument("--warmup", type=int, default=10, help="untimed invokes of each model first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calib-images", type=int, default=8)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="cache of the converted models")
    parser.add_argument("--fresh", action="store_true", help="convert again even when cached")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rows = []
    for name in args.models:
        for size in args.sizes:
            paths = converted(name, size, args.calib_images, args.work, args.fresh)
            load = os.getloadavg()[0]
            float_ms, int8_ms = time_invokes(paths, args.threads, args.runs, args.warmup)
            rows.append({"model": name, "size": size, "float": float_ms, "int8": int8_ms,
                         "int8_speedup": round(float_ms["median_ms"] / int8_ms["median_ms"], 2),
                         "load_before": round(load, 2)})
    from ai_edge_litert import __version__ as litert_version

    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(),
              "ai_edge_litert": litert_version, "threads": args.threads, "runs": args.runs, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"invoke latency, ai-edge-litert {litert_version}, {args.threads} threads, {args.runs} runs "
          f"({result['machine']})")
    print(f"{'model':<8} {'size':>4} {'float median':>12} {'p90':>8} {'int8 median':>11} {'p90':>8} "
          f"{'speed-up':>8} {'load':>5}")
    for r in rows:
        print(f"{r['model']:<8} {r['size']:>4} {r['float']['median_ms']:>10.2f}ms {r['float']['p90_ms']:>6.2f}ms "
              f"{r['int8']['median_ms']:>9.2f}ms {r['int8']['p90_ms']:>6.2f}ms {r['int8_speedup']:>7.2f}x "
              f"{r['load_before']:>5.2f}")


if __name__ == "__main__":
    main()
