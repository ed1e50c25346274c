"""`val` on a converted model: scored through the runtime's own Detector (what runs on the Pi), on the CPU or
an Edge TPU, and `--compare-cpu`, the Edge TPU model against its CPU twin on the same images. No Coral here:
the 'Edge TPU' model is the tiny model declaring the Edge TPU custom op, run through a fake libedgetpu whose
delegate takes no node (support.fake_libedgetpu), so both sides must agree exactly."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_yolov9.cli import main
from edge_yolov9.train.evaluate import TFLitePredictor, evaluate, load_eval_set
from support.conversions import fake_edgetpu_model
from support.fake_libedgetpu import build_fake_libedgetpu


def colour_data(folder: Path, count: int) -> Path:
    """A data.yaml in ``folder`` over ``count`` real PNGs, red and blue in turn (colours the tiny model knows),
    each labelled as one object."""
    for name in ("images", "labels"):
        (folder / name).mkdir(parents=True)
    for index in range(count):
        colour, class_id = ((255, 0, 0), 0) if index % 2 == 0 else ((0, 0, 255), 1)
        Image.fromarray(np.full((64, 96, 3), colour, np.uint8)).save(folder / "images" / f"{index}.png")
        (folder / "labels" / f"{index}.txt").write_text(f"{class_id} 0.5 0.5 1.0 1.0\n")
    (folder / "data.yaml").write_text("path: .\nval: images\nnames: [red, blue]\n")
    return folder / "data.yaml"


@pytest.fixture
def colours(tmp_path) -> Path:
    return colour_data(tmp_path, 6)


@pytest.fixture
def compiled(tiny_model, tmp_path, monkeypatch) -> Path:
    """An 'Edge TPU' model with its CPU twin beside it, and the fake libedgetpu that runs it."""
    shutil.copy(tiny_model, tmp_path / "tiny_int8.tflite")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGE_YOLOV9_LIBEDGETPU", str(build_fake_libedgetpu(tmp_path / "lib", "works")))
    return fake_edgetpu_model(tiny_model, tmp_path / "tiny_int8_edgetpu.tflite")


def val_json(capsys, *args: str) -> dict:
    assert main(["val", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_converted_model_is_scored_through_the_runtime(tiny_model, colours, capsys):
    metrics = val_json(capsys, "--model", tiny_model, "--data", colours)
    direct = evaluate(load_eval_set(colours), TFLitePredictor(tiny_model)).metrics
    assert metrics["map50_95"] == pytest.approx(direct.map50_95) and metrics["map50"] > 0
    assert metrics["num_images"] == 6 and set(metrics["per_class"]) == {"red", "blue"}


def test_the_edge_tpu_model_is_compared_with_its_cpu_twin(compiled, colours, capsys):
    report = val_json(capsys, "--model", compiled, "--data", colours, "--device", "usb", "--compare-cpu")
    assert report["edgetpu"]["device"] == "usb" and report["edgetpu"]["model"] == str(compiled)
    assert report["cpu"]["model"] == str(compiled.with_name("tiny_int8.tflite"))
    assert report["edgetpu"]["map50_95"] == pytest.approx(report["cpu"]["map50_95"])
    assert report["agreement"]["map50_95"] == pytest.approx(1.0) and report["agreement"]["objects"] >= 6
    assert main(["val", "--model", str(compiled), "--data", str(colours), "--device", "usb", "--compare-cpu"]) == 0
    table = capsys.readouterr().out
    assert "agreement" in table and "on usb" in table


@pytest.mark.parametrize("args, says", [
    (["--compare-cpu"], "has none beside it"),                       # a CPU model
    (["--imgsz", "64"], "was converted for 32x32; it cannot run at 64x64"),
])
def test_what_a_converted_model_cannot_do_is_refused(tiny_model, colours, capsys, args, says):
    assert main(["val", "--model", str(tiny_model), "--data", str(colours), *args]) == 2
    assert says in capsys.readouterr().err


def test_compare_cpu_needs_the_edge_tpu(compiled, colours, capsys, monkeypatch):
    monkeypatch.setenv("EDGE_YOLOV9_LIBEDGETPU", str(build_fake_libedgetpu(compiled.parent / "lib2", "null")))
    assert main(["val", "--model", str(compiled), "--data", str(colours), "--compare-cpu"]) == 2
    err = capsys.readouterr().err
    assert "--compare-cpu needs the Edge TPU" in err and "ran on the CPU" in err


def test_device_options_need_a_converted_model(tmp_path, colours, capsys):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"not read: the options are refused first")
    assert main(["val", "--model", str(checkpoint), "--data", str(colours), "--compare-cpu"]) == 2
    assert "apply to a converted model (.tflite)" in capsys.readouterr().err


# ------------------------------------------------------------------------ a Coral that drops mid-run
@pytest.fixture
def unplug(compiled, tmp_path, monkeypatch) -> Path:
    """The fake libedgetpu that aborts its process (libedgetpu's USB fault) once this trigger file appears."""
    monkeypatch.setenv("EDGE_YOLOV9_LIBEDGETPU", str(build_fake_libedgetpu(tmp_path / "lib-unplug", "unplug")))
    monkeypatch.setenv("FAKE_LIBEDGETPU_UNPLUG", str(tmp_path / "unplugged"))
    return tmp_path / "unplugged"


def unplugging_after(predictor: TFLitePredictor, trigger: Path, said: str, batches: int):
    """``predictor``, with the Coral unplugged (``said``: 'once' or 'for good') after ``batches`` batches;
    'once' waits until the library has seen it (it removes the file and aborts its process)."""
    done = 0

    def predict(images):
        nonlocal done
        done += 1
        if done == batches + 1:
            trigger.write_text(said)
            deadline = time.monotonic() + 30
            while said == "once" and trigger.exists() and time.monotonic() < deadline:
                time.sleep(0.001)
        return predictor(images)
    return predict


def test_val_survives_a_coral_that_drops_once(compiled, colours, unplug, caplog):
    """The Edge TPU model runs in a child process that libedgetpu's abort takes down; it is started again and the
    image retried: the same metrics as its CPU twin's, on the Edge TPU throughout."""
    eval_set = load_eval_set(colours)
    with TFLitePredictor(compiled, device="usb") as edgetpu, caplog.at_level("WARNING"):
        dropped = evaluate(eval_set, unplugging_after(edgetpu, unplug, "once", 1), batch_size=2).metrics
        assert edgetpu.model.device == "usb"
    cpu = evaluate(eval_set, TFLitePredictor(compiled.with_name("tiny_int8.tflite"))).metrics
    assert dropped == cpu and dropped.num_images == 6
    assert "killed by SIGABRT" in caplog.text and "starting it again (1 of 2)" in caplog.text


@pytest.fixture
def many_colours(tmp_path) -> Path:
    """colours' data with 120 images: more than restarted children that abort within milliseconds can answer."""
    return colour_data(tmp_path / "many", 120)


def test_val_stops_on_a_coral_gone_for_good_and_never_scores_the_cpu_instead(compiled, many_colours, unplug):
    """Even with device 'auto' and a CPU twin beside the model, val does not finish on the CPU (its figures
    would mix two devices): after two restarts it stops with the error and the fix, its child gone."""
    from edge_yolov9.isolated import DetectorProcessError

    with TFLitePredictor(compiled, device="auto") as edgetpu:
        assert edgetpu.model.device != "cpu"
        with pytest.raises(DetectorProcessError) as failed:
            evaluate(load_eval_set(many_colours), unplugging_after(edgetpu, unplug, "for good", 2), batch_size=2)
        child = edgetpu._detector._process
    assert "The Edge TPU failed 3 times in this run" in failed.value.problem
    assert "cable and power" in failed.value.fix and "--device auto" not in failed.value.fix
    assert not child.running
