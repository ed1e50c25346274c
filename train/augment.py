"""Training augmentations of the YOLOv9 recipe, on (image, boxes) pairs in numpy.

An ``Annotated`` image is an RGB uint8 array with pixel boxes (N, 4) xyxy and class ids (N,).
Every function takes an explicit ``numpy.random.Generator`` so a seed makes training repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image

from edge_yolov9.model_file import InputSize
from edge_yolov9.preprocess import PAD_VALUE


class Annotated(NamedTuple):
    image: np.ndarray    # (H, W, 3) uint8 RGB
    boxes: np.ndarray    # (N, 4) float32 xyxy pixels
    classes: np.ndarray  # (N,) int64


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths, named as in YOLOv9's hyper-parameter files (hyp.scratch-high)."""

    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.9
    shear: float = 0.0
    fliplr: float = 0.5
    mosaic: float = 1.0
    mixup: float = 0.15


def hsv_jitter(image: np.ndarray, rng: np.random.Generator, h: float, s: float, v: float) -> np.ndarray:
    """Random hue shift and saturation/value gains, through lookup tables on PIL's HSV."""
    gains = rng.uniform(-1, 1, 3) * (h, s, v) + (0, 1, 1)
    hsv = np.asarray(Image.fromarray(image).convert("HSV"))
    x = np.arange(256, dtype=np.float32)
    luts = [((x + gains[0] * 255) % 256).astype(np.uint8),
            np.clip(x * gains[1], 0, 255).astype(np.uint8), np.clip(x * gains[2], 0, 255).astype(np.uint8)]
    jittered = np.stack([lut[hsv[..., i]] for i, lut in enumerate(luts)], axis=-1)
    return np.asarray(Image.fromarray(jittered, "HSV").convert("RGB"))


def flip_horizontal(sample: Annotated) -> Annotated:
    width = sample.image.shape[1]
    boxes = sample.boxes.copy()
    boxes[:, [0, 2]] = width - sample.boxes[:, [2, 0]]
    return Annotated(np.ascontiguousarray(sample.image[:, ::-1]), boxes, sample.classes)


def _affine_matrix(rng: np.random.Generator, cfg: AugmentConfig, in_hw: tuple[int, int],
                   out_hw: tuple[int, int]) -> np.ndarray:
    """3x3 matrix mapping input pixels to output pixels: centre, rotate/scale, shear, translate."""
    centre = np.eye(3)
    centre[:2, 2] = (-in_hw[1] / 2, -in_hw[0] / 2)
    angle = np.deg2rad(rng.uniform(-cfg.degrees, cfg.degrees))
    scale = rng.uniform(1 - cfg.scale, 1 + cfg.scale)
    rotate = np.eye(3)
    rotate[:2, :2] = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shear = np.eye(3)
    shear[0, 1], shear[1, 0] = np.tan(np.deg2rad(rng.uniform(-cfg.shear, cfg.shear, 2)))
    move = np.eye(3)
    move[:2, 2] = (rng.uniform(0.5 - cfg.translate, 0.5 + cfg.translate) * out_hw[1],
                   rng.uniform(0.5 - cfg.translate, 0.5 + cfg.translate) * out_hw[0])
    return move @ shear @ rotate @ centre


def warp_boxes(boxes: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Boxes through an affine map: the bounding box of the four warped corners, clipped."""
    corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 2)
    warped = (np.hstack([corners, np.ones((len(corners), 1))]) @ matrix.T)[:, :2].reshape(-1, 4, 2)
    out = np.concatenate([warped.min(1), warped.max(1)], axis=1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, out_hw[1])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, out_hw[0])
    return out.astype(np.float32)


def keep_visible(before: np.ndarray, after: np.ndarray, scale: float, min_side: float = 2.0,
                 min_area_ratio: float = 0.1, max_aspect: float = 100.0) -> np.ndarray:
    """Mask of boxes still worth learning from after a warp: not too small, not mostly cut off."""
    w0, h0 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w1, h1 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    aspect = np.maximum(w1 / (h1 + 1e-9), h1 / (w1 + 1e-9))
    return ((w1 > min_side) & (h1 > min_side) & (w1 * h1 / (w0 * h0 * scale ** 2 + 1e-9) > min_area_ratio)
            & (aspect < max_aspect))


def random_affine(sample: Annotated, rng: np.random.Generator, cfg: AugmentConfig,
                  out_hw: tuple[int, int]) -> Annotated:
    """Random scale/rotation/shear/translation onto an ``out_hw`` canvas; lost boxes are dropped."""
    in_hw = sample.image.shape[:2]
    matrix = _affine_matrix(rng, cfg, in_hw, out_hw)
    inverse = np.linalg.inv(matrix)
    warped = Image.fromarray(sample.image).transform(
        (out_hw[1], out_hw[0]), Image.AFFINE, data=tuple(inverse[:2].ravel()), resample=Image.BILINEAR,
        fillcolor=(PAD_VALUE,) * 3)
    boxes = warp_boxes(sample.boxes, matrix, out_hw) if len(sample.boxes) else sample.boxes
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))
    keep = keep_visible(sample.boxes, boxes, scale) if len(boxes) else np.zeros(0, bool)
    return Annotated(np.asarray(warped), boxes[keep], sample.classes[keep])


def resize_to_fit(sample: Annotated, size: int | tuple[int, int]) -> Annotated:
    """Scale to fit inside ``size`` ((height, width), or one int for a square), aspect kept (how images are
    cached for training)."""
    size = InputSize.of(size)
    h, w = sample.image.shape[:2]
    ratio = min(size[0] / h, size[1] / w)
    if ratio == 1:
        return sample
    new_w, new_h = max(1, round(w * ratio)), max(1, round(h * ratio))
    image = np.asarray(Image.fromarray(sample.image).resize((new_w, new_h), Image.BILINEAR))
    return Annotated(image, (sample.boxes * ratio).astype(np.float32), sample.classes)


def mosaic(samples: list[Annotated], size: int | tuple[int, int], rng: np.random.Generator) -> Annotated:
    """Four images around a random centre of a canvas twice ``size`` (height, width; or one int for a square),
    each image fitting ``size``."""
    size = InputSize.of(size)
    height, width = 2 * size[0], 2 * size[1]
    canvas = np.full((height, width, 3), PAD_VALUE, np.uint8)
    cx = int(rng.uniform(size[1] * 0.5, size[1] * 1.5))
    cy = int(rng.uniform(size[0] * 0.5, size[0] * 1.5))
    boxes, classes = [], []
    for quadrant, sample in enumerate(samples[:4]):
        h, w = sample.image.shape[:2]
        # Canvas region, anchored at the centre, and the matching region of the image.
        if quadrant == 0:
            x1, y1, x2, y2 = max(cx - w, 0), max(cy - h, 0), cx, cy
            ix1, iy1 = w - (x2 - x1), h - (y2 - y1)
        elif quadrant == 1:
            x1, y1, x2, y2 = cx, max(cy - h, 0), min(cx + w, width), cy
            ix1, iy1 = 0, h - (y2 - y1)
        elif quadrant == 2:
            x1, y1, x2, y2 = max(cx - w, 0), cy, cx, min(height, cy + h)
            ix1, iy1 = w - (x2 - x1), 0
        else:
            x1, y1, x2, y2 = cx, cy, min(cx + w, width), min(height, cy + h)
            ix1, iy1 = 0, 0
        canvas[y1:y2, x1:x2] = sample.image[iy1:iy1 + (y2 - y1), ix1:ix1 + (x2 - x1)]
        shifted = sample.boxes + np.array([x1 - ix1, y1 - iy1] * 2, np.float32)
        boxes.append(shifted)
        classes.append(sample.classes)
    all_boxes = np.concatenate(boxes).astype(np.float32)
    clipped = all_boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    keep = keep_visible(all_boxes, clipped, 1.0)
    return Annotated(canvas, clipped[keep], np.concatenate(classes)[keep])


def mixup(a: Annotated, b: Annotated, rng: np.random.Generator) -> Annotated:
    """Blend two same-size images (ratio ~ Beta(32, 32)) and keep both sets of boxes."""
    ratio = rng.beta(32.0, 32.0)
    image = (a.image.astype(np.float32) * ratio + b.image.astype(np.float32) * (1 - ratio)).astype(np.uint8)
    return Annotated(image, np.concatenate([a.boxes, b.boxes]), np.concatenate([a.classes, b.classes]))


def augment(index: int, load: Callable[[int], Annotated], count: int, size: int | tuple[int, int],
            rng: np.random.Generator, cfg: AugmentConfig, use_mosaic: bool) -> Annotated:
    """One training sample of ``size`` ((height, width), or one int for a square): mosaic (+ mixup) or a
    single image, then affine, HSV and flip. ``load(i)`` returns sample ``i`` resized to fit ``size``."""
    size = InputSize.of(size)
    def one(i: int) -> Annotated:
        if use_mosaic and rng.random() < cfg.mosaic:
            picks = [i, *rng.integers(0, count, 3)]
            tiled = mosaic([load(int(p)) for p in picks], size, rng)
            # The affine takes the middle of the twice-as-large mosaic canvas onto one size.
            return random_affine(tiled, rng, cfg, size)
        return random_affine(load(i), rng, cfg, size)

    sample = one(index)
    if use_mosaic and rng.random() < cfg.mixup:
        sample = mixup(sample, one(int(rng.integers(0, count))), rng)
    image = hsv_jitter(sample.image, rng, cfg.hsv_h, cfg.hsv_s, cfg.hsv_v)
    sample = Annotated(image, sample.boxes, sample.classes)
    if rng.random() < cfg.fliplr:
        sample = flip_horizontal(sample)
    return sample
