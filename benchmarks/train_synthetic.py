"""yolov9-t at 320 on the built-in synthetic shapes, CPU, a fixed budget of minutes.

Target (issue 5): at least 0.8 mAP50 on the held-out split within 15 minutes on the 2-core
development machine. The recipe is that of a short run: ``--time-budget`` (AdamW, picked by
``--optimizer auto`` for runs this short), one warm-up epoch, mosaic closed for the last two epochs,
no accumulation, and lighter augmentation (scale 0.5, no mixup) than the long-run recipe.

    python benchmarks/train_synthetic.py [--minutes 15] [--device cpu] [--project DIR]

``--project DIR`` keeps the run (``DIR/synthetic/best.pt``), e.g. for ``int8_fidelity.py --checkpoint``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile

from training_runs import epoch_table, machine, run, summary

from dataclasses import asdict, replace

from edge_yolov9.train.augment import AugmentConfig
from edge_yolov9.train.trainer import TrainConfig

TARGET_MAP50 = 0.8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="yolov9-t")
    parser.add_argument("--project", help="keep the run folder here (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as scratch:
        work = args.project or scratch
        cfg = TrainConfig(model=args.model, data="shapes", imgsz=320, epochs=30, time_budget=args.minutes,
                          device=args.device, project=work, name="synthetic", batch=16, nominal_batch=16,
                          warmup_epochs=1, close_mosaic=2,
                          augment=asdict(replace(AugmentConfig(), scale=0.5, mixup=0.0)))
        figures = run(f"{args.model} shapes 320, {args.minutes:g} min budget", cfg)
    print(f"\n{machine()}\n\n{epoch_table(figures)}\n\n{summary(figures)}")
    verdict = "met" if figures.best.map50 >= TARGET_MAP50 else "NOT met"
    print(f"target mAP50 >= {TARGET_MAP50} within {args.minutes:g} min: {verdict}")


if __name__ == "__main__":
    main()
