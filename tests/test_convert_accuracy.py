"""The int8 accuracy report of ``edge-yolov9 convert``: COCO mAP of the PyTorch model, the float and the
int8 TFLite on a val set, the exit code of a drop beyond --max-drop, and when there is no report.

The models are the session's real conversion of the 1-class 'ball' YOLOv9-T (``out320``), reused by
the ``fast_pipeline`` fixture instead of converting again. That model is not a COCO model (near 0
mAP against COCO's sports-ball labels), so its val set is coco128 images labelled with its own
confident detections at 640 px: at 320 px it finds most of them, but not all and not exactly, so
its mAP is far from 0 and from 1, and any gap between PyTorch, float and int8 shows in the figures.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from edge_yolov9.convert.accuracy import AccuracyReport, ModelAccuracy, find_val_set, measure_accuracy
from edge_yolov9.convert.export import prepare_for_export
from edge_yolov9.cli import main
from edge_yolov9.postprocess import PostprocessConfig
from edge_yolov9.model_file import InputSize
from test_convert import fast_pipeline  # noqa: F401  (the fixture, used by name)
from test_edgetpu import CPU_OPS_LOG, fake_compiler
from edge_yolov9.train.checkpoint import load_checkpoint
from edge_yolov9.train.data import load_data_config
from edge_yolov9.train.evaluate import CocoEvalSet, TorchPredictor, evaluate, load_eval_set, predict_images
from edge_yolov9.train.models.deploy import deploy_model

PSEUDO_LABEL_SCORE, PSEUDO_LABEL_IMGSZ = 0.25, 640
VAL_IMAGES = 40
REPORT_FILES = {"model_int8_accuracy.json", "model_int8_accuracy.md"}


@pytest.fixture(scope="module")
def ball_data(tmp_path_factory, ball_checkpoint, coco128) -> Path:
    """A data.yaml (train = val) of 40 coco128 images: every one where the ball model's PyTorch form finds
    something with score >= 0.25 at 640 px, labelled with those boxes, the rest without objects."""
    root = tmp_path_factory.mktemp("ball-data")
    model, _, _ = load_checkpoint(ball_checkpoint)
    paths = sorted((coco128 / "images" / "train2017").glob("*.jpg"))
    predictor = TorchPredictor(deploy_model(model), PSEUDO_LABEL_IMGSZ,
                               config=PostprocessConfig(score_threshold=PSEUDO_LABEL_SCORE))
    found, sizes = predict_images(paths, predictor)
    labelled = [i for i, d in enumerate(found) if len(d.scores)]
    assert 3 <= len(labelled) < VAL_IMAGES, "the ball model should be confident on a few coco128 images"
    empty = [i for i in range(len(paths)) if i not in labelled][:VAL_IMAGES - len(labelled)]
    for folder in ("images", "labels"):
        (root / folder / "val").mkdir(parents=True)
    for i in labelled + empty:
        (root / "images" / "val" / paths[i].name).symlink_to(paths[i])
        width, height = sizes[i]
        lines = [f"0 {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} {(x2 - x1) / width:.6f} "
                 f"{(y2 - y1) / height:.6f}\n" for x1, y1, x2, y2 in found[i].boxes.tolist()]
        (root / "labels" / "val" / f"{paths[i].stem}.txt").write_text("".join(lines))
    (root / "data.yaml").write_text("path: .\ntrain: images/val\nval: images/val\nnames: [ball]\n")
    return root / "data.yaml"


def convert(checkpoint: Path, calib: Path, out: Path, *extra: str) -> int:
    """At 320, the size of the session's models that ``fast_pipeline`` reuses (the ball model's own is 640)."""
    return main(["convert", "--model", str(checkpoint), "--imgsz", "320", "--calib", str(calib), "--calib-images", "1",
                 *extra, "-o", str(out)])


def markdown_rows(text: str) -> dict[str, list[str]]:
    """The report table's cells by model name."""
    return {cells[0]: cells[1:] for cells in (line.strip("| ").split(" | ") for line in text.splitlines()
                                                if re.match(r"\| (PyTorch|float|int8)", line))}


@pytest.mark.usefixtures("fast_pipeline")
def test_report_of_pytorch_float_and_int8(tmp_path, ball_checkpoint, ball_data, capsys):
    """Default val source (the calib data.yaml's val split); the PyTorch row is what `val` measures,
    the float TFLite row equals it, the int8 row is close; JSON, Markdown and the printed table agree."""
    out = tmp_path / "out"
    assert convert(ball_checkpoint, ball_data, out, "--max-drop", "100") == 0  # no drop can exceed 100 AP
    stdout = capsys.readouterr().out
    assert REPORT_FILES <= {p.name for p in out.iterdir()}
    report = json.loads((out / "model_int8_accuracy.json").read_text())
    markdown = (out / "model_int8_accuracy.md").read_text()
    pytorch, float_tflite, int8 = report["models"]
    assert [r["model"] for r in report["models"]] == ["PyTorch fp32", "float TFLite", "int8 TFLite"]
    assert [r["file"] for r in report["models"]] == [ball_checkpoint.name, "model_float.tflite", "model_int8.tflite"]

    objects = sum(len(p.read_text().splitlines()) for p in (ball_data.parent / "labels" / "val").iterdir())
    assert {(r["images"], r["instances"]) for r in report["models"]} == {(VAL_IMAGES, objects)}
    assert report["val"] == f"`{ball_data}`, split `val` (YOLO labels)" and report["imgsz"] == "320x320"
    evaluation = PostprocessConfig.for_evaluation()
    assert report["postprocess"] == {"score_threshold": evaluation.score_threshold, "multi_label": True,
                                     "iou_threshold": evaluation.iou_threshold,
                                     "max_detections": evaluation.max_detections}

    model, _, _ = load_checkpoint(ball_checkpoint)
    val = evaluate(load_eval_set(ball_data), TorchPredictor(deploy_model(model), 320)).metrics
    assert (pytorch["map50_95"], pytorch["map50"]) == pytest.approx((val.map50_95, val.map50), abs=1e-3)
    assert 0.1 < pytorch["map50_95"] < pytorch["map50"] < 0.9  # labelled with its own detections at 640 px
    assert (float_tflite["map50_95"], float_tflite["map50"]) == pytest.approx((pytorch["map50_95"], pytorch["map50"]),
                                                                              abs=1e-3)
    assert 0 < int8["map50_95"] and abs(report["drop_ap"]) < 15
    assert report["drop_ap"] == pytest.approx(100 * (pytorch["map50_95"] - int8["map50_95"]), abs=1e-5)
    assert report["verdict"] == "PASS" and report["max_drop"] == 100

    rows = markdown_rows(markdown)
    for row in report["models"]:
        assert rows[row["model"]] == [row["file"], f"{row['map50_95']:.4f}", f"{row['map50']:.4f}",
                                      str(row["images"]), str(row["instances"])]
    assert f"{VAL_IMAGES} images, {objects} objects" in markdown and report["val"] in markdown
    assert "conf 0.001, NMS IoU 0.7, up to 300 detections per image, multi-label" in markdown
    assert f"int8 {-report['drop_ap']:+.2f} AP vs PyTorch in mAP50-95" in markdown
    assert markdown.startswith("# int8 accuracy: PASS")
    assert markdown in stdout and "No int8 accuracy report" not in stdout


@pytest.mark.usefixtures("fast_pipeline")
def test_drop_beyond_max_drop_exits_5_and_still_publishes(tmp_path, ball_checkpoint, ball_data, out320, capsys):
    """--max-drop just under the measured drop: exit 5, which outranks the Edge TPU's 4; every model and
    report is published; the figures are those of measure_accuracy on the same models."""
    model, labels, _ = load_checkpoint(ball_checkpoint)
    models = out320 / "out"
    measured = measure_accuracy(find_val_set(ball_data, None, labels), prepare_for_export(model), ball_checkpoint,
                                models / "model_float.tflite", models / "model_int8.tflite", max_drop=0)
    compiler = fake_compiler(tmp_path / "bin", CPU_OPS_LOG)
    out = tmp_path / "out"
    code = convert(ball_checkpoint, ball_data, out, "--val", str(ball_data), "--max-drop", f"{measured.drop - 0.01}",
                   "--edgetpu", "--compiler", str(compiler))
    stdout = capsys.readouterr().out
    assert code == 5, stdout
    names = {p.name for p in out.iterdir()}
    assert {"model_float.tflite", "model_int8.tflite", "model_int8_edgetpu.tflite", *REPORT_FILES} <= names
    assert not [n for n in names if n.startswith(".")]
    report = json.loads((out / "model_int8_accuracy.json").read_text())
    assert report["verdict"] == "FAIL" and report["models"] == measured.to_dict()["models"]
    assert f"loses {measured.drop:.2f} AP of mAP50-95 against PyTorch, more than --max-drop" in stdout
    assert "# int8 accuracy: FAIL" in stdout and "Edge TPU edgetpu_compiler" in stdout


def test_no_labelled_val_set_no_report(out320, out416):
    """An image folder, or a data.yaml without a val split, as --calib and no --val: a note, not an error."""
    for run, why in ((out320, "is an image folder (no labels)"), (out416, "declares no `val` split")):
        stdout = (run / "stdout.txt").read_text()
        assert (run / "exit_code").read_text() == "3", stdout
        assert "note: No int8 accuracy report: the calibration source" in stdout and why in stdout
        assert "--val data.yaml" in stdout
        assert not REPORT_FILES & {p.name for p in (run / "out").iterdir()}


@pytest.mark.usefixtures("fast_pipeline")
def test_no_accuracy_skips_the_report_silently(tmp_path, ball_checkpoint, ball_data, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_int8_accuracy.md").write_text("from an earlier run")
    assert convert(ball_checkpoint, ball_data, out, "--no-accuracy") == 0
    assert "int8 accuracy" not in capsys.readouterr().out
    assert not REPORT_FILES & {p.name for p in out.iterdir()}  # a stale report is removed with the other products


def test_val_with_no_accuracy_is_a_usage_error(tmp_path, coco128, capsys):
    with pytest.raises(SystemExit) as stop:
        convert(tmp_path / "model.pt", coco128, tmp_path / "out", "--val", str(coco128), "--no-accuracy")
    assert stop.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_val_set_of_other_classes_fails_before_converting(tmp_path, ball_checkpoint, coco128, capsys):
    out = tmp_path / "out"
    assert convert(ball_checkpoint, coco128, out, "--val", str(coco128 / "data.yaml")) == 2
    err = capsys.readouterr().err
    assert "detects 1 classes but the accuracy val set" in err and "--no-accuracy" in err
    assert not out.exists()


def test_val_set_follows_val_json_or_a_coco_json(tmp_path, coco_val158):
    """Like `val`: a data.yaml's `val_json` replaces its labels; a COCO json is scored as is."""
    annotations = coco_val158 / "annotations" / "instances_val2017_subset.json"
    names = load_data_config(coco_val158).names
    yaml = tmp_path / "data.yaml"
    yaml.write_text(f"path: {coco_val158}\ntrain: images/val2017\nval: images/val2017\n"
                    f"val_json: {annotations.relative_to(coco_val158)}\nnames: {list(names)}\n")
    from_yaml = find_val_set(yaml, None, names)
    assert isinstance(from_yaml.eval_set, CocoEvalSet) and from_yaml.annotations == str(annotations)
    assert from_yaml.describe() == f"`{yaml}`, split `val` ({annotations})"
    from_json = find_val_set(coco_val158 / "images", annotations, names)
    assert from_json.split is None and from_json.describe() == f"`{annotations}` ({annotations})"
    assert find_val_set(coco_val158 / "images", None, names) is None


def test_verdict_at_the_limit():
    """The drop is in AP points, rounded so float noise does not fail a drop equal to --max-drop."""
    def row(map50_95: float) -> ModelAccuracy:
        return ModelAccuracy("m", "f", map50_95, map50_95, 1, 1)

    report = AccuracyReport("v", 320, row(0.5), row(0.5), row(0.49), max_drop=1.0)
    assert report.drop == 1.0 and report.passed
    assert not replace(report, max_drop=0.99).passed
    assert replace(report, int8_tflite=row(0.51)).drop == -1.0


def test_the_change_reads_right_both_ways():
    """An int8 model that scores higher is said to gain ('int8 +0.20 AP vs PyTorch'), never a '-0.20 AP drop'."""
    def row(map50_95: float) -> ModelAccuracy:
        return ModelAccuracy("m", "f", map50_95, map50_95, 1, 1)

    higher = AccuracyReport("v", InputSize(320, 320), row(0.5), row(0.5), row(0.502), max_drop=1.0)
    lower = replace(higher, int8_tflite=row(0.4965))
    assert higher.change() == "int8 +0.20 AP vs PyTorch" and "int8 +0.20 AP vs PyTorch in mAP50-95" in higher.render()
    assert lower.change() == "int8 -0.35 AP vs PyTorch" and "(int8 -0.35 AP vs PyTorch;" in lower.summary()
    assert "drop" not in higher.change() and "+0.20 in mAP50" in higher.render()
