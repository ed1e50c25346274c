"""YOLO-format datasets: data.yaml, image lists, label parsing and the checks that reject bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from edge_yolov9.errors import DatasetError
from edge_yolov9.train.data import label_path, list_images, list_split, load_data_config

NAMES = ["person", "bicycle", "car"]


def make_dataset(root: Path, images: list[Path], labels: dict[str, str], yaml_text: str | None = None) -> Path:
    """A YOLO dataset under ``root`` with links to real images in images/val and the given label texts
    (by image stem) in labels/val; returns its data.yaml."""
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for image in images:
        (root / "images" / "val" / image.name).symlink_to(image)
    for stem, text in labels.items():
        (root / "labels" / "val" / f"{stem}.txt").write_text(text)
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml_text if yaml_text is not None else f"path: .\nval: images/val\nnames: {NAMES}\n")
    return data_yaml


@pytest.fixture(scope="module")
def real_images(coco128) -> list[Path]:
    return sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:3]


def test_coco_val158_labels_agree_with_the_coco_json(coco_val158):
    """The YOLO labels are the json's non-crowd boxes (class k = k-th sorted category id), within rounding."""
    cfg = load_data_config(coco_val158)  # a dataset folder works as well as its data.yaml
    assert cfg.yaml_path == coco_val158 / "data.yaml" and cfg.num_classes == 80
    samples = list_split(cfg, "val")
    coco = json.loads((coco_val158 / "annotations" / "instances_val2017_subset.json").read_text())
    class_of = {cid: k for k, cid in enumerate(sorted(c["id"] for c in coco["categories"]))}
    records = {img["file_name"]: img for img in coco["images"]}
    assert sorted(s.image_path.name for s in samples) == sorted(records)
    for sample in samples:
        record = records[sample.image_path.name]
        w, h = record["width"], record["height"]
        expected = np.array([[class_of[a["category_id"]], (a["bbox"][0] + a["bbox"][2] / 2) / w,
                              (a["bbox"][1] + a["bbox"][3] / 2) / h, a["bbox"][2] / w, a["bbox"][3] / h]
                             for a in coco["annotations"] if a["image_id"] == record["id"] and not a["iscrowd"]])
        assert len(sample.labels) == len(expected), sample.image_path
        order = lambda rows: rows[np.lexsort(rows.T[::-1])]  # noqa: E731
        np.testing.assert_allclose(order(sample.labels), order(expected), atol=2e-6)


def test_missing_label_file_means_no_objects(coco128):
    samples = {s.image_path.name: s for s in list_split(load_data_config(coco128 / "data.yaml"), "train")}
    assert len(samples) == 128
    for background in ("000000000250.jpg", "000000000508.jpg"):  # coco128 has no label file for these
        assert not label_path(samples[background].image_path).exists()
        assert samples[background].labels.shape == (0, 5)
    assert sum(len(s.labels) for s in samples.values()) == 929


def test_label_path_replaces_the_last_images_folder():
    assert label_path(Path("/d/images/x/images/val/a.b.jpg")) == Path("/d/images/x/labels/val/a.b.txt")
    assert label_path(Path("/d/pics/a.png")) == Path("/d/pics/a.txt")


def test_polygon_lines_use_their_bounding_box_and_edges_are_clipped(tmp_path, real_images):
    data_yaml = make_dataset(tmp_path, real_images[:1], {real_images[0].stem: (
        "2 0.1 0.2 0.5 0.1 0.4 0.6 0.2 0.5\n"   # polygon: x 0.1-0.5, y 0.1-0.6
        "\n"                                     # blank lines are skipped
        "1 0.995 0.5 0.02 0.2\n")})              # right edge past the image, within tolerance
    (sample,) = list_split(load_data_config(data_yaml), "val")
    np.testing.assert_allclose(sample.labels, [[2, 0.3, 0.35, 0.4, 0.5], [1, 0.9925, 0.5, 0.015, 0.2]], atol=1e-6)


def test_splits_from_folder_lists_and_txt_files(tmp_path, real_images):
    make_dataset(tmp_path, real_images, {})
    (tmp_path / "images" / "more").mkdir()
    extra = tmp_path / "images" / "more" / "extra.jpg"
    extra.symlink_to(real_images[0])
    (tmp_path / "list.txt").write_text(f"./images/val/{real_images[1].name}\n{extra}\n")
    (tmp_path / "data.yaml").write_text(
        f"path: {tmp_path}\ntrain: [images/val, images/more]\nval: list.txt\nnames: {{0: a, 1: b}}\nnc: 2\n")
    cfg = load_data_config(tmp_path / "data.yaml")
    assert cfg.names == ("a", "b")
    assert [p.name for p in list_images(cfg, "train")] == ["extra.jpg"] + sorted(p.name for p in real_images)
    assert list_images(cfg, "val") == sorted([tmp_path / "images" / "val" / real_images[1].name, extra])


BAD_LINES = [
    ("0 0.5 0.5 0.2", "4 fields"),
    ("0 0.5 0.5 0.2 0.3 0.1", "6 fields"),
    ("0 0.5 0.5 abc 0.2", "'abc' is not a number"),
    ("0 0.5 nan 0.2 0.2", "non-finite"),
    ("3 0.5 0.5 0.2 0.2", "class id 3 is not one of the 3 classes"),
    ("1.5 0.5 0.5 0.2 0.2", "class id 1.5"),
    ("-1 0.5 0.5 0.2 0.2", "class id -1"),
    ("0 1.5 0.5 0.2 0.2", "outside [0, 1]"),
    ("0 0.5 0.5 640 480", "outside [0, 1]"),
    ("0 0.5 0.5 0 0.2", "non-positive size"),
    ("0 0.5 0.5 0.2 -0.001", "non-positive size"),
]


@pytest.mark.parametrize("line, problem", BAD_LINES)
def test_bad_label_line_names_file_line_and_fix(tmp_path, real_images, line, problem):
    stem = real_images[0].stem
    data_yaml = make_dataset(tmp_path, real_images[:1], {stem: f"1 0.5 0.5 0.2 0.2\n{line}\n"})
    with pytest.raises(DatasetError) as err:
        list_split(load_data_config(data_yaml), "val")
    message = str(err.value)
    assert f"labels/val/{stem}.txt:2: " in message and problem in message
    assert "\n  fix: " in message


def test_all_problems_of_a_split_come_in_one_error(tmp_path, real_images):
    first, second = real_images[0].stem, real_images[1].stem
    data_yaml = make_dataset(tmp_path, real_images, {
        first: "0 0.5 0.5 0.2\n5 0.5 0.5 0.2 0.2\n",
        second: "".join(f"0 0.5 0.5 {i} 0.2\n" for i in range(2, 25)),  # 23 boxes wider than the image
    })
    with pytest.raises(DatasetError) as err:
        list_split(load_data_config(data_yaml), "val")
    message = str(err.value)
    assert message.startswith("25 problem(s) in the labels of the `val` split")
    assert f"{first}.txt:1: 4 fields" in message and f"{first}.txt:2: class id 5" in message
    assert f"{second}.txt:18:" in message and f"{second}.txt:19:" not in message and "... and 5 more" in message
    assert message.count("fix: ") == 3  # one per kind: field count, class id, coordinates


def test_missing_config_and_split_problems(tmp_path, real_images):
    with pytest.raises(DatasetError, match=r"No data.yaml in the dataset folder"):
        load_data_config(tmp_path)
    with pytest.raises(DatasetError, match=r"Dataset config not found: .*nope.yaml"):
        load_data_config(tmp_path / "nope.yaml")
    data_yaml = make_dataset(tmp_path, real_images[:1], {}, f"val: images/val\ntrain: images/train\nnames: {NAMES}\n")
    cfg = load_data_config(data_yaml)
    with pytest.raises(DatasetError, match=r"`train` source .*images/train does not exist"):
        list_images(cfg, "train")
    with pytest.raises(DatasetError, match=r"declares no `test` split"):
        list_images(cfg, "test")
    (tmp_path / "empty").mkdir()
    (tmp_path / "list.txt").write_text("images/val/gone.jpg\n")
    data_yaml.write_text(f"val: list.txt\ntest: empty\nnames: {NAMES}\n")
    with pytest.raises(DatasetError, match=r"list.txt:1: listed image .*gone.jpg does not exist"):
        list_images(load_data_config(data_yaml), "val")
    with pytest.raises(DatasetError, match=r"No images in the `test` split"):
        list_images(load_data_config(data_yaml), "test")


@pytest.mark.parametrize("text, problem", [
    ("val: [unclosed\nnames: [a]\n", r"data.yaml:2: not valid YAML \(expected ',' or ']'"),
    ("- just\n- a list\n", r"is not a mapping"),
    ("val: images/val\n", r"has no class `names`"),
    ("val: images/val\nnames: {0: a, 2: b}\n", r"ids must be the integers 0 .. 1"),
    ("val: images/val\nnames: [a, b]\nnc: 3\n", r"nc is 3 but `names` lists 2"),
    ("path: missing\nval: images/val\nnames: [a]\n", r"dataset root `path: missing` is not a folder"),
    ("val: {a: 1}\nnames: [a]\n", r"`val` must be a path or a list of paths"),
    ("val: images/val\nval_json: [a.json, b.json]\nnames: [a]\n", r"`val_json` must be one path"),
    ("val: images/val\nnames: [null]\n", r"class 0 in `names` is None, not a class name"),
    ("val: images/val\nnames: [a, [a, b]]\n", r"class 1 in `names` is \['a', 'b'\], not a class name"),
    ("val: images/val\nnames: {0: a, 1: {x: 1}}\n", r"class 1 in `names` is \{'x': 1\}, not a class name"),
    ("val: images/val\nnames: [a, '  ']\n", r"class 1 in `names` is '  ', not a class name"),
    ("val: images/val\nnames: [a, true]\n", r"class 1 in `names` is True, not a class name"),
])
def test_bad_data_yaml_is_one_clear_error(tmp_path, text, problem):
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(DatasetError, match=problem) as err:
        load_data_config(tmp_path / "data.yaml")
    assert str(tmp_path / "data.yaml") in str(err.value) and "fix: " in str(err.value)


def test_val_json_is_resolved_against_the_dataset_root(tmp_path, coco_val158):
    (tmp_path / "data.yaml").write_text(
        f"path: {coco_val158}\nval: images/val2017\nval_json: annotations/instances_val2017_subset.json\nnames: [a]\n")
    cfg = load_data_config(tmp_path / "data.yaml")
    assert cfg.coco_json == {"val": coco_val158 / "annotations" / "instances_val2017_subset.json"}
    assert re.fullmatch(r"\d{12}\.jpg", list_images(cfg, "val")[0].name)


def test_integer_class_names_are_written_as_digits(tmp_path):
    (tmp_path / "data.yaml").write_text("val: images/val\nnames: {0: 7, 1: cat}\n")
    assert load_data_config(tmp_path / "data.yaml").names == ("7", "cat")


def test_label_files_and_image_lists_with_a_byte_order_mark_are_read(tmp_path, real_images):
    """Windows editors write UTF-8 with a BOM; the first field must still be the class id."""
    stem = real_images[0].stem
    data_yaml = make_dataset(tmp_path, real_images[:1], {})
    (tmp_path / "labels" / "val" / f"{stem}.txt").write_bytes("\ufeff2 0.5 0.5 0.2 0.2\n".encode("utf-8"))
    (tmp_path / "list.txt").write_bytes(f"\ufeffimages/val/{real_images[0].name}\n".encode("utf-8"))
    data_yaml.write_text(f"val: list.txt\nnames: {NAMES}\n")
    [sample] = list_split(load_data_config(data_yaml), "val")
    assert np.allclose(sample.labels, [[2, 0.5, 0.5, 0.2, 0.2]])
