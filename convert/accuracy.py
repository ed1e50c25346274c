"""How much accuracy the conversion costs: COCO mAP of the PyTorch model, the float TFLite and the int8
TFLite on one labelled val set, side by side, with a pass/fail verdict on the int8 drop.

The TFLite models are scored through the runtime's own :class:`~edge_yolov9.detector.Detector`
(letterbox, interpreter, integer thresholding, shared decoder and NMS), so the figures are those of
what runs on the Pi, not of a re-implementation. All three use the COCO-evaluation post-processing
(:meth:`PostprocessConfig.for_evaluation`) and the same letterboxed input size.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from edge_yolov9.errors import ModelError
from edge_yolov9.model_file import InputSize
from edge_yolov9.postprocess import PostprocessConfig
from edge_yolov9.train.data import load_data_config
from edge_yolov9.train.evaluate import (BatchPredictor, CocoEvalSet, EvalSet, Metrics, TFLitePredictor, TorchPredictor,
                                        evaluate, load_eval_set)
from edge_yolov9.train.models import YOLO

from .stages import StageClock

logger = logging.getLogger(__name__)

VAL_SPLIT = "val"
EVALUATION = PostprocessConfig.for_evaluation()


@dataclass(frozen=True)
class ValSet:
    """The labelled images the report scores on, and where they come from (named in the report)."""

    data: Path
    split: str | None  # None for a COCO json given directly
    eval_set: EvalSet

    @property
    def annotations(self) -> str:
        return str(self.eval_set.json_path) if isinstance(self.eval_set, CocoEvalSet) else "YOLO labels"

    def describe(self) -> str:
        where = f"`{self.data}`" + (f", split `{self.split}`" if self.split else "")
        return f"{where} ({self.annotations})"


def find_val_set(calib: Path, val: Path | None, labels: Sequence[str]) -> ValSet | None:
    """``val`` (a data.yaml or dataset folder: its val split, with its ``val_json`` when declared; or a COCO
    json), else the val split of a ``calib`` data.yaml; None when ``calib`` is an image folder or a
    data.yaml without a val split (nothing labelled to score against)."""
    if val is None:
        if calib.is_dir() or VAL_SPLIT not in load_data_config(calib).splits:
            return None
        val = calib
    split = None if val.suffix == ".json" else VAL_SPLIT
    val_set = ValSet(val, split, load_eval_set(val, split=VAL_SPLIT))
    if len(val_set.eval_set.names) != len(labels):
        raise ModelError(f"The model detects {len(labels)} classes but the accuracy val set {val} has "
                         f"{len(val_set.eval_set.names)}",
                         "pass --val with data of the model's classes, or --no-accuracy to skip the report")
    if list(val_set.eval_set.names) != list(labels):
        logger.warning("The model's class names (%s, ...) differ from those of %s (%s, ...); the model's class k "
                       "is scored as the data's class k", labels[0], val, val_set.eval_set.names[0])
    return val_set


@dataclass(frozen=True)
class ModelAccuracy:
    """COCO scores of one model on the val set."""

    model: str
    file: str
    map50_95: float
    map50: float
    images: int
    instances: int

    @classmethod
    def from_metrics(cls, model: str, file: str, metrics: Metrics) -> "ModelAccuracy":
        return cls(model, file, metrics.map50_95, metrics.map50, metrics.num_images, metrics.num_instances)


def _ap_points(map_difference: float) -> float:
    """mAP difference in AP points, rounded so that float noise does not decide a verdict at the limit."""
    return round(100 * map_difference, 6)


@dataclass(frozen=True)
class AccuracyReport:
    """PyTorch vs float vs int8 TFLite; ``drop`` is the int8 model's loss of mAP50-95 in AP points (1 AP =
    0.01 mAP; negative when int8 scores higher), ``passed`` whether it is within ``max_drop``."""

    val: str
    imgsz: InputSize
    pytorch: ModelAccuracy
    float_tflite: ModelAccuracy
    int8_tflite: ModelAccuracy
    max_drop: float
    postprocess: PostprocessConfig = EVALUATION

    @classmethod
    def of(cls, val_set: ValSet, imgsz: tuple[int, int], pytorch: ModelAccuracy, float_tflite: ModelAccuracy,
           int8_tflite: ModelAccuracy, *, max_drop: float) -> "AccuracyReport":
        """The report of scores taken at ``imgsz`` (height, width) on ``val_set``."""
        return cls(val_set.describe(), InputSize(*imgsz), pytorch, float_tflite, int8_tflite, max_drop=max_drop)

    @property
    def rows(self) -> tuple[ModelAccuracy, ModelAccuracy, ModelAccuracy]:
        return self.pytorch, self.float_tflite, self.int8_tflite

    @property
    def drop(self) -> float:
        return _ap_points(self.pytorch.map50_95 - self.int8_tflite.map50_95)

    @property
    def drop50(self) -> float:
        return _ap_points(self.pytorch.map50 - self.int8_tflite.map50)

    @property
    def passed(self) -> bool:
        return self.drop <= self.max_drop

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def thresholds(self) -> str:
        post = self.postprocess
        return (f"conf {post.score_threshold:g}, NMS IoU {post.iou_threshold:g}, up to {post.max_detections} "
                f"detections per image{', multi-label' if post.multi_label else ''}")

    def change(self) -> str:
        """The int8 model against PyTorch in words that read right both ways: ``int8 -0.35 AP vs PyTorch``
        when it scores lower, ``int8 +0.20 AP vs PyTorch`` when higher."""
        return f"int8 {-self.drop:+.2f} AP vs PyTorch"

    def summary(self) -> str:
        """One line for the log."""
        return (f"int8 accuracy {self.verdict}: mAP50-95 PyTorch {self.pytorch.map50_95:.4f}, float TFLite "
                f"{self.float_tflite.map50_95:.4f}, int8 TFLite {self.int8_tflite.map50_95:.4f} "
                f"({self.change()}; a drop of {self.max_drop:g} AP allowed) on {self.pytorch.images} images")

    def to_dict(self) -> dict[str, Any]:
        post = self.postprocess
        return {"verdict": self.verdict, "val": self.val, "imgsz": str(self.imgsz),
                "postprocess": {"score_threshold": post.score_threshold, "iou_threshold": post.iou_threshold,
                                "max_detections": post.max_detections, "multi_label": post.multi_label},
                "models": [asdict(row) for row in self.rows],
                "drop_ap": self.drop, "drop_ap50": self.drop50, "max_drop": self.max_drop}

    def render(self) -> str:
        """The Markdown report (also what the CLI prints)."""
        lines = [f"# int8 accuracy: {self.verdict}", "",
                 f"Val set: {self.val}, {self.pytorch.images} images, {self.pytorch.instances} objects.  ",
                 f"COCO mAP (faster-coco-eval) at {self.imgsz.width}x{self.imgsz.height}; {self.thresholds()}.", "",
                 "| model | file | mAP50-95 | mAP50 | images | instances |", "|---|---|---|---|---|---|"]
        lines += [f"| {r.model} | {r.file} | {r.map50_95:.4f} | {r.map50:.4f} | {r.images} | {r.instances} |"
                  for r in self.rows]
        lines += ["", f"{self.change()} in mAP50-95 ({-self.drop50:+.2f} in mAP50); a drop of {self.max_drop:g} AP "
                      f"is allowed (--max-drop): {self.verdict}."]
        return "\n".join(lines) + "\n"

    def save(self, stem: Path) -> None:
        """``<stem>.json`` and ``<stem>.md``."""
        stem.with_suffix(".json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        stem.with_suffix(".md").write_text(self.render())


def announce(val_set: ValSet) -> None:
    logger.info("Measuring accuracy on %s (%d images): PyTorch, float and int8 TFLite", val_set.describe(),
                len(val_set.eval_set.image_paths))


def score(val_set: ValSet, name: str, file: str, predictor: BatchPredictor, *, batch_size: int = 8,
          clock: StageClock | None = None, progress: bool = True) -> ModelAccuracy:
    """COCO scores of one model (``predictor``) on ``val_set``, timed as stage ``accuracy: <name>``; ``progress``:
    a progress bar on the terminal."""
    with (clock or StageClock()).stage(f"accuracy: {name}"):
        evaluation = evaluate(val_set.eval_set, predictor, batch_size=batch_size, progress=name if progress else None)
    return ModelAccuracy.from_metrics(name, file, evaluation.metrics)


def score_references(val_set: ValSet, deployed: YOLO, checkpoint: Path, float_model: Path, *,
                     threads: Callable[[], int | None] = lambda: None, clock: StageClock | None = None,
                     progress: bool = True) -> tuple[ModelAccuracy, ModelAccuracy]:
    """What the int8 model is compared with: the deploy-form PyTorch model (from ``checkpoint``) and the float
    TFLite, at the float model's input size. ``threads()`` is the thread count to take (None: torch's setting,
    all cores for the interpreter), asked as the interpreter starts and before each PyTorch batch: the PyTorch
    model comes last, so that it can take more threads as they become free. ``progress``: progress bars."""
    float_predictor = TFLitePredictor(float_model, threads=threads())
    imgsz = InputSize(*float_predictor.model.size)
    float_tflite = score(val_set, "float TFLite", float_model.name, float_predictor, clock=clock, progress=progress)
    pytorch = TorchPredictor(deployed, imgsz, threads=threads)
    return score(val_set, "PyTorch fp32", checkpoint.name, pytorch, clock=clock, progress=progress), float_tflite


def measure_accuracy(val_set: ValSet, deployed: YOLO, checkpoint: Path, float_model: Path, int8_model: Path, *,
                     max_drop: float, clock: StageClock | None = None) -> AccuracyReport:
    """Score the deploy-form PyTorch model (from ``checkpoint``) and the two TFLite models on ``val_set``,
    at the TFLite models' input size, one after the other; ``clock`` times each of the three."""
    announce(val_set)
    references = score_references(val_set, deployed, checkpoint, float_model, clock=clock)
    int8_predictor = TFLitePredictor(int8_model)
    int8 = score(val_set, "int8 TFLite", int8_model.name, int8_predictor, clock=clock)
    return AccuracyReport.of(val_set, int8_predictor.model.size, *references, int8, max_drop=max_drop)
