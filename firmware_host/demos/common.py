"""What both demos share: their command-line arguments, the detector, the frame loop and the display."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from edge_yolov9.cli import float_arg, int_arg
from edge_yolov9.detector import Detector
from edge_yolov9.errors import EdgeYoloError
from edge_yolov9.sources import Frame, iter_frames, opencv


def arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True, help="a .tflite from `edge-yolov9 convert` (or its _edgetpu file)")
    parser.add_argument("--source", default="0", help="camera index, video file or stream URL (default: camera 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu, usb, usb:N, pci")
    parser.add_argument("--conf", type=float_arg(0, 1, low_open=True), default=0.4, help="score threshold")
    parser.add_argument("--output", type=Path, help="write the annotated video here instead of showing a window")
    parser.add_argument("--max-frames", type=int_arg(1), help="stop after this many frames")
    return parser


def open_detector(args: argparse.Namespace) -> Detector:
    detector = Detector(args.model, device=args.device, score_threshold=args.conf)
    print(f"{detector.model_path.name} on {detector.device_used}, input {detector.info.size[1]}x{detector.info.size[0]}")
    return detector


class Display:
    """A window (when there is a screen and no --output) or an MJPG video file; ``show`` returns False to stop."""

    def __init__(self, output: Path | None, fps: float = 15.0):
        self.cv2 = opencv("The demos")
        self.output = output
        self.fps = fps
        self.writer = None
        self.frames = 0
        self._last = time.perf_counter()
        self.rate = 0.0

    def show(self, rgb: np.ndarray) -> bool:
        now = time.perf_counter()
        self.rate = 0.9 * self.rate + 0.1 / max(now - self._last, 1e-6) if self.frames else 0.0
        self._last = now
        self.frames += 1
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        if self.output is not None:
            if self.writer is None:
                self.output.parent.mkdir(parents=True, exist_ok=True)
                self.writer = self.cv2.VideoWriter(str(self.output), self.cv2.VideoWriter_fourcc(*"MJPG"), self.fps,
                                                   (bgr.shape[1], bgr.shape[0]))
            self.writer.write(bgr)
            return True
        self.cv2.imshow("edge-yolov9 (q to quit)", bgr)
        return self.cv2.waitKey(1) & 0xFF != ord("q")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        elif self.output is None:
            self.cv2.destroyAllWindows()


def run(args: argparse.Namespace, annotate: Callable[[Frame, Detector, "Display"], Image.Image]) -> tuple[int, int]:
    """Show ``annotate(frame, detector, display)`` for each frame of ``args.source`` until it ends, ``q`` or
    ``--max-frames``; unreadable frames are reported and skipped. Returns the exit code (2 on a setup error)
    and the number of frames shown."""
    try:
        detector = open_detector(args)
        display = Display(args.output)
        try:
            for frame in iter_frames(args.source):
                if frame.error is not None:
                    print(f"skipped {frame.name}: {frame.error.problem}", file=sys.stderr)
                    continue
                if not display.show(np.asarray(annotate(frame, detector, display))):
                    break
                if display.frames == args.max_frames:
                    break
        finally:
            display.close()
    except EdgeYoloError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2, 0
    return 0, display.frames
