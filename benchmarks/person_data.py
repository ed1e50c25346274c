"""Person-only datasets made from the real COCO images in ../shared, for the benchmarks that start from a
1-class model (convert speed, fine-tuning): coco128 (train) and coco-val158 (val, scored against its COCO
json restricted to the person category, crowd regions included).

The folders are built once under ``~/.cache/edge-yolov9-bench`` (images linked, not copied), in the layout
Ultralytics reads too."""

from __future__ import annotations

import json
import os
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
COCO128, COCO_VAL158 = SHARED / "coco128", SHARED / "coco-val158"
PERSON = 0  # COCO's class 0, category id 1
CACHE = Path(os.environ.get("EDGE_YOLOV9_BENCH_CACHE", Path.home() / ".cache" / "edge-yolov9-bench"))


def _person_labels(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for label in source.glob("*.txt"):
        rows = [line for line in label.read_text().splitlines() if line.split()[:1] == [str(PERSON)]]
        (target / label.name).write_text("".join(f"{row}\n" for row in rows))


def _person_json(source: Path, target: Path) -> None:
    coco = json.loads(source.read_text())
    person_id = next(c["id"] for c in coco["categories"] if c["name"] == "person")
    coco["categories"] = [c for c in coco["categories"] if c["id"] == person_id]
    coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] == person_id]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(coco))


def _person_dataset(source: Path, name: str, split: str, val_json: Path | None) -> Path:
    root = CACHE / name
    data_yaml = root / "data.yaml"
    if data_yaml.is_file():
        return data_yaml
    if not source.is_dir():
        raise SystemExit(f"{source} not found: this benchmark needs the real COCO images in ../shared/data")
    images = root / "images" / split
    images.mkdir(parents=True, exist_ok=True)
    for image in (source / "images" / split).iterdir():  # each file linked: Ultralytics resolves a linked folder
        if not (images / image.name).exists():
            (images / image.name).symlink_to(image)
    _person_labels(source / "labels" / split, root / "labels" / split)
    extra = ""
    if val_json is not None:
        _person_json(val_json, root / "annotations" / "person.json")
        extra = "val_json: annotations/person.json\n"
    staging = data_yaml.with_suffix(".tmp")
    staging.write_text(f"path: {root}\ntrain: images/{split}\nval: images/{split}\n{extra}names: [person]\n")
    staging.rename(data_yaml)
    return data_yaml


def person_coco128() -> Path:
    """data.yaml of the 128 coco128 images, person labels only (train and val are the same images)."""
    return _person_dataset(COCO128, "person-coco128", "train2017", None)


def person_val158() -> Path:
    """data.yaml of the 158 coco-val158 images, scored against their COCO json restricted to person."""
    return _person_dataset(COCO_VAL158, "person-val158", "val2017",
                           COCO_VAL158 / "annotations" / "instances_val2017_subset.json")


def person_train_val() -> Path:
    """data.yaml with coco128 (person labels) as train and coco-val158 (its COCO json, person) as val: the
    fine-tuning benchmark's data. Built from the two datasets above."""
    root = CACHE / "person-coco128-val158"
    data_yaml = root / "data.yaml"
    if not data_yaml.is_file():
        train, val = person_coco128().parent, person_val158().parent
        root.mkdir(parents=True, exist_ok=True)
        for kind in ("images", "labels"):
            (root / kind).mkdir(exist_ok=True)
            for link, target in ((root / kind / "train", train / kind / "train2017"),
                                 (root / kind / "val", val / kind / "val2017")):
                if not link.exists():
                    link.symlink_to(target, target_is_directory=True)
        staging = data_yaml.with_suffix(".tmp")
        staging.write_text(f"path: {root}\ntrain: images/train\nval: images/val\n"
                           f"val_json: {val / 'annotations' / 'person.json'}\nnames: [person]\n")
        staging.rename(data_yaml)
    return data_yaml

