"""The model zoo: named variants, each a function returning a :class:`ModelConfig`.

``create_model`` is the one builder: it instantiates a variant and owns weight loading, reporting
missing and unexpected keys instead of failing on the first mismatch.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from edge_yolov9.errors import ModelError

from .config import ModelConfig
from .yolo import YOLO

logger = logging.getLogger(__name__)

# 10x yolov9-s with its auxiliary branch: a config read from a file that builds more is refused.
MAX_PARAMS = 100_000_000
_VARIANTS: dict[str, Callable[..., ModelConfig]] = {}


def register_model(name: str) -> Callable[[Callable[..., ModelConfig]], Callable[..., ModelConfig]]:
    def wrap(fn: Callable[..., ModelConfig]) -> Callable[..., ModelConfig]:
        if name in _VARIANTS:
            raise ValueError(f"Model variant {name!r} is registered twice.")
        _VARIANTS[name] = fn
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    return sorted(name for name in _VARIANTS if fnmatch.fnmatch(name, pattern))


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The config of variant ``name``, with field overrides (``num_classes``, ``activation``, ``aux``...)."""
    try:
        make = _VARIANTS[name]
    except KeyError:
        raise KeyError(f"Unknown model {name!r}. Known models: {', '.join(list_models())}.") from None
    cfg = make()
    return cfg.replace(**overrides) if overrides else cfg


@register_model("gelan-t")
def gelan_t() -> ModelConfig:
    return ModelConfig(name="gelan-t", base_width=16, csp_depth=3)


@register_model("gelan-s")
def gelan_s() -> ModelConfig:
    return ModelConfig(name="gelan-s", base_width=32, csp_depth=3)


@register_model("yolov9-t")
def yolov9_t() -> ModelConfig:
    return ModelConfig(name="yolov9-t", base_width=16, csp_depth=3, aux="fpn")


@register_model("yolov9-s")
def yolov9_s() -> ModelConfig:
    return ModelConfig(name="yolov9-s", base_width=32, csp_depth=3, aux="fpn")


@dataclass
class LoadReport:
    """What a weight load did: keys the model has but the weights lack, and the reverse."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self) -> str:
        parts = []
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape mismatch", self.shape_mismatch)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{title}: {shown}")
        return "; ".join(parts) if parts else "all keys matched"


def weight_report(shapes: dict[str, torch.Size], state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """How ``state_dict`` fits a model whose state_dict has ``shapes``."""
    report = LoadReport()
    for key, tensor in state_dict.items():
        if key not in shapes:
            report.unexpected.append(key)
        elif shapes[key] != tensor.shape:
            report.shape_mismatch.append(f"{key} {tuple(tensor.shape)} -> {tuple(shapes[key])}")
    report.missing = [key for key in shapes if key not in state_dict]
    return report


def load_weights(model: YOLO, state_dict: dict[str, torch.Tensor], *, strict: bool = True,
                 log: bool = True) -> LoadReport:
    """Copy matching tensors into ``model``; with ``strict`` any mismatch raises after the full report, without
    it a partial load is logged (``log``: the caller says what was left out and why)."""
    report = weight_report({key: value.shape for key, value in model.state_dict().items()}, state_dict)
    if strict and not report.complete:
        raise ValueError(f"Weights do not fit {model.cfg.name}: {report.summary()}.")
    # LoadReport writes a shape mismatch as "key (checkpoint shape) -> (model shape)".
    rejected = set(report.unexpected) | {entry.split(" ", 1)[0] for entry in report.shape_mismatch}
    model.load_state_dict({k: v for k, v in state_dict.items() if k not in rejected}, strict=False)
    if log and not report.complete:
        logger.warning("Partial weight load into %s: %s", model.cfg.name, report.summary())
    return report


def model_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    """The state_dict shapes of ``cfg``'s model, from a build on the meta device (no memory): a config
    read from a file is refused here when absurdly large, before the real model would allocate it."""
    with torch.device("meta"):
        skeleton = YOLO(cfg)
    params = sum(p.numel() for p in skeleton.parameters())
    if params > MAX_PARAMS:
        raise ModelError(f"The model config {cfg.name} (base_width {cfg.base_width}, csp_depth {cfg.csp_depth}, "
                         f"{cfg.num_classes} classes) makes a model of {params / 1e6:,.0f}M parameters, "
                         f"over the {MAX_PARAMS // 1_000_000}M any GELAN-T/S-sized detector stays below",
                         "check the checkpoint's config or the dataset's class count; the file may be damaged "
                         "or crafted")
    return {key: value.shape for key, value in skeleton.state_dict().items()}


def create_model(name_or_cfg: str | ModelConfig, *, state_dict: dict[str, torch.Tensor] | None = None,
                 strict: bool = True, **overrides: Any) -> YOLO:
    """Build a variant (by name or config) and optionally load weights into it. Size and, with
    ``strict``, weight shapes are checked on a meta-device build first, so a bad config costs no memory."""
    cfg = name_or_cfg if isinstance(name_or_cfg, ModelConfig) else model_config(name_or_cfg, **overrides)
    if isinstance(name_or_cfg, ModelConfig) and overrides:
        cfg = cfg.replace(**overrides)
    shapes = model_shapes(cfg)
    if state_dict is not None and strict:
        report = weight_report(shapes, state_dict)
        if not report.complete:
            raise ValueError(f"Weights do not fit {cfg.name}: {report.summary()}.")
    model = YOLO(cfg)
    if state_dict is not None:
        load_weights(model, state_dict, strict=False)
    return model
