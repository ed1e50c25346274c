"""``convert --layout frigate``: the two tensors Frigate's Edge TPU ``yolo-generic`` detector reads.

The real 1-class 'ball' YOLOv9-T is converted at 320 in the frigate layout, which gives it a padding
class that never scores (Frigate's layout needs two), with the calibration of the raw ``320/`` run
(conftest ``conversions``). Its outputs are read here by our own numpy reading of Frigate's contract
(nothing of edge_yolov9.decode) and by the Detector, which agree; and the Detector finds on it what it
finds on the raw-layout model, never the padding class.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter

from edge_yolov9.convert.export import PADDING_LOGIT, FrigateOutputs, check_fully_integer, prepare_for_export
from edge_yolov9.convert.frigate import PADDING_LABEL, write_labelmap
from edge_yolov9.convert.tflite_model import TFLiteModel
from edge_yolov9.cli import main
from edge_yolov9.decode import flatten_level, split_levels
from edge_yolov9.detector import Detector
from edge_yolov9.errors import ModelError
from edge_yolov9.preprocess import letterbox, load_image
from support.conversions import CONFIDENT_IMAGES
from edge_yolov9.train.checkpoint import save_checkpoint
from edge_yolov9.train.models import create_model

SIZE, STRIDES, LABELS = 320, (8, 16, 32), ["ball"]
SHAPES = [(SIZE // s, SIZE // s) for s in STRIDES]
ROWS = sum(h * w for h, w in SHAPES)  # 40*40 + 20*20 + 10*10 = 2100
BOX_ATOL = 1.0  # px at 320: see test_detector_finds_the_same_on_both_layouts


def canvas(coco128, name: str) -> np.ndarray:
    """A real image letterboxed to the model size: the Detector's boxes on it are in network pixels."""
    return letterbox(load_image(coco128 / "images" / "train2017" / name), SIZE)[0]


def invoke(path, image: np.ndarray) -> list[tuple[np.ndarray, tuple[float, int]]]:
    """(quantized output, (scale, zero point)) in graph order, for an int8 model fed ``pixel xor 128``."""
    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], (image ^ 0x80).view(np.int8)[None])
    interpreter.invoke()
    return [(interpreter.get_tensor(d["index"])[0], d["quantization"]) for d in interpreter.get_output_details()]


def frigate_reading(outputs, threshold: float):
    """Frigate's yolo-generic contract, read independently: the box tensor is the one whose last dimension is
    64 (l, t, r, b x 16 bins), the class tensor the other one; rows are the anchors of strides 8, 16, 32,
    each level row-major, anchor centre (x + 0.5, y + 0.5) * stride; distance = softmax expectation of the
    bins, in strides; score = sigmoid of the best logit. Boxes (xyxy, clipped to the input), scores and
    class ids of every anchor above ``threshold``, best first."""
    [(boxes_q, (box_scale, box_zero))] = [o for o in outputs if o[0].shape[-1] == 64]
    [(logits_q, (cls_scale, cls_zero))] = [o for o in outputs if o[0].shape[-1] != 64]
    best = (logits_q.max(axis=1).astype(np.float64) - cls_zero) * cls_scale
    keep = np.flatnonzero(best > np.log(threshold / (1 - threshold)))
    anchors = [((x + 0.5) * stride, (y + 0.5) * stride, stride)
               for stride in STRIDES for y in range(SIZE // stride) for x in range(SIZE // stride)]
    centres, strides = np.array(anchors)[keep, :2], np.array(anchors)[keep, 2:]
    bins = ((boxes_q[keep].astype(np.float64) - box_zero) * box_scale).reshape(-1, 4, 16)
    weights = np.exp(bins - bins.max(axis=2, keepdims=True))
    ltrb = (weights * np.arange(16)).sum(axis=2) / weights.sum(axis=2) * strides
    boxes = np.clip(np.hstack([centres - ltrb[:, :2], centres + ltrb[:, 2:]]), 0, SIZE)
    scores = 1 / (1 + np.exp(-best[keep]))
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order], logits_q[keep].argmax(axis=1)[order]


# ------------------------------------------------------------------------------------- the CLI run
def test_cli_writes_the_labelmap_and_prints_the_frigate_config(out_frigate):
    stdout = (out_frigate / "stdout.txt").read_text()
    assert (out_frigate / "exit_code").read_text() == "3", stdout  # --edgetpu without a compiler
    out = out_frigate / "out"
    assert (out / "labelmap.txt").read_text() == f"0 ball\n1 {PADDING_LABEL}\n"
    config = stdout[stdout.index("detectors:\n"):]
    for line in ("  coral:", "    type: edgetpu", "    device: usb", "model:",
                 "  path: /config/model_cache/model_int8_edgetpu.tflite",
                 "  labelmap_path: /config/model_cache/labelmap.txt", "  model_type: yolo-generic",
                 f"  width: {SIZE}", f"  height: {SIZE}", "  input_tensor: nhwc", "  input_pixel_format: rgb",
                 "  input_dtype: int"):
        assert f"\n{line}\n" in f"\n{config}", line
    tracked = config.split("\nobjects:\n  track:\n", 1)[1].splitlines()  # Frigate tracks only person by default
    assert [line for line in tracked if line.startswith("    - ")] == tracked[:1] == ["    - ball"]
    assert "min_score defaults to 0.5" in config
    assert f"edge-yolov9 edgetpu {out / 'model_int8.tflite'} --compile" in stdout  # nothing compiled yet
    meta = json.loads((out / "model_int8.json").read_text())
    assert meta["layout"] == "frigate" and meta["strides"] == list(STRIDES) and meta["labels"] == LABELS
    assert (meta["num_classes"], meta["padding_classes"]) == (1, 1)
    assert [(o["name"], o["kind"], o["shape"], o["layout"], o["level"]) for o in meta["outputs"]] == [
        ("box_rows", "box", [1, ROWS, 64], "rows", None), ("cls_rows", "cls", [1, ROWS, 2], "rows", None)]


def test_outputs_are_the_two_int8_tensors_frigate_reads(out_frigate):
    model = TFLiteModel.from_file(out_frigate / "out" / "model_int8.tflite")
    [image] = model.inputs
    assert (image.dtype, image.shape, image.quantization) == ("int8", (1, SIZE, SIZE, 3), (np.float32(1 / 255), -128))
    assert [(t.name, t.dtype, t.shape) for t in model.outputs] == [
        ("box_rows", "int8", (1, ROWS, 64)), ("cls_rows", "int8", (1, ROWS, 2))]
    assert model.outputs[1].quantization == (1 / 16, 0)  # logits on the fixed range Frigate thresholds directly
    check_fully_integer(model)


def test_frigate_layout_adds_only_reshapes_and_two_concatenations(out_frigate, out320):
    """No TRANSPOSE, no requantization: the six RESHAPE keep the channels innermost and the concatenations
    share their inputs' quantization. The precheck passes, warning only about the RESHAPEs."""
    frigate = TFLiteModel.from_file(out_frigate / "out" / "model_int8.tflite").op_counts()
    raw = TFLiteModel.from_file(out320 / "out" / "model_int8.tflite").op_counts()
    added = {op: frigate.get(op, 0) - raw.get(op, 0) for op in frigate.keys() | raw.keys()}
    assert {op: n for op, n in added.items() if n} == {("RESHAPE", 1): 6, ("CONCATENATION", 2): 2}
    report = json.loads((out_frigate / "out" / "model_int8_edgetpu_precheck.json").read_text())
    assert report["verdict"] == "PASS with warnings"
    assert {row["op"] for row in report["ops"] if row["status"] != "OK"} == {"RESHAPE"}
    assert all(check["status"] == "OK" for check in report["checks"])


# ------------------------------------------------------------------------------------- the numbers
@pytest.mark.parametrize("name", CONFIDENT_IMAGES)
def test_frigate_reading_equals_the_detector(out_frigate, coco128, name):
    image = canvas(coco128, name)
    path = out_frigate / "out" / "model_int8.tflite"
    boxes, scores, classes = frigate_reading(invoke(path, image), threshold=0.01)
    detector = Detector(path, device="cpu", threads=1, score_threshold=0.01, iou_threshold=1.0, max_detections=10**5)
    found = detector.detect(image)  # IoU threshold 1: no suppression, every anchor above the threshold
    assert len(found) == len(scores) >= 5 and scores[0] > 0.5  # a ball
    assert [d.class_id for d in found] == list(classes) == [0] * len(found)
    np.testing.assert_allclose([d.score for d in found], scores, rtol=1e-6)
    np.testing.assert_allclose([tuple(d.box) for d in found], boxes, atol=1e-3)


@pytest.mark.parametrize("name", CONFIDENT_IMAGES)
def test_detector_finds_the_same_on_both_layouts(out_frigate, out320, coco128, name):
    """The ball logits are bit-identical (same network, calibration and fixed logit range; the padding class
    sits at the floor). The box bins differ only by rounding: the frigate layout has one scale for the
    three levels (the stride-16 and -32 bins get a 2-3x coarser step than their own, and the stride-16
    range is no longer saturated). Boxes move by up to 0.52 px on 32 coco128 images at 320: BOX_ATOL."""
    image = canvas(coco128, name)
    frigate = invoke(out_frigate / "out" / "model_int8.tflite", image)
    raw = invoke(out320 / "out" / "model_int8.tflite", image)
    logits = frigate[1][0]
    np.testing.assert_array_equal(logits[:, :1], np.concatenate([flatten_level(q, True) for q, _ in raw[1::2]]))
    assert (logits[:, 1] == -128).all()
    box_scale, box_zero = frigate[0][1]
    for level, (q, (scale, zero)) in zip(split_levels(frigate[0][0], SHAPES), raw[0::2]):
        inside = (abs(level.astype(int)) < 127) & (abs(q.astype(int)) < 127)  # saturated in neither layout
        error = np.abs((level[inside].astype(float) - box_zero) * box_scale - (q[inside].astype(float) - zero) * scale)
        assert error.max() <= (box_scale + scale) / 2 * 1.001
    models = (out_frigate / "out" / "model_int8.tflite", out320 / "out" / "model_int8.tflite")
    for threshold, iou in ((0.25, 0.45), (0.01, 1.0)):  # as used, and every candidate (no suppression)
        ours, reference = (Detector(model, device="cpu", threads=1, score_threshold=threshold, iou_threshold=iou,
                                    max_detections=10**5).detect(image) for model in models)
        assert len(ours) == len(reference) >= 1
        assert [(d.class_id, d.label, d.score) for d in ours] == [(d.class_id, d.label, d.score) for d in reference]
        np.testing.assert_allclose([tuple(d.box) for d in ours], [tuple(d.box) for d in reference], atol=BOX_ATOL)
        assert min(a.box.iou(b.box) for a, b in zip(ours, reference)) >= 0.95


@pytest.mark.parametrize("model", ["model_int8.tflite", "model_float.tflite"])
def test_the_padding_class_is_never_reported(out_frigate, coco128, model):
    """Even below the padding logit's own score (int8: sigmoid(-8) = 0.0003), every class of every anchor
    looked at (multi-label, no suppression), the Detector reports only the labels' class."""
    detector = Detector(out_frigate / "out" / model, device="cpu", threads=1, score_threshold=1e-9,
                        iou_threshold=1.0, max_detections=10**5, multi_label=True)
    assert (detector.info.labels, detector.info.padding_classes) == (("ball",), 1)
    found = detector.detect(canvas(coco128, CONFIDENT_IMAGES[0]))
    assert len(found) >= 5 and {(d.class_id, d.label) for d in found} == {(0, "ball")}


def test_the_recorded_padding_must_match_the_class_tensor(out_frigate, tmp_path):
    """Metadata that does not count the padding channel does not describe the model: a clear error."""
    (tmp_path / "model_int8.tflite").write_bytes((out_frigate / "out" / "model_int8.tflite").read_bytes())
    meta = json.loads((out_frigate / "out" / "model_int8.json").read_text())
    for padding, problem in ((0, "has 2 channels, not the 1 labels"), (2, "not the 1 labels + 2 padding"),
                             (-1, "'padding_classes' must be a count of classes")):
        (tmp_path / "model_int8.json").write_text(json.dumps({**meta, "padding_classes": padding}))
        with pytest.raises(ModelError, match=re.escape(problem)):
            Detector(tmp_path / "model_int8.tflite", device="cpu")


def test_float_model_holds_the_raw_float_outputs(out_frigate, out320, coco128):
    image = canvas(coco128, CONFIDENT_IMAGES[0]).astype(np.float32)[None] / 255
    outputs = []
    for path in (out_frigate / "out" / "model_float.tflite", out320 / "out" / "model_float.tflite"):
        interpreter = Interpreter(model_path=str(path), num_threads=1)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
        interpreter.invoke()
        outputs.append([interpreter.get_tensor(d["index"])[0] for d in interpreter.get_output_details()])
    (boxes, logits), raw = outputs
    np.testing.assert_allclose(boxes, np.concatenate([flatten_level(m, True) for m in raw[0::2]]), atol=1e-5)
    np.testing.assert_allclose(logits[:, :1], np.concatenate([flatten_level(m, True) for m in raw[1::2]]), atol=1e-5)
    np.testing.assert_array_equal(logits[:, 1], PADDING_LOGIT)


# ------------------------------------------------------------------------------------- bad input, parts
def test_a_64_class_model_gets_a_65th_padding_class():
    """Frigate would take a (1, N, 64) class tensor for the box bins: the class tensor gets a 65th channel,
    PADDING_LOGIT everywhere, and the 64 classes compute what the raw head computes."""
    model = prepare_for_export(create_model("gelan-t", num_classes=64, csp_depth=1).eval())
    image = torch.rand(1, SIZE, SIZE, 3)
    with torch.no_grad():
        boxes, logits = FrigateOutputs(model).eval()(image)
        raw = model(image.permute(0, 3, 1, 2)).main
    assert (boxes.shape, logits.shape) == ((1, ROWS, 64), (1, ROWS, 65))
    assert (logits[..., 64] == PADDING_LOGIT).all()
    expected = torch.cat([level.cls.permute(0, 2, 3, 1).reshape(1, -1, 64) for level in raw], dim=1)
    torch.testing.assert_close(logits[..., :64], expected)


def test_models_frigate_cannot_read_are_refused_before_converting(tmp_path, coco128, capsys, monkeypatch):
    import edge_yolov9.convert.pipeline

    monkeypatch.setattr(edge_yolov9.convert.pipeline, "prepare_for_export", lambda *a: pytest.fail("conversion work started"))
    save_checkpoint(tmp_path / "model.pt", create_model("gelan-t", num_classes=2), ["line\nbreak", "c1"])
    assert main(["convert", "--model", str(tmp_path / "model.pt"), "--calib", str(coco128), "--calib-images", "1",
                 "--layout", "frigate", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "The frigate layout cannot hold this model" in err and "hold line breaks, which labelmap.txt cannot" in err
    assert "Traceback" not in err
    assert "fix: convert with --layout raw" in err
    assert not (tmp_path / "out").exists()


def test_labelmap_reads_back_as_frigate_reads_it(tmp_path):
    """Frigate takes ``<index> <label>`` lines when the first line starts with a number, else line number =
    index: a bare first label '3 wheeler' would become class 3. The indexed form reads back exactly."""
    labels = ["3 wheeler", "traffic light", "person"]
    lines = write_labelmap(tmp_path / "labelmap.txt", labels).read_text().splitlines()
    assert lines[0].split(" ", 1)[0].isdigit()
    pairs = (line.split(" ", 1) for line in lines)
    assert {int(index): label.strip() for index, label in pairs} == dict(enumerate(labels))


def test_split_levels_inverts_the_row_layout():
    rng = np.random.default_rng(0)
    maps = [rng.integers(-128, 128, (h, w, 5), dtype=np.int8) for h, w in SHAPES]
    rows = np.concatenate([flatten_level(m, True) for m in maps])
    for got, want in zip(split_levels(rows, SHAPES), maps, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="2099 rows"):
        split_levels(rows[1:], SHAPES)
