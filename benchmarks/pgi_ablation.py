"""PGI ablation: the same run with the auxiliary branch (yolov9-t) and without it (gelan-t).

Same seed, data, input size, epochs and recipe; both mAPs printed side by side. Meant for a GPU
(``--device cuda``) where runs are long enough for PGI's effect to show; on a CPU use small budgets.

``--converge`` is the mode a CPU can finish: 160 px, both models, several seeds each, every run trained until
its validation mAP stops rising (``--patience`` epochs without a better one, at most ``--epochs``); it prints
each model's mean and standard deviation of the best mAP50-95 over the seeds and the difference. The runs live
in ``--work`` (kept), so the mode can run for hours in the background, be stopped and started again: finished
runs are read back, an interrupted one resumes from its last.pt. ``--jobs N`` trains N runs at a time, each in a
process of its own with its share of the cores' torch threads: on a small CPU, where one run cannot keep every
core busy, that finishes sooner (the figures in RESULTS.md say by how much).

    python benchmarks/pgi_ablation.py [--data shapes|DATA.yaml] [--epochs 30] [--device cuda]
    python benchmarks/pgi_ablation.py --converge [--seeds 0 1 2] [--patience 15] [--jobs 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from training_runs import epoch_table, machine, run, summary

from edge_yolov9.train.checkpoint import read_checkpoint
from edge_yolov9.train.trainer import EpochResult, TrainConfig, resume, train

PAIRS = {"t": ("yolov9-t", "gelan-t"), "s": ("yolov9-s", "gelan-s")}
CONVERGE_WORK = Path.home() / ".cache" / "edge-yolov9-bench" / "pgi-converge"


def converged_run(cfg: TrainConfig) -> list[EpochResult]:
    """The history of ``cfg``'s run in its folder: trained (or resumed) until its patience or epochs ran out."""
    last = cfg.run_dir() / "last.pt"
    if last.is_file():
        state = read_checkpoint(last)
        if state["epoch"] + 1 < state["train_config"]["epochs"]:
            resume(last)
    else:
        train(cfg)
    return [EpochResult(**row) for row in read_checkpoint(last)["history"]]


def _converged_in_a_process(cfg: TrainConfig, threads: int) -> list[EpochResult]:
    """converged_run with ``threads`` torch threads (a --jobs worker), its log lines marked with the run's name."""
    import torch

    logging.basicConfig(level=logging.INFO, format=f"[{cfg.name}] %(message)s")
    torch.set_num_threads(threads)
    return converged_run(cfg)


def converge(args: argparse.Namespace) -> None:
    best: dict[str, list[float]] = {model: [] for model in PAIRS[args.size]}
    runs = [(seed, model) for seed in args.seeds for model in PAIRS[args.size]]  # seed by seed: pairs end first
    configs = [TrainConfig(model=model, data=args.data, imgsz=args.imgsz, epochs=args.epochs, batch=args.batch,
                           nominal_batch=args.batch, device=args.device, seed=seed, warmup_epochs=3.0,
                           close_mosaic=10, patience=args.patience, project=str(args.work),
                           name=f"{model}-{args.imgsz}-seed{seed}", exist_ok=True) for seed, model in runs]
    if args.jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            histories = list(pool.map(_converged_in_a_process, configs, [threads] * len(configs)))
    else:
        histories = map(converged_run, configs)
    for (seed, model), history in zip(runs, histories):
        top = max(history, key=lambda h: (h.map50_95, h.map50))
        best[model].append(top.map50_95)
        print(f"{model} seed {seed}: best mAP50-95 {top.map50_95:.4f} at epoch {top.epoch} of {len(history)} "
              f"({sum(h.seconds for h in history) / 3600:.1f} h)", flush=True)
    print(f"\n{machine()}; data {args.data}, {args.imgsz} px, until {args.patience} epochs without a better mAP "
          f"(at most {args.epochs}), seeds {' '.join(map(str, args.seeds))}\n")
    print("| model | best mAP50-95, mean ± std over seeds | per seed |\n|---|---|---|")
    for model, values in best.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {model} | {statistics.mean(values):.4f} ± {spread:.4f} | "
              f"{', '.join(f'{v:.4f}' for v in values)} |")
    pgi, plain = (statistics.mean(best[m]) for m in PAIRS[args.size])
    print(f"\nPGI - no PGI: {pgi - plain:+.4f} mAP50-95 (mean over seeds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="shapes", help="'shapes' (built-in) or a data.yaml")
    parser.add_argument("--size", choices=sorted(PAIRS), default="t", help="T or S models")
    parser.add_argument("--epochs", type=int, help="default 30; --converge: at most 300")
    parser.add_argument("--imgsz", type=int, help="default 320; --converge: 160")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--converge", action="store_true", help="train each run until its mAP stops rising")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="--converge: the seeds")
    parser.add_argument("--patience", type=int, default=15, help="--converge: epochs without a better mAP")
    parser.add_argument("--work", type=Path, default=CONVERGE_WORK, help="--converge: where the runs are kept")
    parser.add_argument("--jobs", type=int, default=1, help="--converge: runs trained at a time, each in its own "
                                                            "process with its share of the cores")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.epochs = args.epochs or (300 if args.converge else 30)
    args.imgsz = args.imgsz or (160 if args.converge else 320)
    if args.converge:
        converge(args)
        return
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
