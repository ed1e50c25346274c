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

from .config import ModelConfig
from .yolo import YOLO

logger = logging.getLogger(__name__)

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


def load_weights(model: YOLO, state_dict: dict[str, torch.Tensor], *, strict: bool = True) -> LoadReport:
    """Copy matching tensors into ``model``; with ``strict`` any mismatch raises after the full report."""
    own = model.state_dict()
    report = LoadReport()
    usable = {}
    for key, tensor in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != tensor.shape:
            report.shape_mismatch.append(f"{key} {tuple(tensor.shape)} -> {tuple(own[key].shape)}")
        else:
            usable[key] = tensor
    report.missing = [key for key in own if key not in state_dict]
    if strict and not report.complete:
        raise ValueError(f"Weights do not fit {model.cfg.name}: {report.summary()}.")
    model.load_state_dict(usable, strict=False)
    if not report.complete:
        logger.warning("Partial weight load into %s: %s", model.cfg.name, report.summary())
    return report


def create_model(name_or_cfg: str | ModelConfig, *, state_dict: dict[str, torch.Tensor] | None = None,
                 strict: bool = True, **overrides: Any) -> YOLO:
    """Build a variant (by name or config) and optionally load weights into it."""
    cfg = name_or_cfg if isinstance(name_or_cfg, ModelConfig) else model_config(name_or_cfg, **overrides)
    if isinstance(name_or_cfg, ModelConfig) and overrides:
        cfg = cfg.replace(**overrides)
    model = YOLO(cfg)
    if state_dict is not None:
        load_weights(model, state_dict, strict=strict)
    return model
