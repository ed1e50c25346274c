"""The metadata that travels with a converted model, so the runtime needs no extra arguments.

Written as a sidecar ``<model>.json`` beside each .tflite and embedded in the .tflite as model
metadata named ``edge_yolov9`` (same JSON). It describes the input (layout, dtype, quantization,
how pixels become the network input), the output layout and every output tensor (level, stride,
box|cls, shape, quantization), the labels, and where the model came from.
"""

from __future__ import annotations

import json
import os
from importlib import metadata as package_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from edge_yolov9.preprocess import PAD_VALUE

from .tflite_model import TFLiteModel

if TYPE_CHECKING:  # export imports torch; reading and writing metadata must not
    from .export import OutputSpec

METADATA_NAME = "edge_yolov9"
FORMAT = "edge-yolov9-tflite"
VERSION = 1
CONVERTER_PACKAGES = ("edge-yolov9", "torch", "torchao", "litert-torch", "ai-edge-litert", "ai-edge-quantizer")


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """``model_int8.tflite`` -> ``model_int8.json``."""
    return Path(model_path).with_suffix(".json")


def converter_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in CONVERTER_PACKAGES:
        try:
            versions[package] = package_metadata.version(package)
        except package_metadata.PackageNotFoundError:
            versions[package] = None
    return versions


DECODE = {
    "raw": "edge_yolov9.postprocess.postprocess(box_levels, cls_levels, channels_last=True) "
           "on dequantized outputs: (q - zero_point) * scale",
    "frigate": "edge_yolov9.decode.split_levels(rows, level_shapes) of each output (levels in stride order, "
               "each row-major), then edge_yolov9.postprocess.postprocess(box_levels, cls_levels, "
               "channels_last=True) on dequantized outputs: (q - zero_point) * scale",
}


def build_metadata(tflite: TFLiteModel, *, model_name: str, labels: Sequence[str], imgsz: int,
                   strides: Sequence[int], reg_max: int, outputs: Sequence[OutputSpec], variant: str,
                   layout: str = "raw", checkpoint: str | os.PathLike | None = None,
                   checkpoint_sha256: str | None = None, calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Metadata of one converted file; ``outputs`` are the exported outputs in graph order, in ``layout``
    (convert.frigate.LAYOUTS)."""
    [image] = tflite.inputs
    if len(tflite.outputs) != len(outputs):
        raise ValueError(f"{tflite.source} has {len(tflite.outputs)} outputs, expected {len(outputs)}")
    output_entries = []
    for position, (tensor, spec) in enumerate(zip(tflite.outputs, outputs)):
        if tensor.name != spec.name:
            raise ValueError(f"Output {position} of {tflite.source} is {tensor.name!r}, expected {spec.name!r}")
        output_entries.append({"position": position, **tensor.to_dict(), "level": spec.level, "stride": spec.stride,
                               "kind": spec.kind, "layout": "NHWC" if layout == "raw" else "rows"})
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": model_name,
        "variant": variant,
        "labels": list(labels),
        "num_classes": len(labels),
        "input": {**image.to_dict(), "position": 0, "layout": "NHWC", "size": [imgsz, imgsz],
                  # network input = pixel / 255; an integer input holds round(pixel / 255 / scale) + zero_point
                  "pixel_scale": 1 / 255,
                  "letterbox": {"pad_value": PAD_VALUE, "resample": "bilinear", "centered": True}},
        "strides": list(strides),
        "reg_max": reg_max,
        "layout": layout,
        "outputs": output_entries,
        "decode": DECODE[layout],
        "source": {"checkpoint": str(checkpoint) if checkpoint else None, "sha256": checkpoint_sha256},
        "calibration": calibration,
        "converter": converter_versions(),
    }


def attach_metadata(tflite: TFLiteModel, metadata: dict[str, Any]) -> None:
    """Embed the metadata JSON into the model (name ``edge_yolov9``)."""
    tflite.set_metadata(METADATA_NAME, json.dumps(metadata, sort_keys=True).encode())


def embedded_metadata(tflite: TFLiteModel) -> dict[str, Any] | None:
    data = tflite.metadata(METADATA_NAME)
    return json.loads(data) if data else None


def read_sidecar(model_path: str | os.PathLike) -> dict[str, Any] | None:
    path = sidecar_path(model_path)
    return json.loads(path.read_text()) if path.is_file() else None


def write_sidecar(model_path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    path = sidecar_path(model_path)
    path.write_text(json.dumps(metadata, indent=2) + "\n")
    return path


def metadata_for_compiled(source: dict[str, Any], compiled: TFLiteModel) -> dict[str, Any]:
    """The metadata of an edgetpu_compiler output: the source model's, with the compiled file's I/O
    tensor indices (the compiler renumbers tensors; names and order are kept)."""
    result = json.loads(json.dumps(source))
    [image] = compiled.inputs
    result["input"].update(image.to_dict())
    if len(compiled.outputs) != len(result["outputs"]):
        raise ValueError(f"{compiled.source} has {len(compiled.outputs)} outputs, expected {len(result['outputs'])}")
    for entry, tensor in zip(result["outputs"], compiled.outputs):
        entry.update(tensor.to_dict())
    result["variant"] = "edgetpu"
    return result
