"""``edge-yolov9 val`` end to end on real images, and its one-message errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edge_yolov9.cli import main
from edge_yolov9.train.checkpoint import save_checkpoint
from edge_yolov9.train.data import load_data_config
from edge_yolov9.train.models import create_model

GRAYSCALE = "000000000086.jpg"  # coco128's grayscale image


@pytest.fixture(scope="module")
def names(coco128) -> list[str]:
    return list(load_data_config(coco128).names)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, names) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "gelan-t.pt", create_model("gelan-t", num_classes=80),
                           names)


@pytest.fixture
def small_dataset(tmp_path, coco128, names) -> Path:
    """8 real coco128 images (one grayscale) listed in a .txt; labels are coco128's own."""
    folder = coco128 / "images" / "train2017"
    images = sorted(folder.glob("*.jpg"))[:7] + [folder / GRAYSCALE]
    (tmp_path / "val.txt").write_text("".join(f"{p}\n" for p in images))
    (tmp_path / "data.yaml").write_text(f"val: val.txt\nnames: {json.dumps(names)}\n")
    return tmp_path / "data.yaml"


def one_image_dataset(root: Path, image_bytes: bytes, label: str, names: list[str]) -> Path:
    (root / "images").mkdir()
    (root / "labels").mkdir()
    (root / "images" / "a.jpg").write_bytes(image_bytes)
    (root / "labels" / "a.txt").write_text(label)
    (root / "data.yaml").write_text(f"val: images\nnames: {json.dumps(names)}\n")
    return root


def test_val_prints_json_metrics_and_saves_detections(small_dataset, checkpoint, tmp_path, capsys):
    saved = tmp_path / "out" / "detections.json"
    code = main(["val", "--model", str(checkpoint), "--data", str(small_dataset), "--imgsz", "320", "--batch", "4",
                 "--json", "--save-json", str(saved)])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_images"] == 8 and metrics["num_instances"] > 0
    assert 0.0 <= metrics["map50_95"] <= metrics["map50"] < 0.05  # random weights
    assert metrics["per_class"] and set(metrics["per_class"]) == set(metrics["per_class_ap50"])
    assert isinstance(json.loads(saved.read_text()), list)


def test_val_prints_a_table_for_people(small_dataset, checkpoint, capsys):
    assert main(["val", "--model", str(checkpoint), "--data", str(small_dataset), "--imgsz", "256"]) == 0
    out = capsys.readouterr().out
    assert "8 images" in out and "mAP50-95" in out and "person" in out


def test_val_is_a_registered_command():
    help_text = subprocess.run([sys.executable, "-m", "edge_yolov9.cli", "val", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert "--save-json" in help_text and "--imgsz" in help_text


def test_bad_label_is_one_message_naming_file_and_line(tmp_path, coco128, checkpoint, names, capsys):
    image = (coco128 / "images" / "train2017" / GRAYSCALE).read_bytes()
    data = one_image_dataset(tmp_path, image, "0 0.5 0.5 0.2 0.2\n80 0.5 0.5 0.2 0.2\n", names)
    assert main(["val", "--model", str(checkpoint), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'labels' / 'a.txt'}:2: class id 80" in err and "fix:" in err and "Traceback" not in err


def test_corrupt_image_is_a_clean_error(tmp_path, coco128, checkpoint, names, capsys):
    image = (coco128 / "images" / "train2017" / GRAYSCALE).read_bytes()
    data = one_image_dataset(tmp_path, image[: len(image) // 4], "0 0.5 0.5 0.2 0.2\n", names)
    assert main(["val", "--model", str(checkpoint), "--data", str(data), "--imgsz", "256"]) == 2
    err = capsys.readouterr().err
    assert f"Cannot decode image {tmp_path / 'images' / 'a.jpg'}" in err and "fix:" in err


@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}"], "No data.yaml in the dataset folder"),
    (["--data", "{tmp}/instances.json"], "COCO annotation file not found"),
    (["--data", "{coco_json}"], "128 of the 128 images of"),
    (["--data", "{coco128}", "--images", "{tmp}"], "only for a COCO json"),
])
def test_bad_arguments_are_clean_errors(tmp_path, coco128, checkpoint, capsys, args, message):
    (tmp_path / "images").mkdir()
    coco_json = tmp_path / "annotations" / "instances.json"  # its images are looked for in {tmp}/images
    coco_json.parent.mkdir()
    coco_json.symlink_to(coco128 / "annotations" / "instances_train2017_coco128.json")
    argv = ["val", "--model", str(checkpoint)] + [a.format(tmp=tmp_path, coco128=coco128, coco_json=coco_json)
                                                  for a in args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_model_and_data_must_have_the_same_classes(tmp_path, coco128, capsys):
    two_class = save_checkpoint(tmp_path / "two.pt", create_model("gelan-t", num_classes=2), ["a", "b"])
    assert main(["val", "--model", str(two_class), "--data", str(coco128)]) == 2
    assert "detects 2 classes but" in capsys.readouterr().err


def test_input_size_must_be_a_multiple_of_32(checkpoint, coco128, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["val", "--model", str(checkpoint), "--data", str(coco128), "--imgsz", "100"])
    assert exit_.value.code == 2 and "a multiple of 32" in capsys.readouterr().err
