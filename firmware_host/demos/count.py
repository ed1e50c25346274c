"""Count objects that cross a line: people through a door, cars past a gate.

    python -m edge_yolov9.daemon.demos.count --model model_int8_edgetpu.tflite --label person --line 0.5
    python -m edge_yolov9.daemon.demos.count --model model_int8.tflite --source clip.mp4 --vertical --output count.avi

Objects are followed from frame to frame by the daemon's tracker; an object is counted once each time
its centre passes the line (a horizontal line at ``--line`` of the height, or vertical with
``--vertical``), as 'in' (down / rightwards) or 'out'. The totals are printed as JSON at the end.
"""

from __future__ import annotations

import json
import sys

from PIL import Image, ImageDraw

from edge_yolov9.annotate import draw_detections
from edge_yolov9.detector import Detector
from edge_yolov9.sources import Frame
from edge_yolov9.types import Box

from ..tracker import Tracker
from .common import Display, arguments, run


def centre(box: Box, vertical: bool) -> float:
    return (box.xmin + box.xmax) / 2 if vertical else (box.ymin + box.ymax) / 2


class LineCounter:
    """Crossings of a line at ``position`` (pixels along the counted axis) by tracked objects' centres."""

    def __init__(self, position: float, vertical: bool):
        self.position = position
        self.vertical = vertical
        self.crossed_in = self.crossed_out = 0
        self._side: dict[str, bool] = {}

    def update(self, tracker: Tracker) -> None:
        for key, obj in tracker.objects.items():
            beyond = centre(obj.box, self.vertical) >= self.position
            before = self._side.get(key)
            if before is not None and before != beyond:
                if beyond:
                    self.crossed_in += 1
                else:
                    self.crossed_out += 1
            self._side[key] = beyond
        for key in set(self._side) - set(tracker.objects):
            del self._side[key]


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--label", action="append", help="count only this label (repeatable; default: all)")
    parser.add_argument("--line", type=float, default=0.5, help="where the line is, as a fraction of the frame")
    parser.add_argument("--vertical", action="store_true", help="a vertical line (count left/right movement)")
    args = parser.parse_args(argv)
    tracker = Tracker(end_after=1.0)
    counters: list[LineCounter] = []

    def annotate(frame: Frame, detector: Detector, display: Display) -> Image.Image:
        height, width = frame.image.shape[:2]
        if not counters:
            counters.append(LineCounter(args.line * (width if args.vertical else height), args.vertical))
        counter = counters[0]
        detections = [d for d in detector.detect(frame.image) if not args.label or d.label in args.label]
        tracker.update(detections, now=display.frames / display.fps)  # video time: the same counts at any speed
        counter.update(tracker)
        canvas = draw_detections(frame.image, detections)
        draw = ImageDraw.Draw(canvas)
        line = ([counter.position, 0, counter.position, height] if args.vertical
                else [0, counter.position, width, counter.position])
        draw.line(line, fill=(255, 0, 0), width=2)
        draw.text((8, 8), f"in {counter.crossed_in}  out {counter.crossed_out}", fill=(255, 255, 0))
        return canvas

    code, frames = run(args, annotate)
    if code == 0:
        counter = counters[0] if counters else None
        print(json.dumps({"frames": frames, "in": counter.crossed_in if counter else 0,
                          "out": counter.crossed_out if counter else 0}))
    return code


if __name__ == "__main__":
    sys.exit(main())
