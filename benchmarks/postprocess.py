"""Post-processing cost on the Pi path: decode + NMS of int8 head outputs, next to the invoke time.

Targets (issue 4): at 320 with 80 classes, decode + NMS under 1 ms median on this machine, and under
10% of the invoke time at every size. The outputs are int8 maps as the converted model emits them:
a scene of ``--objects`` objects, each lighting up a cluster of anchors on every level, the rest of
the class map far below the score threshold. The invoke time comes from an int8 GELAN-T converted
here (random weights: the latency of a model does not depend on its weights).

    python benchmarks/postprocess.py [--sizes 320 416 640] [--objects 20] [--runs 300]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_yolov9.model_file import STRIDES
from edge_yolov9.postprocess import PostprocessConfig, postprocess

NUM_CLASSES = 80
BOX_QUANT = (0.25, 0)      # box bin logits in [-32, 32)
CLS_QUANT = (1 / 16, 0)    # the converter fixes class logits to this scale (range -8 .. 7.94)


def scene_outputs(size: int, objects: int, rng: np.random.Generator) -> tuple[list, list]:
    """int8 box and class maps (H, W, C) of one frame holding ``objects`` objects: the 3x3 anchors
    around each object's centre, on the level that fits its size, score its class and predict its box."""
    boxes, classes = [], []
    scene = [(rng.uniform(20, size - 20, 2), rng.uniform(16, size / 3, 2), rng.integers(NUM_CLASSES))
             for _ in range(objects)]
    for stride in STRIDES:
        h = w = size // stride
        # Each object is predicted on the level that fits its size, as a trained head does.
        on_level = [o for o in scene if STRIDES[min(int(np.log2(max(o[1]) / 32).clip(0, 2)), 2)] == stride]
        bins = np.full((h, w, 4, 16), -40, np.int8)   # flat, low-confidence boxes elsewhere
        cls = rng.integers(-128, -100, (h, w, NUM_CLASSES), dtype=np.int8)  # logits -8 .. -6.3
        for (cx, cy), (bw, bh), c in on_level:
            gx, gy = int(cx // stride), int(cy // stride)
            for y in range(max(0, gy - 1), min(h, gy + 2)):
                for x in range(max(0, gx - 1), min(w, gx + 2)):
                    ax, ay = (x + 0.5) * stride, (y + 0.5) * stride
                    sides = np.array([ax - (cx - bw / 2), ay - (cy - bh / 2), cx + bw / 2 - ax, cy + bh / 2 - ay])
                    distance = np.clip(np.round(sides / stride), 0, 15).astype(int)
                    bins[y, x] = -40
                    bins[y, x, np.arange(4), distance] = 40
                    cls[y, x, c] = rng.integers(16, 80)  # logits 1 .. 5
        boxes.append(bins.reshape(h, w, 64))
        classes.append(cls)
    return boxes, classes


def time_postprocess(size: int, objects: int, runs: int) -> dict:
    rng = np.random.default_rng(0)
    frames = [scene_outputs(size, objects, rng) for _ in range(8)]
    config = PostprocessConfig()
    quant = ([BOX_QUANT] * 3, [CLS_QUANT] * 3)
    times, detections = [], 0
    for i in range(runs + 20):
        boxes, classes = frames[i % len(frames)]
        started = time.perf_counter()
        result = postprocess(boxes, classes, channels_last=True, config=config, box_quant=quant[0],
                             cls_quant=quant[1])
        if i >= 20:
            times.append((time.perf_counter() - started) * 1e3)
            detections += len(result[1])
    return {"median_ms": round(float(np.median(times)), 3), "p90_ms": round(float(np.percentile(times, 90)), 3),
            "detections_per_frame": round(detections / runs, 1)}


def time_invoke(size: int, runs: int, folder: Path) -> float:
    """Median invoke ms of an int8 GELAN-T at ``size`` with ai-edge-litert on 2 threads."""
    import torch

    from edge_yolov9.convert.export import convert_int8
    from edge_yolov9.train.models import create_model
    from edge_yolov9.train.models.deploy import deploy_model

    from edge_yolov9.interpreter import find_backend

    torch.manual_seed(0)
    model = deploy_model(create_model("gelan-t", num_classes=NUM_CLASSES), for_export=True)
    rng = np.random.default_rng(0)
    calibration = [rng.random((1, size, size, 3), dtype=np.float32) for _ in range(4)]
    path = convert_int8(model, size, calibration).save(folder / f"gelan_t_{size}.tflite")
    interpreter = find_backend().interpreter(model_path=str(path), num_threads=2)
    interpreter.allocate_tensors()
    [inp] = interpreter.get_input_details()
    interpreter.set_tensor(inp["index"], np.zeros(inp["shape"], np.int8))
    times = []
    for i in range(runs + 5):
        started = time.perf_counter()
        interpreter.invoke()
        if i >= 5:
            times.append((time.perf_counter() - started) * 1e3)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 416, 640])
    parser.add_argument("--objects", type=int, default=20)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--invoke-runs", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            post = time_postprocess(size, args.objects, args.runs)
            invoke = time_invoke(size, args.invoke_runs, Path(tmp))
            rows.append({"size": size, **post, "invoke_median_ms": round(invoke, 2),
                         "post_share_of_invoke": round(post["median_ms"] / invoke, 4)})
    result = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "classes": NUM_CLASSES,
              "objects": args.objects, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"decode + NMS of int8 outputs, {NUM_CLASSES} classes, {args.objects} objects per frame")
    print(f"{'size':>5} {'post median':>12} {'post p90':>9} {'dets':>5} {'invoke':>9} {'post/invoke':>12}")
    for r in rows:
        print(f"{r['size']:>5} {r['median_ms']:>10.3f}ms {r['p90_ms']:>7.3f}ms {r['detections_per_frame']:>5} "
              f"{r['invoke_median_ms']:>7.2f}ms {100 * r['post_share_of_invoke']:>11.2f}%")


if __name__ == "__main__":
    main()
