"""yolov9-t from scratch on the real coco128 images at 320: loss and mAP per epoch.

Target (issue 5): mAP on coco128 itself (its val split is its train split) rises clearly above zero
within the budget on the 2-core CPU, and far more on a GPU.

    python benchmarks/train_coco128.py [--data ../shared/data/coco128/data.yaml] [--epochs 30] [--minutes M]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from training_runs import epoch_table, machine, run, summary

from edge_yolov9.train.trainer import TrainConfig

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128" / "data.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--minutes", type=float, help="time budget instead of a fixed epoch count")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as work:
        cfg = TrainConfig(model="yolov9-t", data=str(args.data), imgsz=320, epochs=args.epochs,
                          time_budget=args.minutes, device=args.device, batch=args.batch, nominal_batch=args.batch,
                          warmup_epochs=2, close_mosaic=max(args.epochs // 10, 1), project=work, name="coco128")
        figures = run("yolov9-t coco128 320 from scratch", cfg)
    print(f"\n{machine()}\n\n{epoch_table(figures)}\n\n{summary(figures)}")


if __name__ == "__main__":
    main()
