"""MIT YOLO (MultimediaTechLab/YOLO) weights: a state_dict of its layer list, no pickled classes.

Its release files (v9-t.pt, v9-s.pt) hold the state_dict of ``YOLO.model`` (an ``nn.ModuleList``):
keys ``"{layer}.{path}"``, sometimes under ``"model_state_dict"``. Its Lightning checkpoints (.ckpt)
hold it under ``"state_dict"`` with the prefixes ``"model.model."`` and, for the EMA copy,
``"ema.model."``. Layers are numbered as in the official configs: 0-21 the GELAN main branch, 22 the
main MultiheadDetection, then the auxiliary layers 23-29 and their head at 30.

Its blocks name their convs ``conv1``..``conv5`` where the published code says ``cv1``..``cv5``
(RepConv keeps ``conv1``/``conv2`` like ours), ``bottleneck`` where it says ``m``, and AConv's conv
``conv``; each head level has ``anchor_conv`` (box), ``class_conv`` (class) and a fixed Conv3d DFL
projection ``anc2vec``. It stores no class names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from edge_yolov9.errors import ModelError

from .translation import Translation

MAIN_HEAD_INDEX = 22
# (optional Lightning/EMA prefix)(layer).heads.(level).anchor_conv.: the marker of an MIT detection model.
_HEAD_KEY = re.compile(r"(?P<prefix>(?:[A-Za-z_]\w*\.)*)(?P<layer>\d+)\.heads\.\d+\.anchor_conv\.")
_LAYER_KEY = re.compile(r"(\d+)\.(.+)")
_CONV_N = re.compile(r"conv\d")
HEAD_PARTS = {"anchor_conv": "box", "class_conv": "cls"}


def _tensor_mapping(payload: Any) -> Mapping | None:
    """The state_dict inside a release file or a Lightning checkpoint."""
    if not isinstance(payload, Mapping):
        return None
    for key in ("state_dict", "model_state_dict"):
        if isinstance(payload.get(key), Mapping):
            return payload[key]
    return payload


def _model_prefixes(tensors: Mapping) -> list[str]:
    """Key prefixes of the model copies in a checkpoint, the EMA copy (the one evaluated) first."""
    prefixes = {match["prefix"] for key in tensors if isinstance(key, str) and (match := _HEAD_KEY.match(key))}
    return sorted(prefixes, key=lambda prefix: (not prefix.startswith("ema"), prefix))


def published_block_path(path: str) -> str:
    """An MIT block's parameter path in the published names: ``conv2.0.bottleneck.0.conv1.conv1.conv.weight``
    -> ``cv2.0.m.0.cv1.conv1.conv.weight`` (the last conv1 is RepConv's own, kept)."""
    parts = path.split(".")
    if parts[0] == "conv" and len(parts) > 2 and parts[1] in ("conv", "bn"):  # AConv's single Conv, "conv"
        return ".".join(["cv1", *parts[1:]])
    renamed = []
    for index, part in enumerate(parts):
        inside_repconv = index >= 3 and parts[index - 3] == "bottleneck"  # bottleneck.K.conv1.<here>
        if part == "bottleneck":
            part = "m"
        elif _CONV_N.fullmatch(part) and not inside_repconv:
            part = "cv" + part[4:]
        renamed.append(part)
    return ".".join(renamed)


@dataclass(frozen=True)
class MitFormat:
    name: str = "mit"
    description: str = "MIT YOLO (MultimediaTechLab/YOLO) v9-t/v9-s weights (.pt state dicts, Lightning .ckpt)"
    license: str = "MIT"

    def recognizes(self, payload: Any) -> bool:
        tensors = _tensor_mapping(payload)
        return tensors is not None and bool(_model_prefixes(tensors))

    def translate(self, payload: Any, source: str) -> Translation:
        tensors = _tensor_mapping(payload)
        prefixes = _model_prefixes(tensors) if tensors is not None else []
        if not prefixes:
            raise ModelError(f"{source} holds no MIT YOLO detection weights (no '<layer>.heads.0.anchor_conv' keys)",
                             "pass an MIT YOLO v9-t/v9-s weight file or training checkpoint")
        prefix, other_copies = prefixes[0], prefixes[1:]
        tensors = {key: tensor for key, tensor in tensors.items() if isinstance(key, str)}
        layer_tensors = {key[len(prefix):]: tensor for key, tensor in tensors.items()
                         if key.startswith(prefix) and isinstance(tensor, torch.Tensor)}
        head_layers = sorted({int(key.split(".", 1)[0]) for key in layer_tensors if ".heads." in key})
        if head_layers[0] != MAIN_HEAD_INDEX or len(head_layers) > 2:
            raise ModelError(f"{source}: detection heads at layers {head_layers}, where v9-t/v9-s have the main head "
                             f"at {MAIN_HEAD_INDEX} (and the auxiliary one after the auxiliary layers)",
                             "only MIT YOLO v9-t/v9-s (GELAN) can be imported; v9-m/c/e are not supported")
        translation = _translate_layers(layer_tensors, head_layers, prefix)
        skipped = [key for key in tensors if key.startswith(tuple(other_copies))]
        if skipped:
            translation.notes.append(f"used the weights under '{prefix}'; skipped the {len(skipped)} tensors of the "
                                     f"other model copies ({', '.join(other_copies)})")
        translation.unmapped += [key for key in tensors if not key.startswith((prefix, *other_copies))]
        return translation


def _translate_layers(tensors: dict[str, torch.Tensor], head_layers: list[int], prefix: str) -> Translation:
    translation = Translation()
    aux_head = head_layers[1] if len(head_layers) > 1 else None
    for key, tensor in tensors.items():
        source_key = prefix + key
        match = _LAYER_KEY.fullmatch(key)
        if match is None:
            translation.unmapped.append(source_key)
            continue
        index, rest = int(match[1]), match[2]
        if index in head_layers:
            head = "head" if index == MAIN_HEAD_INDEX else "aux_head"
            _translate_head(translation, head, rest, source_key, tensor)
        elif index < MAIN_HEAD_INDEX:
            translation.add(f"layers.{index}.{published_block_path(rest)}", source_key, tensor)
        elif aux_head is not None and index < aux_head:
            aux_index = index - MAIN_HEAD_INDEX - 1
            translation.add(f"aux_layers.{aux_index}.{published_block_path(rest)}", source_key, tensor)
        else:
            translation.unmapped.append(source_key)
    return translation


def _translate_head(translation: Translation, head: str, rest: str, source_key: str, tensor: torch.Tensor) -> None:
    """``heads.L.anchor_conv.*`` -> ``{head}.box.L.*``, ``class_conv`` -> ``cls``; ``anc2vec`` is the DFL."""
    _, level, part, inner = (rest.split(".", 3) + ["", ""])[:4]
    if part in HEAD_PARTS:
        translation.add(f"{head}.{HEAD_PARTS[part]}.{level}.{inner}", source_key, tensor)
    elif part == "anc2vec":
        translation.dfl[source_key] = tensor
    else:
        translation.unmapped.append(source_key)


MIT = MitFormat()
