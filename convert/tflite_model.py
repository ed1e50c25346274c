"""Read, inspect and rewrite TFLite flatbuffers, with no TensorFlow and no interpreter.

Used to verify what the converter produced (op list, dtypes, quantization), for the Edge TPU
precheck, and for the few rewrites the toolchain needs: constants inlined into the flatbuffer
(ai-edge-quantizer and large models write *offset buffers* that old parsers such as
edgetpu_compiler 16 cannot read), int8 op versions and ``half_pixel_centers=False`` on an exact
2x nearest upsample (what compiler-16-era converters wrote), uint8 graph I/O through QUANTIZE
ops at the edges (``modify_model_interface`` is a no-op for int8 -> uint8 here), readable I/O
names and embedded metadata.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils

from edge_yolov9.errors import ModelError

FILE_IDENTIFIER = b"TFL3"
OP_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
OP_CODES = {name: code for code, name in OP_NAMES.items()}
DTYPE_NAMES = {code: name.lower() for name, code in vars(schema.TensorType).items() if not name.startswith("_")}
INTEGER_IO_DTYPES = ("int8", "uint8")

# Versions TFLite's op_version rules give these ops with int8 tensors (what the TF 2.x converters of
# edgetpu_compiler 16's era wrote); ai-edge-quantizer leaves the float version 1 on int8 ops.
INT8_OP_VERSIONS = {
    "ADD": 2, "AVERAGE_POOL_2D": 2, "CONCATENATION": 2, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "LOGISTIC": 2, "MAX_POOL_2D": 2, "MUL": 2, "PAD": 2, "RESIZE_NEAREST_NEIGHBOR": 2,
    "SOFTMAX": 2, "SUB": 2,
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the main subgraph; ``scales``/``zero_points`` are empty when not quantized."""

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...] | None
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    is_constant: bool
    nbytes: int

    @property
    def quantization(self) -> tuple[float, int] | None:
        """(scale, zero point) of a per-tensor quantized tensor, else None."""
        if len(self.scales) != 1:
            return None
        return self.scales[0], self.zero_points[0]

    @property
    def is_dynamic(self) -> bool:
        return self.shape_signature is not None and any(d < 0 for d in self.shape_signature)

    def to_dict(self) -> dict[str, Any]:
        scale_zp = self.quantization
        return {"index": self.index, "name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "scale": scale_zp[0] if scale_zp else None, "zero_point": scale_zp[1] if scale_zp else None}


@dataclass(frozen=True)
class OperatorInfo:
    """One operator: its name (``BuiltinOperator`` or custom code), version and tensor indices.
    ``options`` is the model's own builtin-options object: changing it changes the model."""

    index: int
    name: str
    version: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: Any


def _text(value: bytes | str | None) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")


class TFLiteModel:
    """A mutable TFLite model object with views for inspection; always written back with inlined buffers."""

    def __init__(self, model: Any, *, source: str = "<bytes>", offset_buffers: int = 0):
        self._model = model
        self.source = source
        # How many constant buffers the *source file* stored after the flatbuffer (P2); 0 once rewritten.
        self.offset_buffers = offset_buffers

    # ---------------------------------------------------------------- reading
    @classmethod
    def from_bytes(cls, data: bytes | bytearray, *, source: str = "<bytes>") -> "TFLiteModel":
        """Parse a .tflite; a truncated or foreign file raises :class:`ModelError` saying so."""
        data = bytearray(data)
        if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
            raise ModelError(f"{source} is not a TFLite model (no 'TFL3' file identifier)",
                             "pass a .tflite file written by a TFLite converter, e.g. edge-yolov9 convert")
        try:
            raw = schema.Model.GetRootAs(data, 0)
            offset_buffers = 0
            for i in range(raw.BuffersLength()):
                buffer = raw.Buffers(i)
                if buffer.Offset() > 1:
                    offset_buffers += 1
                    if buffer.Offset() + buffer.Size() > len(data):
                        raise ValueError(f"buffer {i} lies beyond the end of the file")
            model = flatbuffer_utils.read_model_from_bytearray(data)
            if not model.subgraphs:
                raise ValueError("the model has no subgraph")
        except Exception as err:  # flatbuffers raises anything (IndexError, struct.error...) on bad bytes
            raise ModelError(f"{source} is a truncated or corrupt TFLite model ({type(err).__name__}: {err})",
                             "re-create it; a download or copy was probably cut short") from None
        return cls(model, source=source, offset_buffers=offset_buffers)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TFLiteModel":
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"TFLite model not found: {path}", "check the path")
        return cls.from_bytes(path.read_bytes(), source=str(path))

    def to_bytes(self) -> bytes:
        """Serialize; every constant lives inside the flatbuffer (no offset buffers)."""
        return bytes(flatbuffer_utils.convert_object_to_bytearray(self._model))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_bytes(self.to_bytes())
        return path

    def copy(self) -> "TFLiteModel":
        return TFLiteModel(copy.deepcopy(self._model), source=self.source, offset_buffers=self.offset_buffers)

    # ---------------------------------------------------------------- views
    @property
    def _graph(self) -> Any:
        return self._model.subgraphs[0]

    @property
    def subgraph_count(self) -> int:
        return len(self._model.subgraphs)

    def _buffer_size(self, buffer_index: int) -> int:
        data = self._model.buffers[buffer_index].data if buffer_index < len(self._model.buffers) else None
        return 0 if data is None else len(data)

    def tensor(self, index: int) -> TensorInfo:
        t = self._graph.tensors[index]
        q = t.quantization
        scales = tuple(float(s) for s in q.scale) if q is not None and q.scale is not None else ()
        zero_points = tuple(int(z) for z in q.zeroPoint) if q is not None and q.zeroPoint is not None else ()
        nbytes = self._buffer_size(t.buffer)
        return TensorInfo(
            index=index, name=_text(t.name), dtype=DTYPE_NAMES.get(t.type, f"type{t.type}"),
            shape=tuple(int(d) for d in (t.shape if t.shape is not None else ())),
            shape_signature=tuple(int(d) for d in t.shapeSignature) if t.shapeSignature is not None else None,
            scales=scales, zero_points=zero_points, is_constant=nbytes > 0, nbytes=nbytes)

    @property
    def tensors(self) -> list[TensorInfo]:
        return [self.tensor(i) for i in range(len(self._graph.tensors))]

    @property
    def inputs(self) -> list[TensorInfo]:
        return [self.tensor(int(i)) for i in self._graph.inputs]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [self.tensor(int(i)) for i in self._graph.outputs]

    def _op_name(self, opcode_index: int) -> str:
        code = self._model.operatorCodes[opcode_index]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if builtin == schema.BuiltinOperator.CUSTOM:
            return _text(code.customCode) or "CUSTOM"
        return OP_NAMES.get(builtin, f"BUILTIN_{builtin}")

    @property
    def operators(self) -> list[OperatorInfo]:
        return [OperatorInfo(index=k, name=self._op_name(op.opcodeIndex),
                             version=int(self._model.operatorCodes[op.opcodeIndex].version),
                             inputs=tuple(int(i) for i in op.inputs or ()),
                             outputs=tuple(int(i) for i in op.outputs or ()),
                             options=op.builtinOptions)
                for k, op in enumerate(self._graph.operators)]

    def op_counts(self) -> Counter:
        """Count of each (op name, version)."""
        return Counter((op.name, op.version) for op in self.operators)

    @property
    def parameter_bytes(self) -> int:
        """Bytes of constant tensor data (weights, biases): what the Edge TPU caches on chip."""
        return sum(t.nbytes for t in self.tensors if t.is_constant)

    def metadata(self, name: str) -> bytes | None:
        for entry in self._model.metadata or []:
            if _text(entry.name) == name:
                data = self._model.buffers[entry.buffer].data
                return b"" if data is None else bytes(data)
        return None

    # ---------------------------------------------------------------- rewrites
    def rename_io(self, input_names: list[str], output_names: list[str]) -> None:
        """Name the graph inputs/outputs (tensor names and SignatureDef keys), in graph order."""
        graph = self._graph
        for indices, names, kind in ((graph.inputs, input_names, "inputs"), (graph.outputs, output_names, "outputs")):
            if len(indices) != len(names):
                raise ValueError(f"{len(names)} names for {len(indices)} graph {kind}")
            renamed = {int(i): name for i, name in zip(indices, names)}
            for i, name in renamed.items():
                graph.tensors[i].name = name
            for signature in self._model.signatureDefs or []:
                for tensor_map in getattr(signature, kind) or []:
                    if tensor_map.tensorIndex in renamed:
                        tensor_map.name = renamed[tensor_map.tensorIndex]

    def normalize_for_edgetpu(self) -> list[str]:
        """Int8 op versions as compiler-16-era converters wrote them (P10): exact 2x nearest upsamples
        get ``half_pixel_centers=False`` (identical result; version 2 instead of 3), and int8 ops left
        at a float version are raised to their int8 version. Never lowers a version that encodes a
        feature (grouped CONV_2D v6 stays v6). Returns the changes made."""
        changes = []
        for op in self.operators:
            if op.name == "RESIZE_NEAREST_NEIGHBOR" and op.options.halfPixelCenters and self._is_integer_upsample(op):
                op.options.halfPixelCenters = False
                changes.append(f"RESIZE_NEAREST_NEIGHBOR #{op.index}: half_pixel_centers=False")
        for index, code in enumerate(self._model.operatorCodes):
            name = OP_NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode))
            ops = [op for op in self.operators if self._graph.operators[op.index].opcodeIndex == index]
            if name not in INT8_OP_VERSIONS or not ops or code.version == INT8_OP_VERSIONS[name]:
                continue
            if not all(self.tensor(op.inputs[0]).dtype == "int8" for op in ops):
                continue
            lowers_resize = name == "RESIZE_NEAREST_NEIGHBOR" and not any(
                op.options.halfPixelCenters or op.options.alignCorners for op in ops)
            if code.version < INT8_OP_VERSIONS[name] or lowers_resize:
                changes.append(f"{name} v{code.version} -> v{INT8_OP_VERSIONS[name]}")
                code.version = INT8_OP_VERSIONS[name]
        return changes

    def _is_integer_upsample(self, op: OperatorInfo) -> bool:
        src, dst = self.tensor(op.inputs[0]).shape, self.tensor(op.outputs[0]).shape
        if op.options.alignCorners or len(src) != 4 or len(dst) != 4:
            return False
        return dst[1] % src[1] == 0 and dst[2] % src[2] == 0 and dst[1] // src[1] == dst[2] // src[2]

    def with_uint8_io(self) -> "TFLiteModel":
        """A copy with uint8 graph inputs and outputs (same scale, zero point + 128) joined to the int8
        graph by QUANTIZE ops, the structure older converters emitted for uint8 I/O (P9). The values
        are identical after dequantization; the int8 tensors keep their names with an ``_int8`` suffix."""
        result = self.copy()
        model, graph = result._model, result._graph
        quantize = result._opcode_index("QUANTIZE", version=1)

        def uint8_twin(index: int) -> int:
            tensor = graph.tensors[index]
            if tensor.type != schema.TensorType.INT8:
                raise ValueError(f"graph I/O {_text(tensor.name)} is {DTYPE_NAMES[tensor.type]}, expected int8")
            twin = copy.deepcopy(tensor)
            twin.type = schema.TensorType.UINT8
            twin.quantization.zeroPoint = np.asarray([int(z) + 128 for z in tensor.quantization.zeroPoint],
                                                     dtype=np.int64)
            model.buffers.append(schema.BufferT())
            twin.buffer = len(model.buffers) - 1
            tensor.name = _text(tensor.name) + "_int8"
            graph.tensors.append(twin)
            return len(graph.tensors) - 1

        def quantize_op(src: int, dst: int) -> Any:
            op = schema.OperatorT()
            op.opcodeIndex = quantize
            op.inputs, op.outputs = [src], [dst]
            op.builtinOptionsType = schema.BuiltinOptions.QuantizeOptions
            op.builtinOptions = schema.QuantizeOptionsT()
            return op

        new_inputs = {int(i): uint8_twin(int(i)) for i in graph.inputs}
        new_outputs = {int(i): uint8_twin(int(i)) for i in graph.outputs}
        graph.operators = ([quantize_op(new, old) for old, new in new_inputs.items()] + list(graph.operators)
                           + [quantize_op(old, new) for old, new in new_outputs.items()])
        graph.inputs = [new_inputs[int(i)] for i in graph.inputs]
        graph.outputs = [new_outputs[int(i)] for i in graph.outputs]
        remap = {**new_inputs, **new_outputs}
        for signature in model.signatureDefs or []:
            for tensor_map in (signature.inputs or []) + (signature.outputs or []):
                tensor_map.tensorIndex = remap.get(tensor_map.tensorIndex, tensor_map.tensorIndex)
        return result

    def _opcode_index(self, name: str, *, version: int) -> int:
        code_value = OP_CODES[name]
        for k, code in enumerate(self._model.operatorCodes):
            if max(code.builtinCode, code.deprecatedBuiltinCode) == code_value:
                return k
        code = schema.OperatorCodeT()
        code.builtinCode = code_value
        code.deprecatedBuiltinCode = min(code_value, 127)  # the int8 field of the old schema
        code.version = version
        self._model.operatorCodes.append(code)
        return len(self._model.operatorCodes) - 1

    def set_metadata(self, name: str, data: bytes) -> None:
        """Embed ``data`` as named model metadata (replacing an entry of the same name)."""
        array = np.frombuffer(data, dtype=np.uint8).copy()
        for entry in self._model.metadata or []:
            if _text(entry.name) == name:
                self._model.buffers[entry.buffer].data = array
                return
        buffer = schema.BufferT()
        buffer.data = array
        self._model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(self._model.buffers) - 1
        self._model.metadata = [*(self._model.metadata or []), entry]
