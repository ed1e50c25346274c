"""Image loading and the letterbox: the one pre-processing used everywhere."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edge_yolov9.errors import ImageError
from edge_yolov9.preprocess import PAD_VALUE, letterbox, load_image


def test_letterbox_pads_centred_and_maps_boxes_back(coco_val158):
    image = load_image(next((coco_val158 / "images" / "val2017").glob("*.jpg")))
    h, w = image.shape[:2]
    canvas, lb = letterbox(image, 320)
    assert canvas.shape == (320, 320, 3) and canvas.dtype == np.uint8
    assert lb.scale == pytest.approx(320 / max(h, w))
    if w > h:
        assert lb.pad_x == 0 and (canvas[0] == PAD_VALUE).all()
    boxes = np.array([[10, 20, w - 5, h - 7]], np.float32)
    np.testing.assert_allclose(lb.to_image(lb.to_input(boxes)), boxes, atol=1e-3)


def test_boxes_mapped_back_are_clipped_to_the_image():
    _, lb = letterbox(np.zeros((50, 100, 3), np.uint8), 64)
    out = lb.to_image(np.array([[-10.0, -10.0, 200.0, 200.0]]))
    np.testing.assert_allclose(out, [[0, 0, 100, 50]])


def test_grayscale_image_is_converted_to_rgb(coco128):
    grays = [p for p in sorted((coco128 / "images" / "train2017").glob("*.jpg")) if Image.open(p).mode == "L"]
    assert grays, "coco128 holds a grayscale image; the test needs one"
    image = load_image(grays[0])
    assert image.ndim == 3 and image.shape[2] == 3
    assert (image[..., 0] == image[..., 1]).all()


def test_corrupt_and_missing_images_name_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        load_image(bad)
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.jpg")


def test_truncated_image_is_an_image_error(tmp_path, coco_val158):
    source = next((coco_val158 / "images" / "val2017").glob("*.jpg")).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(source[: len(source) // 3])
    with pytest.raises(ImageError, match="cut.jpg"):
        load_image(cut)


def test_zero_size_array_is_rejected():
    with pytest.raises(ImageError, match="zero size"):
        letterbox(np.zeros((0, 10, 3), np.uint8), 64)


def test_rgba_png_loads_as_rgb(tmp_path):
    path = tmp_path / "rgba.png"
    Image.new("RGBA", (7, 5), (10, 20, 30, 40)).save(path)
    assert load_image(path).shape == (5, 7, 3)
