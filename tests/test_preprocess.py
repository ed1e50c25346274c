"""Image loading and the letterbox: the one pre-processing used everywhere."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edge_yolov9.errors import ImageError
from edge_yolov9.preprocess import PAD_VALUE, letterbox, load_image, read_image

pytestmark = pytest.mark.runtime


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


# --------------------------------------------------------------------------- hostile and unusual files


@pytest.fixture(scope="module")
def over_limit_png(tmp_path_factory):
    """A real PNG past twice Pillow's pixel limit (196 Mpx, a few KB on disk): a decompression bomb."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (14000, 14000)).save(path)
    return path


def test_image_over_the_pixel_limit_is_an_image_error(over_limit_png):
    with pytest.raises(ImageError, match="too large to decode safely") as err:
        load_image(over_limit_png)
    assert "downscale" in err.value.fix


def test_sixteen_bit_png_keeps_its_tones(tmp_path):
    ramp = (np.arange(256 * 64, dtype=np.uint32).reshape(64, 256) * 4).astype(np.uint16)  # 0..65532
    path = tmp_path / "depth.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    image = load_image(path)
    np.testing.assert_array_equal(image[..., 0], (ramp >> 8).astype(np.uint8))
    assert image.min() == 0 and image.max() == 255 and (image[..., 0] == image[..., 2]).all()


def test_exif_orientation_is_applied(tmp_path, coco_val158):
    upright = load_image(next((coco_val158 / "images" / "val2017").glob("*.jpg")))
    h, w = upright.shape[:2]
    # A phone stores the sensor's landscape pixels and an orientation tag (6: rotate 90 clockwise to view).
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=95)
    image, full_size = read_image(path)
    assert image.shape[:2] == (h, w) and full_size == (w, h)
    assert np.abs(image.astype(int) - upright.astype(int)).mean() < 4


def test_huge_jpeg_is_decoded_reduced_and_sized_in_full(tmp_path):
    big = np.zeros((6000, 8000, 3), np.uint8)
    big[1000:3000, 2000:6000] = (200, 30, 30)
    path = tmp_path / "big.jpg"
    Image.fromarray(big).save(path, quality=90)
    image, full_size = read_image(path, needed=(320, 320))
    assert full_size == (8000, 6000)
    assert image.shape[:2] == (1500, 2000)  # 1/4: the largest step that keeps 4x the 320x240 the letterbox uses
    assert load_image(path).shape[:2] == (6000, 8000)  # without a need, nothing is reduced
    canvas, placement = letterbox(image, 320)
    ys, xs = np.nonzero(canvas[..., 0] > 150)  # the red block, as the network sees it
    seen = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    box = placement.for_full_size(*full_size).to_image(seen)
    np.testing.assert_allclose(box, [[2000, 1000, 6000, 3000]], atol=30)  # a network pixel is 25 full pixels
