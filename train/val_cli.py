"""``edge-yolov9 val``: COCO mAP of a checkpoint or a converted model on a YOLO dataset or a COCO json.

Imports of torch and the evaluation code happen in the handler, so ``edge-yolov9 --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from dataclasses import replace
from pathlib import Path

from edge_yolov9.cli import MODEL_INPUT_SIZES, add_command, existing_file, int_arg, print_result
from edge_yolov9.errors import ModelError, require, writing
from edge_yolov9.model_file import InputSize

from .cli import IMGSZ, MAX_BATCH, require_torch

logger = logging.getLogger(__name__)

AGREEMENT_SCORE = 0.25  # the CPU twin's detections that count as objects the Edge TPU model should find too


def _render(metrics: dict) -> str:
    lines = [f"{metrics['num_images']} images, {metrics['num_instances']} objects",
             f"mAP50-95 {metrics['map50_95']:.4f}   mAP50 {metrics['map50']:.4f}", "",
             f"{'class':<20} {'AP50-95':>8} {'AP50':>8}"]
    lines += [f"{name:<20} {ap:>8.4f} {metrics['per_class_ap50'][name]:>8.4f}"
              for name, ap in metrics["per_class"].items()]
    return "\n".join(lines)


def _val(args: argparse.Namespace) -> int:
    require("faster_coco_eval", "train", "COCO evaluation", package="faster-coco-eval")
    from .evaluate import evaluate, load_eval_set

    converted = args.model.suffix == ".tflite"
    if not converted and (args.device is not None or args.compare_cpu):
        raise ModelError("--device and --compare-cpu apply to a converted model (.tflite)",
                         "pass the .tflite written by `edge-yolov9 convert` (or its _edgetpu compilation)")
    eval_set = load_eval_set(args.data, split=args.split, images=args.images)  # data errors before the model loads
    predictor, model_names = _converted(args) if converted else _checkpoint(args)
    with predictor if converted else contextlib.nullcontext():  # an Edge TPU model's child process
        if len(model_names) != len(eval_set.names):
            raise ModelError(f"{args.model} detects {len(model_names)} classes but {args.data} has "
                             f"{len(eval_set.names)}", "evaluate on data with the classes the model was trained on")
        if list(model_names) != list(eval_set.names):
            logger.warning("The model's class names (%s, ...) differ from the data's (%s, ...); "
                           "the model's class k is scored as the data's class k", model_names[0], eval_set.names[0])
        result = evaluate(eval_set, predictor, batch_size=args.batch, progress="val")
        if args.save_json:
            with writing(args.save_json, "the detections"):
                args.save_json.parent.mkdir(parents=True, exist_ok=True)
                args.save_json.write_text(json.dumps(result.results))
            logger.info("Wrote %d detections to %s", len(result.results), args.save_json)
        if args.compare_cpu:
            report = _compare_with_cpu_twin(args, eval_set, predictor, result.metrics)
            print_result(report, args.json, _render_comparison)
        else:
            print_result(result.metrics.to_dict(), args.json, _render)
    return 0


def _checkpoint(args: argparse.Namespace):
    require_torch("Validating a checkpoint")
    from .checkpoint import choose_input_size, load_checkpoint
    from .evaluate import TorchPredictor
    from .models.deploy import deploy_model

    model, names, _ = load_checkpoint(args.model)
    imgsz = choose_input_size(model.cfg, args.imgsz, args.model, MODEL_INPUT_SIZES)
    return TorchPredictor(deploy_model(model), imgsz), names


def _converted(args: argparse.Namespace):
    """A converted model through the runtime's Detector: what runs on the Pi, on the device it runs on."""
    from .evaluate import TFLitePredictor

    predictor = TFLitePredictor(args.model, device=args.device or "auto")
    loaded = predictor.model
    if args.imgsz is not None and tuple(args.imgsz) != loaded.size:
        predictor.close()
        raise ModelError(f"{args.model} was converted for {InputSize(*loaded.size)}; it cannot run at "
                         f"{args.imgsz}", "leave out --imgsz (or convert again at that size)")
    logger.info("Scoring %s on %s", loaded.path, loaded.device)
    return predictor, loaded.labels


def _compare_with_cpu_twin(args: argparse.Namespace, eval_set, edgetpu, edgetpu_metrics) -> dict:
    """The Edge TPU model's mAP, its CPU twin's, and how far the two agree on the same images: the twin's
    detections of score 0.25 or more as the ground truth the Edge TPU model is scored against."""
    from edge_yolov9.model_file import cpu_twin
    from edge_yolov9.postprocess import PostprocessConfig

    from .evaluate import TFLitePredictor, agreement_set, evaluate

    loaded = edgetpu.model
    twin = cpu_twin(Path(args.model))
    if twin is None:
        raise ModelError(f"--compare-cpu compares an Edge TPU model with its CPU twin; {args.model} has none "
                         "beside it", "pass the _edgetpu.tflite from `edge-yolov9 convert --edgetpu`, with the "
                         "model it was compiled from in the same folder")
    if loaded.device == "cpu":
        raise ModelError(f"--compare-cpu needs the Edge TPU, and {args.model} ran on the CPU: "
                         f"{loaded.fallback_reason or 'no Edge TPU was asked for'}",
                         "plug in the Coral (see `edge-yolov9 doctor`) and pass --device usb or pci")
    cpu = TFLitePredictor(twin, device="cpu")
    cpu_metrics = evaluate(eval_set, cpu, batch_size=args.batch).metrics
    reference = TFLitePredictor(twin, device="cpu", config=replace(PostprocessConfig.for_evaluation(),
                                                                   score_threshold=AGREEMENT_SCORE))
    agreed = agreement_set(eval_set.image_paths, eval_set.names, reference, batch_size=args.batch)
    agreement = None if agreed is None else evaluate(agreed, edgetpu, batch_size=args.batch).metrics
    return {"edgetpu": {"model": loaded.path, "device": loaded.device,
                        **edgetpu_metrics.to_dict()},
            "cpu": {"model": str(twin), **cpu_metrics.to_dict()},
            "agreement": None if agreement is None else {
                "reference_score": AGREEMENT_SCORE, "objects": agreement.num_instances,
                "map50_95": agreement.map50_95, "map50": agreement.map50}}


def _render_comparison(report: dict) -> str:
    lines = [f"{'':<10} {'mAP50-95':>9} {'mAP50':>8}  model"]
    lines += [f"{side:<10} {report[side]['map50_95']:>9.4f} {report[side]['map50']:>8.4f}  {report[side]['model']}"
              + (f" on {report[side]['device']}" if side == "edgetpu" else "") for side in ("edgetpu", "cpu")]
    agreement = report["agreement"]
    if agreement is None:
        lines.append(f"agreement: n/a (the CPU twin detects nothing with score >= {AGREEMENT_SCORE} here)")
    else:
        lines.append(f"agreement  {agreement['map50_95']:>9.4f} {agreement['map50']:>8.4f}  the Edge TPU model "
                     f"scored against the CPU twin's {agreement['objects']} detections of score "
                     f">= {agreement['reference_score']}")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    val = add_command(
        subparsers, "val", _val, help="COCO mAP50-95 / mAP50 of a checkpoint on a dataset",
        description="Score a checkpoint, or a converted .tflite through the runtime (on the CPU or an Edge TPU), "
                    "with faster-coco-eval under the COCO conventions (conf 0.001, NMS IoU 0.7, 300 detections per "
                    "image, multi-label, letterboxed input). --data is a YOLO data.yaml (or its folder), scored "
                    "against its labels, or against the COCO json named by `<split>_json` in it (crowd regions "
                    "honoured); or a COCO json, with --images. --compare-cpu scores an Edge TPU model and its CPU "
                    "twin on the same images, and how far they agree.")
    val.add_argument("--model", required=True, type=existing_file,
                     help="edge-yolov9 checkpoint (.pt), or a converted model (.tflite, run by the runtime)")
    val.add_argument("--data", required=True, type=Path, help="data.yaml, a dataset folder, or a COCO json")
    val.add_argument("--split", default="val", help="split of data.yaml to score")
    val.add_argument("--images", type=Path, help="image folder of a COCO json (default: <json dir>/../images)")
    val.add_argument("--imgsz", type=IMGSZ, help="input size, 320 or WIDTHxHEIGHT (default: the size the model was "
                     "trained at; a .tflite runs at its own)")
    val.add_argument("--batch", type=int_arg(1, MAX_BATCH), default=8, help="images per forward pass")
    val.add_argument("--device", help="for a .tflite: auto (default), cpu, usb, usb:N, pci, pci:N")
    val.add_argument("--compare-cpu", action="store_true",
                     help="for an Edge TPU model: also score its CPU twin, and the Edge TPU model's agreement with it")
    val.add_argument("--json", action="store_true", help="print the metrics as JSON")
    val.add_argument("--save-json", type=Path, metavar="FILE",
                     help="write the detections as a COCO results json (image ids: the json's, or 1..N in sorted "
                          "image order for YOLO labels)")
