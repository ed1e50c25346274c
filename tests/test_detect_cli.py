"""`detect`, `bench` and the Detector against a clumsy or hostile user, on the real converted model:
numbers out of range, outputs that would overwrite each other, two runs on one JSON file, a full disk,
metadata that does not belong to the model, images too large to decode, phone photos."""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_yolov9.cli import main
from edge_yolov9.detector import Detector
from edge_yolov9.errors import EdgeYoloError, ModelError
from support.conversions import CONFIDENT_IMAGES
from support.small_disk import full_disk


@pytest.fixture
def model(out320) -> Path:
    return out320 / "out" / "model_int8.tflite"


@pytest.fixture
def ball_image(coco128) -> Path:
    return coco128 / "images" / "train2017" / CONFIDENT_IMAGES[0]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_yolov9.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


# --------------------------------------------------------------------------- numbers and paths


@pytest.mark.parametrize("args, says", [
    (["--classes", "-1"], "--classes: -1 is out of range"),
    (["--max-det", "0"], "--max-det: 0 is out of range"),
    (["--threads", "-5"], "--threads: -5 is out of range"),
    (["--conf", "25"], "--conf: 25 is out of range; use a number above 0 and at most 1"),
    (["--iou", "0"], "--iou: 0 is out of range"),
    (["--labels", "no-such-labels.txt"], "--labels: no-such-labels.txt does not exist"),
])
def test_detect_refuses_bad_numbers_and_paths_at_parse_time(model, ball_image, capsys, args, says):
    with pytest.raises(SystemExit) as exit_:
        main(["detect", str(model), str(ball_image), *args])
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("args, says", [(["--runs", "0"], "--runs: 0 is out of range"),
                                        (["--warmup", "-1"], "--warmup: -1 is out of range")])
def test_bench_refuses_bad_numbers(model, capsys, args, says):
    with pytest.raises(SystemExit):
        main(["bench", str(model), *args])
    assert says in capsys.readouterr().err


def test_an_empty_source_is_refused_not_the_current_folder(model, capsys):
    with pytest.raises(SystemExit):
        main(["detect", str(model), ""])
    assert "an empty source" in capsys.readouterr().err


def test_class_ids_beyond_the_model_are_refused(model, ball_image, capsys):
    assert main(["detect", str(model), str(ball_image), "--classes", "0", "3"]) == 2
    assert "Class ids [3] do not exist: model_int8.tflite has 1 classes" in capsys.readouterr().err
    with pytest.raises(EdgeYoloError, match="at least one thread"):
        Detector(model, threads=0)


def test_save_onto_a_file_and_json_into_a_new_folder(model, ball_image, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    assert main(["detect", str(model), str(ball_image), "--save", str(taken)]) == 2
    assert "--save" in capsys.readouterr().err and taken.read_text() == "mine"
    target = tmp_path / "new" / "deeper" / "out.jsonl"
    assert main(["detect", str(model), str(ball_image), "--json", str(target)]) == 0
    [record] = [json.loads(line) for line in target.read_text().splitlines()]
    assert record["detections"] and record["detections"][0]["label"] == "ball"


# --------------------------------------------------------------------------- outputs that must not collide


def test_saved_images_never_overwrite_each_other(model, coco128, tmp_path):
    images = sorted((coco128 / "images" / "train2017").glob("*.jpg"))
    folder = tmp_path / "photos"
    (folder / "x").mkdir(parents=True)
    shutil.copy(images[0], folder / "x" / "y.jpg")
    shutil.copy(images[1], folder / "x_y.jpg")
    shutil.copy(images[2], folder / "z.jpg")
    Image.open(images[3]).save(folder / "z.png")
    out = tmp_path / "annotated"
    assert main(["detect", str(model), str(folder), "--save", str(out)]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert written == ["x/y.jpg", "x_y.jpg", "z.jpg", "z_png.jpg"]
    sizes = {Image.open(out / name).size for name in written}
    assert sizes == {Image.open(p).size for p in images[:4]}  # four different photos, none overwritten


def test_a_second_detect_on_the_same_json_is_refused(model, ball_image, tmp_path):
    target = tmp_path / "detections.jsonl"
    target.write_text('{"earlier": "line"}\n')
    with open(target, "a") as holder:  # what a running `detect --json` holds
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        refused = run_cli("detect", model, ball_image, "--json", target)
    assert refused.returncode == 2
    assert "Another program is writing" in refused.stderr and "Traceback" not in refused.stderr
    assert target.read_text() == '{"earlier": "line"}\n'  # nothing lost, nothing interleaved
    assert run_cli("detect", model, ball_image, "--json", target).returncode == 0
    assert [json.loads(line)["source"] for line in target.read_text().splitlines()] == [str(ball_image)]


def test_a_full_disk_is_named_and_leaves_no_partial_image(model, coco128, tmp_path):
    with full_disk(tmp_path / "disk") as disk:
        result = run_cli("detect", model, coco128 / "images" / "train2017", "--json", disk / "out.jsonl")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "the disk is full" in result.stderr and "free some space" in result.stderr
        (disk / "filler").unlink()
        (disk / "filler").write_bytes(b"\0" * 40 * 1024)  # room for a few annotated images, not for all
        result = run_cli("detect", model, coco128 / "images" / "train2017", "--save", disk / "annotated")
        assert result.returncode == 2 and "the disk is full" in result.stderr
        saved = list((disk / "annotated").glob("*.jpg"))
        assert all(Image.open(p).verify() is None for p in saved)  # every file left is a whole JPEG


# --------------------------------------------------------------------------- metadata that lies


@pytest.fixture
def stale_copy(out320, out416, tmp_path) -> Path:
    """The realistic case: a newly converted .tflite copied over an old one, beside the old .json."""
    folder = tmp_path / "deployed"
    folder.mkdir()
    shutil.copy(out320 / "out" / "model_int8.tflite", folder)
    shutil.copy(out416 / "out" / "model_int8.json", folder)
    return folder / "model_int8.tflite"


def test_a_stale_sidecar_is_one_clear_error(stale_copy, ball_image, capsys):
    with pytest.raises(ModelError) as err:
        Detector(stale_copy, device="cpu")
    assert "does not match the model" in err.value.problem and "[1, 416, 416, 3] in the metadata" in err.value.problem
    assert "model_int8.json does not belong to model_int8.tflite" in err.value.fix
    assert main(["doctor", "--model", str(stale_copy)]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] model: loads" in out and "model_int8.json" in out
    stale_copy.with_suffix(".json").unlink()  # the fix the error gives
    assert Detector(stale_copy, device="cpu").detect(ball_image)


@pytest.mark.parametrize("edit, says", [
    (lambda m: m["labels"].append("extra"), "has 1 channels, not the 2 labels"),
    (lambda m: m["outputs"][0].update(scale=m["outputs"][0]["scale"] * 2), "quantization"),
    (lambda m: m["input"].update(zero_point=0), "input quantization"),
    (lambda m: m["outputs"][0].update(name="renamed"), "'renamed' of the metadata is not in the model"),
    (lambda m: m["outputs"][0].update(stride=16), "pairs of 'box' and 'cls'"),
    (lambda m: [o.update(stride=o["stride"] * 2) for o in m["outputs"]], "stride"),
    (lambda m: m["outputs"].pop(), "outputs in the metadata"),
    (lambda m: m.update(labels="ball"), "malformed"),
    (lambda m: m.update(labels=[None]), "malformed"),
    (lambda m: m["input"].update(shape="1x320"), "input shape"),
    (lambda m: m.pop("outputs"), "missing 'outputs'"),
    (lambda m: m.update(layout="sideways"), "unknown layout"),
    (lambda m: m.update(format="yolo-json"), "not edge-yolov9 model metadata"),
    (lambda m: m.update(version=2), "version 2, written by a newer edge-yolov9"),
    (lambda m: m.update(version="1"), "no valid version"),
])
def test_edited_metadata_is_refused_with_the_file_named(out320, tmp_path, edit, says):
    folder = tmp_path / "edited"
    shutil.copytree(out320 / "out", folder)
    sidecar = folder / "model_int8.json"
    meta = json.loads(sidecar.read_text())
    edit(meta)
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=says) as err:
        Detector(folder / "model_int8.tflite", device="cpu")
    assert str(sidecar) in err.value.problem


def test_metadata_that_is_not_json_names_the_sidecar(out320, tmp_path):
    folder = tmp_path / "garbled"
    shutil.copytree(out320 / "out", folder)
    (folder / "model_int8.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(ModelError, match="model_int8.json is not valid JSON"):
        Detector(folder / "model_int8.tflite", device="cpu")


# --------------------------------------------------------------------------- images


def test_an_image_over_the_pixel_limit_is_skipped_in_a_folder(model, coco128, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(coco128 / "images" / "train2017" / CONFIDENT_IMAGES[0], folder / "a.jpg")
    Image.new("1", (14000, 14000)).save(folder / "b_bomb.png")
    shutil.copy(coco128 / "images" / "train2017" / CONFIDENT_IMAGES[1], folder / "c.jpg")
    assert main(["detect", str(model), str(folder), "--json", str(tmp_path / "out.jsonl")]) == 1
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [Path(r["source"]).name for r in records] == ["a.jpg", "b_bomb.png", "c.jpg"]
    assert "too large to decode safely" in records[1]["error"]
    assert records[0]["detections"] and records[2]["detections"]


def test_a_phone_photo_is_detected_upright(model, ball_image, tmp_path):
    upright = Detector(model, device="cpu", threads=1).detect(ball_image)
    stored = Image.open(ball_image).transpose(Image.Transpose.ROTATE_90)  # the sensor's pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    phone = Detector(model, device="cpu", threads=1).detect(tmp_path / "phone.jpg")
    assert len(phone) == len(upright) >= 1
    assert phone[0].box.iou(upright[0].box) > 0.8 and abs(phone[0].score - upright[0].score) < 0.1


def test_a_huge_jpeg_is_detected_in_full_size_pixels(model, ball_image, tmp_path):
    photo = np.asarray(Image.open(ball_image).convert("RGB"))
    big = Image.fromarray(photo).resize((photo.shape[1] * 12, photo.shape[0] * 12), Image.NEAREST)
    big.save(tmp_path / "big.jpg", quality=92)
    small = Detector(model, device="cpu", threads=1).detect(ball_image)
    large = Detector(model, device="cpu", threads=1).detect(tmp_path / "big.jpg")
    assert len(large) == len(small) >= 1
    expected = [v * 12 for v in small[0].box]
    assert large[0].box.iou(type(small[0].box)(*expected)) > 0.85


def test_the_daemon_refuses_a_stale_sidecar_at_start_instead_of_crash_looping(stale_copy, coco128):
    result = run_cli("serve", "--model", stale_copy, "--source", coco128 / "images" / "train2017", "--http-port", "0")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "does not match the model" in result.stderr and "model_int8.json" in result.stderr


# --------------------------------------------------------------------------- the Detector's steps


def test_the_three_steps_compose_detect(model, ball_image):
    from edge_yolov9 import Detector as Exported
    from edge_yolov9.detector import prepare

    detector = Exported(model, device="cpu", threads=1)
    prepared = detector.prepare(ball_image)
    assert prepared.tensor.shape == (1, 320, 320, 3) and prepared.tensor.dtype == np.int8
    raw = detector.run(prepared.tensor)
    assert [level.shape[:2] for level in raw.box_levels] == [(40, 40), (20, 20), (10, 10)]
    stepwise = detector.decode(raw, prepared.placement)
    assert stepwise == detector.detect(ball_image) and stepwise
    image = np.asarray(Image.open(ball_image).convert("RGB"))
    again = prepare(image, detector.info.input)  # what the daemon's parent does, without an interpreter
    np.testing.assert_array_equal(again.tensor, prepared.tensor)
    detections, timing = detector.detect_with_timing(image)
    assert detections == stepwise and timing.invoke > 0 and timing.postprocess > 0


@pytest.mark.parametrize("options, says", [
    ({"score_threshold": 25}, "score_threshold=25 is out of range"),
    ({"iou_threshold": 0}, "iou_threshold=0 is out of range"),
    ({"max_detections": 0}, "max_detections=0 is out of range"),
    ({"classes": [-1]}, "are not class ids"),
])
def test_postprocess_options_are_validated_once(model, options, says):
    from edge_yolov9 import PostprocessConfig

    with pytest.raises(EdgeYoloError, match=says):
        PostprocessConfig(**options)
    with pytest.raises(EdgeYoloError, match=says):
        Detector(model, device="cpu", **options)
