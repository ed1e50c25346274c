"""scripts/demo_summary.py, the end of the README's main command: the table and the contact sheet it makes
from a demo folder (real converted models, real detections and timings of the runtime)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from edge_yolov9.cli import main
from edge_yolov9.convert.accuracy import AccuracyReport, ModelAccuracy
from edge_yolov9.model_file import InputSize

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "demo_summary.py"


def test_the_demo_ends_with_a_table_and_a_contact_sheet(tmp_path, out320, ball_checkpoint, coco128, capsys):
    demo = tmp_path / "demo"
    (demo / "int8").mkdir(parents=True)
    (demo / "train").mkdir()
    for name in ("model_float.tflite", "model_float.json", "model_int8.tflite", "model_int8.json"):
        shutil.copy(out320 / "out" / name, demo / "int8" / name)
    shutil.copy(ball_checkpoint, demo / "train" / "best.pt")
    for name, color in (("loss.png", "red"), ("map.png", "blue")):
        Image.new("RGB", (400, 300), color).save(demo / "train" / name)
    rows = [ModelAccuracy(model, file, 0.5 - k / 100, 0.7 - k / 100, 10, 31)
            for k, (model, file) in enumerate((("PyTorch fp32", "best.pt"), ("float TFLite", "model_float.tflite"),
                                               ("int8 TFLite", "model_int8.tflite")))]
    AccuracyReport("shapes val", InputSize(320, 320), *rows, max_drop=1.0).save(demo / "int8" / "model_int8_accuracy")
    images = tmp_path / "held-out"
    images.mkdir()
    for photo in sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:3]:
        shutil.copy(photo, images / photo.name)
    model = demo / "int8" / "model_int8.tflite"
    assert main(["detect", str(model), str(images), "--save", str(demo / "detections"), "--conf", "0.05"]) == 0
    for variant in ("float", "int8"):
        capsys.readouterr()
        assert main(["bench", str(demo / "int8" / f"model_{variant}.tflite"), "--runs", "3", "--warmup", "1",
                     "--json"]) == 0
        (demo / f"bench_{variant}.json").write_text(capsys.readouterr().out)
    timing = json.loads((demo / "bench_int8.json").read_text())["latency_ms"]["total"]["median"]

    done = subprocess.run([sys.executable, str(SCRIPT), str(demo)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table = done.stdout
    assert "Held-out images: shapes val (10 images, 31 objects), 320x320" in table
    assert "| PyTorch fp32 | 0.5000 | 0.7000 |" in table and "| int8 TFLite | 0.4800 | 0.6800 |" in table
    int8_size = model.stat().st_size / 2**20
    assert f"| {int8_size:.2f} MiB | {timing:.1f} ms |" in table and "int8 -2.00 AP vs PyTorch" in table
    assert (demo / "summary.md").read_text().strip() == table.split("\n\nDetections")[0].strip()

    sheet = np.asarray(Image.open(demo / "summary.png"))
    assert sheet.shape == (2 * 256 + 24, 4 * 256 + 400 * 256 // 300, 3)
    tiles = [sheet[24 + (k // 4) * 256:24 + (k // 4 + 1) * 256, (k % 4) * 256:(k % 4 + 1) * 256] for k in range(4)]
    assert [bool((tile < 250).any()) for tile in tiles] == [True, True, True, False]  # three detections, one blank
    assert (sheet[24 + 10, 4 * 256 + 10] == (255, 0, 0)).all() and (sheet[24 + 256 + 10, 4 * 256 + 10] == (0, 0, 255)).all()
