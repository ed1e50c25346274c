"""The converted model's file, one contract owned by the runtime: what ``edge-yolov9 convert`` writes
beside and inside a .tflite, and what the runtime, ``doctor``, the daemon and the Frigate layout read.

The metadata (format ``edge-yolov9-tflite``, a version) is a JSON object, written as a sidecar
``<model>.json`` beside each .tflite and embedded in the .tflite as model metadata named ``edge_yolov9``.
It describes the input (layout, dtype, quantization, how pixels become the network input), the output
layout and every output tensor (level, stride, box|cls, shape, quantization), the labels, and where
the model came from. A class tensor may hold ``padding_classes`` more channels than there are labels
(the frigate layout's classes that never score, after the labels): no label names them, and the
postprocessing never selects their logits, which sit at the floor of the int8 range. A reader meets
only metadata this module built, checked against the interpreter that loaded the model.
``edgetpu_compiler`` names its output ``<stem>_edgetpu.tflite``; the CPU model
beside it is the compiled model's CPU twin.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from .errors import ModelError
from .preprocess import PAD_VALUE
from .tflite_file import TFLiteFile

METADATA_NAME = "edge_yolov9"
FORMAT = "edge-yolov9-tflite"
VERSION = 1
EDGETPU_SUFFIX = "_edgetpu"
STRIDES = (8, 16, 32)  # of the pyramid levels every GELAN head has, finest first
LAYOUTS = ("raw", "frigate")  # per-level NHWC head maps, or Frigate's (1, N, C) rows of all levels
DECODE = {
    "raw": "edge_yolov9.postprocess.postprocess(box_levels, cls_levels, channels_last=True) "
           "on dequantized outputs: (q - zero_point) * scale",
    "frigate": "edge_yolov9.decode.split_levels(rows, level_shapes) of each output (levels in stride order, "
               "each row-major), then edge_yolov9.postprocess.postprocess(box_levels, cls_levels, "
               "channels_last=True) on dequantized outputs: (q - zero_point) * scale",
}


class InputSize(NamedTuple):
    """The network input as every array shape has it, (height, width); written as screens are named,
    WIDTHxHEIGHT ("384x224" for a 16:9 camera); read also as one number for a square."""

    height: int
    width: int

    @classmethod
    def of(cls, value: Any) -> "InputSize":
        """From an int (a square), an (height, width) pair, or text: "320" or "WIDTHxHEIGHT"."""
        if isinstance(value, str):
            width, _, height = value.strip().lower().partition("x")
            try:
                return cls(int(height or width), int(width))
            except ValueError:
                raise ValueError(f"{value!r} is not an input size: write 320, or WIDTHxHEIGHT such as 384x224") \
                    from None
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value, value)
        if isinstance(value, (tuple, list)) and len(value) == 2 and all(
                isinstance(side, int) and not isinstance(side, bool) for side in value):
            return cls(*value)
        raise ValueError(f"{value!r} is not an input size: an int, or a (height, width) pair")

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """``model_int8.tflite`` -> ``model_int8.json``."""
    return Path(model_path).with_suffix(".json")


def edgetpu_path(model_path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Where edgetpu_compiler writes the compilation of ``model_path``: ``<stem>_edgetpu.tflite``."""
    model_path = Path(model_path)
    return Path(out_dir or model_path.parent) / f"{model_path.stem}{EDGETPU_SUFFIX}{model_path.suffix}"


def cpu_twin_path(path: Path) -> Path | None:
    """Where the CPU model an Edge TPU model was compiled from lies by convention:
    ``model_edgetpu.tflite`` -> ``model.tflite``; None for a name without the suffix."""
    if path.stem.endswith(EDGETPU_SUFFIX):
        return path.with_name(path.stem[: -len(EDGETPU_SUFFIX)] + path.suffix)
    return None


def cpu_twin(path: Path) -> Path | None:
    """The CPU twin of ``path`` (see :func:`cpu_twin_path`) when it exists."""
    twin = cpu_twin_path(path)
    return twin if twin is not None and twin.is_file() else None


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor as the metadata describes it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    scale: float | None = None
    zero_point: int | None = None
    kind: str = ""      # outputs: "box" or "cls"
    stride: int = 0


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to know about a model."""

    labels: tuple[str, ...]
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    variant: str = "cpu"
    layout: str = "raw"  # "raw": a (1, H, W, C) map per level; "frigate": (1, N, C) rows of all levels
    level_strides: tuple[int, ...] = ()  # the frigate layout's levels (a raw output has its own stride)
    padding_classes: int = 0  # class channels after the labels' that never score (see the module docstring)

    @property
    def size(self) -> tuple[int, int]:
        return self.input.shape[1], self.input.shape[2]

    @property
    def strides(self) -> tuple[int, ...]:
        return self.level_strides or tuple(o.stride for o in self.outputs if o.kind == "box")

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> "ModelInfo":
        def spec(entry: dict[str, Any]) -> TensorSpec:
            return TensorSpec(entry["name"], entry["dtype"], tuple(entry["shape"]), entry.get("scale"),
                              entry.get("zero_point"), entry.get("kind", ""), entry.get("stride", 0))

        if meta.get("format") != FORMAT:
            raise ModelError(f"This is not edge-yolov9 model metadata (format {meta.get('format')!r}, expected "
                             f"{FORMAT!r})", "re-convert the model with `edge-yolov9 convert`")
        version = meta.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ModelError(f"Model metadata has no valid version ({version!r})",
                             "re-convert the model with `edge-yolov9 convert`")
        if version > VERSION:
            raise ModelError(f"The model metadata is version {version}, written by a newer edge-yolov9 (this one "
                             f"reads version {VERSION})", "upgrade edge-yolov9 here: pip install -U edge-yolov9")
        try:
            layout = meta.get("layout", "raw")
            labels = meta["labels"]
            if not (isinstance(labels, list) and labels and all(isinstance(name, str) and name for name in labels)):
                raise ValueError(f"'labels' must be a list of names, got {labels!r:.80}")
            if layout not in LAYOUTS:
                raise ValueError(f"unknown layout {layout!r}")
            padding = meta.get("padding_classes", 0)
            if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
                raise ValueError(f"'padding_classes' must be a count of classes, got {padding!r:.80}")
            return cls(tuple(labels), spec(meta["input"]), tuple(spec(o) for o in meta["outputs"]),
                       meta.get("variant", "cpu"), layout,
                       tuple(int(s) for s in meta["strides"]) if layout == "frigate" else (), padding)
        except KeyError as err:
            raise ModelError(f"Model metadata is incomplete (missing {err})",
                             "re-convert the model with `edge-yolov9 convert`") from None
        except (TypeError, ValueError, AttributeError) as err:
            raise ModelError(f"Model metadata is malformed ({err})",
                             "re-convert the model with `edge-yolov9 convert`") from None


def metadata_origin(path: Path, tflite: TFLiteFile) -> Path | str | None:
    """Where the model's metadata comes from: its sidecar json, else the copy embedded in the model."""
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        return sidecar
    return "the metadata embedded in the model" if METADATA_NAME in tflite.metadata else None


def read_model_info(path: Path, tflite: TFLiteFile) -> ModelInfo | None:
    """Metadata from the sidecar json, else the copy embedded in the model; None when neither exists."""
    origin = metadata_origin(path, tflite)
    if origin is None:
        return None
    try:
        text = origin.read_text(encoding="utf-8") if isinstance(origin, Path) else tflite.metadata[METADATA_NAME]
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"{origin} is not valid JSON ({err})", _stale_fix(path, origin)) from None
    if not isinstance(meta, dict):
        raise ModelError(f"{origin} is not model metadata (a JSON object)", _stale_fix(path, origin))
    try:
        return ModelInfo.from_metadata(meta)
    except ModelError as err:
        raise ModelError(f"{origin}: {err.problem}", _stale_fix(path, origin)) from None


def _stale_fix(path: Path, origin: Path | str) -> str:
    if isinstance(origin, Path):
        return (f"{origin.name} does not belong to {path.name} (a copy from another conversion?): copy the .json "
                f"written with this model beside it, or delete {origin.name} to use the metadata embedded in the "
                "model")
    return "re-convert the model with `edge-yolov9 convert`"


def check_model_info(info: ModelInfo, interpreter: Any, path: Path, origin: Path | str) -> None:
    """Refuse metadata that does not describe the model the interpreter loaded (a .tflite copied over
    without its .json, an edited file): every tensor, label count and stride it claims is compared."""
    problems: list[str] = []

    def compare(what: str, claimed: TensorSpec, actual: dict) -> None:
        shape = tuple(int(v) for v in actual["shape"])
        dtype = np.dtype(actual["dtype"]).name
        scale, zero = actual["quantization"]
        if claimed.shape != shape:
            problems.append(f"{what} shape {list(claimed.shape)} in the metadata, {list(shape)} in the model")
        if claimed.dtype != dtype:
            problems.append(f"{what} type {claimed.dtype} in the metadata, {dtype} in the model")
        elif dtype != "float32" and (claimed.scale is None or claimed.zero_point != zero
                                     or abs(claimed.scale - scale) > 1e-6 * max(abs(scale), 1e-12)):
            problems.append(f"{what} quantization {claimed.scale}/{claimed.zero_point} in the metadata, "
                            f"{scale:g}/{zero} in the model")

    inputs = interpreter.get_input_details()
    if len(inputs) != 1:
        problems.append(f"the model has {len(inputs)} inputs, not one image")
    else:
        compare("input", info.input, inputs[0])
    by_name = {d["name"]: d for d in interpreter.get_output_details()}
    if len(by_name) != len(info.outputs):
        problems.append(f"{len(info.outputs)} outputs in the metadata, {len(by_name)} in the model")
    for output in info.outputs:
        if output.name not in by_name:
            problems.append(f"output {output.name!r} of the metadata is not in the model")
        else:
            compare(f"output {output.name!r}", output, by_name[output.name])
    if not problems:
        problems += _layout_problems(info)
    if problems:
        raise ModelError(f"The metadata in {origin} does not match the model {path}: " + "; ".join(problems[:4]),
                         _stale_fix(path, origin))


def _layout_problems(info: ModelInfo) -> list[str]:
    """What the metadata's outputs, strides and labels contradict of one another (shapes already match the model)."""
    boxes = [o for o in info.outputs if o.kind == "box"]
    classes = [o for o in info.outputs if o.kind == "cls"]
    if not boxes or len(boxes) != len(classes) or len(boxes) + len(classes) != len(info.outputs) or (
            info.layout == "raw" and sorted(o.stride for o in boxes) != sorted(o.stride for o in classes)):
        return ["the outputs are not pairs of 'box' and 'cls' tensors, one of each per stride"]
    if len(info.input.shape) != 4 or info.input.shape[3] != 3:
        return [f"input shape {list(info.input.shape)} is not (1, H, W, 3)"]
    height, width = info.size
    channels = len(info.labels) + info.padding_classes
    padded = f" + {info.padding_classes} padding" if info.padding_classes else ""
    problems = [f"output {o.name!r} has {o.shape[-1]} channels, not the {len(info.labels)} labels{padded}"
                for o in classes if o.shape[-1] != channels]
    strides = info.strides
    if any(not isinstance(s, int) or s <= 0 or height % s or width % s for s in strides):
        return problems + [f"strides {list(strides)} do not divide the input size {height}x{width}"]
    if info.layout == "frigate":
        anchors = sum((height // s) * (width // s) for s in strides)
        problems += [f"output {o.name!r} has {o.shape[1]} rows, the strides {list(strides)} make {anchors}"
                     for o in info.outputs if len(o.shape) != 3 or o.shape[1] != anchors]
    else:
        problems += [f"output {o.name!r} is {o.shape[1]}x{o.shape[2]}, stride {o.stride} makes "
                     f"{height // o.stride}x{width // o.stride}"
                     for o in info.outputs if len(o.shape) != 4 or o.shape[1:3] != (height // o.stride, width // o.stride)]
    return problems


def infer_model_info(interpreter: Any, labels: Sequence[str] | None) -> ModelInfo:
    """Model info from the interpreter's tensors, for models without metadata: box outputs are
    those with 64 channels (4 sides x 16 bins), strides follow from the spatial sizes."""
    [inp] = interpreter.get_input_details()
    size = int(inp["shape"][1])

    def spec(d: dict, kind: str = "", stride: int = 0) -> TensorSpec:
        scale, zero = d["quantization"]
        quantized = np.dtype(d["dtype"]) != np.float32
        return TensorSpec(d["name"], np.dtype(d["dtype"]).name, tuple(int(v) for v in d["shape"]),
                          float(scale) if quantized else None, int(zero) if quantized else None, kind, stride)

    outputs = []
    for d in interpreter.get_output_details():
        if len(d["shape"]) != 4:
            raise ModelError(f"Output {d['name']} has shape {list(d['shape'])}, not a raw NHWC head map",
                             "use a model converted by `edge-yolov9 convert`")
        kind = "box" if d["shape"][3] == 64 else "cls"
        outputs.append(spec(d, kind, size // int(d["shape"][1])))
    outputs.sort(key=lambda o: (o.stride, o.kind))
    num_classes = next(o.shape[3] for o in outputs if o.kind == "cls")
    names = tuple(labels) if labels else tuple(f"class{i}" for i in range(num_classes))
    if len(names) != num_classes:
        raise ModelError(f"{len(names)} labels given for a model with {num_classes} classes", "pass matching labels")
    return ModelInfo(names, spec(inp), tuple(outputs))


# What the license of weights made elsewhere means for whoever redistributes a model made from them: the
# commands that write such a model (import, train, convert) print it, and the metadata keeps the license
# (source.weights_license, from the checkpoint's meta).
WEIGHTS_NOTICES = {
    "AGPL-3.0": "a model made from them is a work based on AGPL-3.0 weights: distributing it, or serving it to "
                "users over a network, requires offering it under the AGPL-3.0",
    "GPL-3.0": "a model made from them is a work based on GPL-3.0 weights: distributing it requires offering it "
               "under the GPL-3.0",
    "MIT": "a model made from them may be distributed under any terms that keep the MIT copyright notice",
}


def weights_notice(weights_license: Mapping[str, Any]) -> str:
    """One line: where the weights came from, their license and what it means for redistribution."""
    license_id = weights_license["license"]
    meaning = WEIGHTS_NOTICES.get(license_id, "check its terms before distributing a model made from them")
    return (f"weights from {weights_license['source_file']} ({weights_license['source_format']}) are licensed "
            f"{license_id}: {meaning}")


def build_metadata(*, input_tensor: Mapping[str, Any], output_tensors: Sequence[Mapping[str, Any]],
                   outputs: Sequence[Any], model_name: str, labels: Sequence[str], imgsz: int | tuple[int, int],
                   strides: Sequence[int], reg_max: int, variant: str, layout: str = "raw", padding_classes: int = 0,
                   source: Mapping[str, Any] | None = None, calibration: Mapping[str, Any] | None = None,
                   converter: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The metadata of one converted file. ``input_tensor`` and ``output_tensors`` describe the file's
    tensors (index, name, dtype, shape, scale, zero_point) in graph order; ``outputs`` are the exported
    outputs (name, level, stride, kind) in the same order, in ``layout``; each class output has
    ``padding_classes`` channels after the labels' (see the module docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if len(output_tensors) != len(outputs):
        raise ValueError(f"the model has {len(output_tensors)} outputs, expected {len(outputs)}")
    entries = []
    for position, (tensor, spec) in enumerate(zip(output_tensors, outputs)):
        if tensor["name"] != spec.name:
            raise ValueError(f"output {position} is {tensor['name']!r}, expected {spec.name!r}")
        entries.append({"position": position, **tensor, "level": spec.level, "stride": spec.stride,
                        "kind": spec.kind, "layout": "NHWC" if layout == "raw" else "rows"})
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": model_name,
        "variant": variant,
        "labels": list(labels),
        "num_classes": len(labels),
        "padding_classes": padding_classes,
        "input": {**input_tensor, "position": 0, "layout": "NHWC", "size": list(InputSize.of(imgsz)),
                  # network input = pixel / 255; an integer input holds round(pixel / 255 / scale) + zero_point
                  "pixel_scale": 1 / 255,
                  "letterbox": {"pad_value": PAD_VALUE, "resample": "bilinear", "centered": True}},
        "strides": list(strides),
        "reg_max": reg_max,
        "layout": layout,
        "outputs": entries,
        "decode": DECODE[layout],
        "source": dict(source or {}),
        "calibration": dict(calibration) if calibration is not None else None,
        "converter": dict(converter or {}),
    }


def for_compiled(metadata: Mapping[str, Any], input_tensor: Mapping[str, Any],
                 output_tensors: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The metadata of an edgetpu_compiler output: the source model's, with the compiled file's I/O
    tensors (the compiler renumbers tensors; names and order are kept)."""
    result = json.loads(json.dumps(metadata))
    result["input"].update(input_tensor)
    if len(output_tensors) != len(result["outputs"]):
        raise ValueError(f"the compiled model has {len(output_tensors)} outputs, expected {len(result['outputs'])}")
    for entry, tensor in zip(result["outputs"], output_tensors):
        entry.update(tensor)
    result["variant"] = "edgetpu"
    return result


def encode_metadata(metadata: Mapping[str, Any]) -> bytes:
    """The bytes embedded in the .tflite."""
    return json.dumps(metadata, sort_keys=True).encode()


def write_sidecar(model_path: str | os.PathLike, metadata: Mapping[str, Any]) -> Path:
    path = sidecar_path(model_path)
    path.write_text(json.dumps(metadata, indent=2) + "\n")
    return path


def read_sidecar(model_path: str | os.PathLike) -> dict[str, Any] | None:
    path = sidecar_path(model_path)
    return json.loads(path.read_text()) if path.is_file() else None
