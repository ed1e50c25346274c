"""A built-in detection dataset that needs no download: shapes on cluttered backgrounds.

The class of an object is its shape, never its colour, and backgrounds carry clutter (lines, blobs,
noise, gradients), so a detector has to learn real shape features. Written in the YOLO format
(``data.yaml``, ``images/{train,val}``, ``labels/{train,val}``), deterministic for a given seed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle", "cross", "star")
GENERATOR_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("EDGE_YOLOV9_CACHE", Path.home() / ".cache" / "edge-yolov9"))


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    corners = rng.integers(0, 256, size=(2, 2, 3)).astype(np.float32)
    t = np.linspace(0, 1, size, dtype=np.float32)
    top = corners[0, 0] + (corners[0, 1] - corners[0, 0]) * t[:, None]
    bottom = corners[1, 0] + (corners[1, 1] - corners[1, 0]) * t[:, None]
    gradient = top[None] + (bottom - top)[None] * t[:, None, None]
    noisy = gradient + rng.normal(0, rng.uniform(2, 14), gradient.shape)
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 12)):  # clutter: lines and blobs that are not objects
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.6:
            draw.line([tuple(rng.uniform(0, size, 2)), tuple(rng.uniform(0, size, 2))], fill=colour,
                      width=int(rng.integers(1, 4)))
        else:
            x, y, r = *rng.uniform(0, size, 2), rng.uniform(2, size / 30)
            draw.ellipse([x - r, y - r * rng.uniform(0.3, 1), x + r, y + r], fill=colour)
    return image


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        points = [(x * r * 0.8, y * r * 0.8) for x, y in corners]
    elif shape == "triangle":
        points = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif shape == "cross":
        a, b = r, r * 0.32
        points = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b),
                  (-a, -b), (-b, -b)]
    elif shape == "star":
        points = [((r if i % 2 == 0 else r * 0.45) * math.cos(-math.pi / 2 + i * math.pi / 5),
                   (r if i % 2 == 0 else r * 0.45) * math.sin(-math.pi / 2 + i * math.pi / 5)) for i in range(10)]
    else:
        raise ValueError(shape)
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def _overlaps(box: tuple[float, ...], boxes: list[tuple[float, ...]], limit: float = 0.25) -> bool:
    for other in boxes:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw > 0 and ih > 0:
            inter = iw * ih
            smaller = min((box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1]))
            if inter / smaller > limit:
                return True
    return False


def render_scene(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[tuple[int, float, float, float, float]]]:
    """One image and its objects as (class, x1, y1, x2, y2) pixel boxes."""
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    objects: list[tuple[int, float, float, float, float]] = []
    for _ in range(rng.integers(1, 7)):
        cls = int(rng.integers(len(CLASSES)))
        r = rng.uniform(size * 0.04, size * 0.2)
        cx, cy = rng.uniform(r, size - r, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if CLASSES[cls] == "circle":
            ry = r * rng.uniform(0.75, 1.0)
            box = (cx - r, cy - ry, cx + r, cy + ry)
            if _overlaps(box, [o[1:] for o in objects]):
                continue
            draw.ellipse(box, fill=colour, outline=tuple(255 - c for c in colour), width=int(rng.integers(0, 3)))
        else:
            points = _polygon(CLASSES[cls], cx, cy, r, rng.uniform(0, 2 * math.pi))
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            box = (min(xs), min(ys), max(xs), max(ys))
            if _overlaps(box, [o[1:] for o in objects]):
                continue
            draw.polygon(points, fill=colour)
        objects.append((cls, *(float(np.clip(v, 0, size)) for v in box)))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return image, objects


def _write_split(root: Path, split: str, count: int, size: int, rng: np.random.Generator) -> None:
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for index in range(count):
        image, objects = render_scene(rng, size)
        name = f"{split}_{index:05d}"
        image.save(images / f"{name}.jpg", quality=92)
        lines = [f"{c} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} {(x2 - x1) / size:.6f} "
                 f"{(y2 - y1) / size:.6f}" for c, x1, y1, x2, y2 in objects]
        (labels / f"{name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))


def generate_shapes_dataset(root: str | os.PathLike, *, num_train: int = 800, num_val: int = 160,
                            image_size: int = 320, seed: int = 0) -> Path:
    """Write the dataset to ``root`` (atomically) and return its ``data.yaml``; an existing
    complete dataset with the same parameters is reused."""
    root = Path(root)
    params = {"version": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val,
              "image_size": image_size, "seed": seed}
    stamp = root / "generator.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return root / "data.yaml"
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        rng = np.random.default_rng(seed)
        _write_split(staging, "train", num_train, image_size, rng)
        _write_split(staging, "val", num_val, image_size, rng)
        names = "\n".join(f"  {i}: {name}" for i, name in enumerate(CLASSES))
        (staging / "data.yaml").write_text(
            "# edge-yolov9 built-in synthetic shapes dataset\npath: .\ntrain: images/train\nval: images/val\n"
            f"names:\n{names}\n")
        (staging / "generator.json").write_text(json.dumps(params))
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root / "data.yaml"


def builtin_dataset(name: str = "shapes", **kwargs) -> Path:
    """The built-in dataset ``name`` in the cache directory (generated on first use)."""
    if name != "shapes":
        raise ValueError(f"Unknown built-in dataset {name!r}; the built-in dataset is 'shapes'.")
    suffix = "-".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
    return generate_shapes_dataset(default_cache_dir() / "datasets" / f"shapes-v{GENERATOR_VERSION}{'-' + suffix if suffix else ''}",
                                   **kwargs)
