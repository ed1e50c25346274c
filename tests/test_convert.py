"""End to end: ``edge-yolov9 convert`` on a real trained checkpoint, and what the int8 graph must (not) contain.

Conversions are slow (1-2 min each on 2 cores), so each runs once per test session, shared across
pytest-xdist workers through a file lock: the CLI on a real YOLOv9-T (imported from Ultralytics,
1 class) at 320, and the int8 conversion alone of a shallower GELAN-T at 416. Each finding of the
toolchain notes (P2-P12) has a check here or in test_convert_tflite.py / test_edgetpu.py.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from edge_yolov9.convert.edgetpu import precheck
from edge_yolov9.convert.metadata import embedded_metadata
from edge_yolov9.convert.tflite_model import TFLiteModel
from edge_yolov9.cli import main
from edge_yolov9.postprocess import PostprocessConfig, postprocess
from edge_yolov9.preprocess import letterbox, load_image
from test_edgetpu import ALL_MAPPED_LOG, CPU_OPS_LOG, fake_compiler
from edge_yolov9.train.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from edge_yolov9.train.models import create_model
from edge_yolov9.train.models.deploy import deploy_model

from support.conversions import CONFIDENT_IMAGES, OUTPUT_NAMES
from support.small_disk import full_disk
from support.terminal import as_from_a_terminal
from support.waiting import wait_until

INT8_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "LOGISTIC", "MUL", "ADD", "CONCATENATION", "AVERAGE_POOL_2D", "MAX_POOL_2D", "PAD",
            "QUANTIZE", "RESIZE_NEAREST_NEIGHBOR"}




def images(folder: Path, size: int, count: int = 4, names: tuple[str, ...] = ()) -> list[np.ndarray]:
    """Letterboxed uint8 canvases of real images (the named ones, else the first ``count``)."""
    paths = [folder / name for name in names] if names else sorted(folder.glob("**/*.jpg"))[:count]
    return [letterbox(load_image(p), size)[0] for p in paths]


def invoke(path: Path, image: np.ndarray) -> list[np.ndarray]:
    """Raw outputs in graph order, dequantized to float when the model is integer."""
    interpreter = Interpreter(model_path=str(path), num_threads=2)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    if detail["dtype"] == np.float32:
        value = image.astype(np.float32) / 255
    else:
        scale, zero_point = detail["quantization"]
        value = np.round(image / 255 / scale + zero_point).astype(detail["dtype"])
    interpreter.set_tensor(detail["index"], value[None])
    interpreter.invoke()
    outputs = []
    for d in interpreter.get_output_details():
        raw = interpreter.get_tensor(d["index"])[0]
        scale, zero_point = d["quantization"]
        outputs.append((raw.astype(np.float32) - zero_point) * scale if scale else raw)
    return outputs


def detections(outputs: list[np.ndarray]):
    return postprocess(outputs[0::2], outputs[1::2], channels_last=True, config=PostprocessConfig(score_threshold=0.3))


# ------------------------------------------------------------------------------------- the CLI run
def test_convert_writes_the_products_and_explains_the_missing_compiler(out320):
    """--edgetpu without a compiler: the CPU models and the precheck are written, the install steps
    printed, exit code 3."""
    stdout = (out320 / "stdout.txt").read_text()
    assert (out320 / "exit_code").read_text() == "3", stdout
    assert {p.name for p in (out320 / "out").iterdir()} == {
        "model_float.tflite", "model_float.json", "model_int8.tflite", "model_int8.json",
        "model_int8_edgetpu_precheck.json", "model_int8_edgetpu_precheck.md"}
    assert "int8 model input: int8 [1, 320, 320, 3] scale=0.0039215689 zero_point=-128" in stdout
    assert "Edge TPU precheck: model_int8.tflite: PASS" in stdout
    assert "coral-edgetpu-stable main" in stdout and "sudo apt-get install edgetpu-compiler" in stdout
    [summary] = re.findall(r"Stage times: ([\d.]+) s in all; (.*)", stdout)
    stages = dict(re.findall(r"([\w :]+?) ([\d.]+) s(?:, |$)", summary[1]))
    assert list(stages) == ["load", "deploy transform", "outlier pass", "int8 calibration", "int8 lowering",
                            "Edge TPU precheck", "waiting for the float half", "beside: float lowering", "writing"]
    beside = float(stages.pop("beside: float lowering"))  # in the worker process, during the int8 lowering
    assert float(stages["int8 lowering"]) > 1 and 1 < beside < float(summary[0])
    assert sum(map(float, stages.values())) == pytest.approx(float(summary[0]), abs=0.1 * len(stages))


def test_a_stage_without_progress_of_its_own_shows_its_elapsed_time_on_a_terminal(monkeypatch):
    """On a terminal, a ticking stage (the int8 lowering) shows its elapsed time every second, on the terminal even
    while the stage points the stderr descriptor elsewhere, as the converter does to hide its chatter; off a
    terminal it writes nothing."""
    import contextlib
    import io
    import os
    import select
    import time

    from edge_yolov9.convert.stages import StageClock

    def run_stage(seconds: float) -> None:
        with StageClock().stage("int8 lowering", ticker=True), open(os.devnull, "w") as sink:
            hidden = os.dup(2)
            os.dup2(sink.fileno(), 2)
            try:
                time.sleep(seconds)
            finally:
                os.dup2(hidden, 2)
                os.close(hidden)

    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    run_stage(1.2)
    assert quiet.getvalue() == ""

    master, slave = os.openpty()
    original = os.dup(2)
    os.dup2(slave, 2)
    monkeypatch.setattr(sys, "stderr", os.fdopen(2, "w", closefd=False))
    try:
        run_stage(2.5)
    finally:
        os.dup2(original, 2)
        os.close(original)
        os.close(slave)
    written = b""
    with contextlib.suppress(OSError):  # EIO: everything read, the terminal's other end is closed
        while select.select([master], [], [], 0.2)[0]:
            written += os.read(master, 65536)
    os.close(master)
    ticks = {int(seconds) for seconds in re.findall(r"int8 lowering: 00:(\d\d)", written.decode())}
    assert ticks and max(ticks) >= 1  # refreshed while the stage had file descriptor 2 pointed elsewhere


def test_the_converters_chatter_on_stderr_is_hidden_and_shown_when_it_fails(capfd, caplog):
    """What native code writes on file descriptor 2 inside hidden_stderr (the converter's and its libraries'
    hundreds of lines) does not reach stderr; when the block fails, its last lines are logged with the error."""
    import os

    from edge_yolov9.convert.quiet import hidden_stderr

    with hidden_stderr():
        os.write(2, b"W0000 a native warning nobody needs\n")
    assert capfd.readouterr().err == ""
    with pytest.raises(RuntimeError, match="lowering failed"), hidden_stderr(tail=2):
        os.write(2, b"line 1\nline 2: the converter's reason\nline 3\n")
        raise RuntimeError("lowering failed")
    assert capfd.readouterr().err == ""
    [record] = [r for r in caplog.records if "before the failure" in r.getMessage()]
    assert record.getMessage().endswith("line 2: the converter's reason\nline 3")


def test_int8_graph_is_fully_integer_and_edgetpu_shaped(out320):
    model = TFLiteModel.from_file(out320 / "out" / "model_int8.tflite")
    ops = model.op_counts()
    names = {name for name, _ in ops}
    assert names <= INT8_OPS, f"unexpected ops {names - INT8_OPS}"  # no SOFTMAX/DEQUANTIZE (P4/P5/P6)
    assert not names & {"TRANSPOSE", "RESHAPE", "SLICE", "SPLIT", "SOFTMAX", "DEQUANTIZE"}  # P8, P12
    assert {version for name, version in ops if name == "CONV_2D"} == {3}, "CONV_2D v6 (grouped) is rejected"
    assert ops[("QUANTIZE", 1)] <= 4, "many requantizations mean an op escaped annotation"
    assert {t.dtype for t in model.tensors} == {"int8", "int32"}  # no float island (P3)
    assert all(t.is_constant for t in model.tensors if t.dtype == "int32")
    assert model.offset_buffers == 0 and model.subgraph_count == 1  # P2
    for op in model.operators:
        if op.name == "LOGISTIC":
            assert model.tensor(op.outputs[0]).quantization == (pytest.approx(1 / 256), -128)  # P5
        if op.name == "RESIZE_NEAREST_NEIGHBOR":
            assert not op.options.halfPixelCenters and op.version == 2  # P10


def test_int8_io_quantization(out320):
    """Input fixed at 1/255, -128 (feed pixel - 128); six NHWC outputs with their own quantization,
    class logits on the fixed range [-8, 7.94] (P7)."""
    model = TFLiteModel.from_file(out320 / "out" / "model_int8.tflite")
    [image] = model.inputs
    assert (image.name, image.dtype, image.shape) == ("images", "int8", (1, 320, 320, 3))
    assert image.quantization == (np.float32(1 / 255), -128)
    assert [t.name for t in model.outputs] == OUTPUT_NAMES
    assert [t.shape for t in model.outputs] == [(1, 40, 40, 64), (1, 40, 40, 1), (1, 20, 20, 64),
                                                (1, 20, 20, 1), (1, 10, 10, 64), (1, 10, 10, 1)]
    assert all(t.dtype == "int8" for t in model.outputs)
    assert {t.quantization for t in model.outputs[1::2]} == {(1 / 16, 0)}
    assert len({t.quantization for t in model.outputs[0::2]}) == 3


def test_float_tflite_matches_pytorch(out320, ball_checkpoint, coco_val158):
    model, _, _ = load_checkpoint(ball_checkpoint)
    deployed = deploy_model(model, for_export=True)
    for canvas in images(coco_val158, 320, count=2):
        with torch.no_grad():
            levels = deployed(torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255).main
        expected = [t[0].permute(1, 2, 0).numpy() for level in levels for t in (level.box, level.cls)]
        for got, want in zip(invoke(out320 / "out" / "model_float.tflite", canvas), expected, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-3 * max(1.0, np.abs(want).max()))


def test_int8_outputs_track_the_float_model(out320, coco128):
    """On images with real detections the dequantized int8 outputs follow the float model's: high
    correlation, small mean error in units of each output's scale, and the same top detection,
    still confident (P7)."""
    model = TFLiteModel.from_file(out320 / "out" / "model_int8.tflite")
    scales = [t.quantization[0] for t in model.outputs]
    for canvas in images(coco128 / "images" / "train2017", 320, names=CONFIDENT_IMAGES):
        ref = invoke(out320 / "out" / "model_float.tflite", canvas)
        got = invoke(out320 / "out" / "model_int8.tflite", canvas)
        for k, (r, g, scale) in enumerate(zip(ref, got, scales)):
            r = np.maximum(r, -8) if k % 2 else r  # the class logits' fixed range starts at -8
            assert np.abs(r - g).mean() / scale < 3
            if r.max() > -7:  # some signal above the clipped floor
                assert np.corrcoef(r.ravel(), g.ravel())[0, 1] > 0.9
        ref_boxes, ref_scores, _ = detections(ref)
        boxes, scores, _ = detections(got)
        assert ref_scores[0] > 0.75 and scores[0] > 0.6
        np.testing.assert_allclose(boxes[0], ref_boxes[0], atol=4)


def test_runtime_needs_nothing_but_the_sidecar(out320, coco128):
    """Feed ``pixel - 128`` (no float math) and dequantize from the JSON alone, as the Pi runtime will."""
    path = out320 / "out" / "model_int8.tflite"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["input"]["scale"] * 255 == pytest.approx(1) and meta["input"]["zero_point"] == -128
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    [canvas] = images(coco128 / "images" / "train2017", meta["input"]["size"][0], names=CONFIDENT_IMAGES[:1])
    interpreter.set_tensor(meta["input"]["index"], (canvas.astype(np.int16) - 128).astype(np.int8)[None])
    interpreter.invoke()
    levels = {(o["kind"], o["level"]): (interpreter.get_tensor(o["index"])[0].astype(np.float32) - o["zero_point"])
              * o["scale"] for o in meta["outputs"]}
    boxes, scores, ids = postprocess([levels["box", i] for i in range(3)], [levels["cls", i] for i in range(3)],
                                     channels_last=True, strides=meta["strides"],
                                     config=PostprocessConfig(score_threshold=0.3))
    assert len(boxes) > 0 and meta["labels"][ids[0]] == "ball"
    np.testing.assert_array_equal(boxes, detections(invoke(path, canvas))[0])


def test_uint8_io_variant_matches_int8(out320, coco128):
    """P9: uint8 I/O via QUANTIZE edges gives the same values after dequantization."""
    int8_path = out320 / "out" / "model_int8.tflite"
    uint8_path = out320 / "model_uint8io.tflite"
    TFLiteModel.from_file(int8_path).with_uint8_io().save(uint8_path)
    [canvas] = images(coco128 / "images" / "train2017", 320, names=CONFIDENT_IMAGES[:1])
    for a, b in zip(invoke(int8_path, canvas), invoke(uint8_path, canvas), strict=True):
        np.testing.assert_array_equal(a, b)


def test_edgetpu_normalization_does_not_change_results(out320, coco128):
    """P10: the half_pixel_centers=False / v2 upsample equals the converter's original v3 one."""
    normalized = out320 / "out" / "model_int8.tflite"
    original = TFLiteModel.from_file(normalized)
    for op in original.operators:
        if op.name == "RESIZE_NEAREST_NEIGHBOR":
            op.options.halfPixelCenters = True
    original.save(out320 / "model_hpc.tflite")
    [canvas] = images(coco128 / "images" / "train2017", 320, names=CONFIDENT_IMAGES[:1])
    for a, b in zip(invoke(normalized, canvas), invoke(out320 / "model_hpc.tflite", canvas), strict=True):
        np.testing.assert_array_equal(a, b)


def test_precheck_passes_int8_and_fails_float_with_reasons(out320):
    saved = json.loads((out320 / "out" / "model_int8_edgetpu_precheck.json").read_text())
    assert saved["verdict"] == "PASS", saved
    assert {row["op"] for row in saved["ops"]} <= INT8_OPS
    assert 1.5e6 < saved["summary"]["parameter_bytes"] < 8 * 2**20
    report = precheck(TFLiteModel.from_file(out320 / "out" / "model_float.tflite"))
    assert report.verdict == "FAIL"
    assert all(row.status == "FAIL" and "float32 tensor" in row.reason for row in report.ops)
    assert {c.name for c in report.checks if c.status == "FAIL"} == {"input dtype", "output dtype"}


def test_the_weights_license_reaches_the_model_and_the_user(out320):
    """The ball model was imported from Ultralytics: its AGPL-3.0 goes into the models' metadata and a note."""
    origin = {"license": "AGPL-3.0", "source_format": "ultralytics", "source_file": "yolov9t_ball.pt"}
    for name in ("model_float.json", "model_int8.json"):
        assert json.loads((out320 / "out" / name).read_text())["source"]["weights_license"] == origin
    assert "note: weights from yolov9t_ball.pt (ultralytics) are licensed AGPL-3.0" in (out320 / "stdout.txt").read_text()


def test_metadata_is_complete(out320, ball_checkpoint):
    out = out320 / "out"
    meta = json.loads((out / "model_int8.json").read_text())
    assert meta["model"] == "gelan-t" and meta["variant"] == "int8"
    assert meta["labels"] == ["ball"] and meta["num_classes"] == 1
    assert meta["strides"] == [8, 16, 32] and meta["reg_max"] == 16
    assert meta["input"]["dtype"] == "int8" and meta["input"]["layout"] == "NHWC" and meta["input"]["size"] == [320, 320]
    assert meta["source"]["sha256"] == file_sha256(ball_checkpoint)
    assert meta["calibration"]["images"] == 16
    assert meta["converter"]["litert-torch"] and meta["converter"]["torch"]
    interpreter = Interpreter(model_path=str(out / "model_int8.tflite"))
    assert [(o["position"], o["level"], o["kind"]) for o in meta["outputs"]] == [
        (k, k // 2, ("box", "cls")[k % 2]) for k in range(6)]
    for entry, detail in zip(meta["outputs"], interpreter.get_output_details(), strict=True):
        assert (entry["index"], entry["name"], tuple(entry["shape"])) == (detail["index"], detail["name"],
                                                                          tuple(detail["shape"]))
        assert (entry["scale"], entry["zero_point"]) == pytest.approx(detail["quantization"])
    assert embedded_metadata(TFLiteModel.from_file(out / "model_int8.tflite")) == meta
    float_meta = json.loads((out / "model_float.json").read_text())
    assert float_meta["input"]["dtype"] == "float32" and float_meta["input"]["scale"] is None


def test_416_with_uint8_io(out416, coco128):
    """Another size; --uint8-io feeds raw pixels (scale 1/255, zero point 0); calibration from a data.yaml."""
    assert (out416 / "exit_code").read_text() == "3", (out416 / "stdout.txt").read_text()
    path = out416 / "out" / "model_int8.tflite"
    model = TFLiteModel.from_file(path)
    [image] = model.inputs
    assert (image.dtype, image.shape, image.quantization) == ("uint8", (1, 416, 416, 3), (np.float32(1 / 255), 0))
    assert [t.shape for t in model.outputs] == [(1, 52, 52, 64), (1, 52, 52, 80), (1, 26, 26, 64),
                                                (1, 26, 26, 80), (1, 13, 13, 64), (1, 13, 13, 80)]
    assert {t.dtype for t in model.outputs} == {"uint8"} and model.op_counts()[("QUANTIZE", 1)] >= 7
    assert precheck(model).verdict == "PASS"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["input"]["dtype"] == "uint8" and meta["calibration"]["images"] == 4
    [canvas] = images(coco128 / "images" / "train2017", 416, count=1)
    assert all(np.isfinite(o).all() for o in invoke(path, canvas))


def test_ctrl_c_stops_a_conversion_cleanly(tmp_path, ball_checkpoint, coco128):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during calibration: exit code 130 and
    'interrupted', no traceback from either process, no process left, nothing written."""
    import contextlib
    import os
    import signal
    import time

    out = tmp_path / "out"
    command = [sys.executable, "-m", "edge_yolov9.cli", "convert", "--model", str(ball_checkpoint), "--imgsz", "320",
               "--calib", str(coco128 / "images" / "train2017"), "--calib-images", "128", "-o", str(out)]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                           start_new_session=True, preexec_fn=as_from_a_terminal)
    status = Path(f"/proc/{run.pid}/status").read_text()
    masks = {key: int(value, 16) for key, value in re.findall(r"(SigBlk|SigIgn):\s*([0-9a-f]+)", status)}
    assert not any(mask & 1 << (signal.SIGINT - 1) for mask in masks.values()), masks
    lines = []
    for line in run.stdout:
        lines.append(line)
        if "Quantizing to int8" in line:
            break
    time.sleep(2)  # into the calibration, the float worker spawned and handed its job
    os.killpg(run.pid, signal.SIGINT)
    rest, _ = run.communicate(timeout=60)
    output = "".join(lines) + rest
    assert run.returncode == 130 and "interrupted" in output and "Traceback" not in output, output[-3000:]
    assert not out.exists() and list(tmp_path.iterdir()) == []

    def group_alive() -> list[str]:  # live processes of the group (a zombie left to an init that does not reap is not)
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == run.pid and fields[0] != "Z":
                    found.append(stat.parent.name)
        return found

    wait_until(lambda: not group_alive(), timeout=10, what="no process of the conversion's group to be left")


def test_a_ctrl_c_while_the_converters_libraries_load_waits_for_the_import(tmp_path):
    """A KeyboardInterrupt in the middle of `import litert_torch` does not end cleanly (a RecursionError, or it is
    swallowed and the command runs on); under sigint_deferred the Ctrl-C takes effect once the import is done."""
    script = ("import os, signal, threading\n"
              "from edge_yolov9.convert.quiet import sigint_deferred\n"
              "threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
              "with sigint_deferred():\n"
              "    import litert_torch\n"
              "    print('imported', flush=True)\n"
              "print('not reached')\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.stdout == "imported\n" and run.stderr.rstrip().endswith("KeyboardInterrupt"), run.stderr[-2000:]
    assert "RecursionError" not in run.stderr


def test_a_ctrl_c_that_python_drops_in_a_gc_callback_is_raised_at_the_next_step(tmp_path):
    """A KeyboardInterrupt raised inside a garbage-collector callback (JAX, which the converter's libraries import,
    runs one at every full collection) is dropped by Python ("Exception ignored in"): CI caught a conversion that
    ran on after a Ctrl-C. Under sigint_remembered the next step (a stage, a calibration image) raises it again."""
    script = ("import gc, os, signal, sys\n"
              "from edge_yolov9.convert.quiet import raise_if_interrupted, sigint_remembered\n"
              "dropped = []\n"
              "sys.unraisablehook = lambda unraisable: dropped.append(unraisable.exc_type.__name__)\n"
              "def callback(phase, info):\n"
              "    if phase == 'start':\n"
              "        os.kill(os.getpid(), signal.SIGINT)\n"
              "        for _ in range(10000): pass  # the Python handler runs here, in the callback\n"
              "with sigint_remembered():\n"
              "    gc.callbacks.append(callback)\n"
              "    gc.collect()\n"
              "    gc.callbacks.remove(callback)\n"
              "    print('dropped', dropped, flush=True)\n"
              "    try:\n"
              "        raise_if_interrupted()\n"
              "    except KeyboardInterrupt:\n"
              "        print('raised again', flush=True)\n"
              "raise_if_interrupted()\n"
              "print('forgotten after the block')\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.stdout == "dropped ['KeyboardInterrupt']\nraised again\nforgotten after the block\n", run.stderr


def test_a_float_worker_spawned_for_a_conversion_that_fails_first_leaves_nothing(tmp_path, ball_checkpoint):
    """The worker is spawned as the conversion starts and given the float half before calibration; when the
    conversion then fails (here: no calibration image can be read), the error is the conversion's, the worker is
    stopped and nothing is written."""
    import multiprocessing

    from edge_yolov9.convert.pipeline import ConvertOptions, convert_checkpoint
    from edge_yolov9.errors import DatasetError

    calib = tmp_path / "calib"
    calib.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (calib / name).write_bytes(b"not an image")
    before = multiprocessing.active_children()
    with pytest.raises(DatasetError, match="None of the 2 calibration images"):
        convert_checkpoint(ConvertOptions(checkpoint=ball_checkpoint, calib=calib, out_dir=tmp_path / "out",
                                          imgsz=160, accuracy=False))
    assert multiprocessing.active_children() == before and not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == [calib]  # no staging folder left either


def test_the_pytorch_score_takes_the_threads_it_is_given_batch_by_batch(coco128):
    """The float half's last score asks for its thread count before each batch: one core while the main process
    works, all of them once it waits."""
    from edge_yolov9.train.evaluate import TorchPredictor
    from support.conversions import trained_like

    photos = sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:2]
    offered, seen = iter([1, 2, None]), []

    def threads() -> int | None:
        count = next(offered)
        seen.append(count)
        return count

    previous = torch.get_num_threads()
    predictor = TorchPredictor(trained_like(photos, csp_depth=1), 160, threads=threads)
    try:
        counts = []
        for _ in range(3):
            predictor([np.asarray(Image.open(photos[0]).convert("RGB"))])
            counts.append(torch.get_num_threads())
    finally:
        torch.set_num_threads(previous)
    assert seen == [1, 2, None] and counts == [1, 2, 2]  # None leaves the count as it was


# ------------------------------------------------------------------------------------- compile step
@pytest.fixture
def fast_pipeline(monkeypatch, out320):
    """The pipeline with the converters replaced by the models converted once for this session."""
    import edge_yolov9.convert.float_branch
    import edge_yolov9.convert.pipeline

    out = out320 / "out"
    monkeypatch.setattr(edge_yolov9.convert.pipeline, "FloatBranch",
                        functools.partial(edge_yolov9.convert.float_branch.FloatBranch, in_process=True))
    monkeypatch.setattr(edge_yolov9.convert.float_branch, "convert_float", lambda *a: TFLiteModel.from_file(out / "model_float.tflite"))
    monkeypatch.setattr(edge_yolov9.convert.pipeline, "calibrate_int8", lambda *a: None)
    monkeypatch.setattr(edge_yolov9.convert.pipeline, "lower_int8", lambda *a: TFLiteModel.from_file(out / "model_int8.tflite"))


def test_a_size_sweep_names_the_largest_size_wholly_on_the_edgetpu(tmp_path, ball_checkpoint, coco128, capsys):
    """--imgsz with several sizes: each a whole conversion in OUT/<WxH>/, compiled, and the table of them. The fake
    compiler maps every op of the 160 model and leaves 50 of the 192 one on the CPU (the real one maps less past
    some input size)."""
    compiler = fake_compiler(tmp_path / "bin", ALL_MAPPED_LOG, log_above=(160, CPU_OPS_LOG))
    out = tmp_path / "out"
    code = main(["convert", "--model", str(ball_checkpoint), "--imgsz", "192", "160", "--calib", str(coco128),
                 "--calib-images", "8", "--edgetpu", "--compiler", str(compiler), "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "Largest size wholly on the Edge TPU: 160x160 (160x160/model_int8_edgetpu.tflite)" in printed
    sweep = json.loads((out / "sizes.json").read_text())
    assert sweep["chosen"] == "160x160" and [row["size"] for row in sweep["sizes"]] == ["160x160", "192x192"]
    small, large = sweep["sizes"]
    assert (small["ops_on_cpu"], small["exit_code"], large["ops_on_cpu"], large["exit_code"]) == (0, 0, 50, 4)
    assert small["on_chip"] == "2.21MiB" and large["on_chip"] == "1.93MiB"
    for side in (160, 192):
        folder = out / f"{side}x{side}"
        assert json.loads((folder / "model_int8.json").read_text())["input"]["shape"] == [1, side, side, 3]
        assert (folder / "model_int8_edgetpu.tflite").is_file() and (folder / "model_float.tflite").is_file()
    assert "| 192x192 | 4 |" in (out / "sizes.md").read_text()


def test_a_sweep_without_a_size_wholly_on_the_edgetpu_says_so():
    from edge_yolov9.convert.sweep import SizeRow, chosen, exit_code, render

    row = functools.partial(SizeRow, int8_mib=2.4, on_chip=None, off_chip=None, streamed_estimate_mib=0.0,
                            map50_95=None, drop=None)
    rows = [row("320x320", 4, compiled=False, compile_failed=True, ops_on_cpu=None),
            row("256x256", 4, compiled=True, compile_failed=False, ops_on_cpu=3)]
    table = render(rows)
    assert chosen(rows) is None and exit_code(rows) == 4 and "No size runs wholly on the Edge TPU" in table
    assert table.index("| 256x256 | 4 | 2.40 | 3 |") < table.index("| 320x320 | 4 | 2.40 | compile failed |")
    uncompiled = [row("320x320", 3, compiled=False, compile_failed=False, ops_on_cpu=None)]
    assert "| not compiled |" in render(uncompiled) and "Not compiled for the Edge TPU" in render(uncompiled)


@pytest.mark.parametrize("log, extra, code", [
    (ALL_MAPPED_LOG, ["--uint8-io"], 0),
    (CPU_OPS_LOG, [], 4),
    (CPU_OPS_LOG, ["--allow-cpu-ops"], 0),
])
def test_convert_with_the_compiler(tmp_path, fast_pipeline, ball_checkpoint, coco128, capsys, caplog, log, extra,
                                   code):
    compiler = fake_compiler(tmp_path / "bin", log)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert main(["convert", "--model", str(ball_checkpoint), "--imgsz", "320", "--calib", str(coco128),
                     "--calib-images", "1", "--edgetpu", "--compiler", str(compiler), *extra, "-o", str(out)]) == code
    stages = next(line for line in caplog.text.splitlines() if "Stage times:" in line)
    assert "float lowering" in stages and "beside:" not in stages  # the float half ran in this process here
    assert "Edge TPU edgetpu_compiler 16.0.384591198: model_int8.tflite" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"model_int8_edgetpu.tflite", "model_int8_edgetpu.json", "model_int8_edgetpu.log",
            "model_int8_edgetpu_compile.log", "model_int8_edgetpu_compile.json", "model_int8_edgetpu_compile.md"} <= names
    report = json.loads((out / "model_int8_edgetpu_compile.json").read_text())
    assert report["model"] == "model_int8.tflite" and report["summary"]["ops_on_cpu"] == (50 if log == CPU_OPS_LOG else 0)
    compiled = json.loads((out / "model_int8_edgetpu.json").read_text())
    assert compiled["variant"] == "edgetpu" and [o["name"] for o in compiled["outputs"]] == OUTPUT_NAMES
    expected_dtype = "uint8" if "--uint8-io" in extra else "int8"
    assert compiled["input"]["dtype"] == expected_dtype
    assert TFLiteModel.from_file(out / "model_int8.tflite").inputs[0].dtype == expected_dtype


def test_a_new_run_removes_stale_products(tmp_path, fast_pipeline, ball_checkpoint, coco128):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_int8_edgetpu.tflite").write_bytes(b"from an earlier run")
    (out / "my_notes.txt").write_text("not ours")
    assert main(["convert", "--model", str(ball_checkpoint), "--imgsz", "320", "--calib", str(coco128),
                 "--calib-images", "1", "-o", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert "model_int8_edgetpu.tflite" not in names and "my_notes.txt" in names and "model_int8.tflite" in names
    assert not [n for n in names if n.startswith(".")]


# ------------------------------------------------------------------------------------- bad input
def cli_fails(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_empty_calibration_folder_fails_before_writing(tmp_path, ball_checkpoint, capsys):
    (tmp_path / "calib").mkdir()
    err = cli_fails(["convert", "--model", str(ball_checkpoint), "--calib", str(tmp_path / "calib"),
                     "-o", str(tmp_path / "out")], capsys)
    assert str(tmp_path / "calib") in err and "fix:" in err
    assert not (tmp_path / "out").exists()


def test_checkpoints_that_are_not_ours_fail(tmp_path, coco128, capsys):
    torch.save({"model": {"conv.weight": torch.zeros(1)}, "epoch": 3}, tmp_path / "foreign.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    save_checkpoint(tmp_path / "mismatch.pt", create_model("gelan-t", num_classes=2), ["a", "b"])
    payload = torch.load(tmp_path / "mismatch.pt", weights_only=True)
    payload["config"]["base_width"] = 32  # claims gelan-s widths, holds gelan-t weights
    torch.save(payload, tmp_path / "mismatch.pt")
    for name, message in (("foreign.pt", "not an edge-yolov9 checkpoint"), ("text.pt", "not an edge-yolov9 checkpoint"),
                          ("mismatch.pt", "does not hold a loadable edge-yolov9 detector")):
        err = cli_fails(["convert", "--model", str(tmp_path / name), "--calib", str(coco128),
                         "--calib-images", "1", "-o", str(tmp_path / "out")], capsys)
        assert message in err, err
        assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_fails(tmp_path, ball_checkpoint, coco128, capsys):
    (tmp_path / "out").write_text("a file")
    err = cli_fails(["convert", "--model", str(ball_checkpoint), "--calib", str(coco128), "-o", str(tmp_path / "out")],
                    capsys)
    assert "is not a folder" in err and (tmp_path / "out").read_text() == "a file"


def test_wrong_compiler_path_fails_before_converting(tmp_path, ball_checkpoint, coco128, capsys):
    err = cli_fails(["convert", "--model", str(ball_checkpoint), "--calib", str(coco128),
                     "--edgetpu", "--compiler", str(tmp_path / "nope"), "-o", str(tmp_path / "out")], capsys)
    assert "not an executable file" in err and not (tmp_path / "out").exists()


def test_a_failed_conversion_leaves_no_partial_output(tmp_path, ball_checkpoint, coco128, monkeypatch, capsys):
    """The staging folder goes away; files already in OUT are left as they were; a new OUT is removed."""
    import edge_yolov9.convert.pipeline
    from edge_yolov9.convert.export import ConversionError

    def broken(*args, **kwargs):
        raise ConversionError("the converter failed", "report it")

    monkeypatch.setattr(edge_yolov9.convert.pipeline, "lower_int8", broken)  # while the float worker writes
    args = ["convert", "--model", str(ball_checkpoint), "--calib", str(coco128), "--calib-images", "1"]
    assert "the converter failed" in cli_fails([*args, "-o", str(tmp_path / "new")], capsys)
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model_int8.tflite").write_bytes(b"an earlier good model")
    cli_fails([*args, "-o", str(tmp_path / "old")], capsys)
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["model_int8.tflite"]
    assert (tmp_path / "old" / "model_int8.tflite").read_bytes() == b"an earlier good model"


def test_calib_pointing_at_a_file_says_so(tmp_path, ball_checkpoint, coco128, capsys):
    image = next((coco128 / "images" / "train2017").glob("*.jpg"))
    err = cli_fails(["convert", "--model", str(ball_checkpoint), "--calib", str(image), "-o", str(tmp_path / "out")],
                    capsys)
    assert f"Calibration source {image} is a file, not a folder of images or a data.yaml" in err


def test_an_image_too_large_to_decode_is_left_out_of_calibration(tmp_path, coco128, caplog):
    from edge_yolov9.convert.calibration import calibration_set

    folder = tmp_path / "calib"
    folder.mkdir()
    for path in sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    Image.new("1", (14000, 14000)).save(folder / "bomb.png")
    inputs = list(calibration_set(folder, 256).inputs())
    assert len(inputs) == 2 and inputs[0].shape == (1, 256, 256, 3)
    assert "bomb.png is too large to decode safely" in caplog.text


def test_a_killed_convert_leaves_nothing_after_the_next_run(tmp_path, fast_pipeline, ball_checkpoint, coco128):
    out = tmp_path / "out"
    killed = subprocess.Popen([sys.executable, "-m", "edge_yolov9.cli", "convert", "--model", str(ball_checkpoint),
                               "--calib", str(coco128), "--calib-images", "1", "--no-accuracy", "-o", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: list(out.glob(".convert-*")), timeout=240, what="the convert's staging folder")
    finally:
        killed.kill()
        killed.wait()
    abandoned = list(out.glob(".convert-*"))
    assert abandoned, "SIGKILL leaves the staging folder behind (no handler runs)"
    running = out / ".convert-of-a-run-going-on"
    running.mkdir()
    with open(running / ".lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # as a convert running beside this one holds it
        assert main(["convert", "--model", str(ball_checkpoint), "--imgsz", "320", "--calib", str(coco128),
                     "--calib-images", "1", "--no-accuracy", "-o", str(out)]) == 0
    hidden = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert hidden == [running.name]  # the killed run's folder is gone, the live one kept
    assert (out / "model_int8.tflite").is_file()


def test_a_full_disk_is_named_and_leaves_no_partial_model(tmp_path, fast_pipeline, ball_checkpoint, coco128, capsys):
    with full_disk(tmp_path / "disk", size_kib=1024) as disk:
        (disk / "filler").unlink()
        (disk / "filler").write_bytes(b"\0" * 512 * 1024)  # room for the float model's first half only
        err = cli_fails(["convert", "--model", str(ball_checkpoint), "--imgsz", "320", "--calib", str(coco128),
                         "--calib-images", "1", "--no-accuracy", "-o", str(disk / "out")], capsys)
        assert "Cannot write the converted models" in err and "the disk is full" in err
        assert not (disk / "out").exists()


# ------------------------------------------------------------------------------------- the float half's worker
def test_a_killed_float_worker_costs_time_not_the_conversion(tmp_path, coco128, caplog):
    """The float half runs in a spawned worker process; killed as the out-of-memory killer kills it, the branch
    warns and converts the float model in this process instead: the model is written and runs, and no file
    descriptor is left behind."""
    import multiprocessing
    import os
    import signal

    from edge_yolov9.convert.export import output_specs, prepare_for_export
    from edge_yolov9.convert.float_branch import WORKER_NICENESS, FloatBranch, FloatJob
    from support.conversions import trained_like

    photos = sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:4]
    deployed = prepare_for_export(trained_like(photos, csp_depth=1))
    describe = dict(model_name="gelan-t", labels=[f"c{i}" for i in range(80)], imgsz=(160, 160),
                    strides=deployed.strides, reg_max=deployed.head.reg_max, outputs=output_specs(deployed),
                    layout="raw", checkpoint=None, checkpoint_sha256=None, weights_license=None)
    open_files = len(os.listdir("/proc/self/fd"))
    branch = FloatBranch(in_process=False)
    try:
        branch.start(FloatJob(deployed, tmp_path / "model_float.tflite", describe, None, tmp_path / "x.pt"))
        # The job went as bytes: no weight tensor was shared as a file descriptor this process keeps open (hundreds
        # per conversion ran a long test session out of descriptors); the result pipe, the worker's sentinel and
        # the resource tracker are what opens (4 here).
        assert len(os.listdir("/proc/self/fd")) <= open_files + 8
        [worker] = multiprocessing.active_children()
        assert worker.pid != os.getpid() and worker.name == "edge-yolov9 float half"
        assert os.getpriority(os.PRIO_PROCESS, worker.pid) == WORKER_NICENESS  # it works where this process idles
        # A Ctrl-C reaches the whole process group: the worker keeps SIGINT blocked and leaves stopping it to us.
        blocked = re.search(r"SigBlk:\s*([0-9a-f]+)", Path(f"/proc/{worker.pid}/status").read_text()).group(1)
        assert int(blocked, 16) & 1 << (signal.SIGINT - 1)
        os.kill(worker.pid, signal.SIGINT)
        assert worker.is_alive()
        os.kill(worker.pid, signal.SIGKILL)
        with caplog.at_level("WARNING"):
            result = branch.result()
    finally:
        branch.close()
    assert "worker process died" in caplog.text and "converting the float model here instead" in caplog.text
    assert result.path.is_file() and result.references is None and result.stage_seconds["float lowering"] > 0
    [canvas] = images(coco128 / "images" / "train2017", 160, count=1)
    assert [o.shape for o in invoke(result.path, canvas)] == [(20, 20, 64), (20, 20, 80), (10, 10, 64), (10, 10, 80),
                                                              (5, 5, 64), (5, 5, 80)]
