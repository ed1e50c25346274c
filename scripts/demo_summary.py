"""The end of scripts/demo.sh: what a person wants to see of the run in DEMO (runs/demo).

Prints a table (mAP of the PyTorch, float TFLite and int8 TFLite models on the held-out images, file size,
latency on this machine) and writes DEMO/summary.png: annotated held-out detections of the int8 model beside
the training curves, with the table also in DEMO/summary.md.

    python scripts/demo_summary.py runs/demo
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

TILE = 256  # pixels of one detection image on the sheet
COLUMNS, ROWS = 4, 2


def table(demo: Path) -> str:
    report = json.loads((demo / "int8" / "model_int8_accuracy.json").read_text())
    models = {row["model"]: row for row in report["models"]}
    files = {"PyTorch fp32": demo / "train" / "best.pt", "float TFLite": demo / "int8" / "model_float.tflite",
             "int8 TFLite": demo / "int8" / "model_int8.tflite"}
    bench = {"float TFLite": demo / "bench_float.json", "int8 TFLite": demo / "bench_int8.json"}
    lines = [f"Held-out images: {report['val']} ({models['PyTorch fp32']['images']} images, "
             f"{models['PyTorch fp32']['instances']} objects), {report['imgsz']}", "",
             "| model | mAP50-95 | mAP50 | file | latency (median, this CPU) |", "|---|---|---|---|---|"]
    for name, row in models.items():
        latency = "-"
        if name in bench and bench[name].is_file():
            latency = f"{json.loads(bench[name].read_text())['latency_ms']['total']['median']:.1f} ms"
        lines.append(f"| {name} | {row['map50_95']:.4f} | {row['map50']:.4f} | "
                     f"{files[name].stat().st_size / 2**20:.2f} MiB | {latency} |")
    lines += ["", f"int8 {-report['drop_ap']:+.2f} AP vs PyTorch (mAP50-95)"]
    return "\n".join(lines)


def contact_sheet(demo: Path) -> Image.Image:
    """The first held-out images with the int8 model's boxes (detect --save), then the loss and mAP curves."""
    shots = sorted((demo / "detections").rglob("*.jpg"))[:COLUMNS * ROWS]
    curves = [Image.open(demo / "train" / name).convert("RGB") for name in ("loss.png", "map.png")
              if (demo / "train" / name).is_file()]
    curve_width = max((c.width * (TILE * ROWS // 2) // c.height for c in curves), default=0)
    sheet = Image.new("RGB", (COLUMNS * TILE + curve_width, ROWS * TILE + 24), "white")
    ImageDraw.Draw(sheet).text((6, 6), "int8 model on held-out images", fill="black")
    for index, path in enumerate(shots):
        with Image.open(path) as shot:
            shot.thumbnail((TILE, TILE))
            sheet.paste(shot, ((index % COLUMNS) * TILE, 24 + (index // COLUMNS) * TILE))
    top = 24
    for curve in curves:
        height = TILE * ROWS // 2
        resized = curve.resize((curve.width * height // curve.height, height))
        sheet.paste(resized, (COLUMNS * TILE, top))
        top += height
    return sheet


def main() -> int:
    demo = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
    text = table(demo)
    (demo / "summary.md").write_text(text + "\n")
    contact_sheet(demo).save(demo / "summary.png")
    print(text)
    print(f"\nDetections and training curves: {demo / 'summary.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
