"""Frigate's Edge TPU ``yolo-generic`` contract: which models fit it, its label file, its config.

Frigate's ``edgetpu`` detector with ``model_type: yolo-generic`` reads two rank-3 outputs: box bins
(1, N, 64) (sides l, t, r, b x 16 DFL bins) and class logits (1, N, NC), N the anchors of strides
8, 16 and 32, each level row-major, finest first. It tells them apart by the last dimension alone
(64: boxes, > 1: classes), so a 1-class or 64-class model gets a padding class that never scores
(see :func:`padding_classes`). It feeds an int8 input ``pixel xor 128``, which is our fixed input
quantization. This module holds no torch: the checks run before any conversion work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from edge_yolov9.errors import ModelError
from edge_yolov9.model_file import STRIDES, InputSize, edgetpu_path

LABELMAP = "labelmap.txt"
EDGETPU_MODEL = edgetpu_path("model_int8.tflite").name
BOX_CHANNELS = 64
MIN_VERSION = "0.17"  # the first Frigate release whose edgetpu detector decodes yolo-generic
MIN_SCORE_DEFAULT = 0.5  # Frigate's own objects.filters.<label>.min_score when the config sets none
PADDING_LABEL = "__padding__"  # labelmap.txt's name of the class added by padding_classes


def padding_classes(num_classes: int) -> int:
    """How many never-scoring classes the frigate layout appends to the class tensor: Frigate takes the
    tensor whose last dimension is 64 for the box bins and needs the class tensor's to be > 1, so a
    1-class model gets a second class and a 64-class model a 65th; other models none."""
    return 1 if num_classes in (1, BOX_CHANNELS) else 0


def check_compatible(labels: Sequence[str], reg_max: int, strides: Sequence[int]) -> None:
    """Raise, naming every reason, if Frigate could not read a model with these labels and head."""
    problems = []
    if 4 * reg_max != BOX_CHANNELS:
        problems.append(f"its boxes have {4 * reg_max} bins (reg_max {reg_max}): Frigate reads 4 sides x 16")
    if tuple(strides) != STRIDES:
        problems.append(f"its strides are {tuple(strides)}: Frigate builds anchors for {STRIDES}")
    broken = [label for label in labels if "\n" in label or "\r" in label]
    if broken:
        problems.append(f"labels {broken!r} hold line breaks, which {LABELMAP} cannot")
    if problems:
        raise ModelError("The frigate layout cannot hold this model: " + "; ".join(problems),
                         "convert with --layout raw (the edge-yolov9 runtime reads any head)")


def write_labelmap(path: Path, labels: Sequence[str]) -> Path:
    """Frigate's label file: ``<class id> <label>`` per line, then the padding classes (PADDING_LABEL), so
    every row of the class tensor has a name. Frigate also reads bare labels (index = line number), but
    takes the indexed form whenever the first line starts with a number, so a bare label such as
    '3 wheeler' first would be misread; the indexed form is never ambiguous."""
    names = [*labels, *[PADDING_LABEL] * padding_classes(len(labels))]
    path.write_text("".join(f"{index} {label}\n" for index, label in enumerate(names)))
    return path


def instructions(out_dir: Path, imgsz: int | tuple[int, int], compiled: bool, labels: Sequence[str],
                 folder: str = "/config/model_cache") -> str:
    """How to use a converted model in Frigate: the ``detectors``/``model`` part of its config, and
    ``objects: track:`` with the model's labels: Frigate tracks only ``person`` unless told otherwise, and
    drops every other label (the compile step comes first when the Edge TPU model was not written)."""
    compile_step = [] if compiled else [
        "# Frigate's edgetpu detector runs the compiled model; compile it first (x86-64 Linux):",
        f"#   edge-yolov9 edgetpu {out_dir / 'model_int8.tflite'} --compile"]
    return "\n".join([
        *compile_step,
        f"# Frigate {MIN_VERSION} or newer: copy {out_dir / EDGETPU_MODEL} and {out_dir / LABELMAP} into {folder}/",
        "detectors:",
        "  coral:",
        "    type: edgetpu",
        "    device: usb",
        "model:",
        f"  path: {folder}/{EDGETPU_MODEL}",
        f"  labelmap_path: {folder}/{LABELMAP}",
        "  model_type: yolo-generic",
        f"  width: {InputSize.of(imgsz).width}",
        f"  height: {InputSize.of(imgsz).height}",
        "  input_tensor: nhwc",
        "  input_pixel_format: rgb",
        "  input_dtype: int",
        "# Frigate keeps only the labels listed here (default: person). Its min_score defaults to "
        f"{MIN_SCORE_DEFAULT}:",
        "# set objects.filters.<label>.min_score (and threshold) for lower-scoring models.",
        "objects:",
        "  track:",
        *(f"    - {label}" for label in labels),
    ])
