"""Runtime bad inputs that need no converted model: missing, truncated and foreign files, bad frames."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edge_yolov9.annotate import draw_detections
from edge_yolov9.detector import Detector
from edge_yolov9.model_file import cpu_twin
from edge_yolov9.errors import EdgeYoloError, ImageError, ModelError
from edge_yolov9.sources import iter_frames
from edge_yolov9.tflite_file import read_tflite
from edge_yolov9.types import Box, Detection

pytestmark = pytest.mark.runtime


def test_missing_model_names_the_path(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        Detector(tmp_path / "nope.tflite")


def test_foreign_file_is_not_a_tflite_model(tmp_path, coco_val158):
    fake = tmp_path / "photo.tflite"
    shutil.copy(next((coco_val158 / "images" / "val2017").glob("*.jpg")), fake)
    with pytest.raises(ModelError, match="not a TFLite model"):
        Detector(fake)


def test_truncated_flatbuffer_is_reported_as_corrupt():
    # A valid header whose root offset points past the end of the data.
    data = (4096).to_bytes(4, "little") + b"TFL3" + b"\x00" * 24
    with pytest.raises(ModelError, match="truncated or corrupt"):
        read_tflite(data, "cut.tflite")


def test_cpu_twin_of_a_compiled_model(tmp_path):
    compiled = tmp_path / "model_int8_edgetpu.tflite"
    compiled.write_bytes(b"")
    assert cpu_twin(compiled) is None
    (tmp_path / "model_int8.tflite").write_bytes(b"")
    assert cpu_twin(compiled) == tmp_path / "model_int8.tflite"
    assert cpu_twin(tmp_path / "model_int8.tflite") is None


def test_folder_source_reports_bad_images_without_stopping(tmp_path, coco_val158):
    good = sorted((coco_val158 / "images" / "val2017").glob("*.jpg"))[:2]
    for path in good:
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    frames = list(iter_frames(str(tmp_path)))
    assert [f.image is not None for f in frames] == [True, True, False]
    assert isinstance(frames[2].error, ImageError) and "zz_broken.jpg" in str(frames[2].error)


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(EdgeYoloError, match="Source not found"):
        list(iter_frames(str(tmp_path / "nothing.jpg")))


def test_detections_are_drawn_in_place():
    image = np.zeros((40, 60, 3), np.uint8)
    drawn = np.asarray(draw_detections(image, [Detection(Box(10, 12, 30, 35), 0.9, 2, "car")]))
    assert drawn.shape == image.shape and drawn[20, 10].any() and not drawn[38, 58].any()
