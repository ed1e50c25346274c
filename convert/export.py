"""PyTorch deploy model -> float and fully int8 TFLite (litert-torch, PT2E static quantization).

The exported graph is the GELAN main branch up to the **raw head tensors**: per level the box
bins (4 * reg_max channels) and the class logits, six NHWC outputs. Decoding (DFL, anchors,
sigmoid) stays on the host in the shared decoder. This keeps softmax, concatenated box+score
tensors and layout transposes out of the graph (findings P4, P5, P7, P8): every output has its
own quantization scale, and the int8 graph has nothing but int8 ops.

The ``frigate`` layout carries the same tensors in the two outputs Frigate's Edge TPU detector
reads (see convert.frigate): each level's NHWC map reshaped to (1, H*W, C) rows and the levels
concatenated, box bins and class logits apart. That costs six RESHAPE and two CONCATENATION ops,
and the three box levels then share one quantization scale. A model Frigate could not tell apart
(1 or 64 classes) gets padding classes there (convert.frigate.padding_classes), each a class conv
output with zero weights and a bias of PADDING_LOGIT: no op is added, and the model's own classes
compute exactly what they did.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from edge_yolov9.errors import EdgeYoloError, ModelError
from edge_yolov9.model_file import LAYOUTS, InputSize
from edge_yolov9.train.models import YOLO
from edge_yolov9.train.models.deploy import deploy_model

from . import frigate
from .local_decompositions import local_decompositions
from .quiet import hidden_stderr
from .tflite_model import INTEGER_IO_DTYPES, TFLiteModel

if TYPE_CHECKING:
    from .quantizer import EdgeQuantizer

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
# Class logits are quantized on a fixed range, [-8, 7.94] (scale 1/16, zero point 0), instead of the
# calibrated one: every score from 0.0003 to 0.9996 stays representable even when the calibration
# images hold no confident detection (a calibrated range then ends at 0 and caps scores at 0.5, P7),
# and 1/16 resolves scores near usual thresholds to about 0.01.
CLS_LOGIT_QPARAMS = (1 / 16, 0)
# The logit of a padding class: far below the int8 floor of CLS_LOGIT_QPARAMS (-128 / 16 = -8), so the
# int8 and Edge TPU models hold the lowest representable logit (sigmoid 0.0003, below any threshold a
# detector uses; the runtime never selects a logit at the floor), and the float model's score (2e-9) is
# below every threshold the runtime accepts (edge_yolov9.decode.logit floors thresholds at 1e-7).
PADDING_LOGIT = -20.0


class ConversionError(EdgeYoloError):
    """The converter produced something that is not the model it promises (a float op in the int8 graph...)."""


@dataclass(frozen=True)
class OutputSpec:
    """One exported output: ``box`` (4 * reg_max bins) or ``cls`` (logits) of one pyramid level and its
    stride, or (frigate layout: level and stride None) the rows of all levels."""

    name: str
    level: int | None
    stride: int | None
    kind: str


def output_specs(model: YOLO, layout: str = "raw") -> list[OutputSpec]:
    """The exported outputs, in graph order: box and cls of each level, finest level first (raw), or
    the box rows and the class rows of all levels (frigate)."""
    if layout == "frigate":
        return [OutputSpec("box_rows", None, None, "box"), OutputSpec("cls_rows", None, None, "cls")]
    return [OutputSpec(f"{kind}_stride{stride}", level, stride, kind)
            for level, stride in enumerate(model.strides) for kind in ("box", "cls")]


class RawHeadOutputs(nn.Module):
    """The deploy model with a flat tuple of raw outputs (box_0, cls_0, box_1, ...), as TFLite wants."""

    def __init__(self, model: YOLO):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t for level in self.model(images).main for t in (level.box, level.cls))


def prepare_for_export(model: YOLO) -> YOLO:
    """The export form of a trained model (aux branch dropped, BN folded, graph rewrites), checked."""
    if not isinstance(model, YOLO):
        raise ModelError(f"Expected an edge-yolov9 detector, got {type(model).__name__}",
                         "load it with train.checkpoint.load_checkpoint")
    deployed = deploy_model(model, for_export=True)
    leftovers = [name for name, _ in deployed.named_parameters() if name.startswith(("aux_", "aux."))]
    if deployed.aux_layers is not None or deployed.aux_head is not None or leftovers:
        raise ConversionError(f"The deploy model still has auxiliary-branch parameters: {leftovers[:5]}",
                              "this is a bug in train.models.deploy; please report it")
    return deployed


def channels_last_module(model: YOLO) -> nn.Module:
    """NHWC input and outputs, so the TFLite graph has no TRANSPOSE (P8)."""
    import litert_torch

    outputs = list(range(len(output_specs(model))))
    return litert_torch.to_channel_last_io(RawHeadOutputs(model), args=[0], outputs=outputs).eval()


def with_padding_classes(model: YOLO, count: int) -> YOLO:
    """A copy of ``model`` whose last class conv of each level has ``count`` more outputs, with zero
    weights and bias PADDING_LOGIT (classes that never score); ``model`` itself when ``count`` is 0."""
    if count == 0:
        return model
    padded = copy.deepcopy(model)
    for branch in padded.head.cls:
        conv = branch[-1]
        wider = nn.Conv2d(conv.in_channels, conv.out_channels + count, conv.kernel_size, conv.stride, conv.padding,
                          conv.dilation, conv.groups, bias=True)
        with torch.no_grad():
            wider.weight.zero_()
            wider.weight[:conv.out_channels] = conv.weight
            wider.bias.fill_(PADDING_LOGIT)
            wider.bias[:conv.out_channels] = conv.bias
        branch[-1] = wider
    return padded


class FrigateOutputs(nn.Module):
    """Frigate's yolo-generic layout: (1, N, 4 * reg_max) box bins and (1, N, NC + padding) class logits,
    each level's NHWC map flattened row-major (a RESHAPE that keeps the channels innermost, no TRANSPOSE)
    and the levels concatenated finest first."""

    def __init__(self, model: YOLO):
        super().__init__()
        padding = frigate.padding_classes(model.num_classes)
        self.levels = channels_last_module(with_padding_classes(model, padding))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [level.reshape(level.shape[0], -1, level.shape[-1]) for level in self.levels(images)]
        return torch.cat(rows[0::2], dim=1), torch.cat(rows[1::2], dim=1)


def check_layout(model: YOLO, labels: Sequence[str], layout: str) -> None:
    """Raise before any conversion work if ``layout`` is unknown or cannot hold this model."""
    if layout not in LAYOUTS:
        raise EdgeYoloError(f"Unknown output layout {layout!r}", f"use one of: {', '.join(LAYOUTS)}")
    if layout == "frigate":
        frigate.check_compatible(labels, model.head.reg_max, model.strides)


def export_module(model: YOLO, layout: str) -> nn.Module:
    """The module whose graph is exported: NHWC input, outputs in ``layout`` (checked by check_layout)."""
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown output layout {layout!r}")
    return FrigateOutputs(model).eval() if layout == "frigate" else channels_last_module(model)


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """Hide litert-torch's progress bar and the chatter on stderr of the converter and of its imports (litert-torch,
    torchao and TensorFlow print warnings as they load): import them inside. With --verbose everything shows."""
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    with hidden_stderr():
        import litert_torch

        previous = litert_torch.config.show_progress
        litert_torch.config.show_progress = False
        try:
            yield
        finally:
            litert_torch.config.show_progress = previous


def _sample_input(imgsz: int | tuple[int, int]) -> torch.Tensor:
    height, width = InputSize.of(imgsz)
    return torch.zeros(1, height, width, 3)


def _finish(content: bytes, model: YOLO, layout: str) -> TFLiteModel:
    """Readable I/O names, Edge-TPU-era op versions, constants inlined (P2, P10)."""
    tflite = TFLiteModel.from_bytes(content, source="converter output")
    tflite.rename_io([INPUT_NAME], [spec.name for spec in output_specs(model, layout)])
    changes = tflite.normalize_for_edgetpu()
    if changes:
        logger.debug("Flatbuffer normalized for the Edge TPU compiler: %s", "; ".join(changes))
    return TFLiteModel.from_bytes(tflite.to_bytes(), source="converted model")


def convert_float(model: YOLO, imgsz: int | tuple[int, int], layout: str = "raw") -> TFLiteModel:
    """Float32 TFLite of a deploy model: NHWC float input in [0, 1], float outputs in ``layout``."""
    with _quiet_converter(), local_decompositions(), torch.no_grad():
        import litert_torch

        edge = litert_torch.convert(export_module(model, layout), (_sample_input(imgsz),))
        content = edge.model_content()
    return _finish(content, model, layout)


@dataclass
class Calibrated:
    """The export graph with its observers fed (``calibrate_int8``), ready for ``lower_int8``."""

    prepared: nn.Module
    quantizer: "EdgeQuantizer"
    sample: tuple[torch.Tensor]
    model: YOLO
    layout: str


def calibrate_int8(model: YOLO, imgsz: int | tuple[int, int], calibration: Iterable[np.ndarray],
                   layout: str = "raw") -> Calibrated:
    """The export graph of ``model`` with PT2E observers, run on ``calibration``: (1, H, W, 3) float inputs in
    [0, 1], letterboxed as at run time."""
    sample = (_sample_input(imgsz),)
    fixed = {k: CLS_LOGIT_QPARAMS for k, spec in enumerate(output_specs(model, layout)) if spec.kind == "cls"}
    with torch.no_grad():
        with _quiet_converter():  # torchao and litert-torch print warnings as they load
            from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

            from .quantizer import EdgeQuantizer, ObserverPipeline

            quantizer = EdgeQuantizer(fixed_outputs=fixed)
            prepared = prepare_pt2e(torch.export.export(export_module(model, layout), sample).module(), quantizer)
        start, seen = time.monotonic(), 0
        with ObserverPipeline(prepared) as observers:
            for image in calibration:
                prepared(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)))
                observers.image_done()
                seen += 1
    if seen == 0:
        raise ConversionError("No calibration input was given", "pass --calib with representative images")
    logger.info("Calibrated on %d images in %.0f s", seen, time.monotonic() - start)
    return Calibrated(prepared, quantizer, sample, model, layout)


def lower_int8(calibrated: Calibrated) -> TFLiteModel:
    """The fully int8 TFLite of a calibrated graph (see convert_int8), checked to be fully integer."""
    with torch.no_grad(), _quiet_converter(), local_decompositions():
        import litert_torch
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        quantized = convert_pt2e(calibrated.prepared, fold_quantize=False)
        # quant_config is what makes the converter emit int8 kernels instead of fake-quant (P6).
        edge = litert_torch.convert(quantized, calibrated.sample,
                                    quant_config=QuantConfig(pt2e_quantizer=calibrated.quantizer))
        tflite = _finish(edge.model_content(), calibrated.model, calibrated.layout)
    check_fully_integer(tflite)
    return tflite


def convert_int8(model: YOLO, imgsz: int | tuple[int, int], calibration: Iterable[np.ndarray],
                 layout: str = "raw") -> TFLiteModel:
    """Fully int8 TFLite: int8 weights (per channel) and activations, int8 input fixed at scale 1/255,
    zero point -128 (``pixel - 128``), int8 outputs in ``layout`` (raw: six, each with its own scale;
    class logits always on CLS_LOGIT_QPARAMS).

    ``calibration`` yields (1, H, W, 3) float inputs in [0, 1], letterboxed as at run time.
    """
    return lower_int8(calibrate_int8(model, imgsz, calibration, layout))


def non_integer_tensors(tflite: TFLiteModel) -> list[str]:
    """Tensors that break a fully integer model: float anywhere, or non-int8/uint8 activations."""
    bad = []
    for tensor in tflite.tensors:
        if tensor.dtype.startswith("float") or (not tensor.is_constant and tensor.dtype not in INTEGER_IO_DTYPES):
            bad.append(f"{tensor.name} ({tensor.dtype})")
    return bad


def check_fully_integer(tflite: TFLiteModel) -> None:
    """Raise if any float tensor or DEQUANTIZE survived quantization (a float island, P3/P6)."""
    bad = non_integer_tensors(tflite)
    dequantize = sum(1 for op in tflite.operators if op.name == "DEQUANTIZE")
    if bad or dequantize:
        raise ConversionError(f"The int8 model is not fully integer: {len(bad)} non-integer tensors "
                              f"(e.g. {', '.join(bad[:3])}), {dequantize} DEQUANTIZE ops",
                              "an op was left unquantized; this is a converter bug, please report it "
                              "with the model config")
