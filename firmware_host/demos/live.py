"""Live detection with boxes from a webcam, a video file or a stream.

    python -m edge_yolov9.daemon.demos.live --model model_int8_edgetpu.tflite            # camera 0, a window
    python -m edge_yolov9.daemon.demos.live --model model_int8.tflite --source clip.mp4 --output boxes.avi

On a Pi with a Coral the _edgetpu model runs on the TPU ('auto'); elsewhere its CPU twin runs.
"""

from __future__ import annotations

import sys

from PIL import Image, ImageDraw

from edge_yolov9.annotate import draw_detections
from edge_yolov9.detector import Detector
from edge_yolov9.sources import Frame

from .common import Display, arguments, run


def annotate(frame: Frame, detector: Detector, display: Display) -> Image.Image:
    detections, timing = detector.detect_with_timing(frame.image)
    canvas = draw_detections(frame.image, detections)
    ImageDraw.Draw(canvas).text((8, 8), f"{display.rate:.1f} FPS  {timing.invoke:.1f} ms "
                                        f"{detector.device_used}", fill=(255, 255, 0))
    return canvas


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0]).parse_args(argv)
    code, frames = run(args, annotate)
    if code == 0:
        print(f"{frames} frames")
    return code


if __name__ == "__main__":
    sys.exit(main())
