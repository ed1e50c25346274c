"""Checkpoints that pickle the whole model in the published YOLOv9 vocabulary: Ultralytics and the YOLOv9 repo.

Both keep ``ckpt["ema"] or ckpt["model"]``: a pickled ``DetectionModel`` whose ``model`` is an
``nn.Sequential`` of numbered layers with the sub-module names our blocks reuse (cv1..cv5, m,
conv1/conv2), so layers map one to one. Layers 0-21 are the GELAN main branch; then either one head
at 22 (gelan-t/s, ``*-converted.pt``, Ultralytics) or the PGI auxiliary layers 22-28 and a
DualDDetect at 29, whose cv2/cv3/dfl are the auxiliary head and cv4/cv5/dfl2 the main head.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edge_yolov9.errors import ModelError

from .translation import Translation, class_names_from, training_size
from .unpickler import Placeholder, dict_attribute, iter_modules, module_tree_state_dict

MAIN_BLOCKS = ("Conv", "Conv", "ELAN1", "AConv", "RepNCSPELAN4", "AConv", "RepNCSPELAN4", "AConv", "RepNCSPELAN4",
               "SPPELAN", "Upsample", "Concat", "RepNCSPELAN4", "Upsample", "Concat", "RepNCSPELAN4",
               "AConv", "Concat", "RepNCSPELAN4", "AConv", "Concat", "RepNCSPELAN4")
AUX_BLOCKS = ("SPPELAN", "Upsample", "Concat", "RepNCSPELAN4", "Upsample", "Concat", "RepNCSPELAN4")
# Head part -> our module (None: the fixed DFL projection, verified instead of loaded).
SINGLE_HEAD_PARTS: dict[str, str | None] = {"cv2": "head.box", "cv3": "head.cls", "dfl": None}
DUAL_HEAD_PARTS: dict[str, str | None] = {"cv2": "aux_head.box", "cv3": "aux_head.cls", "dfl": None,
                                          "cv4": "head.box", "cv5": "head.cls", "dfl2": None}
HEADS = {"Detect": SINGLE_HEAD_PARTS, "DDetect": SINGLE_HEAD_PARTS,
         "DualDetect": DUAL_HEAD_PARTS, "DualDDetect": DUAL_HEAD_PARTS}
ACTIVATIONS = {"SiLU": "silu", "ReLU6": "relu6"}
FIX_UNSUPPORTED = ("only YOLOv9-T/S (GELAN) detectors can be imported: yolov9-t/s, gelan-t/s and their "
                   "-converted weights; yolov9-m/c/e and other YOLO versions are not supported")
_LAYER_KEY = re.compile(r"model\.(\d+)\.(.+)")


def short_name(module: Placeholder) -> str:
    return module.source.rsplit(".", 1)[-1]


def pickled_model(payload: Any) -> Placeholder | None:
    """The pickled model of a training checkpoint: its EMA when saved, as both projects evaluate that."""
    if not isinstance(payload, dict):
        return None
    return next((payload[key] for key in ("ema", "model") if isinstance(payload.get(key), Placeholder)), None)


@dataclass(frozen=True)
class PickledModelFormat:
    """A project that saves its ``DetectionModel`` object, recognised by where its classes live; its training
    settings (a dict, or a pickled namespace) under ``settings_key`` may record the input size, ``imgsz``."""

    name: str
    description: str
    module_prefix: str
    settings_key: str
    license: str

    def recognizes(self, payload: Any) -> bool:
        model = pickled_model(payload)
        return model is not None and model.source.startswith(self.module_prefix)

    def translate(self, payload: Any, source: str) -> Translation:
        model = pickled_model(payload)
        if model is None:
            raise ModelError(f"{source} holds no pickled model under 'ema' or 'model'",
                             "pass the training checkpoint (best.pt / last.pt), not an exported file")
        if short_name(model) != "DetectionModel":
            raise ModelError(f"{source} holds a {short_name(model)}, not a detection model",
                             "import an object-detection checkpoint; " + FIX_UNSUPPORTED)
        layers = self._layers(model, source)
        head_parts = HEADS[short_name(layers[-1])]
        translation = _translate_keys(module_tree_state_dict(model), len(layers) - 1, head_parts)
        if isinstance(payload.get("ema"), Placeholder) and isinstance(payload.get("model"), Placeholder):
            translation.notes.append("used the EMA weights (ckpt['ema']); skipped ckpt['model']")
        translation.names = class_names_from(model.attributes.get("names"))
        translation.activation = _activation(model, source)
        settings = payload.get(self.settings_key)
        settings = settings.attributes if isinstance(settings, Placeholder) else settings
        if isinstance(settings, dict):
            translation.input_size = training_size(settings.get("imgsz"))
        return translation

    @staticmethod
    def _layers(model: Placeholder, source: str) -> list[Placeholder]:
        """The numbered layers, checked block by block against the GELAN-T/S layouts."""
        sequential = dict_attribute(model, "_modules").get("model")
        children = dict_attribute(sequential, "_modules") if isinstance(sequential, Placeholder) else None
        if not children:
            raise ModelError(f"{source}: the pickled DetectionModel has no layer list", FIX_UNSUPPORTED)
        layers = list(children.values())
        head = short_name(layers[-1])
        if head not in HEADS:
            raise ModelError(f"{source}: the last layer is a {head}, not a detection head "
                             f"({', '.join(sorted(HEADS))})", FIX_UNSUPPORTED)
        expected = MAIN_BLOCKS + (AUX_BLOCKS if HEADS[head] is DUAL_HEAD_PARTS else ())
        found = tuple(short_name(layer) for layer in layers[:-1])
        for index, (got, want) in enumerate(zip(found, expected)):
            if got != want:
                raise ModelError(f"{source}: layer {index} is a {got} where YOLOv9-T/S has a {want}",
                                 FIX_UNSUPPORTED)
        if len(found) != len(expected):
            raise ModelError(f"{source}: {len(found)} layers before the {head} head, where YOLOv9-T/S has "
                             f"{len(expected)}", FIX_UNSUPPORTED)
        return layers


def _translate_keys(state_dict: dict, head_index: int, head_parts: dict[str, str | None]) -> Translation:
    """``model.N.*`` -> ``layers.N.*`` (main branch), ``aux_layers.(N-22).*``, or the heads' parts."""
    translation = Translation()
    first_aux = len(MAIN_BLOCKS)
    for key, tensor in state_dict.items():
        match = _LAYER_KEY.fullmatch(key)
        if match is None:
            translation.unmapped.append(key)
            continue
        index, rest = int(match[1]), match[2]
        if index < first_aux:
            translation.add(f"layers.{index}.{rest}", key, tensor)
        elif index < head_index:
            translation.add(f"aux_layers.{index - first_aux}.{rest}", key, tensor)
        else:
            part, _, inner = rest.partition(".")
            if part not in head_parts:
                translation.unmapped.append(key)
            elif head_parts[part] is None:
                translation.dfl[key] = tensor
            else:
                translation.add(f"{head_parts[part]}.{inner}", key, tensor)
    return translation


def _activation(model: Placeholder, source: str) -> str:
    """The zoo activation of the pickled ``act`` modules (identities of linear branches aside)."""
    found = {short_name(module) for path, module in iter_modules(model) if path.endswith(".act.")} - {"Identity"}
    names = {ACTIVATIONS.get(name) for name in found}
    if len(names) != 1 or None in names:
        raise ModelError(f"{source} uses the activation(s) {sorted(found) or 'none'}; the model zoo has "
                         f"{', '.join(sorted(ACTIVATIONS))} (one per model)",
                         "import a model trained with SiLU (the default) or ReLU6")
    return names.pop()


ULTRALYTICS = PickledModelFormat(
    "ultralytics", "Ultralytics YOLOv9-T/S checkpoints (yolov9t.pt, yolov9s.pt and their fine-tunes)", "ultralytics.",
    "train_args", "AGPL-3.0")
YOLOV9 = PickledModelFormat(
    "yolov9", "the YOLOv9 repository's yolov9-t/s, gelan-t/s and *-converted.pt checkpoints", "models.", "opt", "GPL-3.0")
