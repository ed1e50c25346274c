"""``edge-yolov9 val``: COCO mAP of a checkpoint on a YOLO dataset or a COCO json.

Imports of torch and the evaluation code happen in the handler, so ``edge-yolov9 --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from edge_yolov9.cli import MODEL_INPUT_SIZES, add_command, existing_file, int_arg, print_result
from edge_yolov9.errors import ModelError, require, writing

from .cli import IMGSZ, MAX_BATCH, require_torch

logger = logging.getLogger(__name__)


def _render(metrics: dict) -> str:
    lines = [f"{metrics['num_images']} images, {metrics['num_instances']} objects",
             f"mAP50-95 {metrics['map50_95']:.4f}   mAP50 {metrics['map50']:.4f}", "",
             f"{'class':<20} {'AP50-95':>8} {'AP50':>8}"]
    lines += [f"{name:<20} {ap:>8.4f} {metrics['per_class_ap50'][name]:>8.4f}"
              for name, ap in metrics["per_class"].items()]
    return "\n".join(lines)


def _val(args: argparse.Namespace) -> int:
    require_torch("Validation")
    require("faster_coco_eval", "train", "COCO evaluation", package="faster-coco-eval")
    from .checkpoint import choose_input_size, load_checkpoint
    from .evaluate import TorchPredictor, evaluate, load_eval_set
    from .models.deploy import deploy_model

    eval_set = load_eval_set(args.data, split=args.split, images=args.images)  # data errors before the model loads
    model, model_names, _ = load_checkpoint(args.model)
    if model.num_classes != len(eval_set.names):
        raise ModelError(f"{args.model} detects {model.num_classes} classes but {args.data} has "
                         f"{len(eval_set.names)}", "evaluate on data with the classes the model was trained on")
    if list(model_names) != list(eval_set.names):
        logger.warning("The checkpoint's class names (%s, ...) differ from the data's (%s, ...); "
                       "the model's class k is scored as the data's class k", model_names[0], eval_set.names[0])
    imgsz = choose_input_size(model.cfg, args.imgsz, args.model, MODEL_INPUT_SIZES)
    result = evaluate(eval_set, TorchPredictor(deploy_model(model), imgsz), batch_size=args.batch,
                      progress=True)
    if args.save_json:
        with writing(args.save_json, "the detections"):
            args.save_json.parent.mkdir(parents=True, exist_ok=True)
            args.save_json.write_text(json.dumps(result.results))
        logger.info("Wrote %d detections to %s", len(result.results), args.save_json)
    print_result(result.metrics.to_dict(), args.json, _render)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    val = add_command(
        subparsers, "val", _val, help="COCO mAP50-95 / mAP50 of a checkpoint on a dataset",
        description="Score a checkpoint with faster-coco-eval under the COCO conventions (conf 0.001, NMS IoU "
                    "0.7, 300 detections per image, multi-label, letterboxed square input). --data is a YOLO "
                    "data.yaml (or its folder), scored against its labels, or against the COCO json named by "
                    "`<split>_json` in it (crowd regions honoured); or a COCO json, with --images.")
    val.add_argument("--model", required=True, type=existing_file, help="edge-yolov9 checkpoint (.pt)")
    val.add_argument("--data", required=True, type=Path, help="data.yaml, a dataset folder, or a COCO json")
    val.add_argument("--split", default="val", help="split of data.yaml to score")
    val.add_argument("--images", type=Path, help="image folder of a COCO json (default: <json dir>/../images)")
    val.add_argument("--imgsz", type=IMGSZ, help="square input size (default: the size the model was trained at)")
    val.add_argument("--batch", type=int_arg(1, MAX_BATCH), default=8, help="images per forward pass")
    val.add_argument("--json", action="store_true", help="print the metrics as JSON")
    val.add_argument("--save-json", type=Path, metavar="FILE", help="write the detections as a COCO results json (image ids: the json's, or 1..N in "
                          "sorted image order for YOLO labels)")
