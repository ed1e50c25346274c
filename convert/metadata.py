"""The converter's side of the model file contract (``edge_yolov9.model_file``): the metadata of a
converted :class:`TFLiteModel`, embedded in it and written beside it."""

from __future__ import annotations

import json
import os
from importlib import metadata as package_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from edge_yolov9.model_file import METADATA_NAME, build_metadata as model_file_metadata, encode_metadata, \
    for_compiled, write_sidecar

from .frigate import padding_classes
from .tflite_model import TFLiteModel

if TYPE_CHECKING:  # export imports torch; reading and writing metadata must not
    from .export import OutputSpec

CONVERTER_PACKAGES = ("edge-yolov9", "torch", "torchao", "litert-torch", "ai-edge-litert", "ai-edge-quantizer")


def converter_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in CONVERTER_PACKAGES:
        try:
            versions[package] = package_metadata.version(package)
        except package_metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def build_metadata(tflite: TFLiteModel, *, model_name: str, labels: Sequence[str], imgsz: int,
                   strides: Sequence[int], reg_max: int, outputs: Sequence[OutputSpec], variant: str,
                   layout: str = "raw", checkpoint: str | os.PathLike | None = None,
                   checkpoint_sha256: str | None = None, weights_license: dict[str, str] | None = None,
                   calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Metadata of one converted file; ``outputs`` are the exported outputs in graph order, in ``layout``."""
    [image] = tflite.inputs
    try:
        return model_file_metadata(
            input_tensor=image.to_dict(), output_tensors=[t.to_dict() for t in tflite.outputs], outputs=outputs,
            model_name=model_name, labels=labels, imgsz=imgsz, strides=strides, reg_max=reg_max, variant=variant,
            layout=layout, padding_classes=padding_classes(len(labels)) if layout == "frigate" else 0,
            source={"checkpoint": str(checkpoint) if checkpoint else None, "sha256": checkpoint_sha256,
                    "weights_license": weights_license},
            calibration=calibration, converter=converter_versions())
    except ValueError as err:
        raise ValueError(f"{tflite.source}: {err}") from None


def attach_metadata(tflite: TFLiteModel, metadata: dict[str, Any]) -> None:
    """Embed the metadata JSON into the model (name ``edge_yolov9``)."""
    tflite.set_metadata(METADATA_NAME, encode_metadata(metadata))


def save_with_metadata(tflite: TFLiteModel, path: Path, metadata: dict[str, Any]) -> Path:
    """Write ``tflite`` to ``path`` with ``metadata`` embedded and in the sidecar beside it."""
    attach_metadata(tflite, metadata)
    tflite.save(path)
    write_sidecar(path, metadata)
    return path


def embedded_metadata(tflite: TFLiteModel) -> dict[str, Any] | None:
    data = tflite.metadata(METADATA_NAME)
    return json.loads(data) if data else None


def metadata_for_compiled(source: dict[str, Any], compiled: TFLiteModel) -> dict[str, Any]:
    """The metadata of an edgetpu_compiler output (see ``edge_yolov9.model_file.for_compiled``)."""
    [image] = compiled.inputs
    try:
        return for_compiled(source, image.to_dict(), [t.to_dict() for t in compiled.outputs])
    except ValueError as err:
        raise ValueError(f"{compiled.source}: {err}") from None
