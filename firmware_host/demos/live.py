"""Live detection with boxes from a webcam, a video file or a stream.

    python -m firmware_host.demos.live --model model_int8_edgetpu.tflite            # camera 0, a window
    python -m firmware_host.demos.live --model model_int8.tflite --source clip.mp4 --output boxes.avi

On a Pi with a Coral the _edgetpu model runs on the TPU ('auto'); elsewhere its CPU twin runs.
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import ImageDraw

from edge_yolov9.annotate import draw_detections
from edge_yolov9.errors import EdgeYoloError
from edge_yolov9.sources import iter_frames

from .common import Display, arguments, open_detector


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0]).parse_args(argv)
    try:
        detector = open_detector(args)
        display = Display(args.output)
        try:
            for frame in iter_frames(args.source):
                if frame.error is not None:
                    print(f"skipped {frame.name}: {frame.error.problem}", file=sys.stderr)
                    continue
                detections = detector.detect(frame.image)
                canvas = draw_detections(frame.image, detections)
                ImageDraw.Draw(canvas).text((8, 8), f"{display.rate:.1f} FPS  {detector.timing.invoke:.1f} ms "
                                                    f"{detector.device_used}", fill=(255, 255, 0))
                if not display.show(np.asarray(canvas)) or display.frames == args.max_frames:
                    break
        finally:
            display.close()
    except EdgeYoloError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{display.frames} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
