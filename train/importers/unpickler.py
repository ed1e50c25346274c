"""Reading foreign checkpoints without running the code their pickles name.

``torch.load(weights_only=False)`` imports and calls whatever a pickle names: the foreign package's
classes, or ``os.system`` in a malicious file. This module is a ``pickle_module`` for ``torch.load``
whose unpickler resolves only an allow-list of inert constructors (tensor rebuilds, ``OrderedDict``,
``set``, dtypes; torch.load maps storage types itself). Every other global becomes a
:class:`Placeholder` class: "calling" it only records the arguments, and unpickled state is stored,
never applied. A pickled model thus comes back as a tree of placeholders whose recorded
``__dict__`` holds the real tensors.
"""

from __future__ import annotations

import _compat_pickle
import os
import pickle
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import torch

from edge_yolov9.errors import ModelError

from ..checkpoint import check_container

# Globals a foreign checkpoint may resolve to real objects: constructors of tensors and plain containers,
# none of which runs code named by the file. Storage classes are resolved by torch.load itself.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): torch._utils._rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
}


class Placeholder:
    """An object of a class that was not imported: it records what unpickling gave it, and does nothing.

    ``args``/``kwargs`` are the constructor arguments, ``state`` what ``__setstate__`` received (an
    ``nn.Module``'s ``__dict__``), ``items``/``elements`` what was stored into it as a mapping or list.
    """

    source: str = "?"  # "module.QualName" of the class it stands for; set on each generated subclass

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        obj = super().__new__(cls)
        obj.args, obj.kwargs = args, kwargs
        obj.state, obj.items, obj.elements = None, {}, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accept any constructor call (pickle's REDUCE/INST opcodes) without acting on it."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.elements.append(value)

    def extend(self, values: Any) -> None:
        self.elements.extend(values)

    def __repr__(self) -> str:
        return f"<placeholder {self.source}>"

    @property
    def attributes(self) -> dict[str, Any]:
        """The recorded instance ``__dict__`` (pickled state may be ``(dict, slots)``); empty if none."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], (dict, type(None))):
            state = {**(state[0] or {}), **(state[1] if isinstance(state[1], dict) else {})}
        return state if isinstance(state, dict) else {}


_PLACEHOLDER_CLASSES: dict[str, type[Placeholder]] = {}


def placeholder_class(module: str, name: str) -> type[Placeholder]:
    """The (cached) placeholder class standing for ``module.name``."""
    source = f"{module}.{name}"
    if source not in _PLACEHOLDER_CLASSES:
        _PLACEHOLDER_CLASSES[source] = type(name, (Placeholder,), {"source": source, "__module__": __name__})
    return _PLACEHOLDER_CLASSES[source]


def _allowed_global(module: str, name: str) -> Any | None:
    if (module, name) in _ALLOWED_GLOBALS:
        return _ALLOWED_GLOBALS[(module, name)]
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    return None


class Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` never imports: allow-listed objects or placeholders."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles (torch.save's default) name builtins the Python 2 way, e.g. __builtin__.set.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        allowed = _allowed_global(module, name)
        return allowed if allowed is not None else placeholder_class(module, name)


def load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` with the restricted :class:`Unpickler` (torch.load calls it for legacy files)."""
    return Unpickler(file, **kwargs).load()


def module_tree_state_dict(root: Placeholder, prefix: str = "") -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a pickled ``nn.Module`` tree, rebuilt from its placeholders' recorded state.

    Keys are exactly those ``root.state_dict()`` would have had (non-persistent buffers excluded).
    """
    tensors: dict[str, torch.Tensor] = {}
    for path, module in iter_modules(root, prefix):
        attrs = module.attributes
        skipped = attrs.get("_non_persistent_buffers_set")
        skipped = skipped if isinstance(skipped, (set, frozenset)) else set()
        for group in ("_parameters", "_buffers"):
            for name, tensor in dict_attribute(module, group).items():
                if isinstance(tensor, torch.Tensor) and not (group == "_buffers" and name in skipped):
                    tensors[f"{path}{name}"] = tensor
    return tensors


def dict_attribute(module: Placeholder, name: str) -> dict:
    """A recorded dict attribute (``_modules``, ``_parameters``...); empty if absent or not a dict."""
    value = module.attributes.get(name)
    return value if isinstance(value, dict) else {}


def iter_modules(root: Placeholder, prefix: str = "") -> Iterator[tuple[str, Placeholder]]:
    """``(dotted path + ".", placeholder)`` for ``root`` and every pickled sub-module, depth first.

    Each module is visited once, under its first path (as ``nn.Module.named_modules`` does): a crafted
    pickle whose modules share children would otherwise have 2**depth paths, and a cycle none that ends.
    """
    stack: list[tuple[str, Placeholder]] = [(prefix, root)]
    seen: set[int] = set()
    while stack:
        path, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield path, module
        for name, child in reversed(list(dict_attribute(module, "_modules").items())):
            if isinstance(child, Placeholder):
                stack.append((f"{path}{name}.", child))


def class_name(obj: Any) -> str:
    """``module.QualName`` of a placeholder's class; the type name of anything else."""
    return obj.source if isinstance(obj, Placeholder) else type(obj).__name__


FIX_NOT_CHECKPOINT = ("pass a PyTorch checkpoint (.pt/.pth/.ckpt written by torch.save) of Ultralytics YOLOv9, "
                      "the YOLOv9 repository or MIT YOLO")


def read_foreign_checkpoint(path: str | os.PathLike) -> Any:
    """Unpickle a foreign checkpoint on the CPU with the restricted unpickler; errors become ModelErrors."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Checkpoint not found: {path}", "check the path")
    check_container(path, "a PyTorch checkpoint", FIX_NOT_CHECKPOINT)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=sys.modules[__name__],
                          mmap=False)
    except ModelError:
        raise
    except Exception as err:  # malformed bytes surface as any exception type from pickle or torch
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelError(f"{path} could not be read as a PyTorch checkpoint ({type(err).__name__}: {first_line})",
                         "the file is truncated or damaged: download or copy it again") from None

