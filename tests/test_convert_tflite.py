"""Flatbuffer tools, the quantizer's annotations, calibration input, input sizes: fast tests, and the
checks of the 512 conversion of the session fixture (tests/conftest.py ``conversions``).

The hand-built tiny models here (``int8_add_model``...) are shared with test_edgetpu.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert.tools import flatbuffer_utils

from edge_yolov9.convert.tflite_model import TFLiteModel
from edge_yolov9.errors import EdgeYoloError, ModelError

DTYPES = {"int8": (schema.TensorType.INT8, np.int8), "uint8": (schema.TensorType.UINT8, np.uint8),
          "int32": (schema.TensorType.INT32, np.int32), "float32": (schema.TensorType.FLOAT32, np.float32)}


@dataclass
class T:
    """A tensor: name, dtype, shape, optional (scale, zero point), optional constant data."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    quant: tuple[float, int] | None = None
    data: np.ndarray | None = None


def build(tensors: list[T], ops: list[tuple[str, int, list[int], list[int], object]],
          inputs: list[int], outputs: list[int]) -> bytes:
    """Serialize a one-subgraph model; ``ops`` are (name, version, input indices, output indices, options)."""
    model = schema.ModelT()
    model.version = 3
    model.buffers = [schema.BufferT()]
    graph = schema.SubGraphT()
    graph.tensors = []
    for spec in tensors:
        tensor = schema.TensorT()
        tensor.name, tensor.shape = spec.name, list(spec.shape)
        tensor.type = DTYPES[spec.dtype][0]
        tensor.buffer = 0
        if spec.data is not None:
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(np.asarray(spec.data, DTYPES[spec.dtype][1]).tobytes(), np.uint8).copy()
            model.buffers.append(buffer)
            tensor.buffer = len(model.buffers) - 1
        if spec.quant is not None:
            tensor.quantization = schema.QuantizationParametersT()
            tensor.quantization.scale = [spec.quant[0]]
            tensor.quantization.zeroPoint = [spec.quant[1]]
        graph.tensors.append(tensor)
    model.operatorCodes, graph.operators = [], []
    for name, version, op_inputs, op_outputs, options in ops:
        code = schema.OperatorCodeT()
        code.builtinCode = getattr(schema.BuiltinOperator, name)
        code.deprecatedBuiltinCode = min(code.builtinCode, 127)
        code.version = version
        model.operatorCodes.append(code)
        op = schema.OperatorT()
        op.opcodeIndex = len(model.operatorCodes) - 1
        op.inputs, op.outputs = op_inputs, op_outputs
        if options is not None:
            op.builtinOptionsType = getattr(schema.BuiltinOptions, type(options).__name__[:-1])
            op.builtinOptions = options
        graph.operators.append(op)
    graph.inputs, graph.outputs = inputs, outputs
    model.subgraphs = [graph]
    signature = schema.SignatureDefT()
    signature.signatureKey = "serving_default"
    signature.inputs, signature.outputs = [], []
    for indices, maps in ((inputs, signature.inputs), (outputs, signature.outputs)):
        for index in indices:
            tensor_map = schema.TensorMapT()
            tensor_map.name, tensor_map.tensorIndex = tensors[index].name, index
            maps.append(tensor_map)
    model.signatureDefs = [signature]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def int8_add_model(add_version: int = 2) -> bytes:
    """images int8 [1,4,4,3] (1/255, -128) + constant -> int8 output; runs in any TFLite interpreter."""
    return build(
        [T("images", "int8", (1, 4, 4, 3), (1 / 255, -128)),
         T("offset", "int8", (1, 1, 1, 3), (1 / 255, -128), np.array([[[[10, -20, 30]]]])),
         T("out", "int8", (1, 4, 4, 3), (2 / 255, -128))],
        [("ADD", add_version, [0, 1], [2], None)], inputs=[0], outputs=[2])


def float_add_model() -> bytes:
    return build(
        [T("images", "float32", (1, 4, 4, 3)), T("offset", "float32", (1, 1, 1, 3), data=np.ones((1, 1, 1, 3))),
         T("out", "float32", (1, 4, 4, 3))],
        [("ADD", 1, [0, 1], [2], None)], inputs=[0], outputs=[2])


def with_offset_buffers(content: bytes) -> bytes:
    """The same model with every constant stored after the flatbuffer (Buffer.offset/size), as
    ai-edge-quantizer and large-model converters write it (finding P2)."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    blobs = []
    for buffer in model.buffers:
        if buffer.data is not None and len(buffer.data):
            blobs.append((buffer, bytes(buffer.data)))
            buffer.data, buffer.offset, buffer.size = None, 1, len(blobs[-1][1])  # placeholders reserve the fields
    head = flatbuffer_utils.convert_object_to_bytearray(model)
    position, tail = -(-len(head) // 16) * 16, b""
    for buffer, blob in blobs:
        buffer.offset = position + len(tail)
        tail += blob + b"\0" * (-len(blob) % 16)
    head = flatbuffer_utils.convert_object_to_bytearray(model)
    assert len(head) <= position, "re-serialization changed the flatbuffer size"
    return bytes(head) + b"\0" * (position - len(head)) + tail


def run(content: bytes, image: np.ndarray) -> list[np.ndarray]:
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


PIXELS = np.random.default_rng(0).integers(0, 256, (1, 4, 4, 3))


# ------------------------------------------------------------------------------------- reading
def test_reads_ops_tensors_and_quantization():
    model = TFLiteModel.from_bytes(int8_add_model())
    assert model.op_counts() == {("ADD", 2): 1}
    assert model.subgraph_count == 1 and model.offset_buffers == 0
    [image] = model.inputs
    assert (image.name, image.dtype, image.shape) == ("images", "int8", (1, 4, 4, 3))
    assert image.quantization == (pytest.approx(1 / 255), -128) and not image.is_constant
    assert model.tensor(1).is_constant and model.parameter_bytes == 3


@pytest.mark.parametrize("content, problem", [
    (b"", "not a TFLite model"),
    (b"\xff\xd8\xff\xe0 JFIF this is a jpeg", "not a TFLite model"),
    (int8_add_model()[:120], "truncated or corrupt"),
])
def test_foreign_or_truncated_files_raise_a_clear_error(content, problem):
    with pytest.raises(ModelError, match=problem) as err:
        TFLiteModel.from_bytes(content, source="bad.tflite")
    assert "bad.tflite" in str(err.value) and err.value.fix


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        TFLiteModel.from_file(tmp_path / "none.tflite")


def test_offset_buffers_are_detected_and_inlined():
    """P2: constants stored after the flatbuffer are read, counted, and written back inline."""
    content = with_offset_buffers(int8_add_model())
    model = TFLiteModel.from_bytes(content)
    assert model.offset_buffers == 1
    rewritten = model.to_bytes()
    assert TFLiteModel.from_bytes(rewritten).offset_buffers == 0
    image = (PIXELS - 128).astype(np.int8)
    np.testing.assert_array_equal(run(rewritten, image)[0], run(int8_add_model(), image)[0])


def test_offset_buffer_beyond_the_end_is_truncation():
    content = with_offset_buffers(int8_add_model())
    with pytest.raises(ModelError, match="truncated"):
        TFLiteModel.from_bytes(content[:-16])


# ------------------------------------------------------------------------------------- rewrites
def test_uint8_io_adds_quantize_edges_and_matches_int8():
    """P9: uint8 I/O through QUANTIZE ops; the same values after dequantization."""
    model = TFLiteModel.from_bytes(int8_add_model())
    model.rename_io(["images"], ["out"])
    uint8 = model.with_uint8_io()
    assert uint8.op_counts() == {("ADD", 2): 1, ("QUANTIZE", 1): 2}
    assert [(t.name, t.dtype, t.quantization[1]) for t in uint8.inputs + uint8.outputs] == [
        ("images", "uint8", 0), ("out", "uint8", 0)]
    assert model.inputs[0].dtype == "int8", "the source model is left alone"
    [int8_out] = run(model.to_bytes(), (PIXELS - 128).astype(np.int8))
    [uint8_out] = run(uint8.to_bytes(), PIXELS.astype(np.uint8))
    np.testing.assert_array_equal(uint8_out.astype(int) - 128, int8_out)
    interpreter = Interpreter(model_content=uint8.to_bytes())
    runner = interpreter.get_signature_runner("serving_default")
    assert set(runner(images=PIXELS.astype(np.uint8))) == {"out"}


def test_rename_io_renames_tensors_and_signature():
    model = TFLiteModel.from_bytes(int8_add_model())
    model.rename_io(["pixels"], ["result"])
    assert [t.name for t in model.inputs + model.outputs] == ["pixels", "result"]
    assert Interpreter(model_content=model.to_bytes()).get_signature_list() == {
        "serving_default": {"inputs": ["pixels"], "outputs": ["result"]}}
    with pytest.raises(ValueError, match="2 names for 1"):
        model.rename_io(["a", "b"], ["c"])


def test_normalize_raises_float_versions_of_int8_ops_and_keeps_results():
    """P10: int8 ops left at the float version 1 get their int8 version; numbers do not change."""
    model = TFLiteModel.from_bytes(int8_add_model(add_version=1))
    assert model.normalize_for_edgetpu() == ["ADD v1 -> v2"]
    assert model.op_counts() == {("ADD", 2): 1}
    assert model.normalize_for_edgetpu() == []
    image = (PIXELS - 128).astype(np.int8)
    np.testing.assert_array_equal(run(model.to_bytes(), image)[0], run(int8_add_model(1), image)[0])


def test_normalize_never_lowers_a_feature_version():
    model = TFLiteModel.from_bytes(int8_add_model(add_version=4))
    assert model.normalize_for_edgetpu() == []
    assert model.op_counts() == {("ADD", 4): 1}


def test_metadata_round_trip():
    model = TFLiteModel.from_bytes(int8_add_model())
    model.set_metadata("edge_yolov9", b'{"a": 1}')
    model.set_metadata("edge_yolov9", b'{"a": 2}')
    again = TFLiteModel.from_bytes(model.to_bytes())
    assert again.metadata("edge_yolov9") == b'{"a": 2}' and again.metadata("other") is None
    run(again.to_bytes(), (PIXELS - 128).astype(np.int8))


# ------------------------------------------------------------------------------------- quantizer
def test_quantizer_annotates_every_op_of_the_export_graph():
    """P3/P4: residual add, avg_pool2d, cat, sigmoid are quantized (no float island), the input gets
    exactly 1/255 and -128, sigmoid outputs 1/256 and -128."""
    import torch
    import torch.nn.functional as F
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from edge_yolov9.convert.quantizer import INPUT_SCALE, INPUT_ZERO_POINT, EdgeQuantizer

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 1)

        def forward(self, x):
            x = x.permute(0, 3, 1, 2)  # NHWC input as in the export
            y = self.a(x)
            y = y * torch.sigmoid(y)
            z = F.avg_pool2d(y + self.b(y), 2, 1, 0, False, True)
            return torch.cat([F.max_pool2d(z, 5, 1, 2), F.interpolate(z, scale_factor=2.0)[:, :, ::2, ::2]], 1)

    graph = torch.export.export(Block().eval(), (torch.rand(1, 8, 8, 3),)).module()
    prepared = prepare_pt2e(graph, EdgeQuantizer())
    compute = {"conv2d", "sigmoid", "mul", "add", "avg_pool2d", "max_pool2d", "cat"}
    nodes = [n for n in prepared.graph.nodes if n.op == "call_function" and n.target.__name__.split(".")[0] in compute]
    assert {n.target.__name__.split(".")[0] for n in nodes} == compute
    for node in nodes:
        assert any(user.op == "call_module" for user in node.users), f"{node.name} output is not observed"
    observers = {name: module for name, module in prepared.named_modules() if "activation_post_process" in name}
    input_observer = next(observers[u.target] for u in prepared.graph.nodes
                          if u.op == "call_module" and u.target in observers
                          and u.args[0].op == "call_function" and "permute" in str(u.args[0].target))
    scale, zero_point = input_observer.calculate_qparams()
    assert (float(scale), int(zero_point)) == (pytest.approx(INPUT_SCALE), INPUT_ZERO_POINT)
    sigmoid = next(n for n in nodes if "sigmoid" in str(n.target))
    scale, zero_point = observers[next(iter(sigmoid.users)).target].calculate_qparams()
    assert (float(scale), int(zero_point)) == (pytest.approx(1 / 256), -128)


def test_quantizer_concatenates_rows_without_requantizing():
    """The frigate layout: per level, NHWC map -> (1, H*W, C) rows, levels concatenated. The box convs and
    their concatenation share one calibrated scale; the class convs and theirs keep the fixed output
    qparams, so no edge of either concatenation needs a requantization."""
    import torch
    import torch.nn.functional as F
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from edge_yolov9.convert.quantizer import EdgeQuantizer

    class TwoLevels(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 3, 2, 1)
            self.box = torch.nn.ModuleList(torch.nn.Conv2d(8, 4, 1) for _ in range(2))
            self.cls = torch.nn.ModuleList(torch.nn.Conv2d(8, 3, 1) for _ in range(2))

        def forward(self, x):
            x = self.stem(x.permute(0, 3, 1, 2))
            levels = [x, F.max_pool2d(x, 2)]
            rows = [[t.permute(0, 2, 3, 1).reshape(1, -1, t.shape[1]) for t in (box(f), cls(f))]
                    for f, box, cls in zip(levels, self.box, self.cls)]
            return torch.cat([box for box, _ in rows], 1), torch.cat([cls for _, cls in rows], 1)

    torch.manual_seed(0)
    graph = torch.export.export(TwoLevels().eval(), (torch.rand(1, 8, 8, 3),)).module()
    prepared = prepare_pt2e(graph, EdgeQuantizer(fixed_outputs={1: (1 / 16, 0)}))
    prepared(torch.rand(1, 8, 8, 3))

    def qparams(node):
        [observer] = [u for u in node.users if u.op == "call_module"]
        scale, zero_point = getattr(prepared, observer.target).calculate_qparams()
        return float(scale), int(zero_point)

    nodes = [n for n in prepared.graph.nodes if n.op == "call_function"]
    convs = [n for n in nodes if "conv2d" in str(n.target)][1:]  # box 0, cls 0, box 1, cls 1
    box_cat, cls_cat = [n for n in nodes if "cat" in str(n.target)]
    assert len({qparams(n) for n in (*convs[0::2], box_cat)}) == 1
    assert {qparams(n) for n in (*convs[1::2], cls_cat)} == {(1 / 16, 0)}
    for cat in (box_cat, cls_cat):  # one observer between each block of rows and the concatenation
        for edge in cat.args[0]:
            assert edge.op == "call_module" and "reshape" in str(edge.args[0].target)
            assert qparams(edge.args[0]) == qparams(cat)


# ------------------------------------------------------------------------------------- calibration
def test_calibration_images_are_capped_spread_and_deterministic(coco128):
    from edge_yolov9.convert.calibration import find_calibration_images

    folder = coco128 / "images" / "train2017"
    everything = sorted(folder.glob("*.jpg"))
    picked = find_calibration_images(folder, limit=5)
    assert picked == find_calibration_images(folder, limit=5)
    assert len(picked) == 5 and picked[0] == everything[0] and picked[-1] == everything[-1]


def test_calibration_from_data_yaml_uses_the_train_split(tmp_path, coco128):
    from edge_yolov9.convert.calibration import calibration_set

    (tmp_path / "data.yaml").write_text(f"path: {coco128}\ntrain: images/train2017\nval: images/val\nnames: [a]\n")
    calibration = calibration_set(tmp_path / "data.yaml", 256, limit=3)
    batch = next(calibration.inputs())
    assert len(calibration.images) == 3 and batch.shape == (1, 256, 256, 3) and batch.dtype == np.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0


def test_calibration_reads_a_split_list_as_training_does(tmp_path, coco128):
    """A `.txt` split lists images relative to its own folder: calibration must find what training finds."""
    from edge_yolov9.convert.calibration import calibration_set
    from edge_yolov9.train.data import list_images, load_data_config

    (tmp_path / "sub" / "images").mkdir(parents=True)
    photos = sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:3]
    for photo in photos:
        (tmp_path / "sub" / "images" / photo.name).write_bytes(photo.read_bytes())
    (tmp_path / "sub" / "train.txt").write_text("".join(f"images/{p.name}\n" for p in photos))
    (tmp_path / "data.yaml").write_text("path: .\ntrain: sub/train.txt\nnames: [a]\n")
    trained_on = list_images(load_data_config(tmp_path / "data.yaml"), "train")
    calibration = calibration_set(tmp_path / "data.yaml", 256)
    assert list(calibration.images) == trained_on and len(trained_on) == 3
    assert len(list(calibration.inputs())) == 3


def test_calibration_input_is_the_runtime_letterbox(coco128):
    from edge_yolov9.convert.calibration import calibration_set
    from edge_yolov9.preprocess import letterbox, load_image

    calibration = calibration_set(coco128 / "images" / "train2017", 320, limit=1)
    canvas, _ = letterbox(load_image(calibration.images[0]), 320)
    np.testing.assert_array_equal(next(calibration.inputs())[0], canvas / np.float32(255))


class _Redness(torch.nn.Module):
    """A leaf that grows steeply with how red a pixel is: a solid red scene peaks far above photographs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(8 * (x[:, 0] - x[:, 1:].mean(1)))


def test_calibration_leaves_out_images_whose_activations_stretch_the_ranges(tmp_path, coco128, caplog):
    from PIL import Image

    from edge_yolov9.convert.calibration import calibration_set

    photos = sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:24]
    for photo in photos:
        (tmp_path / photo.name).write_bytes(photo.read_bytes())
    Image.new("RGB", (320, 240), (250, 0, 0)).save(tmp_path / "red_scene.png")
    model = torch.nn.Sequential(torch.nn.Identity(), _Redness())

    calibration = calibration_set(tmp_path, 128)
    with caplog.at_level(logging.INFO):
        kept = calibration.without_outliers(model)
    assert tmp_path / "red_scene.png" in kept.outliers and tmp_path / "red_scene.png" not in kept.images
    assert 1 <= len(kept.outliers) <= 2 and len(kept.images) + len(kept.outliers) == 25  # at most 10 % left out
    assert kept.to_dict()["outliers_left_out"] == len(kept.outliers)
    assert "red_scene.png" in caplog.text and "Leaving" in caplog.text
    assert len(list(kept.inputs())) == len(kept.images)
    small = calibration_set(tmp_path, 128, limit=19)  # too few images for a median to mean much
    assert small.without_outliers(model) is small


def test_the_outlier_pass_gives_each_image_of_a_batch_its_own_peaks(coco128):
    """The outlier pass runs images in batches; each image's peaks are those it has run alone."""
    from edge_yolov9.convert.calibration import activation_peaks, calibration_set

    calibration = calibration_set(coco128 / "images" / "train2017", 96, limit=7)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), _Redness()).eval()
    alone_paths, alone = activation_peaks(model, calibration._read(), batch_size=1)
    paths, batched = activation_peaks(model, calibration._read(), batch_size=3)  # 3 + 3 + a batch of 1
    assert paths == alone_paths == list(calibration.images) and batched.shape == (7, 3)
    np.testing.assert_allclose(batched, alone, rtol=1e-5)
    assert len(set(map(tuple, batched.round(6)))) == 7  # seven different rows, not one repeated


def test_outlier_rows_are_images_extreme_across_the_network_most_widespread_first():
    from edge_yolov9.convert.calibration import outlier_rows

    peaks = np.ones((20, 6))
    peaks[:, 5] = 0.0  # a dead output: its median is 0 and it does not count
    peaks[4, 5] = 50.0
    peaks[7, :2] = 10.0  # extreme in 2 of 5 live layers
    peaks[3, :1] = 100.0  # in 1 of 5 (a rare class lighting up its head, say): not an outlier by default
    peaks[9, 1:4] = 3.5  # in 3 of 5
    peaks[2, :] = 3.0  # not above the ratio
    assert outlier_rows(peaks) == [9, 7]  # 10 % of 20 rows at most
    assert outlier_rows(peaks, max_share=0.05) == [9]
    assert outlier_rows(peaks, layer_share=0.2, max_share=0.5) == [9, 7, 3]
    assert outlier_rows(peaks, ratio=2.0, layer_share=1.0, max_share=0.5) == [2]


def test_empty_calibration_folder_names_the_folder_and_the_fix(tmp_path):
    from edge_yolov9.convert.calibration import calibration_set

    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(EdgeYoloError, match=str(tmp_path)) as err:
        calibration_set(tmp_path, 320)
    assert "--calib" in err.value.fix


def test_unreadable_calibration_images_are_skipped(tmp_path, coco128, caplog):
    from edge_yolov9.convert.calibration import calibration_set

    (tmp_path / "a_broken.jpg").write_bytes(b"not a jpeg")
    good = next((coco128 / "images" / "train2017").glob("*.jpg"))
    (tmp_path / "b_good.jpg").write_bytes(good.read_bytes())
    assert len(list(calibration_set(tmp_path, 256).inputs())) == 1
    assert "a_broken.jpg" in caplog.text
    (tmp_path / "b_good.jpg").unlink()
    with pytest.raises(EdgeYoloError, match="None of the 1 calibration images"):
        list(calibration_set(tmp_path, 256).inputs())


def test_512_conversion(out512, coco128):
    """The largest tested size (issue: 320, 416 and 512 tested), as the 416 run is checked: int8 I/O here,
    calibrated from an image folder."""
    import json

    from edge_yolov9.convert.edgetpu import precheck
    from edge_yolov9.convert.export import check_fully_integer
    from edge_yolov9.detector import Detector

    assert (out512 / "exit_code").read_text() == "3", (out512 / "stdout.txt").read_text()
    path = out512 / "out" / "model_int8.tflite"
    model = TFLiteModel.from_file(path)
    [image] = model.inputs
    assert (image.dtype, image.shape, image.quantization) == ("int8", (1, 512, 512, 3), (np.float32(1 / 255), -128))
    assert [t.shape for t in model.outputs] == [(1, 64, 64, 64), (1, 64, 64, 80), (1, 32, 32, 64),
                                                (1, 32, 32, 80), (1, 16, 16, 64), (1, 16, 16, 80)]
    assert {t.dtype for t in model.outputs} == {"int8"}
    assert {t.quantization for t in model.outputs[1::2]} == {(1 / 16, 0)}
    check_fully_integer(model)
    assert precheck(model).verdict == "PASS"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["input"]["size"] == [512, 512] and meta["calibration"]["images"] == 4 and meta["layout"] == "raw"
    detector = Detector(path, device="cpu", threads=1, score_threshold=0.001)
    _, timing = detector.detect_with_timing(next((coco128 / "images" / "train2017").glob("*.jpg")))
    assert detector.info.size == (512, 512) and timing.invoke > 0


@pytest.mark.parametrize("variant, layout", [("float", "raw"), ("int8", "raw"), ("int8", "frigate")])
def test_local_decompositions_change_no_byte(coco128, monkeypatch, caplog, variant, layout):
    """litert-torch's decompositions done node by node (convert.local_decompositions) give the .tflite that
    litert-torch as it comes gives, byte for byte: the float lowering, the int8 one, and the int8 one with the
    Frigate layout's reshapes and concatenations."""
    import litert_torch

    from edge_yolov9.convert import export, local_decompositions
    from edge_yolov9.convert.calibration import calibration_set
    from support.conversions import trained_like

    if litert_torch.__version__ not in local_decompositions.LOCAL_DECOMPOSITIONS_IN:
        pytest.fail(f"litert-torch {litert_torch.__version__}: compare its safe_run_decompositions with "
                    "convert.local_decompositions and update LOCAL_DECOMPOSITIONS_IN (or drop the module)")
    photos = sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:4]
    model = export.prepare_for_export(trained_like(photos, csp_depth=1))
    calibration = calibration_set(coco128 / "images" / "train2017", 160, limit=2)
    traced_nodes = []
    splice = local_decompositions._splice
    monkeypatch.setattr(local_decompositions, "_splice", lambda graph, node, *rest: (
        traced_nodes.append(node.name), splice(graph, node, *rest)))

    def lowered() -> bytes:
        if variant == "float":
            return export.convert_float(model, 160, layout).to_bytes()
        return export.convert_int8(model, 160, calibration.inputs(), layout).to_bytes()

    caplog.set_level(logging.DEBUG, logger=local_decompositions.__name__)
    local = lowered()
    assert len(traced_nodes) > 50  # the convolutions, twice: the local path ran
    assert not [r for r in caplog.records if "whole graph" in r.getMessage()]  # and never fell back
    monkeypatch.setattr(local_decompositions, "LOCAL_DECOMPOSITIONS_IN", ())
    assert lowered() == local


@pytest.mark.parametrize("refusal", ["cannot", "crash"])
def test_local_decompositions_fall_back_to_the_whole_graph(monkeypatch, caplog, refusal):
    """A node the local trace cannot take, or a local trace that fails (a torch whose internals moved), sends the
    call back to litert-torch's whole-graph re-trace, which the log says; the model is the same either way (a
    small float net with a convolution, pooling and upsampling)."""
    import litert_torch

    from edge_yolov9.convert import local_decompositions

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.AvgPool2d(2),
                              torch.nn.Upsample(scale_factor=2.0), torch.nn.Conv2d(8, 4, 1)).eval()
    sample = (torch.rand(1, 3, 32, 32),)

    def lowered() -> bytes:
        with local_decompositions.local_decompositions(), torch.no_grad():
            return litert_torch.convert(net, sample).model_content()

    local = lowered()

    def cannot(node, *_):
        error = local_decompositions._CannotDecomposeLocally if refusal == "cannot" else RuntimeError
        raise error(f"{node.name} refused by the test")

    monkeypatch.setattr(local_decompositions, "_trace_node", cannot)
    caplog.set_level(logging.DEBUG, logger=local_decompositions.__name__)
    assert lowered() == local
    assert any("whole graph" in r.getMessage() and "refused by the test" in r.getMessage() for r in caplog.records)


def test_streaming_histogram_observer_matches_torchao_call_for_call():
    """Ranges that grow and hold, a constant tensor, infinities (which torchao filters out) and an empty tensor:
    after every call the histogram and range are torchao's HistogramObserver's, bit for bit."""
    from torchao.quantization.pt2e.observer import HistogramObserver

    from edge_yolov9.convert.quantizer import StreamingHistogramObserver

    torch.manual_seed(0)
    inputs = [torch.randn(1000) * s for s in (1.0, 0.5, 3.0, 2.0)] + [
        torch.full((10,), 7.0), torch.tensor([1.0, float("inf"), -2.0]), torch.empty(0), torch.randn(500) * 10]
    fast, stock = StreamingHistogramObserver(eps=2 ** -12), HistogramObserver(eps=2 ** -12)
    for x in inputs:
        fast(x)
        stock(x)
        assert torch.equal(fast.histogram, stock.histogram)
        assert (fast.min_val.item(), fast.max_val.item()) == (stock.min_val.item(), stock.max_val.item())
    assert [t.tolist() for t in fast.calculate_qparams()] == [t.tolist() for t in stock.calculate_qparams()]


class _TwoObservers(torch.nn.Module):
    """Two histogram observers, the first one called twice per input (as a shared observer is in a graph)."""

    def __init__(self) -> None:
        from edge_yolov9.convert.quantizer import StreamingHistogramObserver

        super().__init__()
        self.first, self.second = StreamingHistogramObserver(eps=2 ** -12), StreamingHistogramObserver(eps=2 ** -12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x) * 2 + self.first(x.flip(0)))


def test_observer_pipeline_leaves_the_observers_in_their_inline_state():
    """Observed on the pipeline's threads, each observer ends exactly as when called inline: same calls in the same
    order, ranges that grow between images included; the torch thread count is given back."""
    from edge_yolov9.convert.quantizer import ObserverPipeline

    torch.manual_seed(0)
    images = [torch.randn(2000) * scale + shift for scale, shift in ((1, 0), (3, 1), (0.5, 0), (6, -4), (2, 2))]
    inline, pipelined = _TwoObservers(), _TwoObservers()
    for x in images:
        inline(x)
    threads = torch.get_num_threads()
    with ObserverPipeline(pipelined, threads=2) as observers:
        assert len(observers.queues) == 2 and torch.get_num_threads() == 1
        for x in images:
            pipelined(x)
            observers.image_done()
    assert torch.get_num_threads() == threads
    assert len(set(observers.owners.values())) == 2  # both threads observed
    for ours, theirs in ((pipelined.first, inline.first), (pipelined.second, inline.second)):
        assert ours._deferred is None
        assert torch.equal(ours.histogram, theirs.histogram) and ours.histogram.sum() > 0
        assert (ours.min_val.item(), ours.max_val.item()) == (theirs.min_val.item(), theirs.max_val.item())


def test_observer_pipeline_raises_an_observer_thread_error_on_the_calling_thread():
    """An observer that fails on its thread stops the calibration with its own error, no thread left hanging."""
    from edge_yolov9.convert.quantizer import ObserverPipeline

    net = _TwoObservers()
    calls = []

    def failing(tensor: torch.Tensor) -> torch.Tensor:
        calls.append(tensor)
        if len(calls) == 3:
            raise MemoryError("observer ran out of memory")
        return tensor

    net.second.observe = failing
    pipeline = ObserverPipeline(net, threads=2)
    with pytest.raises(MemoryError, match="observer ran out"):
        with pipeline as observers:
            for _ in range(20):
                net(torch.randn(100))
                observers.image_done()
    assert len(calls) == 3 and not any(worker.is_alive() for worker in pipeline.workers)
    assert net.first._deferred is None and net.second._deferred is None


def test_range_search_finds_torchao_ranges():
    """The least-error range search of StreamingHistogramObserver gives torchao's, bit for bit, on histograms of
    every shape a network makes: bell-shaped, heavy-tailed, one-sided (after an activation), a spike with far
    outliers, a handful of values, a constant (where torchao steps through all its quantiles), and a count whose
    first quantile (1e-5 of 1e8 = 1000.0000000000001) float32 rounds onto a bin's cumulative count."""
    from torchao.quantization.pt2e.observer import HistogramObserver

    from edge_yolov9.convert.quantizer import StreamingHistogramObserver

    torch.manual_seed(0)
    shapes = [torch.randn(20000), torch.randn(20000) ** 3, torch.nn.functional.silu(torch.randn(20000) * 4),
              torch.cat([torch.zeros(20000), torch.tensor([40.0, -35.0])]), torch.tensor([0.1, 0.2, 5.0]),
              torch.full((5000,), 0.5)]
    observers = []
    for scale in (1e-3, 1.0, 300.0):
        for values in shapes:
            observer = StreamingHistogramObserver(eps=2 ** -12)
            observer(values * scale)
            observer(values * scale * 1.25)
            observers.append(observer)
    rounded = StreamingHistogramObserver(eps=2 ** -12)
    rounded(torch.tensor([0.0, 1.0]))
    rounded.histogram.zero_()
    rounded.histogram[0], rounded.histogram[-1] = 1000.0, 1e8 - 1000.0
    observers.append(rounded)
    for observer in observers:
        ours = observer._non_linear_param_search()
        assert [t.item() for t in ours] == [t.item() for t in HistogramObserver._non_linear_param_search(observer)]


def test_weight_observer_skips_only_an_unchanged_tensor():
    from edge_yolov9.convert.quantizer import WeightMinMaxObserver

    weight = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    observer = WeightMinMaxObserver(ch_axis=0, dtype=torch.int8, qscheme=torch.per_channel_symmetric)
    observer(weight)
    observer(weight)
    assert observer.min_val.tolist() == [-2.0, 0.5] and observer.max_val.tolist() == [1.0, 3.0]
    with torch.no_grad():
        weight.mul_(2)  # changed in place: observed again
    observer(weight)
    assert observer.min_val.tolist() == [-4.0, 0.5] and observer.max_val.tolist() == [2.0, 6.0]
    observer(torch.tensor([[-9.0, 0.0], [0.0, 0.0]]))  # another tensor
    assert observer.min_val.tolist() == [-9.0, 0.0]


def test_calibration_ends_in_the_state_torchao_observers_give(coco128, monkeypatch):
    """The quantizer's own observers (convert.quantizer) leave calibration on real photos in exactly the state
    torchao's would: every histogram, range and per-channel weight min/max equal, and the quantization parameters
    searched from them too, so the int8 model is the same."""
    from torchao.quantization.pt2e.observer import HistogramObserver

    from edge_yolov9.convert import export, quantizer
    from edge_yolov9.convert.calibration import calibration_set
    from support.conversions import trained_like

    photos = sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:4]
    model = export.prepare_for_export(trained_like(photos, csp_depth=1))
    calibration = calibration_set(coco128 / "images" / "train2017", 160, limit=6)

    def calibrated() -> tuple[set[str], dict, list]:
        prepared = export.calibrate_int8(model, 160, calibration.inputs()).prepared
        qparams = [[t.tolist() for t in m.calculate_qparams()] for m in prepared.modules()
                   if isinstance(m, HistogramObserver)]
        return {type(m).__name__ for m in prepared.modules()}, prepared.state_dict(), qparams

    kinds, ours, our_qparams = calibrated()
    monkeypatch.setattr(quantizer, "_with_observer", lambda spec, observer: spec)
    stock_kinds, stock, stock_qparams = calibrated()
    assert {"StreamingHistogramObserver", "WeightMinMaxObserver"} <= kinds
    assert not kinds & {"HistogramObserver", "PerChannelMinMaxObserver"}
    assert {"HistogramObserver", "PerChannelMinMaxObserver"} <= stock_kinds
    assert ours.keys() == stock.keys() and len(ours) > 100
    assert [key for key in ours if not torch.equal(ours[key], stock[key])] == []
    assert our_qparams == stock_qparams and len(our_qparams) > 50


def test_errors_cross_a_process_boundary_whole():
    """An error raised in the float half's worker process is pickled back: its problem, fix and type survive,
    whatever arguments the subclass itself takes."""
    import pickle

    from edge_yolov9.convert.export import ConversionError
    from edge_yolov9.errors import MissingDependencyError

    for error in (ConversionError("float op left", "report it"), MissingDependencyError("faster_coco_eval", "train",
                                                                                        "Scoring")):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and (back.problem, back.fix, str(back)) == (error.problem, error.fix,
                                                                                     str(error))
