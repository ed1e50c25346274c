"""convert speed: `edge-yolov9 convert` (each stage and the whole command, accuracy report included) against
Ultralytics' LiteRT export (float, then int8) of the same weights, one after the other in one run.

Target (issue 18): the whole `edge-yolov9 convert` at most as long as Ultralytics' int8 + float export.

Models, at --imgsz (320):
- gelan-t: the real Ultralytics yolov9t checkpoint in ../shared (1 class), exported by Ultralytics as it is and
  imported for us (`edge-yolov9 import --names person`): the same weights on both sides.
- gelan-s: a fresh Ultralytics yolov9s (1 class, random weights) saved by Ultralytics and imported the same way
  (conversion time does not depend on what the weights learned).
Calibration: the 128 coco128 images (person labels); our accuracy report scores PyTorch, float and int8 on
coco-val158 restricted to person (see person_data.py). Ultralytics calibrates on the same 128 images.

Ultralytics (AGPL-3.0) is installed with `pip install --no-deps --target` into a cache folder, as the importer's
oracle test does, and runs in subprocesses through its `yolo` entry point; it is never a dependency of the
project. Each command runs alone, as a user runs it (imports included); run this on a quiet machine. Stages named
"beside: ..." ran in convert's worker process during the int8 lowering (convert.float_branch).

    python benchmarks/convert_speed.py [--models gelan-t gelan-s] [--imgsz 320] [--json]
"""

from __future__ import annotations

import argparse
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

from person_data import person_coco128, person_val158  # noqa: E402
from support.importers.ultralytics_oracle import isolated_site  # noqa: E402

ULTRALYTICS = ("ultralytics==8.4.190", "opencv-python-headless==4.11.0.86", "psutil==7.0.0", "polars==2.1.0",
               "ultralytics-thop==2.2.3", "ai-edge-quantizer==0.10.0", "immutabledict==4.3.1")
SHARED_T = ROOT.parent / "shared" / "checkpoints" / "ultralytics-yolov9t-1class" / "yolov9t_ball.pt"
STAGES = re.compile(r"Stage times: ([\d.]+) s in all; (.*)")
STAGE = re.compile(r"([\w :]+?) ([\d.]+) s(?:, |$)")
TIMEOUT_S = 3600


def run(command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, str]:
    """Wall seconds and output of ``command``; raises with its tail if it fails."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=TIMEOUT_S)
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    if done.returncode not in (0, 3):  # 3: no edgetpu_compiler, not asked for here
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{output[-3000:]}")
    return seconds, output


def ultralytics(site: Path, work: Path, *args: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(site), "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(work)}
    return run([sys.executable, "-c", "from ultralytics.cfg import entrypoint; entrypoint()", *args], env, work)


def fresh_yolov9s(site: Path, work: Path) -> Path:
    """A 1-class yolov9s with Ultralytics' initial weights, saved as Ultralytics saves a checkpoint."""
    path = work / "yolov9s_fresh.pt"
    script = ("import sys, torch\nfrom ultralytics.nn.tasks import DetectionModel\ntorch.manual_seed(0)\n"
              "m = DetectionModel('yolov9s.yaml', nc=1, verbose=False).eval()\nm.names = {0: 'person'}\n"
              "torch.save({'model': m.half(), 'train_args': {'imgsz': 320}}, sys.argv[1])\n")
    env = {**os.environ, "PYTHONPATH": str(site), "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(work)}
    run([sys.executable, "-c", script, str(path)], env, work)
    return path


def measure(name: str, source: Path, site: Path, work: Path, args: argparse.Namespace) -> dict:
    cli = [sys.executable, "-m", "edge_yolov9.cli"]
    ours = work / f"{name}.pt"
    run([*cli, "import", str(source), "-o", str(ours), "--names", "person"])
    seconds, output = run([*cli, "convert", "--model", str(ours), "--imgsz", str(args.imgsz), "--calib",
                           str(person_coco128()), "--calib-images", "128", "--val", str(person_val158()),
                           "-o", str(work / f"{name}-out")])
    total, parts = STAGES.findall(output)[-1]
    stages = {stage: float(s) for stage, s in STAGE.findall(parts)}
    report = json.loads((work / f"{name}-out" / "model_int8_accuracy.json").read_text())
    theirs_float, _ = ultralytics(site, work, "export", f"model={source}", "format=litert", f"imgsz={args.imgsz}")
    theirs_int8, log = ultralytics(site, work, "export", f"model={source}", "format=litert", f"imgsz={args.imgsz}",
                                   "quantize=8", f"data={person_coco128()}", "batch=1")
    calibrated = re.findall(r"(\d+) images, (\d+) backgrounds, (\d+) corrupt", log)
    return {"model": name, "ours_s": seconds, "ours_stages_s": stages, "ours_stage_total_s": float(total),
            "ours_accuracy_s": sum(s for stage, s in stages.items() if stage.startswith("accuracy")),
            "ours_accuracy_beside_s": sum(s for stage, s in stages.items() if stage.startswith("beside: accuracy")),
            "ours_int8_change_ap": -report["drop_ap"],
            "ultralytics_float_s": theirs_float, "ultralytics_int8_s": theirs_int8,
            "ultralytics_calibration": calibrated[-1] if calibrated else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=("gelan-t", "gelan-s"), default=("gelan-t", "gelan-s"))
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if not SHARED_T.is_file():
        raise SystemExit(f"{SHARED_T} not found: this benchmark needs ../shared")
    site = isolated_site("ultralytics-8.4.190-litert", ULTRALYTICS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="convert-speed-") as folder:
        work = Path(folder)
        sources = {"gelan-t": SHARED_T}
        if "gelan-s" in args.models:
            sources["gelan-s"] = fresh_yolov9s(site, work)
        for name in args.models:
            rows.append(measure(name, sources[name], site, work, args))
            print(f"{name}: done", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"convert speed at {args.imgsz}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, Ultralytics {ULTRALYTICS[0].split('==')[1]}")
    for row in rows:
        theirs = row["ultralytics_float_s"] + row["ultralytics_int8_s"]
        print(f"\n{row['model']}: edge-yolov9 convert {row['ours_s']:.0f} s (accuracy report "
              f"{row['ours_accuracy_s']:.0f} s + {row['ours_accuracy_beside_s']:.0f} s beside the int8 lowering; "
              f"{row['ours_int8_change_ap']:+.2f} AP int8 vs PyTorch); Ultralytics "
              f"float {row['ultralytics_float_s']:.0f} s + int8 {row['ultralytics_int8_s']:.0f} s = {theirs:.0f} s; "
              f"ratio {row['ours_s'] / theirs:.2f}")
        for stage, seconds in row["ours_stages_s"].items():
            print(f"  {stage:<26} {seconds:7.1f} s")


if __name__ == "__main__":
    main()
