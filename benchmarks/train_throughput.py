"""Training throughput: `edge-yolov9 train` against Ultralytics' trainer on the same work, one after the other in
one run: fine-tuning the real Ultralytics yolov9t checkpoint of ../shared (1 class) on the 128 coco128 images
(person labels) at --imgsz, batch 16, the same number of data-loading workers, on the CPU, validating every epoch
(both do by default), for --epochs epochs.

Figures: the whole command's wall time, each epoch's seconds (training and validation) as each trainer records
them in its results.csv, and images per second of the epochs (128 images / epoch seconds); the ratio ours /
Ultralytics of the mean epoch time (below 1: ours is faster). Our model is the checkpoint's own architecture
(the main branch, as Ultralytics trains it: no PGI auxiliary branch), so both train the same network; a third
run (ours_pgi) trains yolov9-t, the same weights with the PGI auxiliary branch added, to show what PGI costs.

Ultralytics (AGPL-3.0) is installed with `pip install --no-deps --target` into a cache folder, as the importer's
oracle test does, and runs in a subprocess; it is never a dependency of the project. Its validation imports
torchvision, which has no wheel here for the CPU build of torch (the PyPI wheel's operators do not load): a
stand-in package gives it `torchvision.ops.nms` as Ultralytics' own TorchNMS (its torchvision-exact fallback),
which is slower than torchvision's kernel: its validation time is not a fair figure, so training alone is printed
too (ours: results.csv; Ultralytics: its progress bar's time at each epoch's last batch). Run on a quiet machine.

    python benchmarks/train_throughput.py [--epochs 3] [--imgsz 320] [--workers 1] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the isolated-install helper of the importer's oracle test

from convert_speed import SHARED_T, ULTRALYTICS  # noqa: E402
from person_data import person_coco128  # noqa: E402
from support.importers.ultralytics_oracle import isolated_site  # noqa: E402

TIMEOUT_S = 3 * 3600


# Ultralytics' progress line at an epoch's last batch: "  2/3   0G  box cls dfl  inst  320: 100% ━━━ 8/8 1.9s/it 15.4s"
ANSI_CODE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
ULTRALYTICS_EPOCH_END = re.compile(r"^\s*(\d+)/\d+\s.*\s(\d+)/\2\s.*?([\d.]+)s\s*$")


def timed(command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    return time.perf_counter() - start, done.stdout + done.stderr


def ours(work: Path, args: argparse.Namespace, name: str, *extra: str) -> dict:
    wall, _ = timed([sys.executable, "-m", "edge_yolov9.cli", "train", "--weights", str(SHARED_T), "--data",
                  str(person_coco128()), "--imgsz", str(args.imgsz), "--epochs", str(args.epochs), "--batch", "16",
                  "--workers", str(args.workers), "--device", "cpu", "--project", str(work), "--name", name, *extra])
    rows = list(csv.DictReader(open(work / name / "results.csv")))
    return {"wall_s": wall, "epoch_s": [float(r["seconds"]) for r in rows],
            "train_images_per_s": [float(r["images_per_second"]) for r in rows]}


TORCHVISION_STAND_IN = {
    "__init__.py": '"""Stand-in: see benchmarks/train_throughput.py."""\nfrom . import ops\n',
    "ops.py": "def nms(boxes, scores, iou_threshold):\n"
              "    from ultralytics.utils.nms import TorchNMS\n\n"
              "    return TorchNMS.nms(boxes, scores, iou_threshold)\n",
}


def torchvision_stand_in(work: Path) -> Path:
    folder = work / "stand-in"
    (folder / "torchvision").mkdir(parents=True)
    for name, text in TORCHVISION_STAND_IN.items():
        (folder / "torchvision" / name).write_text(text)
    return folder


def ultralytics(site: Path, work: Path, args: argparse.Namespace) -> dict:
    path = os.pathsep.join([str(torchvision_stand_in(work)), str(site)])
    env = {**os.environ, "PYTHONPATH": path, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(work)}
    wall, log = timed([sys.executable, "-c", "from ultralytics.cfg import entrypoint; entrypoint()", "train",
                  f"model={SHARED_T}", f"data={person_coco128()}", f"imgsz={args.imgsz}", f"epochs={args.epochs}",
                  "batch=16", f"workers={args.workers}", "device=cpu", f"project={work}", "name=ultralytics",
                  "exist_ok=True", "plots=False"], env, work)
    rows = list(csv.DictReader(open(work / "ultralytics" / "results.csv")))
    cumulative = [float(r["time"]) for r in rows]
    ends = {}
    for line in ANSI_CODE.sub("", log).replace("\r", "\n").splitlines():
        found = ULTRALYTICS_EPOCH_END.match(line)
        if found:
            ends[int(found[1])] = float(found[3])
    return {"wall_s": wall, "epoch_s": [b - a for a, b in zip([0.0, *cumulative], cumulative)],
            "train_images_per_s": [128 / ends[epoch] for epoch in sorted(ends)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not SHARED_T.is_file():
        raise SystemExit(f"{SHARED_T} not found: this benchmark needs ../shared")
    site = isolated_site("ultralytics-8.4.190-litert", ULTRALYTICS)
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as folder:
        work = Path(folder)
        figures = {"ours": ours(work, args, "ours"), "ultralytics": ultralytics(site, work, args),
                   "ours_pgi": ours(work, args, "ours_pgi", "--model", "yolov9-t")}
    for row in figures.values():
        row["mean_epoch_s"] = sum(row["epoch_s"]) / len(row["epoch_s"])
        row["images_per_s"] = 128 / row["mean_epoch_s"]
    figures["ratio_epoch_time"] = figures["ours"]["mean_epoch_s"] / figures["ultralytics"]["mean_epoch_s"]
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"training throughput at {args.imgsz}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {args.epochs} epochs, batch 16, {args.workers} workers")
    for name in ("ours", "ultralytics", "ours_pgi"):
        row = figures[name]
        epochs = ", ".join(f"{s:.1f}" for s in row["epoch_s"])
        training = ", ".join(f"{rate:.1f}" for rate in row["train_images_per_s"])
        print(f"  {name:<12} wall {row['wall_s']:6.1f} s; epochs (train + val) {epochs} s; "
              f"{row['images_per_s']:.1f} img/s; training alone {training} img/s")
    print(f"  ratio of mean epoch times, ours / Ultralytics: {figures['ratio_epoch_time']:.2f} (ours_pgi: yolov9-t, "
          "the same network with the PGI auxiliary branch that training adds and export drops)")


if __name__ == "__main__":
    main()
