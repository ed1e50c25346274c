"""Image loading and the letterbox shared by training, validation, calibration and the runtime.

Every stage that feeds the network goes through :func:`letterbox`, so a model never sees input
resized differently from how it was calibrated or validated.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

PAD_VALUE = 114
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# A JPEG is decoded reduced (draft mode) only while it keeps this many times the pixels per side the network uses.
DECODE_OVERSAMPLE = 4
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
ORIENTATION_TAG = 0x0112
# What the runtime accepts as one image: a file path, a PIL image or an (H, W, 3) uint8 array.
ImageInput = Union[str, os.PathLike, np.ndarray, Image.Image]


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an RGB uint8 array (H, W, 3), upright as a viewer shows it (EXIF orientation
    applied); grayscale, 16-bit, palette and RGBA are converted."""
    return read_image(path)[0]


def read_image(path: str | os.PathLike, needed: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_image`, and the image's full (width, height). With ``needed`` (the network input's
    (height, width)), a JPEG many times larger is decoded at 1/2, 1/4 or 1/8 scale in the decoder itself
    (still DECODE_OVERSAMPLE times the pixels per side the letterbox keeps), so a 100-megapixel photo takes
    megabytes, not gigabytes; boxes are mapped back to the full size with :meth:`Letterbox.for_full_size`."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the error above the limit stays
            with Image.open(path) as img:
                full_size = _upright_size(img)
                if needed is not None and img.format == "JPEG":
                    img.draft("RGB", _draft_size(img.size, needed))
                img.load()
                array = _rgb(ImageOps.exif_transpose(img))
    except FileNotFoundError:
        raise ImageError(f"Image not found: {path}", "check the path") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"Image {path} is too large to decode safely ({err})",
                         "downscale it (e.g. to 8000 pixels on the longest side) or remove it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"Cannot decode image {path}: {err}",
                         "the file is corrupt or not an image; re-export it or remove it") from None
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"Image {path} has zero size {array.shape[1]}x{array.shape[0]}", "remove the file")
    return array, full_size


def _draft_size(size: tuple[int, int], needed: tuple[int, int]) -> tuple[int, int]:
    """The smallest (width, height) to decode: DECODE_OVERSAMPLE times what the letterbox keeps of ``size``."""
    width, height = size
    keep = min(needed[0] / height, needed[1] / width) * DECODE_OVERSAMPLE
    return max(1, math.ceil(width * keep)), max(1, math.ceil(height * keep))


def _upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of the file's full image once its EXIF orientation is applied."""
    width, height = img.size
    transposed = img.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8)
    return (height, width) if transposed else (width, height)


def _rgb(img: Image.Image) -> np.ndarray:
    """RGB uint8 pixels of any PIL mode; 16-bit grayscale keeps its top 8 bits (PIL's own convert
    clips it, which turns an ordinary 16-bit PNG white)."""
    if img.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(img, dtype=np.int64)
        gray = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def as_rgb_array(image: np.ndarray) -> np.ndarray:
    """Validate an in-memory image: (H, W, 3) uint8 RGB, or (H, W) grayscale which is expanded."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ImageError(f"Expected an image of shape (H, W, 3), got {array.shape}",
                         "pass an RGB array, a PIL image or a path")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"Image has zero size {array.shape[1]}x{array.shape[0]}", "skip empty frames")
    if array.dtype != np.uint8:
        raise ImageError(f"Expected uint8 pixels, got {array.dtype}", "convert with array.astype(np.uint8)")
    return array[:, :, :3]


def to_rgb(image: ImageInput, bgr: bool = False) -> np.ndarray:
    """Any :data:`ImageInput` as an (H, W, 3) uint8 RGB array; ``bgr`` marks an array in OpenCV's order.
    The one place that reads what callers pass, so single images and batches accept the same things."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return _rgb(image)
    if not isinstance(image, np.ndarray):
        raise ImageError(f"Cannot detect in a {type(image).__name__}", "pass a path, a PIL image or a numpy array")
    array = as_rgb_array(image)
    return array[:, :, ::-1] if bgr else array


@dataclass(frozen=True)
class Letterbox:
    """How an image was placed on the network input: scaled by ``scale``, offset by ``pad``."""

    scale: float
    pad_x: int
    pad_y: int
    image_width: int
    image_height: int

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Map (N, 4) xyxy boxes from network-input pixels back to the original image, clipped."""
        out = np.asarray(boxes, dtype=np.float32).copy()
        out[:, [0, 2]] = np.clip((out[:, [0, 2]] - self.pad_x) / self.scale, 0, self.image_width)
        out[:, [1, 3]] = np.clip((out[:, [1, 3]] - self.pad_y) / self.scale, 0, self.image_height)
        return out

    def for_full_size(self, width: int, height: int) -> "Letterbox":
        """This placement for the full-size image of which the letterboxed one was a reduced decode."""
        if (width, height) == (self.image_width, self.image_height):
            return self
        return Letterbox(self.scale * self.image_width / width, self.pad_x, self.pad_y, width, height)

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Map (N, 4) xyxy boxes from the original image to network-input pixels."""
        out = np.asarray(boxes, dtype=np.float32) * self.scale
        out[:, [0, 2]] += self.pad_x
        out[:, [1, 3]] += self.pad_y
        return out


def letterbox(image: np.ndarray, size: int | tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio (bilinear) and pad to ``size`` (square, or (height, width))
    with gray 114, centred. Returns the (H, W, 3) uint8 canvas and the placement."""
    image = as_rgb_array(image)
    out_h, out_w = (size, size) if isinstance(size, int) else size
    h, w = image.shape[:2]
    scale = min(out_h / h, out_w / w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    pad_x, pad_y = (out_w - new_w) // 2, (out_h - new_h) // 2
    canvas = np.full((out_h, out_w, 3), PAD_VALUE, dtype=np.uint8)
    canvas[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = image
    return canvas, Letterbox(scale, pad_x, pad_y, w, h)
