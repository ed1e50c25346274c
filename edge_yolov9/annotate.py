"""Drawing detections on images."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .types import Detection


def colour(class_id: int) -> tuple[int, int, int]:
    """A stable, distinct colour per class (golden-ratio hue steps)."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = (int(255 * max(0.0, min(1.0, abs((hue * 6 + k) % 6 - 3) - 1))) for k in (0, 4, 2))
    return r, g, b


def draw_detections(image: np.ndarray, detections: Sequence[Detection],
                    full_size: tuple[int, int] | None = None) -> Image.Image:
    """``image`` (RGB) with a box and 'label score' per detection; ``full_size``: the (width, height) the
    boxes are in when ``image`` is a reduced decode (``Frame.full_size``)."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 320))
    scale = canvas.size[0] / full_size[0] if full_size else 1.0
    for det in detections:
        c = colour(det.class_id)
        xmin, ymin, xmax, ymax = (v * scale for v in det.box)
        draw.rectangle([xmin, ymin, xmax, ymax], outline=c, width=width)
        text = f"{det.label} {det.score:.2f}"
        left, top, right, bottom = draw.textbbox((xmin, ymin), text)
        y = max(0, ymin - (bottom - top) - 2)
        draw.rectangle([xmin, y, xmin + right - left + 4, y + bottom - top + 2], fill=c)
        draw.text((xmin + 2, y), text, fill=(0, 0, 0))
    return canvas
