"""Numeric options and model names of train, val and models are checked when the command line is parsed,
before any data or model is loaded, each with its allowed range."""

from __future__ import annotations

import pytest

from edge_yolov9.cli import main
from edge_yolov9.train.cli import MODEL_NAMES
from edge_yolov9.train.models import list_models

# Valid everywhere else: a parse-time refusal is the only way these commands can exit before reading --data.
TRAIN = ["train", "--data", "missing.yaml"]
VAL = ["val", "--model", __file__, "--data", "missing.yaml"]  # any existing file: the numbers fail first


@pytest.mark.parametrize("argv, option, value, allowed", [
    (TRAIN, "--imgsz", "0", "a multiple of 32 from 64 to 1280"),
    (TRAIN, "--imgsz", "-1", "from 64 to 1280"),
    (TRAIN, "--imgsz", "31", "a multiple of 32"),
    (TRAIN, "--imgsz", "10016", "from 64 to 1280"),
    (TRAIN, "--imgsz", "big", "not a supported size; use one size or WIDTHxHEIGHT"),
    (TRAIN, "--epochs", "0", "an integer from 1"),
    (TRAIN, "--epochs", "-1", "an integer from 1"),
    (TRAIN, "--time-budget", "0", "a number above 0"),
    (TRAIN, "--time-budget", "nan", "a number above 0"),
    (TRAIN, "--lr0", "-1", "above 0"),
    (TRAIN, "--lr0", "0", "above 0"),
    (TRAIN, "--batch", "0", "an integer from 1 to 1024"),
    (TRAIN, "--nominal-batch", "0", "an integer from 1 to 1024"),
    (TRAIN, "--workers", "-2", "from -1"),
    (TRAIN, "--warmup-epochs", "-1", "at least 0"),
    (TRAIN, "--close-mosaic", "-1", "at least 0"),
    (TRAIN, "--seed", "-1", "from 0"),
    (["models"], "--imgsz", "0", "from 64 to 1280"),
    (["models"], "--num-classes", "0", "an integer from 1"),
    (VAL, "--imgsz", "100", "a multiple of 32"),
    (VAL, "--imgsz", "1344", "from 64 to 1280"),
    (VAL, "--batch", "0", "an integer from 1"),
])
def test_numbers_out_of_range_are_refused_at_parse_time(argv, option, value, allowed, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, option, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {option}: " in err and allowed in err, err


@pytest.mark.parametrize("argv", [
    ["val", "--data", "missing.yaml", "--model"], [*TRAIN, "--weights"], ["import", "-o", "out.pt"]])
def test_missing_input_files_are_refused_at_parse_time(tmp_path, argv, capsys):
    for path, problem in ((tmp_path / "missing.pt", "does not exist"), (tmp_path, "is a folder")):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, str(path)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and f"{path} {problem}" in err, err


def test_unknown_model_is_refused_at_parse_time_with_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*TRAIN, "--model", "yolov9-x"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "invalid choice: 'yolov9-x'" in err and "gelan-t" in err


def test_the_cli_names_every_registered_model():
    assert MODEL_NAMES == tuple(list_models())


@pytest.mark.parametrize("setting, problem", [
    ("scale", "give NAME=VALUE with NAME one of hsv_h"), ("zoom=0.5", "give NAME=VALUE"),
    ("scale=x", "'x' is not a number"), ("mixup=-0.1", "finite numbers from 0"), ("scale=inf", "finite numbers")])
def test_augment_settings_are_checked_at_parse_time(setting, problem, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*TRAIN, "--augment", setting])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --augment: " in err and problem in err, err


def test_augment_settings_reach_the_run_config(monkeypatch):
    import edge_yolov9.train.trainer as trainer

    seen = []
    monkeypatch.setattr(trainer, "train", lambda cfg: seen.append(cfg) or "best.pt")
    assert main([*TRAIN, "--augment", "scale=0.5", "mixup=0", "--augment", "fliplr=0"]) == 0
    [cfg] = seen
    assert (cfg.augment["scale"], cfg.augment["mixup"], cfg.augment["fliplr"]) == (0.5, 0.0, 0.0)
    assert cfg.augment["hsv_s"] == trainer.AugmentConfig().hsv_s  # the others keep their defaults
