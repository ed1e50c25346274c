"""Sub-commands of the ``train`` package. Heavy imports (torch) happen inside the handlers, so that
``edge-yolov9 --help`` stays fast and a missing extra gives a clear message."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict
from pathlib import Path

from edge_yolov9.cli import MODEL_INPUT_SIZES, add_command, existing_file, float_arg, int_arg, print_result
from edge_yolov9.errors import require

from .augment import AugmentConfig

MODEL_NAMES = ("gelan-s", "gelan-t", "yolov9-s", "yolov9-t")  # train.models.list_models(), without importing torch
IMGSZ = MODEL_INPUT_SIZES.arg()  # of train, val and models
MAX_CLASSES = 10_000
MAX_BATCH = 1024


def require_torch(purpose: str) -> None:
    require("torch", "train", purpose)


def _models(args: argparse.Namespace) -> int:
    require_torch("Listing the model zoo")
    from .models import create_model, list_models
    from .models.deploy import deploy_model
    from .models.profile import count_params, profile_model

    rows = []
    for name in list_models(args.filter):
        model = create_model(name, num_classes=args.num_classes)
        profile = profile_model(deploy_model(model), args.imgsz).to_dict()
        profile["train_params"] = count_params(model)
        profile["aux"] = model.cfg.aux
        rows.append(profile)

    def render(rows: list[dict]) -> str:
        lines = [f"{'model':<10} {'aux':<6} {'deploy params':>14} {'GFLOPs@' + str(args.imgsz):>12} {'train params':>13}"]
        lines += [f"{r['name']:<10} {r['aux']:<6} {r['params']:>14,} {r['gflops']:>12.2f} {r['train_params']:>13,}"
                  for r in rows]
        return "\n".join(lines)

    print_result(rows, args.json, render)
    return 0


AUGMENT_DEFAULTS = asdict(AugmentConfig())  # the strengths --augment may set (train.augment needs no torch)


def augment_setting(text: str) -> dict[str, float]:
    """``scale=0.5`` as {"scale": 0.5}; an unknown name or a value that is not a number is a usage error."""
    name, sep, value = text.partition("=")
    if not sep or name not in AUGMENT_DEFAULTS:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=VALUE with NAME one of {', '.join(AUGMENT_DEFAULTS)}")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: strengths are finite numbers from 0")
    return {name: number}


class MergeSettings(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        merged = dict(getattr(namespace, self.dest) or {})
        for setting in values:
            merged.update(setting)
        setattr(namespace, self.dest, merged)


def _train(args: argparse.Namespace) -> int:
    require_torch("Training")
    from . import distributed
    from .trainer import TrainConfig, resume, train

    world = distributed.World.from_env()
    if "," in args.device and not world.distributed:
        return distributed.launch(args.device, sys.argv[1:])
    try:
        if args.resume:
            best = resume(args.resume)
        else:
            # Paths as text: the config is stored in checkpoints, which hold plain data only.
            overrides = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                         if k in TrainConfig.__dataclass_fields__ and v is not None}
            if args.augment_changes:
                overrides["augment"] = {**AUGMENT_DEFAULTS, **args.augment_changes}
            best = train(TrainConfig(**overrides))
    finally:
        distributed.leave_group(world)
    if world.main:
        print(f"best checkpoint: {best}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    models = add_command(
        subparsers, "models", _models, help="list the model zoo with parameters and GFLOPs",
        description="List the registered model variants. Parameters and GFLOPs are those of the deploy form "
                    "(auxiliary branch dropped, BatchNorm folded, RepConv fused), as published figures are; "
                    "'train params' counts the auxiliary branch too.")
    models.add_argument("--filter", default="*", help="shell-style pattern on model names")
    models.add_argument("--imgsz", type=IMGSZ, default="640", help="input size for GFLOPs: 640, or WIDTHxHEIGHT")
    models.add_argument("--num-classes", type=int_arg(1, MAX_CLASSES), default=80, help="number of classes of the head")
    models.add_argument("--json", action="store_true", help="print JSON")

    train = add_command(
        subparsers, "train", _train, help="train a GELAN / YOLOv9 (PGI) detector on YOLO-format data",
        description="Train on a YOLO-format dataset (data.yaml) or the built-in synthetic 'shapes' data. "
                    "yolov9-t/-s train with the PGI auxiliary branch (dropped at export); gelan-t/-s without. "
                    "Writes runs/train/NAME/{last.pt,best.pt,results.csv,loss.png,map.png}.")
    train.add_argument("--model", choices=MODEL_NAMES,
                       help="model variant (see `edge-yolov9 models`); default yolov9-t, or with --weights the "
                            "checkpoint's own architecture (yolov9-t/-s there adds the PGI auxiliary branch)")
    train.add_argument("--data", default="shapes", help="data.yaml, dataset folder, or 'shapes' (built-in)")
    train.add_argument("--weights", type=existing_file,
                       help="fine-tune this checkpoint: edge-yolov9's, or Ultralytics', the YOLOv9 repository's or MIT "
                            "YOLO's (imported on the fly); only the class branch starts fresh when the class count "
                            "differs")
    train.add_argument("--augment", dest="augment_changes", nargs="+", type=augment_setting, metavar="NAME=VALUE",
                       action=MergeSettings, help="augmentation strengths, e.g. scale=0.5 mixup=0 (names: "
                       f"{', '.join(AUGMENT_DEFAULTS)}; defaults {', '.join(f'{k}={v:g}' for k, v in AUGMENT_DEFAULTS.items())})")
    train.add_argument("--classes", type=lambda text: [c.strip() for c in text.split(",") if c.strip()],
                       metavar="A,B,...",
                       help="with --weights: per data class, in order, the checkpoint class (name or id) whose "
                            "pretrained row it keeps (default: the class of the same name; a new name starts fresh)")
    train.add_argument("--partial-load", action="store_true",
                       help="with --weights of another architecture than --model: start from the tensors that fit")
    train.add_argument("--imgsz", type=IMGSZ, default=320,
                       help="training and validation input size: 320, or WIDTHxHEIGHT such as 384x224 for a 16:9 "
                            "camera; stored with the model, for convert and val")
    train.add_argument("--epochs", type=int_arg(1, 100_000), default=30)
    train.add_argument("--time-budget", type=float_arg(0, low_open=True), metavar="MINUTES",
                       help="fit the number of epochs (and the LR schedule) to this many minutes of training")
    train.add_argument("--patience", type=int_arg(1), metavar="EPOCHS",
                       help="end the run once validation mAP has not improved for this many epochs")
    train.add_argument("--batch", type=int_arg(1, MAX_BATCH), default=16,
                       help="images per step, over all processes of a distributed run")
    train.add_argument("--nominal-batch", type=int_arg(1, MAX_BATCH), default=64,
                       help="gradients are accumulated up to this many images per optimizer step; set it to "
                            "--batch for short runs on small data, where every step counts")
    train.add_argument("--workers", type=int_arg(-1, 256), default=-1, help="data-loading processes (-1: cores - 1)")
    train.add_argument("--device", default="auto",
                       help="cpu, cuda, cuda:N or auto; 0,1,... trains on those GPUs, one process each (torchrun); "
                            "under torchrun each process takes its own GPU (cuda) or the CPU (cpu)")
    train.add_argument("--amp", action=argparse.BooleanOptionalAction,
                       help="mixed precision (autocast): on by default on CUDA (bfloat16 where the GPU has it, else "
                            "float16 with loss scaling); --amp on the CPU trains in bfloat16")
    train.add_argument("--sync-bn", action="store_true",
                       help="distributed CUDA runs: BatchNorm statistics over the global batch (SyncBatchNorm)")
    train.add_argument("--activation", choices=["silu", "relu6"],
                       help="default silu, or with --weights the checkpoint's")
    train.add_argument("--optimizer", default="auto", choices=["auto", "sgd", "adamw"],
                       help="auto: SGD (the YOLOv9 recipe) for runs of 10k+ optimizer steps, AdamW for shorter ones")
    train.add_argument("--lr0", type=float_arg(0, 1, low_open=True), help="initial learning rate (default 0.01 for SGD, 0.002 for AdamW)")
    train.add_argument("--warmup-epochs", type=float_arg(0), default=3.0, help="epochs of learning-rate warm-up")
    train.add_argument("--cos-lr", action="store_true", help="cosine instead of linear LR decay")
    train.add_argument("--close-mosaic", type=int_arg(0), default=15, help="train the last N epochs without mosaic")
    train.add_argument("--freeze-backbone", action="store_true", help="keep the backbone (layers 0-8) fixed")
    train.add_argument("--no-cache", dest="cache", action="store_false", help="read images from disk each time")
    train.add_argument("--seed", type=int_arg(0, 2**32 - 1), default=0)
    train.add_argument("--project", default="runs/train", help="parent folder of runs")
    train.add_argument("--name", default="exp", help="run folder name; taken: NAME2, NAME3, ... (see --exist-ok)")
    train.add_argument("--exist-ok", action="store_true",
                       help="write into --project/--name even if it exists (its earlier checkpoints are replaced)")
    train.add_argument("--resume", metavar="LAST_PT", help="continue a stopped run (its last.pt or folder)")
