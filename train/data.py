"""YOLO-format datasets: ``data.yaml``, image lists and label files, parsed and checked once here.

Training and validation both read data through :func:`load_data_config` and :func:`list_split`,
so a dataset is accepted or rejected by the same rules everywhere. Every problem of a split is
collected and reported in one :class:`~edge_yolov9.errors.DatasetError`, not one per run.

``data.yaml`` keys (Ultralytics layout)::

    path: .                    # dataset root, relative to this file's folder (default: that folder)
    train: images/train2017    # each split: an image folder, a list of folders, or a .txt list of
    val: images/val2017        #   images (lines relative to the .txt's folder); relative to `path`
    test: images/test2017      # optional
    names: [person, bicycle]   # or {0: person, 1: bicycle}; `nc` is optional and must agree
    val_json: annotations/instances_val2017.json   # optional, see below

``<split>_json`` (optional, relative to ``path``) names a COCO json with the ground truth of that
split. Validation then scores against it instead of the YOLO labels, which keeps COCO's crowd
regions (dropped by the usual COCO-to-YOLO conversion) and reproduces official COCO numbers.

Labels: an image ``.../images/a/b.jpg`` has its labels in ``.../labels/a/b.txt`` (the last
``images`` folder replaced by ``labels``; next to the image when there is none). A line is
``class cx cy w h`` normalized to [0, 1] by the image size, or a polygon ``class x1 y1 x2 y2 ...``
(segmentation datasets), whose bounding box is used. No label file: an image with no objects.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edge_yolov9.errors import DatasetError
from edge_yolov9.preprocess import IMAGE_SUFFIXES
from edge_yolov9.sources import folder_images

SPLITS = ("train", "val", "test")
DATA_YAML = "data.yaml"
# Normalized coordinates may overshoot [0, 1] by this much (rounding in exporters); boxes are then clipped.
COORD_TOLERANCE = 0.01
MAX_LISTED_PROBLEMS = 20

FIX_FIELDS = ("write each object as 'class cx cy w h' (5 numbers) or as a polygon 'class x1 y1 x2 y2 x3 y3 ...'; "
              "delete stray lines")
FIX_CLASS = "class ids index `names` in data.yaml (0 .. N-1): correct the id or add the missing names"
FIX_COORDS = ("coordinates are fractions of the image width and height in [0, 1], with positive width and height; "
              "divide pixel coordinates by the image size, or delete the line")


@dataclass(frozen=True)
class DataConfig:
    """A parsed ``data.yaml``: resolved split sources, class names and optional COCO jsons."""

    yaml_path: Path
    root: Path
    names: tuple[str, ...]
    splits: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    coco_json: dict[str, Path] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class Sample:
    """One image and its boxes: ``labels`` is (N, 5) float32 rows ``class, cx, cy, w, h``, normalized."""

    image_path: Path
    labels: np.ndarray


@dataclass(frozen=True)
class DatasetProblem:
    """One bad line (or file) of a dataset, with what to do about it."""

    path: Path
    line: int | None
    message: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.message}"


def problems_error(problems: list[DatasetProblem], what: str) -> DatasetError:
    """One error listing the first problems (and how many more), with the fix of each kind of problem."""
    shown = "\n  ".join(str(p) for p in problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    listing = f"{shown}\n  ... and {more} more" if more > 0 else shown
    fixes = "\n  fix: ".join(dict.fromkeys(p.fix for p in problems))
    return DatasetError(f"{len(problems)} problem(s) in {what}:\n  {listing}", fixes)


def _class_name(value: Any, class_id: int, yaml_path: Path) -> str:
    """A class name as YAML read it: a non-empty string, or an integer (written as its digits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{yaml_path}: class {class_id} in `names` is {value!r}, not a class name",
                           "write each class name as a non-empty string, e.g. `names: [person, car]`; quote names "
                           "YAML would read as something else ('null', 'yes', '1.5', '[a, b]')")
    return value


def _parse_names(raw: Any, nc: Any, yaml_path: Path) -> tuple[str, ...]:
    if raw is None and isinstance(nc, int) and nc > 0:
        return tuple(f"class{i}" for i in range(nc))
    if isinstance(raw, dict):
        try:
            by_id = {int(k): v for k, v in raw.items()}
        except (TypeError, ValueError):
            by_id = {}
        if sorted(by_id) != list(range(len(raw))):
            raise DatasetError(f"{yaml_path}: `names` ids must be the integers 0 .. {len(raw) - 1}, got {list(raw)}",
                               "number the classes 0, 1, 2, ... without gaps, or write `names` as a list")
        names = tuple(_class_name(by_id[i], i, yaml_path) for i in range(len(by_id)))
    elif isinstance(raw, list):
        names = tuple(_class_name(name, i, yaml_path) for i, name in enumerate(raw))
    else:
        raise DatasetError(f"{yaml_path} has no class `names`",
                           "add `names: [person, car, ...]` (or a {0: person, 1: car} mapping)")
    if not names:
        raise DatasetError(f"{yaml_path}: `names` is empty", "list at least one class name")
    if nc is not None and nc != len(names):
        raise DatasetError(f"{yaml_path}: nc is {nc} but `names` lists {len(names)} classes",
                           "make `nc` equal the number of names, or delete `nc`")
    return names


def _as_paths(value: Any, key: str, root: Path, yaml_path: Path) -> tuple[Path, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise DatasetError(f"{yaml_path}: `{key}` must be a path or a list of paths, got {value!r}",
                           f"write e.g. `{key}: images/{key}`")
    return tuple(root / os.path.expanduser(v) for v in values)


def _as_path(value: Any, key: str, root: Path, yaml_path: Path) -> Path:
    if isinstance(value, list):
        raise DatasetError(f"{yaml_path}: `{key}` must be one path, got a list", f"keep one file in `{key}`")
    return _as_paths(value, key, root, yaml_path)[0]


def load_data_config(path: str | os.PathLike) -> DataConfig:
    """Parse ``data.yaml`` (or the ``data.yaml`` inside a dataset folder); split folders are checked
    when a split is listed, so a missing ``test`` folder does not stop training."""
    yaml_path = Path(path)
    if yaml_path.is_dir():
        if not (yaml_path / DATA_YAML).is_file():
            raise DatasetError(f"No {DATA_YAML} in the dataset folder {yaml_path}",
                               f"pass the dataset's yaml file, or create {yaml_path / DATA_YAML} "
                               "with path, train, val and names")
        yaml_path = yaml_path / DATA_YAML
    if not yaml_path.is_file():
        raise DatasetError(f"Dataset config not found: {yaml_path}",
                           f"pass a {DATA_YAML} or a dataset folder containing one")
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{yaml_path}:{mark.line + 1}" if mark is not None else str(yaml_path)
        raise DatasetError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err})",
                           "fix the syntax on that line") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"Cannot read {yaml_path}: {err}", "check the file's permissions and encoding") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{yaml_path} is not a mapping of keys", "write `path:`, `train:`, `val:` and `names:` keys")

    names = _parse_names(data.get("names"), data.get("nc"), yaml_path)
    root = yaml_path.parent / os.path.expanduser(str(data.get("path") or "."))
    if not root.is_dir():
        raise DatasetError(f"{yaml_path}: dataset root `path: {data.get('path')}` is not a folder ({root})",
                           f"set `path` to the dataset folder, absolute or relative to {yaml_path.parent}")
    splits = {s: _as_paths(data[s], s, root, yaml_path) for s in SPLITS if data.get(s) is not None}
    jsons = {s: _as_path(data[f"{s}_json"], f"{s}_json", root, yaml_path)
             for s in SPLITS if data.get(f"{s}_json") is not None}
    return DataConfig(yaml_path=yaml_path, root=root, names=names, splits=splits, coco_json=jsons)


def list_images(cfg: DataConfig, split: str) -> list[Path]:
    """The image paths of a split, sorted; missing folders and missing listed images are reported together."""
    if split not in cfg.splits:
        raise DatasetError(f"{cfg.yaml_path} declares no `{split}` split",
                           f"add `{split}: images/{split}` (a folder, a list of folders or a .txt list of images)")
    images: set[Path] = set()
    problems: list[DatasetProblem] = []
    for source in cfg.splits[split]:
        if source.is_dir():
            images.update(folder_images(source))
        elif source.is_file() and source.suffix == ".txt":
            for number, line in enumerate(source.read_text(encoding="utf-8-sig").splitlines(), 1):
                if line.strip():
                    image = source.parent / line.strip()
                    if image.is_file():
                        images.add(image)
                    else:
                        problems.append(DatasetProblem(source, number, f"listed image {image} does not exist",
                                                     "remove the line or restore the image; paths are relative "
                                                     "to the list's folder"))
        else:
            problems.append(DatasetProblem(cfg.yaml_path, None, f"`{split}` source {source} does not exist",
                                         f"create it or correct `{split}:` (relative to the dataset root {cfg.root})"))
    if problems:
        raise problems_error(problems, f"the `{split}` split of {cfg.yaml_path}")
    if not images:
        raise DatasetError(f"No images in the `{split}` split of {cfg.yaml_path} "
                           f"({', '.join(map(str, cfg.splits[split]))})",
                           f"put the images ({', '.join(IMAGE_SUFFIXES)}) there or correct `{split}:`")
    return sorted(images)


def label_path(image_path: Path) -> Path:
    """``.../images/x/y.jpg`` -> ``.../labels/x/y.txt`` (the last ``images`` folder); next to the image otherwise."""
    parts = list(image_path.parts)
    folders = [i for i, part in enumerate(parts[:-1]) if part == "images"]
    if folders:
        parts[folders[-1]] = "labels"
    return Path(*parts).with_suffix(".txt")


class _BadLine(Exception):
    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.message, self.fix = message, fix


def _parse_line(fields: list[str], num_classes: int) -> tuple[float, ...]:
    """One label line to (class, cx, cy, w, h) clipped to the image; raises _BadLine."""
    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        raise _BadLine(f"{len(fields)} fields where 5 (or a polygon's 7, 9, ...) are expected", FIX_FIELDS)
    values = []
    for text in fields:
        try:
            values.append(float(text))
        except ValueError:
            raise _BadLine(f"{text!r} is not a number", FIX_FIELDS) from None
    if not all(math.isfinite(v) for v in values):
        raise _BadLine("non-finite number", FIX_FIELDS)
    class_id, coords = values[0], values[1:]
    if class_id != int(class_id) or not 0 <= class_id < num_classes:
        raise _BadLine(f"class id {fields[0]} is not one of the {num_classes} classes (0-{num_classes - 1})",
                       FIX_CLASS)
    if min(coords) < -COORD_TOLERANCE or max(coords) > 1 + COORD_TOLERANCE:
        raise _BadLine(f"coordinates outside [0, 1] ({min(coords):g} .. {max(coords):g})", FIX_COORDS)
    if len(fields) == 5:
        cx, cy, w, h = coords
        if w <= 0 or h <= 0:
            raise _BadLine(f"box with non-positive size w={w:g} h={h:g}", FIX_COORDS)
        corners = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    else:
        xs, ys = coords[0::2], coords[1::2]
        corners = (min(xs), min(ys), max(xs), max(ys))
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in corners)
    if x2 <= x1 or y2 <= y1:
        raise _BadLine("box with no area inside the image", FIX_COORDS)
    return class_id, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1


def read_labels(path: Path, num_classes: int) -> tuple[np.ndarray, list[DatasetProblem]]:
    """Parse and check one label file: the (N, 5) good rows and a problem per bad line; no file = no objects."""
    rows: list[tuple[float, ...]] = []
    problems: list[DatasetProblem] = []
    if not path.exists():
        return np.zeros((0, 5), dtype=np.float32), problems
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # Windows editors start files with a BOM
    except (OSError, UnicodeDecodeError) as err:
        problems.append(DatasetProblem(path, None, f"cannot read the label file ({err})",
                                     "label files are UTF-8 text; re-export or delete the file"))
        lines = []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        try:
            rows.append(_parse_line(fields, num_classes))
        except _BadLine as bad:
            problems.append(DatasetProblem(path, number, f"{bad.message}: {line.strip()[:80]!r}", bad.fix))
    return np.array(rows, dtype=np.float32).reshape(-1, 5), problems


def list_split(cfg: DataConfig, split: str) -> list[Sample]:
    """Every image of a split with its checked labels; all bad lines of the split raise one DatasetError."""
    samples: list[Sample] = []
    problems: list[DatasetProblem] = []
    for image in list_images(cfg, split):
        labels, bad = read_labels(label_path(image), cfg.num_classes)
        samples.append(Sample(image, labels))
        problems.extend(bad)
    if problems:
        raise problems_error(problems, f"the labels of the `{split}` split of {cfg.yaml_path}")
    return samples
