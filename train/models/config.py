"""Typed configurations of the model zoo.

A config is plain data (str/int/float/bool/tuples) so that it is stored inside checkpoints and
reloaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from edge_yolov9.model_file import STRIDES, InputSize

AuxBranch = Literal["none", "fpn", "reversible"]
# (height, width) of a model that records no training size: the size YOLOv9 models are published at.
DEFAULT_INPUT_SIZE = (640, 640)


def _require_ints(config: Any, names: tuple[str, ...], low: int) -> None:
    for name in names:
        value = getattr(config, name)
        if type(value) is not int or value < low:  # bool is an int subclass, never a size
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")


def _input_size(value: Any) -> tuple[int, int]:
    """(height, width) from a pair, or from one int for a square (not text: a config holds numbers); both
    multiples of the largest stride."""
    stride = max(STRIDES)
    size = recorded_size(value)
    if size is None or not all(side >= stride and side % stride == 0 for side in size):
        raise ValueError(f"input_size must be (height, width) in multiples of {stride}, or one such int, "
                         f"got {value!r}.")
    return tuple(size)


def recorded_size(value: Any) -> InputSize | None:
    """An input size as a file records it, an int or an (height, width) pair; None for anything else."""
    if isinstance(value, str):
        return None
    try:
        return InputSize.of(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class HeadConfig:
    """Width rules of the detection head: class-branch width = max(P3 channels, min(factor * nc, cap)).

    The defaults (grouped box branch, factor 1, cap 100) reproduce the published YOLOv9 figures
    (T 2.0M params / 7.7 GFLOPs, S 7.1M / 26.4 at 640). The YOLOv9 repo's DDetect code uses
    factor 2, cap 128; Ultralytics' Detect uses ``box_groups=1`` and, since 8.3, a depthwise class
    branch. The checkpoint importer infers these from tensor shapes.
    """

    reg_max: int = 16
    box_groups: int = 4
    cls_width_factor: int = 1
    cls_width_cap: int = 100
    cls_depthwise: bool = False
    # A fixed class-branch width instead of the rule: a model cut down to some of a pretrained model's classes
    # keeps the width its class branch was trained with (``train --weights``).
    cls_width: int | None = None

    def __post_init__(self) -> None:
        _require_ints(self, ("reg_max", "box_groups", "cls_width_factor", "cls_width_cap"), low=1)
        if self.cls_width is not None:
            _require_ints(self, ("cls_width",), low=1)
        if not isinstance(self.cls_depthwise, bool):
            raise ValueError(f"cls_depthwise must be true or false, got {self.cls_depthwise!r}.")


@dataclass(frozen=True)
class ModelConfig:
    """A GELAN detector: ``base_width`` scales every stage (T: 16, S: 32), ``csp_depth`` the RepNCSP blocks.

    ``aux`` selects the PGI auxiliary branch used only in training: ``"fpn"`` is the second SPPELAN
    and top-down path on the backbone's P3/P4/P5 with its own head (official yolov9-t/s);
    ``"reversible"`` is the CBLinear/CBFuse auxiliary backbone fed from the input image (PGI paper,
    yolov9-m/c style).

    ``input_size`` is the (height, width) the model was trained at: what a model needs to run travels with
    its weights, so ``convert`` and ``val`` use it unless told otherwise. A single int means a square.
    """

    name: str
    base_width: int = 16
    csp_depth: int = 3
    num_classes: int = 80
    activation: str = "silu"
    aux: AuxBranch = "none"
    head: HeadConfig = field(default_factory=HeadConfig)
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE

    def __post_init__(self) -> None:
        # Checkpoints carry configs as plain data: a wrong type must fail here, not deep in the model build.
        if not isinstance(self.name, str) or not isinstance(self.activation, str):
            raise ValueError(f"name and activation must be strings, got {self.name!r} and {self.activation!r}.")
        _require_ints(self, ("base_width", "num_classes"), low=1)
        _require_ints(self, ("csp_depth",), low=0)
        if self.aux not in ("none", "fpn", "reversible"):
            raise ValueError(f"aux must be 'none', 'fpn' or 'reversible', got {self.aux!r}.")
        if isinstance(self.head, dict):  # coming back from a checkpoint
            object.__setattr__(self, "head", HeadConfig(**self.head))
        if not isinstance(self.head, HeadConfig):
            raise ValueError(f"head must be a mapping of head settings, got {self.head!r}.")
        object.__setattr__(self, "input_size", _input_size(self.input_size))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"Unknown model config keys {sorted(unknown)}; known keys are {sorted(known)}.")
        return cls(**data)

    def replace(self, **changes: Any) -> "ModelConfig":
        return ModelConfig.from_dict({**self.to_dict(), **changes})
