"""Import a foreign YOLOv9-T/S checkpoint: read it safely, rename, infer the architecture, build, load, report.

The architecture comes from tensor shapes, never from names or pickled configs: base width from the
stem conv, CSP depth from the bottleneck count, and the head's rules (reg_max, grouped box branch,
class-branch width and design, class count) from the head convs; only the activation is read from
the pickled modules' classes, when a checkpoint has them. The model is then built with
:func:`train.models.create_model`, so an import yields exactly the zoo's model, loadable with
``weights_only=True`` once saved.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edge_yolov9.cli import plural
from edge_yolov9.errors import ModelError

from ..checkpoint import FORMAT as OWN_FORMAT, ForeignCheckpointError, file_sha256, load_checkpoint, save_checkpoint
from ..models import HeadConfig, LoadReport, ModelConfig, YOLO, create_model, load_weights
from ..models.config import DEFAULT_INPUT_SIZE
from .mit import MIT
from .published import ULTRALYTICS, YOLOV9
from .translation import CheckpointFormat, Translation
from .unpickler import class_name, read_foreign_checkpoint

logger = logging.getLogger(__name__)

FORMATS: dict[str, CheckpointFormat] = {fmt.name: fmt for fmt in (ULTRALYTICS, YOLOV9, MIT)}
SIZE_LETTERS = {16: "t", 32: "s"}
# Class-branch width = max(P3 channels, min(factor * nc, cap)); the rules in use, tried first, so an
# imported model keeps its project's rule when later re-headed for another class count.
KNOWN_CLASS_WIDTH_RULES = ((HeadConfig.cls_width_factor, HeadConfig.cls_width_cap), (2, 128))
FIX_REPORT = ("if this checkpoint is a YOLOv9-T/S (GELAN) detector from Ultralytics, the YOLOv9 repository or MIT "
              "YOLO, open an issue on the edge-yolov9 tracker with this message")
SHOWN_KEYS = 6


@dataclass
class ImportResult:
    """An imported model and the account of every checkpoint tensor.

    ``used`` and the ``load_report``'s unexpected and shape-mismatch entries are in the checkpoint's
    key names; ``load_report.missing`` in ours (those tensors are absent from the checkpoint).
    """

    model: YOLO
    names: list[str]
    names_source: str
    source: Path
    source_sha256: str
    format: str
    license: str
    used: list[str]
    load_report: LoadReport
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.load_report.complete

    def weights_license(self) -> dict[str, str]:
        """What the checkpoint's meta keeps of the weights' origin (see edge_yolov9.model_file.weights_notice)."""
        return {"license": self.license, "source_format": self.format, "source_file": self.source.name}

    def report(self) -> dict[str, Any]:
        """Plain data (stored in the checkpoint's meta and printed by ``--json``)."""
        cfg, load = self.model.cfg, self.load_report
        return {
            "source": str(self.source), "source_sha256": self.source_sha256, "format": self.format,
            "weights_license": self.weights_license(),
            "variant": cfg.name, "aux": cfg.aux, "num_classes": cfg.num_classes, "names": list(self.names),
            "names_from": self.names_source, "config": cfg.to_dict(),
            "counts": {"used": len(self.used), "missing": len(load.missing), "unexpected": len(load.unexpected),
                       "shape_mismatch": len(load.shape_mismatch)},
            "missing": list(load.missing), "unexpected": list(load.unexpected),
            "shape_mismatch": list(load.shape_mismatch), "notes": list(self.notes),
        }


def detect_format(payload: Any, source: str) -> CheckpointFormat:
    """The layout of an unpickled checkpoint; a ModelError that lists the supported ones otherwise."""
    if isinstance(payload, dict) and payload.get("format") == OWN_FORMAT:
        raise ModelError(f"{source} is already an edge-yolov9 checkpoint", "use it as it is; no import is needed")
    for fmt in FORMATS.values():
        if fmt.recognizes(payload):
            return fmt
    supported = "; ".join(f"{fmt.name}: {fmt.description}" for fmt in FORMATS.values())
    raise ModelError(f"{source} has an unknown checkpoint layout ({describe_payload(payload)}). "
                     f"Supported layouts: {supported}", FIX_REPORT)


def describe_payload(payload: Any) -> str:
    """A one-line summary of what a checkpoint holds, for error messages."""
    if isinstance(payload, dict):
        keys = [str(key) for key in payload][:SHOWN_KEYS]
        more = f", ... ({len(payload)} keys)" if len(payload) > SHOWN_KEYS else ""
        holds = "".join(f"; '{key}' is a {class_name(payload[key])}" for key in ("ema", "model")
                        if payload.get(key) is not None)
        return f"a dict with keys {keys}{more}{holds}"
    return f"a {class_name(payload)}"


def _shape(tensors: dict[str, torch.Tensor], key: str, what: str, source: str) -> torch.Size:
    if key not in tensors:
        raise ModelError(f"{source}: cannot infer the {what}: the checkpoint has no tensor for {key}",
                         FIX_REPORT)
    return tensors[key].shape


def _class_width_rule(width: int, p3_channels: int, num_classes: int, source: str) -> tuple[int, int]:
    """A (factor, cap) that reproduces the class-branch width, preferring the rules projects use."""
    candidates = [*KNOWN_CLASS_WIDTH_RULES, (math.ceil(width / num_classes), width)]
    for factor, cap in candidates:
        if max(p3_channels, min(factor * num_classes, cap)) == width:
            return factor, cap
    raise ModelError(f"{source}: the class branch is {width} channels wide, narrower than the {p3_channels} "
                     "P3 channels every YOLOv9 head has", FIX_REPORT)


def infer_config(translation: Translation, source: str) -> ModelConfig:
    """The zoo config whose model has exactly the shapes of the translated tensors, with the checkpoint's
    training input size (the default when it records none)."""
    tensors = translation.tensors
    stem = _shape(tensors, "layers.0.conv.weight", "base width", source)
    base_width = stem[0]
    depth = len({key.split(".")[5] for key in tensors if key.startswith("layers.4.cv2.0.m.")})
    box_out = _shape(tensors, "head.box.0.2.weight", "box branch", source)
    box_mid = _shape(tensors, "head.box.0.1.conv.weight", "box branch", source)
    num_classes = _shape(tensors, "head.cls.0.2.weight", "class count", source)[0]
    depthwise = "head.cls.0.0.0.conv.weight" in tensors
    cls_first = "head.cls.0.0.1.conv.weight" if depthwise else "head.cls.0.0.conv.weight"
    cls_width = _shape(tensors, cls_first, "class branch", source)[0]
    factor, cap = _class_width_rule(cls_width, 4 * base_width, num_classes, source)
    head = HeadConfig(reg_max=box_out[0] // 4, box_groups=box_mid[0] // box_mid[1], cls_width_factor=factor,
                      cls_width_cap=cap, cls_depthwise=depthwise)
    aux = "fpn" if any(key.startswith("aux_layers.") for key in tensors) else "none"
    size = SIZE_LETTERS.get(base_width, f"w{base_width}")
    name = f"{'yolov9' if aux == 'fpn' else 'gelan'}-{size}"
    return ModelConfig(name=name, base_width=base_width, csp_depth=depth, num_classes=num_classes,
                       activation=translation.activation, aux=aux, head=head,
                       input_size=translation.input_size or DEFAULT_INPUT_SIZE)


def verify_dfl(translation: Translation, reg_max: int, source: str) -> None:
    """The published heads' DFL conv must be the fixed projection 0..reg_max-1 our decoder assumes."""
    expected = torch.arange(reg_max, dtype=torch.float32)
    for key, tensor in translation.dfl.items():
        if tensor.numel() != reg_max or not torch.equal(tensor.detach().float().flatten(), expected):
            raise ModelError(f"{source}: {key} is not the fixed DFL projection 0..{reg_max - 1}, so its boxes decode "
                             "differently from YOLOv9's", FIX_REPORT)


def resolve_names(checkpoint_names: list[str] | None, override: list[str] | None,
                  num_classes: int, source: str) -> tuple[list[str], str]:
    """Names from ``--names``, else from the checkpoint, else ``class0..``; with where they came from."""
    if override is not None:
        if len(override) != num_classes:
            raise ModelError(f"{len(override)} class names given for a model with {num_classes} classes",
                             f"pass exactly {num_classes} names to --names")
        return list(override), "--names"
    if checkpoint_names is not None:
        if len(checkpoint_names) != num_classes:
            raise ModelError(f"{source} names {len(checkpoint_names)} classes but its head predicts {num_classes}",
                             f"pass the {num_classes} class names with --names")
        return checkpoint_names, "checkpoint"
    return [f"class{i}" for i in range(num_classes)], "default"


def import_checkpoint(path: str | os.PathLike, *, checkpoint_format: str = "auto", names: list[str] | None = None,
                      partial: bool = False) -> ImportResult:
    """Import a foreign checkpoint into the zoo's model (eval mode).

    Without ``partial``, a checkpoint that does not fill the model exactly (missing, unexpected or
    mis-shaped tensors) is refused with the list of offending keys.
    """
    path = Path(path)
    source = str(path)
    payload = read_foreign_checkpoint(path)
    if checkpoint_format == "auto":
        fmt = detect_format(payload, source)
    elif checkpoint_format in FORMATS:
        fmt = FORMATS[checkpoint_format]
        if not fmt.recognizes(payload):
            raise ModelError(f"{source} is not a {fmt.name} checkpoint ({describe_payload(payload)})",
                             "leave out --format (auto-detection), or name the project the file comes from")
    else:
        raise ModelError(f"Unknown checkpoint format {checkpoint_format!r}",
                         f"choose auto or one of {', '.join(FORMATS)}")
    translation = fmt.translate(payload, source)
    if translation.input_size is None:
        height, width = DEFAULT_INPUT_SIZE
        translation.notes.append(f"the checkpoint records no training input size: {height}x{width} assumed; "
                                 "convert and val use it unless given --imgsz")
    cfg = infer_config(translation, source)
    verify_dfl(translation, cfg.head.reg_max, source)
    model = create_model(cfg)
    load_report, used = _account(load_weights(model, translation.tensors, strict=False), translation)
    class_names, names_source = resolve_names(translation.names, names, cfg.num_classes, source)
    result = ImportResult(model=model.eval(), names=class_names, names_source=names_source, source=path,
                          source_sha256=file_sha256(path), format=fmt.name, license=fmt.license, used=used,
                          load_report=load_report, notes=translation.notes)
    if not (result.complete or partial):
        raise ModelError(f"{source} does not fit {cfg.name} exactly: {load_report.summary()}",
                         "pass --partial to import anyway (missing tensors keep their random initialisation); "
                         + FIX_REPORT)
    return result


def _account(load: LoadReport, translation: Translation) -> tuple[LoadReport, list[str]]:
    """The load report with checkpoint key names where the checkpoint has the key, and the keys used."""
    origin = translation.source_keys
    # LoadReport writes a shape mismatch as "key (checkpoint shape) -> (model shape)".
    mismatched = dict(entry.split(" ", 1) for entry in load.shape_mismatch)
    rejected = set(load.unexpected) | set(mismatched)
    used = [origin[key] for key in translation.tensors if key not in rejected] + list(translation.dfl)
    report = LoadReport(missing=list(load.missing),
                        unexpected=translation.unmapped + [origin[key] for key in load.unexpected],
                        shape_mismatch=[f"{origin[key]} {shapes}" for key, shapes in mismatched.items()])
    return report, used


def imported_meta(result: ImportResult) -> dict[str, Any]:
    """What an imported checkpoint's meta records of where it came from."""
    return {"imported_from": str(result.source), "source_format": result.format,
            "source_sha256": result.source_sha256, "import_report": result.report(),
            "weights_license": result.weights_license()}


def save_imported(result: ImportResult, output: str | os.PathLike) -> Path:
    """Write the imported model as an edge-yolov9 checkpoint, with where it came from in its meta."""
    return save_checkpoint(output, result.model, result.names, meta=imported_meta(result))


def load_any_checkpoint(path: str | os.PathLike) -> tuple[YOLO, list[str], dict[str, Any]]:
    """Model, class names and meta of an edge-yolov9 checkpoint, or of a foreign one imported on the fly (the
    same restricted reading as ``edge-yolov9 import``; a checkpoint that does not fill the model is refused)."""
    try:
        return load_checkpoint(path)
    except ForeignCheckpointError:
        result = import_checkpoint(path)
    logger.info("Imported %s (%s checkpoint, %s, %s)", path, result.format, result.model.cfg.name,
                plural(len(result.names), "class"))
    return result.model, list(result.names), imported_meta(result)
