"""Batches and sources on real data: ``Detector.detect_many`` over folders (with a corrupt file),
in-memory images and a real video file written here with OpenCV; missing, unreadable and absent
sources (a video, a camera, OpenCV itself) give errors that say the fix."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from edge_yolov9.cli import main
from edge_yolov9.detector import Detector
from edge_yolov9.errors import ImageError, MissingDependencyError, SourceError
from edge_yolov9.preprocess import load_image
from edge_yolov9.sources import describe, iter_frames
from edge_yolov9.types import Box
from support.conversions import CONFIDENT_IMAGES

VIDEO_SIZE = 640  # square frames: every COCO image fits uncropped and unscaled
CONFIDENT = 0.4  # detections this sure must survive Motion-JPEG compression


@pytest.fixture(scope="module")
def detector(out320) -> Detector:
    return Detector(out320 / "out" / "model_int8.tflite", device="cpu", threads=1)


@pytest.fixture
def train_images(coco128) -> Path:
    return coco128 / "images" / "train2017"


@pytest.fixture
def video_frames(train_images) -> list[np.ndarray]:
    """RGB frames of the clip, each a COCO image on a gray square: the two ball images, an image without
    a ball, the first again."""
    frames = []
    for name in [*CONFIDENT_IMAGES, "000000000009.jpg", CONFIDENT_IMAGES[0]]:
        image = load_image(train_images / name)
        frame = np.full((VIDEO_SIZE, VIDEO_SIZE, 3), 114, np.uint8)
        frame[:image.shape[0], :image.shape[1]] = image
        frames.append(frame)
    return frames


@pytest.fixture
def video(tmp_path, video_frames) -> Path:
    """A real Motion-JPEG .avi made from COCO images."""
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (VIDEO_SIZE, VIDEO_SIZE))
    assert writer.isOpened(), "this OpenCV build cannot write Motion-JPEG"
    for frame in video_frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return path


def absent_camera_index() -> int:
    return next(i for i in range(10, 100) if not Path(f"/dev/video{i}").exists())


# --------------------------------------------------------------------------- batches


def test_detect_many_goes_past_a_corrupt_file_in_a_folder(detector, tmp_path, train_images):
    for name in CONFIDENT_IMAGES:
        shutil.copy(train_images / name, tmp_path / name)
    (tmp_path / "sub").mkdir()
    shutil.copy(train_images / "000000000009.jpg", tmp_path / "sub" / "000000000009.jpg")
    (tmp_path / "a_corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    results = list(detector.detect_many(tmp_path))
    assert [Path(r.frame.name).name for r in results] == ["000000000078.jpg", "000000000142.jpg", "a_corrupt.jpg",
                                                         "000000000009.jpg"]
    bad = results[2]
    assert isinstance(bad.error, ImageError) and bad.detections == [] and bad.frame.image is None
    assert bad.to_dict() == {"source": str(tmp_path / "a_corrupt.jpg"), "error": bad.error.problem,
                             "fix": bad.error.fix}
    for result in results[:2] + results[3:]:
        assert result.error is None and result.timing.invoke > 0
        assert result.detections == detector.detect(result.frame.name)
    assert results[0].detections and results[0].detections[0].label == "ball"
    assert [r.frame.stem for r in results] == ["000000000078", "000000000142", "a_corrupt", "sub/000000000009"]


def test_detect_many_on_images_in_memory_reports_bad_items_in_place(detector, train_images):
    path = train_images / CONFIDENT_IMAGES[0]
    rgb = load_image(path)
    expected = detector.detect(path)
    items = [path, Image.open(path), rgb, np.zeros((0, 4, 3), np.uint8), train_images / "missing.jpg", 42,
             str(path)]
    results = list(detector.detect_many(iter(items)))
    assert [r.error is None for r in results] == [True, True, True, False, False, False, True]
    assert "zero size" in results[3].error.problem and "not found" in results[4].error.problem
    assert "int" in results[5].error.problem and results[5].frame.name == "image#5"
    for result in (results[0], results[1], results[2], results[6]):
        assert result.detections == expected
    bgr = list(detector.detect_many([np.ascontiguousarray(rgb[:, :, ::-1])], bgr=True))
    assert bgr[0].detections == expected


# --------------------------------------------------------------------------- video and cameras


def test_video_file_gives_one_record_and_one_image_per_frame(out320, video, video_frames, detector, tmp_path):
    assert describe(video) == ("video", len(video_frames))
    out = tmp_path / "frames.jsonl"
    code = main(["detect", str(out320 / "out" / "model_int8.tflite"), str(video), "--json", str(out),
                 "--save", str(tmp_path / "annotated"), "--conf", "0.25"])
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["source"] for r in records] == [f"clip.avi#{i}" for i in range(len(video_frames))]
    assert sorted(p.name for p in (tmp_path / "annotated").iterdir()) == [f"clip_{i:06d}.jpg"
                                                                          for i in range(len(video_frames))]
    for record, frame in zip(records, video_frames):
        still = [(d.box, d.score, d.label) for d in detector.detect(frame)]  # before Motion-JPEG compression
        found = [(Box(*d["box"]), d["score"], d["label"]) for d in record["detections"]]
        for one, other in ((found, still), (still, found)):
            for box, score, label in (d for d in one if d[1] >= CONFIDENT):
                assert any(o[2] == label and o[0].iou(box) > 0.8 and abs(o[1] - score) < 0.1 for o in other), record
    assert [any(d["score"] >= CONFIDENT for d in r["detections"]) for r in records] == [True, True, False, True]


def test_a_truncated_video_is_reported(video, tmp_path, caplog):
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.45)])  # a copy that stopped early
    with caplog.at_level(logging.WARNING):
        decoded = sum(1 for frame in iter_frames(cut) if frame.error is None)
    assert 0 < decoded < 4
    assert f"cut.avi ended after {decoded} of the 4 frames it declares" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert sum(1 for _ in iter_frames(video)) == 4
    assert "ended after" not in caplog.text


def test_missing_video_file_is_a_clear_error(out320, tmp_path, capsys):
    with pytest.raises(SourceError, match="Source not found") as info:
        list(iter_frames(tmp_path / "missing.avi"))
    assert "video file" in info.value.fix
    assert main(["detect", str(out320 / "out" / "model_int8.tflite"), str(tmp_path / "missing.avi")]) == 2
    err = capsys.readouterr().err
    assert "Source not found" in err and "fix:" in err


def test_undecodable_video_says_how_to_re_encode(tmp_path):
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00AVI not a video at all" * 10)
    with pytest.raises(SourceError, match="video") as info:
        list(iter_frames(bad))
    assert "ffmpeg" in info.value.fix


def test_absent_camera_is_a_clear_error(out320, capsys):
    index = absent_camera_index()
    with pytest.raises(SourceError, match=f"Cannot open camera {index}") as info:
        list(iter_frames(index))
    assert "/dev/video" in info.value.fix
    assert main(["detect", str(out320 / "out" / "model_int8.tflite"), str(index)]) == 2
    assert f"Cannot open camera {index}" in capsys.readouterr().err


def test_without_opencv_videos_name_the_video_extra(out320, video, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now raises ImportError
    with pytest.raises(MissingDependencyError) as info:
        list(iter_frames(video))
    assert info.value.fix == "pip install 'edge-yolov9[video]'"
    assert main(["detect", str(out320 / "out" / "model_int8.tflite"), str(video)]) == 2
    assert "pip install 'edge-yolov9[video]'" in capsys.readouterr().err
