"""Soak run of the daemon: thousands of frames from a looping video file, against the bare detect loop.

Targets (issue 6): the daemon's memory stays flat (RSS growth under 5 % from the first to the last
minute, daemon and detector process together) and its end-to-end FPS is at least 90 % of a bare
``Detector.detect`` loop over the same video with the same model and threads, measured side by side
in this run. The daemon runs as users run it: detector in its own process, HTTP on (with a client
polling /api/stats and /api/latest.jpg once a second), the source read in its thread.

    python benchmarks/daemon_soak.py [--model MODEL.tflite] [--frames 3000] [--threads 2]

The default model is the demo's (``bash scripts/demo.sh``: runs/demo/int8/model_int8.tflite); the video
is made from the 128 coco128 images in ../shared (640x480, MJPG).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from edge_yolov9.detector import Detector
from edge_yolov9.sources import iter_frames
from edge_yolov9.daemon.config import DaemonConfig
from edge_yolov9.daemon.daemon import Daemon
from edge_yolov9.daemon.stats import rss_bytes

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "runs" / "demo" / "int8" / "model_int8.tflite"
COCO128 = ROOT.parent / "shared" / "data" / "coco128" / "images" / "train2017"
WARMUP_FRAMES = 50


def make_video(path: Path, size: tuple[int, int] = (640, 480)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, size)
    for image in sorted(COCO128.glob("*.jpg")):
        rgb = np.asarray(Image.open(image).convert("RGB").resize(size))
        writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
    writer.release()
    return path


def bare_loop(model: Path, video: Path, frames: int, threads: int) -> float:
    """Frames per second of decode + Detector.detect in one loop, the video replayed as needed."""
    detector = Detector(model, threads=threads)
    done, started = 0, 0.0
    while done < frames + WARMUP_FRAMES:
        for frame in iter_frames(video):
            if done == WARMUP_FRAMES:
                started = time.perf_counter()
            detector.detect(frame.image)
            done += 1
            if done == frames + WARMUP_FRAMES:
                break
    return frames / (time.perf_counter() - started)


def poll_http(url: str, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        for path in ("/api/stats", "/api/latest.jpg"):
            try:
                urllib.request.urlopen(url + path, timeout=5).read()
            except OSError:
                pass


def daemon_run(model: Path, video: Path, frames: int, threads: int) -> dict:
    config = DaemonConfig.model_validate({
        "name": "soak", "model": {"path": str(model), "threads": threads},
        "source": {"uri": str(video), "loop": True}, "http": {"port": 0}})
    daemon = Daemon(config)
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    stop = threading.Event()
    memory: list[tuple[float, int]] = []

    def total_rss() -> int:
        return (rss_bytes() or 0) + (rss_bytes(daemon.detector.pid) if daemon.detector.pid else 0)

    try:
        while daemon.stats.frames_detected < WARMUP_FRAMES:
            time.sleep(0.05)
        threading.Thread(target=poll_http, args=(daemon.http.url, stop), daemon=True).start()
        first, started = daemon.stats.frames_detected, time.perf_counter()
        while daemon.stats.frames_detected - first < frames:
            memory.append((time.perf_counter() - started, total_rss()))
            time.sleep(1.0)
        elapsed = time.perf_counter() - started
        detected = daemon.stats.frames_detected - first
        stats = daemon.stats.to_dict()
    finally:
        stop.set()
        daemon.stop()
        runner.join(timeout=60)
    minute = min(60.0, elapsed / 4)
    early = [rss for t, rss in memory if t <= minute]
    late = [rss for t, rss in memory if t >= elapsed - minute]
    return {"fps": detected / elapsed, "frames": detected, "seconds": elapsed,
            "rss_start_mb": np.median(early) / 2**20, "rss_end_mb": np.median(late) / 2**20,
            "rss_peak_mb": max(r for _, r in memory) / 2**20, "window_s": minute,
            "dropped": stats["source"]["dropped"], "errors": stats["source"]["errors"],
            "restarts": stats["detector"]["restarts"], "inference_ms": stats["detector"]["inference_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEMO_MODEL)
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.model.is_file():
        parser.error(f"{args.model} not found: run `bash scripts/demo.sh` or pass --model")
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "coco128.avi")
        bare = bare_loop(args.model, video, args.frames, args.threads)
        soak = daemon_run(args.model, video, args.frames, args.threads)
    growth = soak["rss_end_mb"] / soak["rss_start_mb"] - 1
    ratio = soak["fps"] / bare
    result = {"model": str(args.model), "threads": args.threads, "machine": f"{platform.machine()} "
              f"{platform.python_version()}", "bare_fps": bare, **soak, "fps_ratio": ratio, "rss_growth": growth}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.model.name}, {args.threads} threads, {soak['frames']} frames in {soak['seconds']:.0f} s")
    print(f"bare Detector.detect loop: {bare:.1f} FPS")
    print(f"daemon end to end:         {soak['fps']:.1f} FPS ({100 * ratio:.1f} % of bare; target >= 90 %: "
          f"{'met' if ratio >= 0.9 else 'NOT met'})")
    print(f"RSS (daemon + detector):   {soak['rss_start_mb']:.1f} MB in the first {soak['window_s']:.0f} s, "
          f"{soak['rss_end_mb']:.1f} MB in the last, peak {soak['rss_peak_mb']:.1f} MB: growth {100 * growth:+.2f} % "
          f"(target < 5 %: {'met' if growth < 0.05 else 'NOT met'})")
    print(f"dropped {soak['dropped']}, errors {soak['errors']}, detector restarts {soak['restarts']}, "
          f"inference {soak['inference_ms']} ms (EWMA)")


if __name__ == "__main__":
    main()
