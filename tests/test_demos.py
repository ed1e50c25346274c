"""The Coral demos on the CPU: the live view writes an annotated video, the counter counts real crossings."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from edge_yolov9.detector import Detector
from edge_yolov9.daemon.demos import count, live

BALL_IMAGE = "000000000078.jpg"  # the 'ball' model finds its ball with a score around 0.7


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return path


def frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    return frames


@pytest.fixture
def model(out320) -> Path:
    return out320 / "out" / "model_int8.tflite"


@pytest.fixture
def moving_ball(coco128) -> list[np.ndarray]:
    """30 frames (640x480) in which the real photo's ball moves from the top to the bottom."""
    photo = np.asarray(Image.open(coco128 / "images" / "train2017" / BALL_IMAGE).convert("RGB"))
    crop = photo[0:250, 330:600]
    frames = []
    for top in np.linspace(0, 230, 30).astype(int):
        canvas = np.full((480, 640, 3), 114, np.uint8)
        canvas[top:top + crop.shape[0], 185:185 + crop.shape[1]] = crop
        frames.append(canvas)
    return frames


def test_live_demo_writes_the_annotated_video(model, moving_ball, tmp_path, capsys):
    source = write_video(tmp_path / "clip.avi", moving_ball)
    out = tmp_path / "boxes.avi"
    assert live.main(["--model", str(model), "--source", str(source), "--output", str(out)]) == 0
    assert frame_count(out) == len(moving_ball)
    assert f"{len(moving_ball)} frames" in capsys.readouterr().out
    # The boxes are drawn: the annotated frame differs from the source frame where the detector found the ball.
    capture = cv2.VideoCapture(str(out))
    annotated = capture.read()[1][:, :, ::-1]
    capture.release()
    assert Detector(model, score_threshold=0.4).detect(moving_ball[0])
    assert np.abs(annotated.astype(int) - moving_ball[0]).mean() > 1.0


def test_counter_counts_one_crossing_each_way(model, moving_ball, tmp_path, capsys):
    down = write_video(tmp_path / "down.avi", moving_ball)
    up = write_video(tmp_path / "up.avi", moving_ball[::-1])
    assert count.main(["--model", str(model), "--source", str(down), "--line", "0.5", "--output",
                       str(tmp_path / "down_count.avi")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"frames": 30, "in": 1, "out": 0}
    assert count.main(["--model", str(model), "--source", str(up), "--line", "0.5", "--output",
                       str(tmp_path / "up_count.avi")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"frames": 30, "in": 0, "out": 1}
    # A label the model does not have is never counted.
    assert count.main(["--model", str(model), "--source", str(down), "--label", "person", "--output",
                       str(tmp_path / "none.avi")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"frames": 30, "in": 0, "out": 0}


def test_demos_report_a_missing_source_clearly(model, tmp_path, capsys):
    assert live.main(["--model", str(model), "--source", str(tmp_path / "nope.mp4"), "--output",
                      str(tmp_path / "o.avi")]) == 2
    assert "Source not found" in capsys.readouterr().err
