"""Import YOLOv9-T/S checkpoints of Ultralytics, the YOLOv9 repository and MIT YOLO, without their code.

``import_checkpoint(path)`` reads a foreign checkpoint with a restricted unpickler (nothing it names
is imported or called), renames its tensors, infers the architecture from their shapes and returns
the zoo's model with a full account of the tensors; ``save_imported`` writes it as an edge-yolov9
checkpoint. Torch is imported on first use, so the CLI's ``--help`` stays fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FORMATS", "ImportResult", "import_checkpoint", "save_imported"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import core

        return getattr(core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
