"""What the training benchmarks share: one run from a :class:`TrainConfig`, and its figures as a table.

Not a benchmark itself; ``train_synthetic.py``, ``train_coco128.py`` and ``pgi_ablation.py`` use it.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import torch

from edge_yolov9.train.trainer import EpochResult, TrainConfig, Trainer


@dataclass(frozen=True)
class RunFigures:
    name: str
    history: list[EpochResult]
    wall_seconds: float
    device: str
    optimizer: str

    @property
    def best(self) -> EpochResult:
        return max(self.history, key=lambda h: (h.map50_95, h.map50))


def run(name: str, cfg: TrainConfig) -> RunFigures:
    """Train ``cfg`` from scratch (its run folder is replaced) and return its per-epoch figures."""
    cfg.exist_ok = True  # a rerun writes where the benchmark's docs say, not into NAME2
    started = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.fit()
    return RunFigures(name, trainer.history, time.perf_counter() - started, str(trainer.device), cfg.optimizer)


def machine() -> str:
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores{gpu}, "
            f"Python {platform.python_version()}, torch {torch.__version__}").replace("  ", " ")


def epoch_table(figures: RunFigures) -> str:
    lines = [f"| epoch | box | dfl | cls | mAP50-95 | mAP50 | img/s | minutes |", "|---|---|---|---|---|---|---|---|"]
    elapsed = 0.0
    for h in figures.history:
        elapsed += h.seconds
        lines.append(f"| {h.epoch} | {h.box_loss:.3f} | {h.dfl_loss:.3f} | {h.cls_loss:.3f} | {h.map50_95:.4f} | "
                     f"{h.map50:.4f} | {h.images_per_second:.1f} | {elapsed / 60:.1f} |")
    return "\n".join(lines)


def summary(figures: RunFigures) -> str:
    best = figures.best
    return (f"{figures.name}: best epoch {best.epoch}/{len(figures.history)}: mAP50-95 {best.map50_95:.4f}, "
            f"mAP50 {best.map50:.4f}; {figures.wall_seconds / 60:.1f} min wall on {figures.device} "
            f"({figures.optimizer})")
