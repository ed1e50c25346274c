"""COCO evaluation on real data: ground truth as detections scores 1, worse boxes score less, and the
loop maps every image, class and box back to the ground truth it belongs to."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edge_yolov9.errors import DatasetError
from edge_yolov9.postprocess import PostprocessConfig
from edge_yolov9.preprocess import load_image
from edge_yolov9.train.data import load_data_config
from edge_yolov9.train.evaluate import (CocoEvalSet, Detections, GroundTruth, TorchPredictor, YoloEvalSet, coco_metrics,
                            coco_results, evaluate, load_eval_set)

VAL158_JSON = ("annotations", "instances_val2017_subset.json")


@pytest.fixture(scope="module")
def json_set(coco_val158) -> CocoEvalSet:
    eval_set = load_eval_set(coco_val158.joinpath(*VAL158_JSON))  # images found in <json dir>/../images
    assert isinstance(eval_set, CocoEvalSet)
    return eval_set


def header_sizes(eval_set) -> list[tuple[int, int]]:
    return [Image.open(p).size for p in eval_set.image_paths]


def gt_as_results(gt: GroundTruth, jitter: float = 0.0, seed: int = 0) -> list[dict]:
    """The non-crowd ground-truth boxes as detections, each side moved by ``jitter`` x its size (Gaussian)."""
    rng = np.random.default_rng(seed)
    results = []
    for ann in gt.coco["annotations"]:
        if ann["iscrowd"]:
            continue
        x, y, w, h = ann["bbox"]
        dx, dy, dw, dh = rng.normal(0.0, jitter, 4)
        box = [x + dx * w, y + dy * h, w * np.exp(dw), h * np.exp(dh)]
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": box, "score": 0.9})
    return results


def test_ground_truth_as_detections_scores_one_with_crowds(json_set):
    gt = json_set.ground_truth(header_sizes(json_set))
    assert sum(a["iscrowd"] for a in gt.coco["annotations"]) == 16
    metrics = coco_metrics(gt, gt_as_results(gt))
    assert metrics.map50_95 == pytest.approx(1.0) and metrics.map50 == pytest.approx(1.0)
    assert metrics.num_images == 158 and metrics.num_instances == 1408
    assert len(metrics.per_class) == 80 and all(ap == pytest.approx(1.0) for ap in metrics.per_class.values())


def test_ground_truth_as_detections_scores_one_from_yolo_labels(coco_val158):
    eval_set = load_eval_set(coco_val158 / "data.yaml")
    assert isinstance(eval_set, YoloEvalSet)
    gt = eval_set.ground_truth(header_sizes(eval_set))
    metrics = coco_metrics(gt, gt_as_results(gt))
    assert metrics.map50_95 == pytest.approx(1.0) and metrics.map50 == pytest.approx(1.0)
    assert metrics.num_instances == 1408


def test_more_jitter_scores_less(json_set):
    gt = json_set.ground_truth(header_sizes(json_set))
    small, large = (coco_metrics(gt, gt_as_results(gt, jitter)) for jitter in (0.03, 0.12))
    assert 1.0 > small.map50_95 > large.map50_95 > 0.0
    assert 1.0 >= small.map50 >= large.map50 and large.map50 < 1.0


def test_per_class_ap_covers_exactly_the_classes_in_the_data(coco128):
    eval_set = load_eval_set(coco128)
    gt = eval_set.ground_truth(header_sizes(eval_set))
    present = {eval_set.names[int(c)] for s in eval_set.samples for c in s.labels[:, 0]}
    assert len(present) == 71  # coco128: 71 of the 80 classes
    without_dogs = [r for r in gt_as_results(gt) if eval_set.names[r["category_id"]] != "dog"]
    metrics = coco_metrics(gt, without_dogs)
    assert set(metrics.per_class) == set(metrics.per_class_ap50) == present
    assert metrics.per_class["dog"] == 0.0 and metrics.per_class["person"] == pytest.approx(1.0)
    assert metrics.map50_95 == pytest.approx(70 / 71)


def test_data_yaml_can_declare_the_coco_json_of_its_val_split(tmp_path, coco_val158, json_set):
    names = load_data_config(coco_val158).names
    (tmp_path / "data.yaml").write_text(f"path: {coco_val158}\nval: images/val2017\n"
                                        f"val_json: {'/'.join(VAL158_JSON)}\nnames: {list(names)}\n")
    eval_set = load_eval_set(tmp_path)
    assert isinstance(eval_set, CocoEvalSet) and eval_set.names == names
    assert eval_set.image_paths == json_set.image_paths and eval_set.gt.coco is not json_set.gt.coco
    (tmp_path / "data.yaml").write_text(f"path: {coco_val158}\nval: images/val2017\n"
                                        f"val_json: {'/'.join(VAL158_JSON)}\nnames: [a, b]\n")
    with pytest.raises(DatasetError, match="has 80 categories but the dataset names 2 classes"):
        load_eval_set(tmp_path)


def test_evaluate_maps_predictions_back_to_each_image(json_set, coco_val158):
    """A predictor that returns the YOLO labels in pixels scores 1.0 against the json: image order,
    image sizes, class -> category id and box conversion all line up."""
    labels = {s.image_path.name: s.labels for s in load_eval_set(coco_val158).samples}
    queue = iter([labels[p.name] for p in json_set.image_paths])

    def oracle(images: list[np.ndarray]) -> list[Detections]:
        out = []
        for image in images:
            rows = next(queue).astype(np.float64)
            h, w = image.shape[:2]
            cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
            boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
            out.append(Detections(boxes, np.full(len(rows), 0.9), rows[:, 0].astype(int)))
        return out

    result = evaluate(json_set, oracle, batch_size=16)
    assert result.metrics.map50_95 == pytest.approx(1.0, abs=1e-6) and result.metrics.num_images == 158
    assert len(result.results) == 1408 and {r["category_id"] for r in result.results} <= set(json_set.gt.category_ids)


def test_json_images_must_be_found_and_match_the_recorded_sizes(tmp_path, coco_val158, json_set):
    with pytest.raises(DatasetError, match=rf"158 of the 158 images of .* are not in {tmp_path}: 000000000139.jpg, "):
        load_eval_set(coco_val158.joinpath(*VAL158_JSON), images=tmp_path)
    sizes = header_sizes(json_set)
    sizes[3] = (sizes[3][0] + 1, sizes[3][1])
    with pytest.raises(DatasetError, match=rf"{json_set.image_paths[3].name}: is \d+x\d+ but .* records"):
        json_set.ground_truth(sizes)


def test_detections_of_unknown_classes_are_refused(json_set):
    gt = json_set.ground_truth(header_sizes(json_set))
    detections = [Detections(np.zeros((1, 4)), np.ones(1), np.array([80]))] * len(gt.image_ids)
    with pytest.raises(DatasetError, match="predicts class 80 but the data has 80 classes"):
        coco_results(gt, detections)


def test_torch_predictor_batches_images_of_any_size(coco128):
    from edge_yolov9.train.models import create_model

    images = [load_image(p) for p in sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:2]]
    assert images[0].shape != images[1].shape
    predictor = TorchPredictor(create_model("gelan-t", num_classes=80), 256,
                               config=PostprocessConfig(score_threshold=1e-6, max_detections=50))
    together = predictor(images)
    for image, batched, alone in zip(images, together, (predictor([image])[0] for image in images)):
        h, w = image.shape[:2]
        assert 0 < len(batched.boxes) <= 50 and batched.boxes.shape == (len(batched.scores), 4)
        assert (batched.boxes >= 0).all() and (batched.boxes <= [w, h, w, h]).all()  # original-image pixels
        np.testing.assert_allclose(batched.boxes, alone.boxes, atol=1e-2)
        np.testing.assert_array_equal(batched.class_ids, alone.class_ids)
    assert not predictor.model.training
