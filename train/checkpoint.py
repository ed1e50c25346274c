"""edge-yolov9's own checkpoint format: config, class names and weights, loadable with ``weights_only=True``.

A checkpoint is a dict of plain data and tensors, so loading it never runs pickled code:

``{"format": "edge-yolov9", "version": 2, "config": {...}, "names": [...], "model": state_dict,
"meta": {...}}``, plus training state (optimizer, EMA, epoch) for resumable training runs. The config
holds the model's training input size (version 2); version 1 files kept it in ``meta["imgsz"]``, if at
all, and are read as if they held it in the config.
Its structure is checked once, in :func:`read_checkpoint`, so every command refuses a damaged or
altered file with the same message naming the key.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from edge_yolov9.cli import InputSizes
from edge_yolov9.errors import ModelError, OutputError, output_error
from edge_yolov9.model_file import InputSize

from .models import ModelConfig, YOLO, create_model
from .models.config import DEFAULT_INPUT_SIZE

logger = logging.getLogger(__name__)

FORMAT = "edge-yolov9"
VERSION = 2  # 2: the config holds input_size
# A checkpoint may decompress to at most this much: torch.load allocates every zip entry's declared size
# before reading it, so a small deflate-compressed file could otherwise claim gigabytes. yolov9-s with its
# training state is about 0.15 GB.
MAX_UNCOMPRESSED_BYTES = 2 << 30
# Tensors of trained weights compress by a few percent; entries that claim this ratio are crafted.
MAX_COMPRESSION_RATIO = 100
RATIO_CHECKED_FROM_BYTES = 16 << 20
TRAINING_STATE: dict[str, type | tuple[type, ...]] = {
    "train_model": dict, "optimizer": dict, "ema_updates": int, "epoch": int, "best_fitness": (int, float),
    "history": list, "train_config": dict}
FIX_RECREATE = "the file was altered or damaged: re-create it (edge-yolov9 train, or edge-yolov9 import)"

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF document"), (b"TFL3", "a TFLite model"),
    (b"\x08", "probably an ONNX model"),
)
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_OPCODE = b"\x80"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in blocks: records which checkpoint a product came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe_bytes(head: bytes) -> str:
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return kind
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return f"unknown binary data (first bytes {head[:8]!r})"


def _check_archive_size(infos: list[zipfile.ZipInfo], path: Path) -> None:
    total = sum(info.file_size for info in infos)
    if total > MAX_UNCOMPRESSED_BYTES:
        raise ModelError(f"{path} would decompress to {total / 2**30:.1f} GiB, more than the "
                         f"{MAX_UNCOMPRESSED_BYTES / 2**30:.0f} GiB any YOLOv9-T/S checkpoint needs",
                         "the file is damaged or crafted; do not use it")
    for info in infos:
        if info.file_size > RATIO_CHECKED_FROM_BYTES and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size:
            raise ModelError(f"{path}: the entry {info.filename} expands {info.compress_size:,} bytes to "
                             f"{info.file_size:,} (more than {MAX_COMPRESSION_RATIO}x), which no model weights do",
                             "the file is damaged or crafted; do not use it")


def check_container(path: Path, kind: str, fix: str) -> None:
    """Refuse, before torch.load sees them, files it would misread, hand to TorchScript, or decompress
    without bound; ``kind`` names what the file should be, ``fix`` what to pass instead."""
    with path.open("rb") as f:
        head = f.read(64)
    if not head:
        raise ModelError(f"{path} is empty", fix)
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                infos = archive.infolist()
        except (zipfile.BadZipFile, OSError) as err:
            raise ModelError(f"{path} is a truncated or damaged checkpoint (its zip directory is unreadable: {err})",
                             "download or copy the file again; compare its size or sha256 with the original") from None
        records = [info.filename for info in infos]
        if any(name.endswith("constants.pkl") for name in records):
            raise ModelError(f"{path} is a TorchScript archive (torch.jit.save), which runs code when loaded",
                             "import the training checkpoint (torch.save of the model or its state_dict) instead")
        if not any(name.endswith("data.pkl") for name in records):
            raise ModelError(f"{path} is a zip archive but not {kind} (no data.pkl inside)", fix)
        _check_archive_size(infos, path)
    elif not head.startswith(_PICKLE_PROTOCOL_OPCODE):
        raise ModelError(f"{path} is not {kind}: it looks like {_describe_bytes(head)}", fix)


def check_output_path(path: str | os.PathLike, what: str) -> Path:
    """Refuse an output path that is a folder, or lies under a file, before anything is computed or written."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"Cannot write {what} to {path}: it is a folder", f"pass a file name, e.g. {path / 'model.pt'}")
    existing = next((parent for parent in path.parents if parent.exists()), None)
    if existing is not None and not existing.is_dir():
        raise OutputError(f"Cannot write {what} to {path}: {existing} is a file, not a folder", "pick another path")
    return path


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err``: torch.save reports a failed write as a RuntimeError raised from it."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s tensors as a checkpoint holds them: detached, on the CPU, in the standard memory layout (training
    runs channels-last)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(path: str | os.PathLike, model: YOLO, names: list[str], *,
                    meta: dict[str, Any] | None = None, **training_state: Any) -> Path:
    """Write atomically (temp file + rename), so an interrupted save never leaves a broken checkpoint;
    the temp file is removed when the save fails, and a full disk is an OutputError that says so."""
    if len(names) != model.cfg.num_classes:
        raise ValueError(f"{len(names)} class names for a model with {model.cfg.num_classes} classes.")
    path = check_output_path(path, "the checkpoint")
    payload = {"format": FORMAT, "version": VERSION, "config": model.cfg.to_dict(), "names": list(names),
               "model": plain_state_dict(model),
               "meta": dict(meta or {}), **training_state}
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
            tmp = handle.name
            torch.save(payload, handle)
        os.chmod(tmp, 0o666 & ~_umask())  # a temp file is private (0600); a checkpoint is as any file written
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = _os_error(err)
        if cause is not None:
            raise output_error(cause, path, "the checkpoint") from None
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temp_files(folder: Path, *names: str) -> list[Path]:
    """Delete the temp files that saves of ``names`` killed mid-write (kill -9, power loss) left in
    ``folder``; returns them."""
    stale = [p for name in names for p in sorted(folder.glob(f".{name}.*")) if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class ForeignCheckpointError(ModelError):
    """A file that is not an edge-yolov9 checkpoint (another project's, or not a checkpoint at all)."""


def _invalid(path: Path, key: str, problem: str) -> ModelError:
    return ModelError(f"{path} is a damaged edge-yolov9 checkpoint: '{key}' {problem}", FIX_RECREATE)


def _upgrade_version_1(payload: dict[str, Any]) -> None:
    """Version 1 configs lack the input size: a training run's is its meta's ``imgsz``, an import's is unknown
    (the default)."""
    config, meta = payload.get("config"), payload.get("meta")
    if payload.get("version") == 1 and isinstance(config, dict) and "input_size" not in config:
        trained = meta.get("imgsz", DEFAULT_INPUT_SIZE) if isinstance(meta, dict) else DEFAULT_INPUT_SIZE
        payload["config"] = {**config, "input_size": trained}


def _check_structure(payload: dict[str, Any], path: Path) -> None:
    version = payload.get("version")
    if type(version) is not int or version < 1:
        raise _invalid(path, "version", f"is {version!r}, not a format version (an integer from 1)")
    if version > VERSION:
        raise ModelError(f"{path} was written by a newer edge-yolov9 (format version {version})",
                         "upgrade edge-yolov9")
    for key, kind in (("config", dict), ("names", list), ("model", dict), ("meta", dict)):
        if not isinstance(payload.get(key), kind):
            problem = "is missing" if key not in payload else f"is a {type(payload[key]).__name__}, not a {kind.__name__}"
            raise _invalid(path, key, problem)
    try:
        cfg = ModelConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as err:
        raise _invalid(path, "config", f"is not a valid model config ({err})") from None
    names = payload["names"]
    if not names or not all(isinstance(name, str) and name for name in names):
        raise _invalid(path, "names", f"must list the class names as non-empty strings, got {names[:5]!r}")
    if len(names) != cfg.num_classes:
        raise _invalid(path, "names", f"lists {len(names)} classes but the model has {cfg.num_classes}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload["model"].items()):
        raise _invalid(path, "model", "must map parameter names to tensors")
    if any(key in payload for key in TRAINING_STATE):  # a run's last.pt: resume needs all of it
        for key, kind in TRAINING_STATE.items():
            if not isinstance(payload.get(key), kind) or isinstance(payload.get(key), bool):
                raise _invalid(path, key, "is missing" if key not in payload else
                               f"is a {type(payload[key]).__name__}, not training state")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw checkpoint dict, validated; only edge-yolov9 checkpoints load here (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Checkpoint not found: {path}", "check the path")
    fix_foreign = (f"`edge-yolov9 import {path} -o model.pt` reads YOLOv9 checkpoints of Ultralytics, the YOLOv9 "
                   "repository and MIT YOLO into this format; then use model.pt")
    check_container(path, "an edge-yolov9 checkpoint", fix_foreign)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's own text tells how to load the file unsafely: not advice to pass on
        raise ForeignCheckpointError(f"{path} is not an edge-yolov9 checkpoint: it holds Python objects of another "
                                     "project, or is damaged", fix_foreign) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ForeignCheckpointError(f"{path} is not an edge-yolov9 checkpoint (no 'format: {FORMAT}' marker)",
                                     fix_foreign)
    _upgrade_version_1(payload)
    _check_structure(payload, path)
    return payload


def load_checkpoint(path: str | os.PathLike, *, strict: bool = True) -> tuple[YOLO, list[str], dict[str, Any]]:
    """Model (eval mode), class names and metadata from an edge-yolov9 checkpoint."""
    payload = read_checkpoint(path)
    cfg = ModelConfig.from_dict(payload["config"])
    try:
        model = create_model(cfg, state_dict=payload["model"], strict=strict)
    except ValueError as err:  # weights that do not fit the config, or an unknown activation
        raise ModelError(f"{path} does not hold a loadable edge-yolov9 detector: {err}", FIX_RECREATE) from None
    return model.eval(), list(payload["names"]), dict(payload["meta"])


def choose_input_size(cfg: ModelConfig, requested: Any, checkpoint: str | os.PathLike,
                      sizes: InputSizes) -> InputSize:
    """The input size to run ``checkpoint``'s model at: ``requested`` (--imgsz), else the size it was trained
    at; logged with where it came from, with a warning when a requested size differs from the training size
    (the model then sees objects at scales it did not learn)."""
    trained = InputSize.of(cfg.input_size)
    if requested is None:
        size = sizes.check(trained, f"the training size stored in {checkpoint}")
        logger.info("Input size %s: the training size stored in %s", size, checkpoint)
        return size
    size = sizes.check(requested, "requested")
    if size == trained:
        logger.info("Input size %s (--imgsz), the size %s was trained at", size, checkpoint)
    else:
        logger.warning("Input size %s (--imgsz) differs from the %s %s was trained at: accuracy may be "
                       "lower; leave out --imgsz to use the training size", size, trained, checkpoint)
    return size
