"""PGI ablation: the same run with the auxiliary branch (yolov9-t) and without it (gelan-t).

Same seed, data, input size, epochs and recipe; both mAPs printed side by side. Meant for a GPU
(``--device cuda``) where runs are long enough for PGI's effect to show; on a CPU use small budgets.

    python benchmarks/pgi_ablation.py [--data shapes|DATA.yaml] [--epochs 30] [--device cuda]
"""

from __future__ import annotations

import argparse
import logging
import tempfile

from training_runs import epoch_table, machine, run, summary

from edge_yolov9.train.trainer import TrainConfig

PAIRS = {"t": ("yolov9-t", "gelan-t"), "s": ("yolov9-s", "gelan-s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="shapes", help="'shapes' (built-in) or a data.yaml")
    parser.add_argument("--size", choices=sorted(PAIRS), default="t", help="T or S models")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = []
    with tempfile.TemporaryDirectory() as work:
        for model in PAIRS[args.size]:
            cfg = TrainConfig(model=model, data=args.data, imgsz=args.imgsz, epochs=args.epochs, batch=args.batch,
                              nominal_batch=args.batch, device=args.device, seed=args.seed,
                              warmup_epochs=min(3.0, args.epochs / 5), close_mosaic=max(args.epochs // 10, 1),
                              project=work, name=model)
            results.append(run(f"{model} ({'PGI' if model.startswith('yolov9') else 'no PGI'})", cfg))
    print(f"\n{machine()}; data {args.data}, {args.imgsz} px, {args.epochs} epochs, seed {args.seed}\n")
    for figures in results:
        print(f"### {figures.name}\n\n{epoch_table(figures)}\n")
    print("| model | best mAP50-95 | best mAP50 | minutes |\n|---|---|---|---|")
    for figures in results:
        print(f"| {figures.name} | {figures.best.map50_95:.4f} | {figures.best.map50:.4f} | "
              f"{figures.wall_seconds / 60:.1f} |")
    pgi, plain = results
    print(f"\nPGI - no PGI: {pgi.best.map50_95 - plain.best.map50_95:+.4f} mAP50-95, "
          f"{pgi.best.map50 - plain.best.map50:+.4f} mAP50")
    for figures in results:
        print(summary(figures))


if __name__ == "__main__":
    main()
