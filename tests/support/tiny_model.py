"""A tiny int8 edge-yolov9 model built at test time, without torch or a conversion, so that the runtime tier
(``pytest -m runtime``) can run the Detector and the CLIs in the default install.

The graph has the contract's shape (one int8 image input, a box and a cls NHWC map per stride, the metadata
embedded) and a behaviour simple enough to predict: per cell of each level, class ``red`` scores
sigmoid(12 * red - 8) and ``blue`` sigmoid(12 * blue - 8) of the cell's mean colour (0..1), and every box spans
one stride to each side of its cell's centre. It is written with the TFLite schema that ai-edge-litert ships;
where only tflite-runtime is installed (32-bit ARM) there is no such schema and :func:`build_tiny_model`
raises ImportError.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edge_yolov9.model_file import METADATA_NAME, STRIDES, build_metadata, encode_metadata

SIZE = 32
LABELS = ("red", "blue")
REG_MAX = 16
INPUT_SCALE, INPUT_ZERO = 1 / 255, -128  # the int8 input the converter writes: pixel - 128
BOX_LOGIT = 10.0  # on bin 1 of each side, 0 on the others: a distance of one stride
CLS_WEIGHT, CLS_BIAS = 12.0, -8.0  # the letterbox grey (114) scores 0.07, a pure colour 0.98


def build_tiny_model(path: Path) -> Path:
    """Write the tiny model to ``path`` (a few KB) and return it."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools.flatbuffer_utils import convert_object_to_bytearray

    model = schema.ModelT()
    model.version, model.description = 3, "edge-yolov9 test model"
    model.buffers = [schema.BufferT()]  # buffer 0: the empty one of every non-constant tensor
    graph = schema.SubGraphT()
    graph.tensors, graph.operators = [], []
    codes: dict[int, int] = {}

    def tensor(name: str, shape: tuple[int, ...], dtype: int, scales: list[float], zeros: list[int],
               data: np.ndarray | None = None) -> int:
        t = schema.TensorT()
        t.name, t.shape, t.type = name, list(shape), dtype
        t.quantization = schema.QuantizationParametersT()
        t.quantization.scale, t.quantization.zeroPoint = scales, zeros
        t.buffer = 0
        if data is not None:
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            model.buffers.append(buffer)
            t.buffer = len(model.buffers) - 1
        graph.tensors.append(t)
        return len(graph.tensors) - 1

    def operator(op: int, version: int, inputs: list[int], outputs: list[int], options_type: int, options) -> None:
        if op not in codes:
            code = schema.OperatorCodeT()
            code.builtinCode, code.deprecatedBuiltinCode, code.version = op, op, version
            codes[op] = len(codes)
            model.operatorCodes = [*(model.operatorCodes or []), code]
        o = schema.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = codes[op], inputs, outputs
        o.builtinOptionsType, o.builtinOptions = options_type, options
        graph.operators.append(o)

    def conv_1x1(name: str, source: int, cells: int, weights: np.ndarray, bias: np.ndarray,
                 out_scale: float, out_zero: int) -> int:
        """int8 1x1 conv with per-output-channel symmetric weights; ``weights`` (C, 3) and ``bias`` (C,) are real."""
        w_scales = np.maximum(np.abs(weights).max(axis=1), 1e-3) / 127
        channels = len(bias)
        w = tensor(f"{name}/weights", (channels, 1, 1, 3), schema.TensorType.INT8, w_scales.tolist(), [0] * channels,
                   np.round(weights / w_scales[:, None]).astype(np.int8).reshape(channels, 1, 1, 3))
        b_scales = INPUT_SCALE * w_scales
        b = tensor(f"{name}/bias", (channels,), schema.TensorType.INT32, b_scales.tolist(), [0] * channels,
                   np.round(bias / b_scales).astype(np.int32))
        out = tensor(name, (1, cells, cells, channels), schema.TensorType.INT8, [out_scale], [out_zero])
        options = schema.Conv2DOptionsT()
        options.padding, options.strideW, options.strideH = schema.Padding.VALID, 1, 1
        options.dilationWFactor = options.dilationHFactor = 1
        operator(schema.BuiltinOperator.CONV_2D, 3, [source, w, b], [out], schema.BuiltinOptions.Conv2DOptions, options)
        return out

    image = tensor("images", (1, SIZE, SIZE, 3), schema.TensorType.INT8, [INPUT_SCALE], [INPUT_ZERO])
    box_bias = np.zeros((4, REG_MAX), np.float32)
    box_bias[:, 1] = BOX_LOGIT
    cls_weights = np.zeros((len(LABELS), 3), np.float32)
    cls_weights[0, 0] = cls_weights[1, 2] = CLS_WEIGHT
    outputs, specs = [], []
    for level, stride in enumerate(STRIDES):
        cells = SIZE // stride
        pooled = tensor(f"mean_stride{stride}", (1, cells, cells, 3), schema.TensorType.INT8, [INPUT_SCALE], [INPUT_ZERO])
        options = schema.Pool2DOptionsT()
        options.padding, options.strideW, options.strideH = schema.Padding.VALID, stride, stride
        options.filterWidth = options.filterHeight = stride
        operator(schema.BuiltinOperator.AVERAGE_POOL_2D, 2, [image], [pooled], schema.BuiltinOptions.Pool2DOptions,
                 options)
        outputs.append(conv_1x1(f"box_stride{stride}", pooled, cells, np.zeros((4 * REG_MAX, 3), np.float32),
                                box_bias.reshape(-1), BOX_LOGIT / 255, -128))
        outputs.append(conv_1x1(f"cls_stride{stride}", pooled, cells, cls_weights,
                                np.full(len(LABELS), CLS_BIAS, np.float32), 2 * abs(CLS_BIAS) / 255, 0))
        specs += [SimpleNamespace(name=f"{kind}_stride{stride}", level=level, stride=stride, kind=kind)
                  for kind in ("box", "cls")]
    graph.inputs, graph.outputs, graph.name = [image], outputs, "main"
    model.subgraphs = [graph]

    def describe(index: int) -> dict:
        t = graph.tensors[index]
        return {"index": index, "name": t.name, "dtype": "int8", "shape": t.shape,
                "scale": t.quantization.scale[0], "zero_point": t.quantization.zeroPoint[0]}

    metadata = build_metadata(input_tensor=describe(image), output_tensors=[describe(i) for i in outputs],
                              outputs=specs, model_name="tiny", labels=LABELS, imgsz=SIZE, strides=STRIDES,
                              reg_max=REG_MAX, variant="int8")
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(encode_metadata(metadata), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [entry]
    path.write_bytes(bytes(convert_object_to_bytearray(model)))
    return path
