"""The detector: a converted edge-yolov9 model on the CPU or a Coral Edge TPU.

    detector = Detector("model_int8_edgetpu.tflite", device="usb")
    for det in detector.detect("photo.jpg"):
        print(det.label, det.score, det.box)

The model's metadata (labels, input size and quantization, output layout) comes from the model file
(``edge_yolov9.model_file``: the sidecar ``<model>.json``, else the copy embedded in the .tflite), checked
against the interpreter at load.
Pre-processing is the letterbox used in training and calibration; post-processing is the shared
decoder and NMS, on the raw outputs: the score threshold is applied to the integers,
so only candidate anchors are dequantized.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from .errors import EdgeYoloError, ModelError
from .interpreter import Backend, Device, RuntimeSetupError, find_backend, load_edgetpu_delegate, parse_device
from .decode import level_shapes, split_levels
from .postprocess import PostprocessConfig, postprocess
from .preprocess import ImageInput, letterbox, read_image, to_rgb
from .model_file import ModelInfo, check_model_info, cpu_twin, cpu_twin_path, infer_model_info, metadata_origin, \
    read_model_info
from .sources import Frame, Source, image_frames, iter_frames
from .tflite_file import TFLiteFile, read_tflite
from .types import Box, Detection

logger = logging.getLogger(__name__)


@dataclass
class Timing:
    """Milliseconds of the last ``detect`` call, by stage."""

    preprocess: float = 0.0
    invoke: float = 0.0
    postprocess: float = 0.0


class FrameResult(NamedTuple):
    """One frame of a batch (``Detector.detect_many``): its detections, or the error that kept it unread."""

    frame: Frame
    detections: list[Detection]
    timing: Timing | None = None

    @property
    def error(self) -> EdgeYoloError | None:
        return self.frame.error

    def to_dict(self) -> dict:
        """The JSON record of this frame, as ``edge-yolov9 detect --json`` writes it (one per line)."""
        if self.error is not None:
            return {"source": self.frame.name, "error": self.error.problem, "fix": self.error.fix}
        record: dict = {"source": self.frame.name, "detections": [d.to_dict() for d in self.detections]}
        if self.timing is not None:
            record["timing_ms"] = {stage: round(ms, 2) for stage, ms in vars(self.timing).items()}
        return record


@dataclass
class Detector:
    """A converted model ready to detect. See the module docstring.

    Args:
        model: path of a .tflite written by ``edge-yolov9 convert`` (or compiled from one).
        device: 'auto' (Edge TPU when the model is compiled for it and one is present, else the CPU
            twin), 'cpu', 'usb', 'usb:N', 'pci', 'pci:N'.
        threads: CPU threads of the interpreter (default: all cores).
        labels: class names, for a model without metadata.
        score_threshold, iou_threshold, max_detections, classes: post-processing.
        multi_label: keep a box once for each class above the threshold, not only its best class
            (the COCO-evaluation convention, ``PostprocessConfig.for_evaluation()``).
    """

    model: str | os.PathLike
    device: str = "auto"
    threads: int | None = None
    labels: Sequence[str] | None = None
    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 100
    multi_label: bool = False
    classes: Sequence[int] | None = None
    backend: str | None = None
    info: ModelInfo = field(init=False)
    timing: Timing = field(init=False, default_factory=Timing)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise EdgeYoloError(f"threads={self.threads}: the interpreter needs at least one thread",
                                "pass threads >= 1, or None for all cores")
        requested = parse_device(self.device)
        path, tflite, delegate = self._choose_model_file(Path(self.model), requested)
        self.model_path = path
        self.device_used = "cpu" if delegate is None else str(requested if requested.wants_tpu else Device("tpu"))
        try:
            self._interpreter = self._backend.interpreter(model_path=str(path),
                                                          experimental_delegates=[delegate] if delegate else None,
                                                          num_threads=self.threads or os.cpu_count())
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise ModelError(f"The interpreter cannot load {path}: {err}",
                             "re-convert the model with `edge-yolov9 convert`; if it was compiled for the Edge TPU, "
                             "match libedgetpu to the compiler (see `edge-yolov9 doctor`)") from None
        info = read_model_info(path, tflite)
        if info is None:
            info = infer_model_info(self._interpreter, self.labels)
        else:
            check_model_info(info, self._interpreter, path, metadata_origin(path, tflite))
        self.info = info
        if self.labels is not None and len(self.labels) == len(self.info.labels):
            self.info = replace(self.info, labels=tuple(self.labels))
        unknown = sorted(c for c in self.classes or () if not 0 <= c < len(self.info.labels))
        if unknown:
            raise EdgeYoloError(f"Class ids {unknown} do not exist: {path.name} has {len(self.info.labels)} classes "
                                f"(0..{len(self.info.labels) - 1})", "pass class ids of this model (its labels "
                                "are in `edge-yolov9 doctor --model`)")
        self._bind_tensors()
        self._post = PostprocessConfig(self.score_threshold, self.iou_threshold, self.max_detections, self.multi_label,
                                       classes=tuple(self.classes) if self.classes is not None else None)

    def _choose_model_file(self, path: Path, requested: Device) -> tuple[Path, TFLiteFile, Any]:
        """The file to run and, for an Edge TPU model, its delegate (loaded once, here). An Edge TPU
        model needs a TPU; without one ('auto' or 'cpu') its CPU twin runs."""
        tflite = self._read(path)
        if not tflite.compiled_for_edgetpu and requested.wants_tpu:
            raise ModelError(f"{path} is a CPU model, not compiled for the Edge TPU (device {self.device!r})",
                             "compile it: edge-yolov9 convert --edgetpu ..., or use device='cpu'")
        self._backend: Backend = find_backend(self.backend)
        if not tflite.compiled_for_edgetpu:
            return path, tflite, None
        if requested.wants_tpu:
            return path, tflite, load_edgetpu_delegate(self._backend, requested)
        twin = cpu_twin(path)
        if requested.kind == "auto":
            try:
                return path, tflite, load_edgetpu_delegate(self._backend, Device("tpu"))
            except RuntimeSetupError as err:
                if twin is None:
                    raise
                logger.warning("No usable Edge TPU (%s); running the CPU model %s instead", err.problem, twin)
        if twin is None:
            raise ModelError(f"{path} is compiled for the Edge TPU and cannot run on the CPU",
                             f"use the CPU model it was compiled from (expected "
                             f"{(cpu_twin_path(path) or Path('model.tflite')).name} beside it), or pass device='usb'/'pci'")
        return twin, self._read(twin), None

    @staticmethod
    def _read(path: Path) -> TFLiteFile:
        if not path.is_file():
            raise ModelError(f"Model not found: {path}", "check the path; convert one with `edge-yolov9 convert`")
        return read_tflite(path.read_bytes(), str(path))

    def _bind_tensors(self) -> None:
        """Interpreter tensor indices of the input and of each output, matched by name."""
        [inp] = self._interpreter.get_input_details()
        self._input_index = inp["index"]
        self._input_dtype = np.dtype(inp["dtype"])
        by_name = {d["name"]: d for d in self._interpreter.get_output_details()}
        missing = [o.name for o in self.info.outputs if o.name not in by_name]
        if missing:
            raise ModelError(f"The model's outputs do not match its metadata (missing {missing})",
                             "delete the stale sidecar .json or re-convert the model")
        boxes = [o for o in self.info.outputs if o.kind == "box"]
        classes = [o for o in self.info.outputs if o.kind == "cls"]
        self._box_outputs = [(by_name[o.name]["index"], o.scale, o.zero_point) for o in sorted(boxes, key=lambda o: o.stride)]
        self._cls_outputs = [(by_name[o.name]["index"], o.scale, o.zero_point) for o in sorted(classes, key=lambda o: o.stride)]
        self._strides = tuple(sorted(self.info.strides))
        self._level_shapes = level_shapes(self.info.size, self._strides) if self.info.layout == "frigate" else None

    # ------------------------------------------------------------------ detection

    def _to_input(self, canvas: np.ndarray) -> np.ndarray:
        spec = self.info.input
        if self._input_dtype == np.float32:
            return (canvas.astype(np.float32) * (1 / 255))[None]
        scale, zero = spec.scale, spec.zero_point
        if self._input_dtype == np.int8 and abs(scale * 255 - 1) < 1e-6 and zero == -128:
            return (canvas ^ 0x80).view(np.int8)[None]  # pixel - 128, no arithmetic
        if self._input_dtype == np.uint8 and abs(scale * 255 - 1) < 1e-6 and zero == 0:
            return canvas[None]
        info = np.iinfo(self._input_dtype)
        quantized = np.round(canvas.astype(np.float32) / 255 / scale + zero)
        return np.clip(quantized, info.min, info.max).astype(self._input_dtype)[None]

    def _raw(self, outputs: list[tuple[int, float | None, int | None]]) -> tuple[list[np.ndarray], list | None]:
        """Output maps as the interpreter holds them, and their (scale, zero point) when quantized."""
        levels = [self._interpreter.get_tensor(index)[0] for index, _, _ in outputs]
        quant = [(scale, zero) for _, scale, zero in outputs] if outputs[0][1] is not None else None
        if self._level_shapes is not None:  # frigate layout: one (N, C) tensor, split into per-level views
            levels = split_levels(levels[0], self._level_shapes)
            quant = quant * len(levels) if quant else None
        return levels, quant

    def detect(self, image: ImageInput, *, bgr: bool = False) -> list[Detection]:
        """Detections in ``image`` (a path, PIL image, or (H, W, 3) uint8 array; RGB unless ``bgr``),
        boxes in the image's own pixels, best first."""
        started = time.perf_counter()
        if isinstance(image, (str, os.PathLike)):
            rgb, full_size = read_image(image, self.info.size)
        else:
            rgb, full_size = to_rgb(image, bgr), None
        return self._detect_rgb(rgb, full_size, started)

    def _detect_rgb(self, rgb: np.ndarray, full_size: tuple[int, int] | None, started: float) -> list[Detection]:
        canvas, placement = letterbox(rgb, self.info.size)
        if full_size is not None:
            placement = placement.for_full_size(*full_size)
        self._interpreter.set_tensor(self._input_index, self._to_input(canvas))
        preprocessed = time.perf_counter()
        self._interpreter.invoke()
        invoked = time.perf_counter()
        box_levels, box_quant = self._raw(self._box_outputs)
        cls_levels, cls_quant = self._raw(self._cls_outputs)
        boxes, scores, class_ids = postprocess(box_levels, cls_levels, channels_last=True, config=self._post,
                                               strides=self._strides, box_quant=box_quant, cls_quant=cls_quant)
        boxes = placement.to_image(boxes)
        labels = self.info.labels
        detections = [Detection(Box(*map(float, b)), float(s), int(c), labels[c] if c < len(labels) else str(c))
                      for b, s, c in zip(boxes, scores, class_ids)]
        finished = time.perf_counter()
        self.timing = Timing((preprocessed - started) * 1e3, (invoked - preprocessed) * 1e3, (finished - invoked) * 1e3)
        return detections

    def detect_many(self, source: Source | Iterable[ImageInput], *, bgr: bool = False) -> Iterator[FrameResult]:
        """Detections frame by frame in ``source``: an image file, a folder (recursively), a video file, a
        camera index, or any iterable of images (paths, PIL images, arrays; ``bgr`` as in ``detect``).

        A frame that cannot be read (a corrupt file in a folder, an empty array) yields a FrameResult
        with its ``error`` and the batch goes on; a source that cannot be opened raises a SourceError.
        """
        needed = self.info.size
        frames = (iter_frames(source, needed) if isinstance(source, (str, os.PathLike, int))
                  else image_frames(source, bgr, needed))
        for frame in frames:
            if frame.error is not None:
                yield FrameResult(frame, [])
            else:
                detections = self._detect_rgb(frame.image, frame.full_size, time.perf_counter())
                yield FrameResult(frame, detections, self.timing)
