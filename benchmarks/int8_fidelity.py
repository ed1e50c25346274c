"""int8 fidelity: how much COCO mAP the fully int8 TFLite model keeps against the PyTorch model it came from.

Target (issue): int8 within 0.5 AP (mAP50-95) of PyTorch fp32. Published int8 YOLO TFLite exports lose
1 to 7 AP.

For one trained checkpoint (default: the demo's ``runs/demo/train/best.pt``; without it, yolov9-t is
trained for ``--epochs`` on the built-in shapes data, in a temporary folder), ``edge-yolov9 convert`` runs
at ``--imgsz``, calibrated on the train split of its data (``--data``, default the shapes), and the table
gives mAP50-95 / mAP50 of PyTorch fp32, float TFLite and int8 TFLite:

- on the val split of the model's own data (the convert command's accuracy report),
- on ../shared/data/coco-val158 (its COCO json) when the model's classes are COCO's,
- as *agreement*: each model scored against the PyTorch model's own detections of score >= 0.25 as
  ground truth, on the same images. PyTorch then scores 1.0 by construction; what the TFLite models
  lose is what conversion and quantization change, whatever the quality of the model, so a weakly
  trained model still measures fidelity.

    python benchmarks/int8_fidelity.py [--checkpoint CKPT [--data DATA.yaml]] [--imgsz 320] [--calib-images 300]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

from edge_yolov9.convert.accuracy import AccuracyReport, find_val_set, measure_accuracy
from edge_yolov9.convert.calibration import DEFAULT_CALIBRATION_IMAGES
from edge_yolov9.convert.export import prepare_for_export
from edge_yolov9.convert.pipeline import FLOAT_MODEL, INT8_MODEL, ConvertOptions, convert_checkpoint
from edge_yolov9.postprocess import PostprocessConfig
from edge_yolov9.train.checkpoint import load_checkpoint
from edge_yolov9.train.data import load_data_config
from edge_yolov9.train.evaluate import (BatchPredictor, TFLitePredictor, TorchPredictor, agreement_set, evaluate,
                                        load_eval_set)
from edge_yolov9.train.models import YOLO
from edge_yolov9.train.trainer import BUILTIN_DATA, TrainConfig, resolve_data, train

ROOT = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = ROOT / "runs" / "demo" / "train" / "best.pt"
COCO_VAL158 = ROOT.parent / "shared" / "data" / "coco-val158"
COCO_JSON = COCO_VAL158 / "annotations" / "instances_val2017_subset.json"
# The evaluation post-processing cut at score 0.25: every evaluated PyTorch detection above 0.25 is a
# reference box, so PyTorch itself scores 1.0 and the TFLite models' figures are pure agreement.
REFERENCE = replace(PostprocessConfig.for_evaluation(), score_threshold=0.25)
MODELS = ("PyTorch fp32", "float TFLite", "int8 TFLite")


def trained_checkpoint(args: argparse.Namespace, folder: Path) -> Path:
    """--checkpoint, else the demo's, else yolov9-t trained briefly on the built-in shapes (the demo's recipe)."""
    if args.checkpoint is not None:
        return args.checkpoint
    if DEMO_CHECKPOINT.is_file():
        return DEMO_CHECKPOINT
    logging.info("No %s: training yolov9-t on the built-in shapes for %d epochs", DEMO_CHECKPOINT, args.epochs)
    return train(TrainConfig(model="yolov9-t", data=BUILTIN_DATA, imgsz=args.imgsz, epochs=args.epochs, batch=16,
                             nominal_batch=16, close_mosaic=1, warmup_epochs=1, project=str(folder), name="train"))


def agreement(image_paths: tuple[Path, ...], names: tuple[str, ...], pytorch: YOLO, imgsz: int,
              predictors: dict[str, BatchPredictor]) -> dict:
    """mAP of each predictor against the PyTorch model's own detections (``REFERENCE``) on ``image_paths``."""
    eval_set = agreement_set(image_paths, names, TorchPredictor(pytorch, imgsz, config=REFERENCE))
    if eval_set is None:
        return {"n/a": f"the PyTorch model detects nothing with score >= {REFERENCE.score_threshold} "
                       f"in these {len(image_paths)} images"}
    row = {"images": len(eval_set.samples), "objects": sum(len(s.labels) for s in eval_set.samples)}
    for name, predictor in predictors.items():
        metrics = evaluate(eval_set, predictor).metrics
        row[name] = {"map50_95": metrics.map50_95, "map50": metrics.map50}
    return row


def accuracy_row(report: AccuracyReport) -> dict:
    return {"images": report.pytorch.images, "objects": report.pytorch.instances,
            **{name: {"map50_95": r.map50_95, "map50": r.map50} for name, r in zip(MODELS, report.rows)}}


def print_table(result: dict) -> None:
    print(f"int8 fidelity of {result['checkpoint']} ({result['model']}, {len(result['labels'])} classes) at "
          f"{result['imgsz']}x{result['imgsz']}, calibrated on {result['calib_images']} images of {result['data']} "
          f"({result['calib_outliers']} outliers left out)")
    print(f"{'':<50}" + "".join(f"{name:>20}" for name in MODELS) + f"{'int8 - fp32 (AP)':>18}")
    print(f"{'':<50}" + f"{'mAP50-95   mAP50':>20}" * 3 + f"{'50-95    50':>18}")
    for title, row in result["rows"].items():
        if "n/a" in row:
            print(f"{title:<50}  n/a: {row['n/a']}")
            continue
        label = f"{title} ({row['images']} img, {row['objects']} obj)"
        cells = "".join(f"{row[m]['map50_95']:>11.4f}{row[m]['map50']:>9.4f}" for m in MODELS)
        fp32, int8 = row[MODELS[0]], row[MODELS[2]]
        print(f"{label:<50}{cells}{100 * (int8['map50_95'] - fp32['map50_95']):>+12.2f}"
              f"{100 * (int8['map50'] - fp32['map50']):>+6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help=f"edge-yolov9 checkpoint (default: {DEMO_CHECKPOINT})")
    parser.add_argument("--data", type=Path, help="its data.yaml (default: the built-in shapes, the demo's data)")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--calib-images", type=int, default=DEFAULT_CALIBRATION_IMAGES)
    parser.add_argument("--epochs", type=int, default=4, help="training length when there is no checkpoint")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = trained_checkpoint(args, Path(tmp))
        data = args.data or resolve_data(BUILTIN_DATA)
        out = Path(tmp) / "int8"
        converted = convert_checkpoint(ConvertOptions(checkpoint, args.imgsz, data, out, args.calib_images,
                                                      val=data, max_drop=float("inf")))
        model, labels, _ = load_checkpoint(checkpoint)
        pytorch = prepare_for_export(model)
        rows = {f"{load_data_config(data).yaml_path.parent.name} val": accuracy_row(converted.accuracy)}
        if tuple(labels) == load_data_config(COCO_VAL158).names:
            coco = measure_accuracy(find_val_set(data, COCO_JSON, labels), pytorch, checkpoint, out / FLOAT_MODEL,
                                    out / INT8_MODEL, max_drop=float("inf"))
            rows["coco-val158"] = accuracy_row(coco)
        else:
            rows["coco-val158"] = {"n/a": f"the model's {len(labels)} classes ({', '.join(labels[:3])}, ...) are "
                                          "not COCO's 80"}
        predictors = {MODELS[0]: TorchPredictor(pytorch, args.imgsz), MODELS[1]: TFLitePredictor(out / FLOAT_MODEL),
                      MODELS[2]: TFLitePredictor(out / INT8_MODEL)}
        for title, source in (("agreement: own val images", data), ("agreement: coco-val158 images", COCO_JSON)):
            rows[title] = agreement(load_eval_set(source).image_paths, tuple(labels), pytorch, args.imgsz,
                                    predictors)
    result = {"checkpoint": str(checkpoint), "model": model.cfg.name, "labels": labels, "data": str(data),
              "imgsz": args.imgsz, "calib_images": converted.metadata["calibration"]["images"],
              "calib_outliers": converted.metadata["calibration"]["outliers_left_out"], "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print_table(result)


if __name__ == "__main__":
    main()
