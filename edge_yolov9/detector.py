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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from .errors import EdgeYoloError, ModelError
from .edgetpu_probe import usable_edgetpu
from .interpreter import Backend, Device, RuntimeSetupError, find_backend, load_edgetpu_delegate, parse_device
from .decode import level_shapes, split_levels
from .model_file import ModelInfo, TensorSpec, check_model_info, cpu_twin, cpu_twin_path, infer_model_info, \
    metadata_origin, read_model_info
from .postprocess import PostprocessConfig, Quantization, postprocess
from .preprocess import ImageInput, Letterbox, letterbox, read_image, to_rgb
from .sources import Frame, Source, image_frames, iter_frames
from .tflite_file import TFLiteFile, read_tflite
from .types import Box, Detection

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    """Milliseconds of one detection, by stage."""

    preprocess: float = 0.0
    invoke: float = 0.0
    postprocess: float = 0.0


class Prepared(NamedTuple):
    """An image made ready for the interpreter: the input tensor (1, H, W, 3) in the model's input type,
    and where the image lies on it (boxes map back to the image's pixels through ``placement``)."""

    tensor: np.ndarray
    placement: Letterbox


class RawOutputs(NamedTuple):
    """The head's outputs of one image as the interpreter holds them: per-level box bins and class logits
    (H, W, C), with their (scale, zero point) when quantized."""

    box_levels: list[np.ndarray]
    cls_levels: list[np.ndarray]
    box_quant: list[Quantization] | None
    cls_quant: list[Quantization] | None


def prepare(image: np.ndarray, spec: TensorSpec, full_size: tuple[int, int] | None = None) -> Prepared:
    """Letterbox an RGB image onto the model input ``spec`` describes and put it in the input's type.
    Pure: the daemon prepares frames in its own process and sends the detector's process only the tensor.
    ``full_size``: the (width, height) boxes map to when ``image`` is a reduced decode (``read_image``)."""
    canvas, placement = letterbox(image, (spec.shape[1], spec.shape[2]))
    if full_size is not None:
        placement = placement.for_full_size(*full_size)
    return Prepared(input_tensor(canvas, spec), placement)


def input_tensor(canvas: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """A letterboxed (H, W, 3) uint8 canvas as the model's (1, H, W, 3) input (network input = pixel / 255)."""
    dtype = np.dtype(spec.dtype)
    if dtype == np.float32:
        return (canvas.astype(np.float32) * (1 / 255))[None]
    scale, zero = spec.scale, spec.zero_point
    if dtype == np.int8 and abs(scale * 255 - 1) < 1e-6 and zero == -128:
        return (canvas ^ 0x80).view(np.int8)[None]  # pixel - 128, no arithmetic
    if dtype == np.uint8 and abs(scale * 255 - 1) < 1e-6 and zero == 0:
        return canvas[None]
    info = np.iinfo(dtype)
    quantized = np.round(canvas.astype(np.float32) / 255 / scale + zero)
    return np.clip(quantized, info.min, info.max).astype(dtype)[None]


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


class Detector:
    """A converted model ready to detect, in three steps that :meth:`detect` composes: :meth:`prepare`
    (image -> input tensor and placement), :meth:`run` (tensor -> raw outputs), :meth:`decode` (raw outputs
    -> detections in the image's pixels). See the module docstring.

    Args:
        model: path of a .tflite written by ``edge-yolov9 convert`` (or compiled from one).
        device: 'auto' (Edge TPU when the model is compiled for it and one is present, else the CPU
            twin), 'cpu', 'usb', 'usb:N', 'pci', 'pci:N'.
        threads: CPU threads of the interpreter (default: all cores).
        labels: class names, for a model without metadata.
        config: the post-processing (thresholds, classes); or give its fields as keywords:
            ``score_threshold``, ``iou_threshold``, ``max_detections``, ``multi_label`` (a box once for each
            class above the threshold, the COCO-evaluation convention) and ``classes`` (ids to keep).
        backend: the interpreter package to use (default: on the CPU ai-edge-litert, else tflite-runtime; on
            the Edge TPU the one that pairs with libedgetpu, see ``edge_yolov9.edgetpu_probe``).
        edgetpu_library: the libedgetpu to load (default: ``$EDGE_YOLOV9_LIBEDGETPU``, else the system's).
            It is probed in a child process first: a library that crashes raises a RuntimeSetupError
            (with 'auto': the CPU twin runs, and ``fallback_reason`` says why).
    """

    def __init__(self, model: str | os.PathLike, device: str = "auto", threads: int | None = None,
                 labels: Sequence[str] | None = None, *, config: PostprocessConfig | None = None,
                 backend: str | None = None, edgetpu_library: str | os.PathLike | None = None,
                 **postprocess_options: Any):
        if config is not None and postprocess_options:
            raise TypeError(f"pass either config or its fields, not both ({', '.join(postprocess_options)})")
        if threads is not None and threads < 1:
            raise EdgeYoloError(f"threads={threads}: the interpreter needs at least one thread",
                                "pass threads >= 1, or None for all cores")
        self.config = config if config is not None else PostprocessConfig(**postprocess_options)
        self.model, self.device, self.threads, self.labels, self.backend = model, device, threads, labels, backend
        self.edgetpu_library = edgetpu_library
        self.fallback_reason: str | None = None  # why 'auto' runs the CPU twin of an Edge TPU model
        requested = parse_device(device)
        path, tflite, delegate = self._choose_model_file(Path(model), requested)
        self.model_path = path
        self.device_used = "cpu" if delegate is None else str(requested if requested.wants_tpu else Device("tpu"))
        try:
            self._interpreter = self._backend.interpreter(model_path=str(path),
                                                          experimental_delegates=[delegate] if delegate else None,
                                                          num_threads=threads or os.cpu_count())
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise ModelError(f"The interpreter ({self._backend.name} {self._backend.version}) cannot load {path}: {err}",
                             "re-convert the model with `edge-yolov9 convert`; if it was compiled for the Edge TPU, "
                             "match libedgetpu to the compiler (see `edge-yolov9 doctor`)") from None
        info = read_model_info(path, tflite)
        if info is None:
            info = infer_model_info(self._interpreter, labels)
        else:
            check_model_info(info, self._interpreter, path, metadata_origin(path, tflite))
        if labels is not None and len(labels) == len(info.labels):
            info = replace(info, labels=tuple(labels))
        self.info: ModelInfo = info
        unknown = sorted(c for c in self.config.classes or () if c >= len(info.labels))
        if unknown:
            raise EdgeYoloError(f"Class ids {unknown} do not exist: {path.name} has {len(info.labels)} classes "
                                f"(0..{len(info.labels) - 1})", "pass class ids of this model (its labels "
                                "are in `edge-yolov9 doctor --model`)")
        self._bind_tensors()
        # The class channels a model has beyond its labels (the frigate layout's padding) are never decoded.
        self._decoding = self.config if not info.padding_classes or self.config.classes is not None else \
            replace(self.config, classes=tuple(range(len(info.labels))))

    def _choose_model_file(self, path: Path, requested: Device) -> tuple[Path, TFLiteFile, Any]:
        """The file to run and, for an Edge TPU model, its delegate (loaded once, here, after a child
        process saw the library and interpreter run the model: ``edgetpu_probe``). An Edge TPU model needs
        a TPU; without one ('auto' or 'cpu') its CPU twin runs."""
        tflite = self._read(path)
        if not tflite.compiled_for_edgetpu and requested.wants_tpu:
            raise ModelError(f"{path} is a CPU model, not compiled for the Edge TPU (device {self.device!r})",
                             "compile it: edge-yolov9 convert --edgetpu ..., or use device='cpu'")
        if not tflite.compiled_for_edgetpu:
            self._backend: Backend = find_backend(self.backend)
            return path, tflite, None
        twin = cpu_twin(path)
        if requested.kind != "cpu":
            device = requested if requested.wants_tpu else Device("tpu")
            try:
                library, name = usable_edgetpu(path, device, self.edgetpu_library, self.backend)
                self._backend = find_backend(name)
                return path, tflite, load_edgetpu_delegate(self._backend, device, library)
            except RuntimeSetupError as err:
                if requested.kind != "auto" or twin is None:
                    raise
                self.fallback_reason = err.problem
                logger.warning("No usable Edge TPU (%s); running the CPU model %s instead", err.problem, twin)
        if twin is None:
            raise ModelError(f"{path} is compiled for the Edge TPU and cannot run on the CPU",
                             f"use the CPU model it was compiled from (expected "
                             f"{(cpu_twin_path(path) or Path('model.tflite')).name} beside it), or pass device='usb'/'pci'")
        self._backend = find_backend(self.backend)
        return twin, self._read(twin), None

    @staticmethod
    def _read(path: Path) -> TFLiteFile:
        if not path.is_file():
            raise ModelError(f"Model not found: {path}", "check the path; convert one with `edge-yolov9 convert`")
        return read_tflite(path.read_bytes(), str(path))

    def _bind_tensors(self) -> None:
        """Interpreter tensor indices of the input and of each output, matched by name (check_model_info has
        made sure every output the metadata names is there)."""
        [inp] = self._interpreter.get_input_details()
        self._input_index = inp["index"]
        by_name = {d["name"]: d for d in self._interpreter.get_output_details()}
        boxes = [o for o in self.info.outputs if o.kind == "box"]
        classes = [o for o in self.info.outputs if o.kind == "cls"]
        self._box_outputs = [(by_name[o.name]["index"], o.scale, o.zero_point) for o in sorted(boxes, key=lambda o: o.stride)]
        self._cls_outputs = [(by_name[o.name]["index"], o.scale, o.zero_point) for o in sorted(classes, key=lambda o: o.stride)]
        self._strides = tuple(sorted(self.info.strides))
        self._level_shapes = level_shapes(self.info.size, self._strides) if self.info.layout == "frigate" else None

    def _raw(self, outputs: list[tuple[int, float | None, int | None]]) -> tuple[list[np.ndarray], list | None]:
        """Output maps as the interpreter holds them, and their (scale, zero point) when quantized."""
        levels = [self._interpreter.get_tensor(index)[0] for index, _, _ in outputs]
        quant = [(scale, zero) for _, scale, zero in outputs] if outputs[0][1] is not None else None
        if self._level_shapes is not None:  # frigate layout: one (N, C) tensor, split into per-level views
            levels = split_levels(levels[0], self._level_shapes)
            quant = quant * len(levels) if quant else None
        return levels, quant

    # ------------------------------------------------------------------ the three steps

    def prepare(self, image: ImageInput, *, bgr: bool = False) -> Prepared:
        """``image`` (a path, PIL image, or (H, W, 3) uint8 array; RGB unless ``bgr``) as this model's input."""
        if isinstance(image, (str, os.PathLike)):
            rgb, full_size = read_image(image, self.info.size)
            return prepare(rgb, self.info.input, full_size)
        return prepare(to_rgb(image, bgr), self.info.input)

    def run(self, tensor: np.ndarray) -> RawOutputs:
        """One inference on a prepared input tensor."""
        self._interpreter.set_tensor(self._input_index, tensor)
        self._interpreter.invoke()
        box_levels, box_quant = self._raw(self._box_outputs)
        cls_levels, cls_quant = self._raw(self._cls_outputs)
        return RawOutputs(box_levels, cls_levels, box_quant, cls_quant)

    def decode(self, raw: RawOutputs, placement: Letterbox) -> list[Detection]:
        """Detections of one inference, boxes in the image's pixels, best first."""
        boxes, scores, class_ids = postprocess(raw.box_levels, raw.cls_levels, channels_last=True,
                                               config=self._decoding, strides=self._strides,
                                               box_quant=raw.box_quant, cls_quant=raw.cls_quant)
        boxes = placement.to_image(boxes)
        labels = self.info.labels
        return [Detection(Box(*map(float, b)), float(s), int(c), labels[c] if c < len(labels) else str(c))
                for b, s, c in zip(boxes, scores, class_ids)]

    # ------------------------------------------------------------------ composed

    def detect(self, image: ImageInput, *, bgr: bool = False) -> list[Detection]:
        """Detections in ``image`` (a path, PIL image, or (H, W, 3) uint8 array; RGB unless ``bgr``),
        boxes in the image's own pixels, best first."""
        return self.detect_with_timing(image, bgr=bgr)[0]

    def detect_with_timing(self, image: ImageInput, *, bgr: bool = False) -> tuple[list[Detection], Timing]:
        """:meth:`detect`, and how long each step took."""
        started = time.perf_counter()
        prepared = self.prepare(image, bgr=bgr)
        prepared_ms = (time.perf_counter() - started) * 1e3
        detections, invoke_ms, postprocess_ms = self.detect_prepared(prepared)
        return detections, Timing(prepared_ms, invoke_ms, postprocess_ms)

    def detect_prepared(self, prepared: Prepared) -> tuple[list[Detection], float, float]:
        """:meth:`run` and :meth:`decode` of a prepared input: its detections, and the milliseconds of each."""
        started = time.perf_counter()
        raw = self.run(prepared.tensor)
        invoked = time.perf_counter()
        detections = self.decode(raw, prepared.placement)
        return detections, (invoked - started) * 1e3, (time.perf_counter() - invoked) * 1e3

    def detect_many(self, source: Source | Iterable[ImageInput], *, bgr: bool = False) -> Iterator[FrameResult]:
        """Detections frame by frame in ``source``: an image file, a folder (recursively), a video file, a
        camera index, or any iterable of images (paths, PIL images, arrays; ``bgr`` as in ``detect``).

        A frame that cannot be read (a corrupt file in a folder, an empty array) yields a FrameResult
        with its ``error`` and the batch goes on; a source that cannot be opened raises a SourceError.
        """
        return frame_results(source, self.info.input, self.detect_prepared, bgr=bgr)


def frame_results(source: Source | Iterable[ImageInput], spec: TensorSpec,
                  detect_prepared: Callable[[Prepared], tuple[list[Detection], float, float]], *,
                  bgr: bool = False) -> Iterator[FrameResult]:
    """:meth:`Detector.detect_many` for any ``detect_prepared`` (a Detector's, or one in another process) of a
    model whose input is ``spec``: frames are read and prepared here."""
    needed = (spec.shape[1], spec.shape[2])
    frames = (iter_frames(source, needed) if isinstance(source, (str, os.PathLike, int))
              else image_frames(source, bgr, needed))
    for frame in frames:
        if frame.error is not None:
            yield FrameResult(frame, [])
        else:
            started = time.perf_counter()
            prepared = prepare(frame.image, spec, frame.full_size)
            prepared_ms = (time.perf_counter() - started) * 1e3
            detections, invoke_ms, postprocess_ms = detect_prepared(prepared)
            yield FrameResult(frame, detections, Timing(prepared_ms, invoke_ms, postprocess_ms))
