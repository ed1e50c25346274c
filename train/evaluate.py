"""COCO evaluation (faster-coco-eval) of any detector on a YOLO dataset or a COCO json.

The loop only needs a :data:`BatchPredictor`: images in, detections in original-image pixels out.
:class:`TorchPredictor` adapts a PyTorch model; the TFLite runtime can be scored by the same code.
Conventions of the COCO tools (YOLOv9 ``val.py``): conf 0.001, NMS IoU 0.7, up to 300 detections
per image, multi-label, letterboxed square input; AP is COCO's (``maxDets=100``, 101-point).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence, Union

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster
from tqdm import tqdm

from edge_yolov9.errors import DatasetError
from edge_yolov9.postprocess import PostprocessConfig, postprocess
from edge_yolov9.preprocess import letterbox, load_image
from edge_yolov9.sources import folder_images

from .data import (MAX_LISTED_PROBLEMS, DatasetProblem, Sample, list_images, list_split, load_data_config,
                   problems_error)

if TYPE_CHECKING:
    from .models import YOLO

logger = logging.getLogger(__name__)

ImageSize = tuple[int, int]  # (width, height)


class Detections(NamedTuple):
    """Detections of one image: boxes (N, 4) xyxy in original-image pixels, scores (N,), class ids (N,)."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray


BatchPredictor = Callable[[Sequence[np.ndarray]], list[Detections]]
"""Detects objects in a batch of RGB uint8 (H, W, 3) images of any sizes."""


@dataclass(frozen=True)
class GroundTruth:
    """A COCO-format dataset dict, the image id of each evaluated image, and class k's category id."""

    coco: dict[str, Any]
    image_ids: tuple[int, ...]
    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def num_instances(self) -> int:
        return sum(1 for ann in self.coco["annotations"] if not ann.get("iscrowd", 0))


@dataclass(frozen=True)
class Metrics:
    """COCO box metrics; ``per_class`` holds AP50-95 (``per_class_ap50`` AP50) of each class with ground truth."""

    map50_95: float
    map50: float
    per_class: dict[str, float]
    per_class_ap50: dict[str, float]
    num_images: int
    num_instances: int

    def to_dict(self) -> dict[str, Any]:
        return {"map50_95": self.map50_95, "map50": self.map50, "num_images": self.num_images,
                "num_instances": self.num_instances, "per_class": self.per_class,
                "per_class_ap50": self.per_class_ap50}


@dataclass(frozen=True)
class YoloEvalSet:
    """A split of a YOLO dataset scored against its own labels (pixel boxes need the image sizes)."""

    samples: tuple[Sample, ...]
    names: tuple[str, ...]

    @property
    def image_paths(self) -> tuple[Path, ...]:
        return tuple(s.image_path for s in self.samples)

    def ground_truth(self, sizes: Sequence[ImageSize]) -> GroundTruth:
        """COCO ground truth of the labels: image ids 1..N in sample order, category id = class id."""
        images, annotations = [], []
        for image_id, (sample, (width, height)) in enumerate(zip(self.samples, sizes, strict=True), 1):
            images.append({"id": image_id, "file_name": sample.image_path.name, "width": width, "height": height})
            for cls, cx, cy, w, h in sample.labels.astype(np.float64):
                box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls),
                                    "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        categories = [{"id": k, "name": name} for k, name in enumerate(self.names)]
        return GroundTruth({"images": images, "annotations": annotations, "categories": categories},
                           tuple(range(1, len(images) + 1)), tuple(range(len(self.names))), self.names)


@dataclass(frozen=True)
class CocoEvalSet:
    """Images scored against a COCO json, as is: crowd regions honoured, class k = k-th sorted category id."""

    json_path: Path
    gt: GroundTruth
    image_paths: tuple[Path, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return self.gt.names

    def ground_truth(self, sizes: Sequence[ImageSize]) -> GroundTruth:
        """The json's ground truth, once the images proved to be the ones it describes."""
        records = {img["id"]: img for img in self.gt.coco["images"]}
        problems = [DatasetProblem(path, None, f"is {w}x{h} but {self.json_path.name} records "
                                 f"{records[i]['width']}x{records[i]['height']}",
                                 "the json does not describe these images: pass the matching images or json")
                    for path, i, (w, h) in zip(self.image_paths, self.gt.image_ids, sizes, strict=True)
                    if (records[i]["width"], records[i]["height"]) != (w, h)]
        if problems:
            raise problems_error(problems, f"the images of {self.json_path}")
        return self.gt


EvalSet = Union[YoloEvalSet, CocoEvalSet]


class Evaluation(NamedTuple):
    """The scores, and the detections they were computed from (for ``--save-json``)."""

    metrics: Metrics
    results: list[dict[str, Any]]  # COCO-format detections ("results" json)


def _read_coco_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"COCO annotation file not found: {path}", "check the path")
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}:{err.lineno}: not valid JSON ({err.msg})", "fix or re-export the file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"Cannot read {path}: {err}", "check the file's permissions and encoding") from None
    required = {"images": ("id", "file_name", "width", "height"), "annotations": ("id", "image_id", "category_id",
                                                                                  "bbox"), "categories": ("id", "name")}
    for key, fields in required.items():
        records = coco.get(key) if isinstance(coco, dict) else None
        if not isinstance(records, list) or not all(isinstance(r, dict) and all(f in r for f in fields)
                                                    for r in records):
            raise DatasetError(f"{path} is not a COCO detection json: `{key}` must be a list of records with "
                               f"{', '.join(fields)}", "pass an instances_*.json in the COCO format")
    for ann in coco["annotations"]:
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
    return coco


def coco_eval_set(json_path: str | os.PathLike, image_index: dict[str, Path], searched: str,
                  names: Sequence[str] | None = None) -> CocoEvalSet:
    """Score against ``json_path``; each json image is looked up by file name in ``image_index``,
    the images of ``searched`` (named in the error when some are missing)."""
    json_path = Path(json_path)
    coco = _read_coco_json(json_path)
    category_ids = tuple(sorted(c["id"] for c in coco["categories"]))
    json_names = {c["id"]: c["name"] for c in coco["categories"]}
    if names is not None and len(names) != len(category_ids):
        raise DatasetError(f"{json_path} has {len(category_ids)} categories but the dataset names {len(names)} classes",
                           "class k is the k-th category id in ascending order: give both the same classes")
    paths = [image_index.get(PurePosixPath(record["file_name"]).name) for record in coco["images"]]
    missing = [record["file_name"] for record, path in zip(coco["images"], paths) if path is None]
    if missing:
        listed = ", ".join(missing[:MAX_LISTED_PROBLEMS]) + (" ..." if len(missing) > MAX_LISTED_PROBLEMS else "")
        raise DatasetError(f"{len(missing)} of the {len(paths)} images of {json_path} are not in {searched}: {listed}",
                           "point to the folder that holds the json's images (--images DIR for a json, "
                           "the split's folder in data.yaml)")
    if not any(not ann["iscrowd"] for ann in coco["annotations"]):
        raise DatasetError(f"{json_path} has no (non-crowd) annotations: nothing to measure", "pass a labelled json")
    names = tuple(names) if names is not None else tuple(json_names[i] for i in category_ids)
    gt = GroundTruth(coco, tuple(int(r["id"]) for r in coco["images"]), category_ids, names)
    return CocoEvalSet(json_path, gt, tuple(paths))


def _index_images(paths: Sequence[Path]) -> dict[str, Path]:
    return {p.name: p for p in paths}


def load_eval_set(data: str | os.PathLike, *, split: str = "val", images: str | os.PathLike | None = None) -> EvalSet:
    """What to score: ``data`` is a COCO json (images under ``images``, default ``<json dir>/../images``),
    or a YOLO ``data.yaml`` / dataset folder whose ``<split>_json``, if declared, replaces its labels."""
    data = Path(data)
    if data.suffix == ".json":
        folder = Path(images) if images is not None else data.parent.parent / "images"
        return coco_eval_set(data, _index_images(folder_images(folder)), str(folder))
    if images is not None:
        raise DatasetError(f"An image folder ({images}) was given with the YOLO dataset {data}",
                           "the image folder is only for a COCO json; a data.yaml names its own images")
    cfg = load_data_config(data)
    if split in cfg.coco_json:
        split_images = _index_images(list_images(cfg, split))
        eval_set = coco_eval_set(cfg.coco_json[split], split_images, f"the `{split}` split of {cfg.yaml_path}",
                                 cfg.names)
        if len(split_images) > len(eval_set.image_paths):
            logger.warning("%d images of the `%s` split are not in %s and are not evaluated",
                           len(split_images) - len(eval_set.image_paths), split, eval_set.json_path)
        return eval_set
    samples = tuple(list_split(cfg, split))
    if not any(len(s.labels) for s in samples):
        raise DatasetError(f"No image of the `{split}` split of {cfg.yaml_path} has labels: nothing to measure",
                           "put label files in the `labels` folder beside `images` (images/x.jpg -> labels/x.txt)")
    return YoloEvalSet(samples, cfg.names)


def predict_images(image_paths: Sequence[Path], predict: BatchPredictor, *, batch_size: int = 8,
                   progress: str | None = None) -> tuple[list[Detections], list[ImageSize]]:
    """Run ``predict`` over the images in batches: detections and (width, height) of each image."""
    detections: list[Detections] = []
    sizes: list[ImageSize] = []
    with tqdm(total=len(image_paths), desc=progress, unit="img", disable=None if progress else True,
              leave=False) as bar:
        for start in range(0, len(image_paths), batch_size):
            images = [load_image(p) for p in image_paths[start:start + batch_size]]
            detections.extend(predict(images))
            sizes.extend((img.shape[1], img.shape[0]) for img in images)
            bar.update(len(images))
    return detections, sizes


def coco_results(gt: GroundTruth, detections: Sequence[Detections]) -> list[dict[str, Any]]:
    """COCO "results" records (xywh boxes, category ids) of each evaluated image's detections."""
    results = []
    for image_id, det in zip(gt.image_ids, detections, strict=True):
        if len(det.class_ids) and int(np.max(det.class_ids)) >= len(gt.category_ids):
            raise DatasetError(f"The detector predicts class {int(np.max(det.class_ids))} but the data has "
                               f"{len(gt.category_ids)} classes", "evaluate a model trained on these classes")
        for (x1, y1, x2, y2), score, cls in zip(det.boxes.tolist(), det.scores.tolist(), det.class_ids.tolist()):
            results.append({"image_id": image_id, "category_id": gt.category_ids[cls],
                            "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                            "score": round(score, 5)})
    return results


def coco_metrics(gt: GroundTruth, results: Sequence[dict[str, Any]]) -> Metrics:
    """mAP50-95, mAP50 and per-class AP of ``results`` by faster-coco-eval."""
    coco_gt = COCO(gt.coco, print_function=logger.debug)
    coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes adds fields: keep the caller's records clean
    evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=logger.debug)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    # precision: [IoU thresholds, recall points, categories, area ranges (0: all), max dets (-1: 100)]
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    name_of = dict(zip(gt.category_ids, gt.names))
    per_class, per_class_ap50 = {}, {}
    for k, category_id in enumerate(evaluator.params.catIds):
        curves = precision[:, :, k]
        if (curves > -1).any():  # -1: no ground truth of this class
            per_class[name_of[category_id]] = float(curves[curves > -1].mean())
            per_class_ap50[name_of[category_id]] = float(curves[0][curves[0] > -1].mean())
    return Metrics(map50_95=float(evaluator.stats[0]), map50=float(evaluator.stats[1]),
                   per_class=per_class, per_class_ap50=per_class_ap50, num_images=len(gt.image_ids),
                   num_instances=gt.num_instances)


class TFLitePredictor:
    """A converted .tflite as a :data:`BatchPredictor`: the runtime's own Detector (what runs on the Pi), with
    the COCO-evaluation thresholds; ``device`` as the Detector takes it (an Edge TPU model on 'usb'...).
    A model that runs on the Edge TPU runs in a child process (``edge_yolov9.isolated``): a Coral that drops
    mid-run is started again and the image retried, and never swapped for the CPU mid-run (the figures would
    mix two devices). ``model`` says what was loaded; a context manager that stops the child."""

    def __init__(self, model: str | os.PathLike, *, device: str = "cpu", threads: int | None = None,
                 config: PostprocessConfig = PostprocessConfig.for_evaluation()):
        from edge_yolov9.detector import Detector
        from edge_yolov9.isolated import DetectorSpec, IsolatedDetector, ModelSummary, runs_on_edgetpu

        self._in_child = runs_on_edgetpu(model, device)
        if self._in_child:
            self._detector = IsolatedDetector(DetectorSpec(str(model), device, threads, config), cpu_fallback=False)
            self.model: ModelSummary = self._detector.summary
        else:
            self._detector = Detector(model, device=device, threads=threads, config=config)
            self.model = ModelSummary.of(self._detector)

    def __enter__(self) -> "TFLitePredictor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._in_child:
            self._detector.close()

    def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]:
        from edge_yolov9.detector import prepare
        from edge_yolov9.preprocess import to_rgb

        return [as_detections(self._detector.detect_prepared(prepare(to_rgb(image), self.model.input))[0])
                for image in images]


def as_detections(found: Sequence[Any]) -> Detections:
    """The runtime's detections of one image (``edge_yolov9.types.Detection``) as the evaluator's arrays."""
    return Detections(np.array([d.box for d in found], np.float32).reshape(-1, 4),
                      np.array([d.score for d in found], np.float32), np.array([d.class_id for d in found], np.int64))


def agreement_set(image_paths: Sequence[Path], names: Sequence[str], reference: BatchPredictor, *,
                  batch_size: int = 8) -> YoloEvalSet | None:
    """``image_paths`` labelled with ``reference``'s own detections: scoring another predictor on it gives
    its agreement with ``reference`` (which scores 1.0 on it), as COCO mAP. None when ``reference`` finds
    nothing there."""
    found, sizes = predict_images(image_paths, reference, batch_size=batch_size)
    samples = []
    for path, detections, (width, height) in zip(image_paths, found, sizes):
        x1, y1, x2, y2 = detections.boxes.T
        labels = np.stack([detections.class_ids, (x1 + x2) / 2 / width, (y1 + y2) / 2 / height,
                           (x2 - x1) / width, (y2 - y1) / height], axis=1).astype(np.float32)
        samples.append(Sample(Path(path), labels))
    if not any(len(sample.labels) for sample in samples):
        return None
    return YoloEvalSet(tuple(samples), tuple(names))


def evaluate(eval_set: EvalSet, predict: BatchPredictor, *, batch_size: int = 8,
             progress: str | None = None) -> Evaluation:
    """Predict on every image of ``eval_set`` and score the detections against its ground truth; ``progress``
    names a progress bar (shown on a terminal)."""
    detections, sizes = predict_images(eval_set.image_paths, predict, batch_size=batch_size, progress=progress)
    gt = eval_set.ground_truth(sizes)
    results = coco_results(gt, detections)
    return Evaluation(coco_metrics(gt, results), results)


class TorchPredictor:
    """A PyTorch YOLO as a :data:`BatchPredictor`: letterbox to the input size, raw head outputs
    through the shared decoder + NMS, boxes mapped back to the original images. Puts ``model`` in eval mode;
    ``threads()``, asked before each batch, sets torch's thread count for it (None: unchanged)."""

    def __init__(self, model: YOLO, imgsz: int | tuple[int, int] = 640, *,
                 config: PostprocessConfig = PostprocessConfig.for_evaluation(),
                 threads: Callable[[], int | None] = lambda: None):
        self.model = model.eval()
        self.imgsz = imgsz
        self.config = config
        self.threads = threads

    def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]:
        import torch  # here, so that scoring a TFLite model needs no torch

        count = self.threads()
        if count is not None:
            torch.set_num_threads(count)

        canvases, placements = zip(*(letterbox(image, self.imgsz) for image in images))
        device = next(self.model.parameters()).device
        batch = torch.from_numpy(np.stack(canvases)).to(device).permute(0, 3, 1, 2).float().div_(255)
        with torch.no_grad():
            levels = self.model(batch).main
        box_levels = [level.box.float().cpu().numpy() for level in levels]
        cls_levels = [level.cls.float().cpu().numpy() for level in levels]
        detections = []
        for i, placement in enumerate(placements):
            boxes, scores, class_ids = postprocess([b[i] for b in box_levels], [c[i] for c in cls_levels],
                                                   channels_last=False, config=self.config,
                                                   strides=self.model.strides)
            detections.append(Detections(placement.to_image(boxes), scores, class_ids))
        return detections
