"""The runtime end to end on the tiny model (support.tiny_model), built at test time without torch: the
runtime tier's check that the Detector, ``detect``, ``bench`` and ``doctor --model`` work in the default
install. The real converted models are tested in test_runtime_models, test_detect_cli and test_doctor."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edge_yolov9.cli import main
from edge_yolov9.detector import Detector
from edge_yolov9.doctor import model_checks

pytestmark = pytest.mark.runtime


def two_squares() -> np.ndarray:
    """128x64 black, with a red square at the top left and a blue one at the bottom right, each one stride-8
    cell of the model's 32x32 input (the image is scaled by 1/4 and padded by 8 rows above and below)."""
    image = np.zeros((64, 128, 3), np.uint8)
    image[:32, :32, 0] = 255
    image[32:, 96:, 2] = 255
    return image


def test_detector_finds_each_colour_where_it_is(tiny_model):
    detector = Detector(tiny_model, device="cpu", threads=1)
    assert detector.info.labels == ("red", "blue") and detector.info.size == (32, 32)
    assert detector.detect(np.zeros((64, 128, 3), np.uint8)) == []
    detections = detector.detect(two_squares())
    best = {label: max((d for d in detections if d.label == label), key=lambda d: d.score) for label in ("red", "blue")}
    assert best["red"].score > 0.9 and best["blue"].score > 0.9
    centre = lambda d: ((d.box.xmin + d.box.xmax) / 2, (d.box.ymin + d.box.ymax) / 2)
    red_x, red_y = centre(best["red"])
    blue_x, blue_y = centre(best["blue"])
    assert red_x < 64 and red_y < 32 and blue_x > 64 and blue_y > 32  # in the image's pixels, not the input's
    assert all(0 <= d.box.xmin < d.box.xmax <= 128 and 0 <= d.box.ymin < d.box.ymax <= 64 for d in detections)


def test_detect_cli_writes_json_lines_and_reports_a_bad_file(tiny_model, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(two_squares()).save(images / "a.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(images / "b.png")
    (images / "c.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    out = tmp_path / "detections.jsonl"
    assert main(["detect", str(tiny_model), str(images), "--json", str(out), "--save", str(tmp_path / "seen"),
                 "--classes", "1"]) == 1
    records = {r["source"].rsplit("/", 1)[-1]: r for r in map(json.loads, out.read_text().splitlines())}
    assert {d["label"] for d in records["a.png"]["detections"]} == {"blue"}
    assert records["b.png"]["detections"] == [] and "error" in records["c.jpg"]
    assert sorted(p.name for p in (tmp_path / "seen").iterdir()) == ["a.jpg", "b.jpg"]
    capsys.readouterr()
    assert main(["detect", str(tiny_model), str(images / "a.png"), "--classes", "2"]) == 2
    assert "Class ids [2] do not exist" in capsys.readouterr().err


def test_bench_and_doctor_run_the_tiny_model(tiny_model, capsys):
    assert main(["bench", str(tiny_model), "--runs", "3", "--warmup", "1", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["input"] == [32, 32] and result["runs"] == 3 and result["latency_ms"]["invoke"]["median"] > 0
    checks = {c.name: c for c in model_checks(tiny_model)}
    assert all(c.ok for c in checks.values()), checks
    assert "2 classes (red, blue)" in checks["model: metadata"].detail
    assert main(["doctor", "--model", str(tiny_model)]) == 0
