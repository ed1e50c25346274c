"""edge-yolov9's own checkpoint format: config, class names and weights, loadable with ``weights_only=True``.

A checkpoint is a dict of plain data and tensors, so loading it never runs pickled code:

``{"format": "edge-yolov9", "version": 1, "config": {...}, "names": [...], "model": state_dict,
"meta": {...}}``, plus training state (optimizer, EMA, epoch) for resumable training runs.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from edge_yolov9.errors import ModelError

from .models import ModelConfig, YOLO, create_model

FORMAT = "edge-yolov9"
VERSION = 1


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in blocks: records which checkpoint a product came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike, model: YOLO, names: list[str], *,
                    meta: dict[str, Any] | None = None, **training_state: Any) -> Path:
    """Write atomically (temp file + rename), so an interrupted save never leaves a broken checkpoint."""
    if len(names) != model.cfg.num_classes:
        raise ValueError(f"{len(names)} class names for a model with {model.cfg.num_classes} classes.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "config": model.cfg.to_dict(), "names": list(names),
               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "meta": dict(meta or {}), **training_state}
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        torch.save(payload, tmp)
    os.replace(tmp.name, path)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw checkpoint dict, validated; only edge-yolov9 checkpoints load here (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Checkpoint not found: {path}", "check the path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{path} is not an edge-yolov9 checkpoint ({first_line})",
                         f"if it comes from Ultralytics, the YOLOv9 repo or MIT YOLO, convert it first: "
                         f"edge-yolov9 import {path} -o model.pt") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path} is not an edge-yolov9 checkpoint (no 'format: {FORMAT}' marker)",
                         f"convert it first: edge-yolov9 import {path} -o model.pt")
    if payload.get("version", 0) > VERSION:
        raise ModelError(f"{path} was written by a newer edge-yolov9 (format version {payload['version']})",
                         "upgrade edge-yolov9")
    return payload


def load_checkpoint(path: str | os.PathLike, *, strict: bool = True) -> tuple[YOLO, list[str], dict[str, Any]]:
    """Model (eval mode), class names and metadata from an edge-yolov9 checkpoint."""
    payload = read_checkpoint(path)
    try:
        cfg = ModelConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as err:
        raise ModelError(f"{path} holds an invalid model config: {err}", "re-create the checkpoint") from None
    model = create_model(cfg, state_dict=payload["model"], strict=strict)
    return model.eval(), list(payload["names"]), dict(payload.get("meta", {}))
