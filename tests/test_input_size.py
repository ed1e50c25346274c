"""The input size belongs to the model: ``train`` and ``import`` store the training size in the checkpoint's
model config, ``convert`` and ``val`` run at it unless given ``--imgsz`` (and warn when that differs), and
one definition of the allowed sizes serves every command and the convert API."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest
import torch

from edge_yolov9.cli import CONVERT_INPUT_SIZES, build_parser, main
from edge_yolov9.errors import EdgeYoloError
from edge_yolov9.train.checkpoint import load_checkpoint, save_checkpoint
from edge_yolov9.train.importers import import_checkpoint, save_imported
from edge_yolov9.train.models import create_model
from support.importers.official_layout import build_official_model, save_official_checkpoint
from test_trainer import tiny_dataset

NO_SIZE_NOTE = "records no training input size: 640x640 assumed"


def saved_model(path: Path, **config) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(path, create_model("gelan-t", num_classes=1, **config), ["ball"])


# ------------------------------------------------------------------------------------- stored with the model
@pytest.mark.parametrize("given, stored", [(256, (256, 256)), ((384, 224), (384, 224)), ([320, 320], (320, 320))])
def test_the_input_size_round_trips_through_save_and_load(tmp_path, given, stored):
    path = saved_model(tmp_path / "m.pt", input_size=given)
    model, _, _ = load_checkpoint(path)
    assert model.cfg.input_size == stored
    assert tuple(torch.load(path, weights_only=True)["config"]["input_size"]) == stored


def test_the_zoo_default_is_the_published_640():
    assert create_model("yolov9-t").cfg.input_size == (640, 640)


@pytest.mark.parametrize("bad", [100, 0, True, [320], "320", (320, 33)])
def test_a_config_with_a_bad_input_size_is_a_damaged_checkpoint(tmp_path, bad):
    path = saved_model(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["input_size"] = bad
    torch.save(payload, path)
    with pytest.raises(EdgeYoloError, match=r"'config' is not a valid model config \(input_size must be"):
        load_checkpoint(path)


@pytest.mark.parametrize("meta, stored", [({"imgsz": 224, "source": "train"}, (224, 224)),
                                          ({"imported_from": "yolov9t.pt"}, (640, 640))])
def test_version_1_checkpoints_load_with_the_training_size_of_their_meta(tmp_path, meta, stored):
    """Files written before the size moved into the config: a training run's meta held it, an import's nothing."""
    path = saved_model(tmp_path / "old.pt")
    payload = torch.load(path, weights_only=True)
    del payload["config"]["input_size"]
    payload.update(version=1, meta=meta)
    torch.save(payload, path)
    model, _, _ = load_checkpoint(path)
    assert model.cfg.input_size == stored


# ------------------------------------------------------------------------------------- import
def official_checkpoint(path: Path, **extra) -> Path:
    return save_official_checkpoint(build_official_model(16, 1, aux=False, names=["ball"]), path, **extra)


@pytest.mark.parametrize("opt, stored", [
    ({"imgsz": 320, "batch_size": 16}, (320, 320)),           # train.py saves vars(opt)
    (argparse.Namespace(imgsz=416), (416, 416)),              # or the namespace itself
    ({"imgsz": 300}, (320, 320)),                             # trained at the next multiple of 32, as the repo does
    ({"imgsz": [384, 224]}, (384, 224)),
])
def test_import_stores_the_recorded_training_size(tmp_path, opt, stored):
    result = import_checkpoint(official_checkpoint(tmp_path / "yolov9.pt", opt=opt))
    assert result.model.cfg.input_size == stored and not any(NO_SIZE_NOTE in note for note in result.notes)
    model, _, _ = load_checkpoint(save_imported(result, tmp_path / "ours.pt"))
    assert model.cfg.input_size == stored


@pytest.mark.parametrize("extra", [{}, {"opt": {"imgsz": "big"}}, {"opt": {"batch_size": 16}}])
def test_import_without_a_usable_size_assumes_640_and_says_so(tmp_path, extra):
    result = import_checkpoint(official_checkpoint(tmp_path / "yolov9.pt", **extra))
    assert result.model.cfg.input_size == (640, 640)
    assert any(NO_SIZE_NOTE in note for note in result.notes), result.notes


def test_ultralytics_import_reads_train_args(ultralytics_t_checkpoint, tmp_path):
    """The real Ultralytics file was trained at imgsz=640 (its train_args say so)."""
    result = import_checkpoint(ultralytics_t_checkpoint)
    assert result.model.cfg.input_size == (640, 640) and not any(NO_SIZE_NOTE in n for n in result.notes)


# ------------------------------------------------------------------------------------- one range definition
@pytest.mark.parametrize("size", ["160", "192", "224", "640"])
def test_convert_takes_160_to_640(size):
    args = build_parser().parse_args(["convert", "--model", "m.pt", "--calib", "c", "-o", "o", "--imgsz", size])
    assert args.imgsz == int(size)


@pytest.mark.parametrize("size", ["128", "672", "300", "0"])
def test_convert_refuses_other_sizes_at_parse_time(size, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["convert", "--model", "m.pt", "--calib", "c", "-o", "o", "--imgsz", size])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --imgsz: " in err and "from 160 to 640, a multiple of 32" in err, err


def test_convert_defaults_to_the_model_size():
    args = build_parser().parse_args(["convert", "--model", "m.pt", "--calib", "c", "-o", "o"])
    assert args.imgsz is None


def test_the_convert_api_refuses_a_bad_size_before_writing(tmp_path, coco128):
    from edge_yolov9.convert.pipeline import ConvertOptions, convert_checkpoint

    small = saved_model(tmp_path / "small.pt")
    with pytest.raises(EdgeYoloError, match=r"Input size 128 \(requested\) is not supported for conversion") as err:
        convert_checkpoint(ConvertOptions(small, 128, coco128, tmp_path / "out"))
    assert err.value.fix == f"pass --imgsz with {CONVERT_INPUT_SIZES.allowed}"
    large = saved_model(tmp_path / "large.pt", input_size=1280)  # fine for train and val, too large to convert
    with pytest.raises(EdgeYoloError, match=f"Input size 1280 \\(the training size stored in {large}\\) is not "
                                            "supported for conversion"):
        convert_checkpoint(ConvertOptions(large, None, coco128, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_rectangular_model_needs_an_explicit_square_size(tmp_path, coco128):
    from edge_yolov9.convert.pipeline import ConvertOptions, convert_checkpoint

    path = saved_model(tmp_path / "wide.pt", input_size=(224, 384))
    with pytest.raises(EdgeYoloError, match="trained at 224x384 .* only square inputs") as err:
        convert_checkpoint(ConvertOptions(path, None, coco128, tmp_path / "out"))
    assert err.value.fix == "pass --imgsz with a square size"


# ------------------------------------------------------------------------------------- val
@pytest.fixture
def two_images(tmp_path, coco128) -> Path:
    """A 1-class data.yaml over two real coco128 images (labels: a box each)."""
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for path in sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:2]:
        (tmp_path / "images" / path.name).symlink_to(path)
        (tmp_path / "labels" / f"{path.stem}.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    (tmp_path / "data.yaml").write_text("val: images\nnames: [ball]\n")
    return tmp_path / "data.yaml"


def val_detections(model: Path, data: Path, out: Path, *imgsz: str) -> list:
    assert main(["val", "--model", str(model), "--data", str(data), "--json", "--save-json", str(out), *imgsz]) == 0
    return json.loads(out.read_text())


def test_val_runs_at_the_model_size_unless_told(tmp_path, two_images, caplog, capsys):
    model = saved_model(tmp_path / "m320.pt", input_size=320)
    caplog.set_level(logging.INFO)
    default = val_detections(model, two_images, tmp_path / "default.json")
    assert f"Input size 320x320: the training size stored in {model}" in caplog.text
    assert default == val_detections(model, two_images, tmp_path / "320.json", "--imgsz", "320")
    assert "differs from" not in caplog.text
    assert default != val_detections(model, two_images, tmp_path / "256.json", "--imgsz", "256")
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "Input size 256x256 (--imgsz) differs from the 320x320" in warning.getMessage()
    assert str(model) in warning.getMessage()


# ------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_a_model_trained_at_256_converts_and_validates_at_256(tmp_path, coco128, caplog, capsys):
    """A tiny real training run at 256, then convert and val with no --imgsz: both run at 256 and say so."""
    from edge_yolov9.convert.tflite_model import TFLiteModel

    data = tiny_dataset(coco128, tmp_path, count=4)
    assert main(["train", "--model", "yolov9-t", "--data", str(data), "--imgsz", "256", "--epochs", "1",
                 "--batch", "4", "--workers", "0", "--device", "cpu", "--project", str(tmp_path / "runs"),
                 "--name", "run"]) == 0
    best = tmp_path / "runs" / "run" / "best.pt"
    assert load_checkpoint(best)[0].cfg.input_size == (256, 256)
    caplog.set_level(logging.INFO)
    assert main(["convert", "--model", str(best), "--calib", str(data), "--calib-images", "1", "--no-accuracy",
                 "-o", str(tmp_path / "out")]) == 0
    assert f"Input size 256x256: the training size stored in {best}" in caplog.text
    int8 = tmp_path / "out" / "model_int8.tflite"
    assert TFLiteModel.from_file(int8).inputs[0].shape == (1, 256, 256, 3)
    assert json.loads(int8.with_suffix(".json").read_text())["input"]["size"] == [256, 256]
    caplog.clear()
    assert main(["val", "--model", str(best), "--data", str(data), "--json"]) == 0
    assert f"Input size 256x256: the training size stored in {best}" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "Input size" in r.getMessage()]
