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
    assert args.imgsz == [(int(size), int(size))]  # a list: several sizes make a sweep


@pytest.mark.parametrize("size", ["128", "672", "300", "0"])
def test_convert_refuses_other_sizes_at_parse_time(size, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["convert", "--model", "m.pt", "--calib", "c", "-o", "o", "--imgsz", size])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --imgsz: " in err and "a multiple of 32 from 160 to 640" in err, err


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
    with pytest.raises(EdgeYoloError, match=f"Input size 1280x1280 \\(the training size stored in {large}\\) is not "
                                            "supported for conversion"):
        convert_checkpoint(ConvertOptions(large, None, coco128, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, size", [("384x224", (224, 384)), ("224x384", (384, 224)), ("320", (320, 320))])
def test_sizes_are_width_x_height_as_screens_are_named(text, size):
    args = build_parser().parse_args(["convert", "--model", "m.pt", "--calib", "c", "-o", "o", "--imgsz", text])
    [parsed] = args.imgsz
    assert parsed == size and str(parsed) == f"{size[1]}x{size[0]}"


def test_a_rectangular_input_costs_less_than_its_square(capsys):
    assert main(["models", "--filter", "gelan-t", "--json", "--imgsz", "384x224"]) == 0
    wide = json.loads(capsys.readouterr().out)[0]
    assert main(["models", "--filter", "gelan-t", "--json", "--imgsz", "384"]) == 0
    square = json.loads(capsys.readouterr().out)[0]
    assert wide["image_size"] == "384x224" and wide["gflops"] < 0.62 * square["gflops"]


def test_rectangular_training_samples_have_the_input_shape(coco128, tmp_path):
    import numpy as np

    from edge_yolov9.train.augment import AugmentConfig, augment, resize_to_fit
    from edge_yolov9.train.data import list_split, load_data_config
    from edge_yolov9.train.trainer import TrainDataset

    samples = list_split(load_data_config(tiny_dataset(coco128, tmp_path, count=8)), "train")
    dataset = TrainDataset(samples, (224, 384), AugmentConfig(), seed=0, cache=False)
    for index in range(4):  # mosaics
        image, targets = dataset[index]
        assert tuple(image.shape) == (3, 224, 384)
        assert len(targets) and targets[:, [1, 3]].max() <= 384 and targets[:, [2, 4]].max() <= 224
    fitted = resize_to_fit(dataset.load(0), (224, 384))
    assert fitted.image.shape[0] <= 224 and fitted.image.shape[1] <= 384 and 224 in fitted.image.shape[:2]
    single = augment(0, dataset.load, len(dataset), (224, 384), np.random.default_rng(0), AugmentConfig(),
                     use_mosaic=False)
    assert single.image.shape == (224, 384, 3)


@pytest.mark.slow
def test_a_rectangular_model_trains_converts_and_detects_in_image_pixels(tmp_path, coco128, caplog):
    """384x224 (a 16:9 camera's shape): one tiny epoch, a conversion with no --imgsz; the converted model
    computes what PyTorch does on the runtime's rectangular letterbox, whose placement maps back to the
    original image's pixels."""
    import numpy as np

    from edge_yolov9.detector import Detector
    from edge_yolov9.preprocess import load_image
    from edge_yolov9.train.models.deploy import deploy_model

    data = tiny_dataset(coco128, tmp_path, count=4)
    assert main(["train", "--model", "gelan-t", "--data", str(data), "--imgsz", "384x224", "--epochs", "1",
                 "--batch", "4", "--workers", "0", "--device", "cpu", "--project", str(tmp_path / "runs"),
                 "--name", "run"]) == 0
    best = tmp_path / "runs" / "run" / "best.pt"
    model, _, _ = load_checkpoint(best)
    assert model.cfg.input_size == (224, 384)
    caplog.set_level(logging.INFO)
    assert main(["convert", "--model", str(best), "--calib", str(data), "--calib-images", "1", "--no-accuracy",
                 "-o", str(tmp_path / "out")]) == 0
    assert f"Input size 384x224: the training size stored in {best}" in caplog.text
    detector = Detector(tmp_path / "out" / "model_float.tflite", device="cpu", threads=1)
    assert detector.info.size == (224, 384)
    photo = sorted((coco128 / "images" / "train2017").glob("*.jpg"))[0]
    assert load_image(photo).shape[:2] == (480, 640)  # letterboxed into 384x224 with bars left and right
    prepared = detector.prepare(photo)
    assert prepared.tensor.shape == (1, 224, 384, 3)
    assert prepared.placement.pad_x == 42 and prepared.placement.pad_y == 0
    np.testing.assert_allclose(prepared.placement.to_image(np.array([[42, 0, 342, 224]], np.float32)),
                               [[0, 0, 640, 480]], atol=1.5)  # the picture's area on the input is the whole photo
    raw = detector.run(prepared.tensor)
    with torch.no_grad():
        levels = deploy_model(model)(torch.from_numpy(prepared.tensor).permute(0, 3, 1, 2)).main
    for level, box, cls in zip(levels, raw.box_levels, raw.cls_levels):  # the conversion is exact at 384x224
        np.testing.assert_allclose(box, level.box[0].permute(1, 2, 0).numpy(), atol=1e-3)
        np.testing.assert_allclose(cls, level.cls[0].permute(1, 2, 0).numpy(), atol=1e-3)
    assert [tuple(b.shape[:2]) for b in raw.box_levels] == [(28, 48), (14, 24), (7, 12)]


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
