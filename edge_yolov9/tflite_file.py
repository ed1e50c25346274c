"""Just enough of the TFLite flatbuffer format for the runtime: validity, metadata, custom ops.

The runtime must not depend on the converter's tooling, and the interpreter API exposes neither
the model's metadata nor whether it holds an Edge TPU custom op. This reads both straight from the
file with ``struct``, following the TFLite schema (Model, OperatorCode, Metadata, Buffer tables).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import ModelError

IDENTIFIER = b"TFL3"
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"

# Field numbers in the TFLite schema.
MODEL_OPERATOR_CODES, MODEL_BUFFERS, MODEL_METADATA = 1, 4, 6
OPCODE_CUSTOM_CODE = 1
METADATA_NAME, METADATA_BUFFER = 0, 1
BUFFER_DATA, BUFFER_OFFSET, BUFFER_SIZE = 0, 1, 2


class _Table:
    """A flatbuffer table at ``pos`` of ``buf``."""

    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vtable = vtable
        self.vtable_size = struct.unpack_from("<H", buf, vtable)[0]

    def _field(self, index: int) -> int | None:
        entry = 4 + 2 * index
        if entry >= self.vtable_size:
            return None
        offset = struct.unpack_from("<H", self.buf, self.vtable + entry)[0]
        return self.pos + offset if offset else None

    def scalar(self, index: int, fmt: str, default=0):
        at = self._field(index)
        return default if at is None else struct.unpack_from(fmt, self.buf, at)[0]

    def _indirect(self, index: int) -> int | None:
        at = self._field(index)
        return None if at is None else at + struct.unpack_from("<I", self.buf, at)[0]

    def string(self, index: int) -> str | None:
        at = self._indirect(index)
        if at is None:
            return None
        length = struct.unpack_from("<I", self.buf, at)[0]
        return self.buf[at + 4:at + 4 + length].decode("utf-8", "replace")

    def bytes_vector(self, index: int) -> bytes:
        at = self._indirect(index)
        if at is None:
            return b""
        length = struct.unpack_from("<I", self.buf, at)[0]
        return self.buf[at + 4:at + 4 + length]

    def tables(self, index: int) -> list["_Table"]:
        at = self._indirect(index)
        if at is None:
            return []
        length = struct.unpack_from("<I", self.buf, at)[0]
        items = []
        for i in range(length):
            element = at + 4 + 4 * i
            items.append(_Table(self.buf, element + struct.unpack_from("<I", self.buf, element)[0]))
        return items


@dataclass(frozen=True)
class TFLiteFile:
    """Facts about a .tflite file that the runtime needs before building an interpreter."""

    metadata: dict[str, bytes]
    custom_ops: tuple[str, ...]

    @property
    def compiled_for_edgetpu(self) -> bool:
        return EDGETPU_CUSTOM_OP in self.custom_ops


def read_tflite(data: bytes, source: str = "model") -> TFLiteFile:
    """Parse ``data``; a truncated or foreign file raises a ModelError that says so."""
    if len(data) < 8 or data[4:8] != IDENTIFIER:
        raise ModelError(f"{source} is not a TFLite model (no 'TFL3' identifier; {len(data)} bytes)",
                         "pass a .tflite written by `edge-yolov9 convert`")
    try:
        model = _Table(data, struct.unpack_from("<I", data, 0)[0])
        buffers = model.tables(MODEL_BUFFERS)
        metadata = {}
        for entry in model.tables(MODEL_METADATA):
            buffer = buffers[entry.scalar(METADATA_BUFFER, "<I")]
            offset = buffer.scalar(BUFFER_OFFSET, "<Q")
            content = (data[offset:offset + buffer.scalar(BUFFER_SIZE, "<Q")] if offset > 1
                       else buffer.bytes_vector(BUFFER_DATA))
            metadata[entry.string(METADATA_NAME) or ""] = bytes(content)
        custom = tuple(code.string(OPCODE_CUSTOM_CODE) for code in model.tables(MODEL_OPERATOR_CODES)
                       if code.string(OPCODE_CUSTOM_CODE))
    except (struct.error, IndexError) as err:
        raise ModelError(f"{source} is truncated or corrupt ({err})",
                         "copy the model again (compare its size and sha256 with the original)") from None
    return TFLiteFile(metadata, custom)
