"""The runtime on real converted models (the imported 'ball' YOLOv9-T, converted once per session):
agreement with PyTorch, int8 path, models without metadata, Edge TPU models without an Edge TPU."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from edge_yolov9.convert.tflite_model import TFLiteModel
from edge_yolov9.cli import main
from edge_yolov9.detector import Detector
from edge_yolov9.errors import ModelError
from edge_yolov9.interpreter import RuntimeSetupError
from edge_yolov9.postprocess import PostprocessConfig, postprocess
from edge_yolov9.preprocess import letterbox, load_image
from edge_yolov9.types import Box
from support.conversions import CONFIDENT_IMAGES, fake_edgetpu_model
from edge_yolov9.train.checkpoint import load_checkpoint
from edge_yolov9.train.models.deploy import deploy_model

CONFIG = PostprocessConfig(score_threshold=0.25, iou_threshold=0.45, max_detections=100)


def pytorch_detections(checkpoint, image: np.ndarray, size: int):
    """The same pipeline in PyTorch: letterbox, forward, shared decoder + NMS, back to image pixels."""
    model = deploy_model(load_checkpoint(checkpoint)[0])
    canvas, placement = letterbox(image, size)
    with torch.no_grad():
        levels = model(torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255).main
    boxes, scores, classes = postprocess([lvl.box[0].numpy() for lvl in levels], [lvl.cls[0].numpy() for lvl in levels],
                                         channels_last=False, config=CONFIG)
    return placement.to_image(boxes), scores, classes


@pytest.mark.parametrize("name", CONFIDENT_IMAGES)
def test_float_tflite_detections_match_pytorch(out320, ball_checkpoint, coco128, name):
    image = load_image(coco128 / "images" / "train2017" / name)
    detector = Detector(out320 / "out" / "model_float.tflite", device="cpu", threads=1, score_threshold=0.25,
                        iou_threshold=0.45)
    ours = detector.detect(image)
    boxes, scores, classes = pytorch_detections(ball_checkpoint, image, 320)
    assert len(ours) == len(scores) >= 1
    for det, box, score, cls in zip(ours, boxes, scores, classes):
        assert det.box.iou(Box(*box)) >= 0.99
        assert det.class_id == cls and det.label == "ball"
        assert abs(det.score - score) <= 0.01


def test_int8_model_finds_the_same_objects(out320, coco128):
    image = coco128 / "images" / "train2017" / CONFIDENT_IMAGES[0]
    float_dets = Detector(out320 / "out" / "model_float.tflite", device="cpu", threads=1).detect(image)
    int8 = Detector(out320 / "out" / "model_int8.tflite", device="cpu", threads=1, score_threshold=0.1)
    int8_dets, timing = int8.detect_with_timing(image)
    assert int8.info.input.dtype == "int8" and timing.invoke > 0
    for det in float_dets:
        assert max(det.box.iou(other.box) for other in int8_dets) > 0.8


def test_model_without_metadata_takes_explicit_labels(out320, tmp_path, coco128):
    model = TFLiteModel.from_file(out320 / "out" / "model_int8.tflite")
    model._model.metadata = [m for m in model._model.metadata if m.name not in (b"edge_yolov9", "edge_yolov9")]
    bare = model.save(tmp_path / "bare.tflite")
    image = coco128 / "images" / "train2017" / CONFIDENT_IMAGES[0]
    reference = Detector(out320 / "out" / "model_int8.tflite", device="cpu").detect(image)
    detector = Detector(bare, device="cpu", labels=["ball"])
    assert detector.info.strides == (8, 16, 32) and detector.info.labels == ("ball",)
    assert [d.box for d in detector.detect(image)] == [d.box for d in reference]
    with pytest.raises(ModelError, match="1 classes"):
        Detector(bare, device="cpu", labels=["ball", "net"])


def test_edgetpu_model_without_a_tpu_falls_back_to_its_cpu_twin(out320, tmp_path, coco128, caplog):
    shutil.copy(out320 / "out" / "model_int8.tflite", tmp_path / "model_int8.tflite")
    compiled = fake_edgetpu_model(out320 / "out" / "model_int8.tflite", tmp_path / "model_int8_edgetpu.tflite")
    detector = Detector(compiled, device="auto")
    assert detector.model_path == tmp_path / "model_int8.tflite" and detector.device_used == "cpu"
    assert "running the CPU model" in caplog.text
    assert detector.detect(coco128 / "images" / "train2017" / CONFIDENT_IMAGES[0])
    with pytest.raises(RuntimeSetupError, match="not installed") as info:
        Detector(compiled, device="usb:0")
    assert "libedgetpu1-std" in info.value.fix
    (tmp_path / "model_int8.tflite").unlink()
    with pytest.raises(RuntimeSetupError):
        Detector(compiled, device="auto")
    with pytest.raises(ModelError, match="compiled for the Edge TPU"):
        Detector(compiled, device="cpu")


def test_cpu_model_on_a_tpu_device_says_to_compile(out320):
    with pytest.raises(ModelError, match="not compiled for the Edge TPU"):
        Detector(out320 / "out" / "model_int8.tflite", device="usb")


def test_bad_frames_raise_clear_errors_and_the_detector_keeps_working(out320, coco128):
    detector = Detector(out320 / "out" / "model_int8.tflite", device="cpu")
    with pytest.raises(Exception, match="zero size"):
        detector.detect(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(Exception, match="uint8"):
        detector.detect(np.zeros((8, 8, 3), np.float64))
    bgr = load_image(coco128 / "images" / "train2017" / CONFIDENT_IMAGES[0])[:, :, ::-1]
    assert detector.detect(np.ascontiguousarray(bgr), bgr=True)


def test_detect_cli_writes_json_lines_and_annotated_images(out320, coco128, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in CONFIDENT_IMAGES:
        shutil.copy(coco128 / "images" / "train2017" / name, folder / name)
    (folder / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff nope")
    code = main(["detect", str(out320 / "out" / "model_int8.tflite"), str(folder), "--json", str(tmp_path / "d.jsonl"),
                 "--save", str(tmp_path / "annotated"), "--conf", "0.2"])
    assert code == 1  # one unreadable frame, reported, the others processed
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert len(records) == 3 and "error" in records[2]
    assert all(r["detections"] and r["detections"][0]["label"] == "ball" for r in records[:2])
    assert len(list((tmp_path / "annotated").glob("*.jpg"))) == 2


def test_bench_cli_reports_each_stage(out320, capsys):
    assert main(["bench", str(out320 / "out" / "model_int8.tflite"), "--runs", "5", "--warmup", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["latency_ms"]) == {"preprocess", "invoke", "postprocess", "total"} and result["fps"] > 0
