"""Compare two `edge-yolov9 detect --json` files of the same model and images (pi-check: a Pi's against the host's).

Each detection is matched to the other side's of the same class and frame at the highest IoU (greedy by score).
Exit code 0 when every frame was read on both sides and at least --min-matched of the boxes match at
IoU >= --iou with scores within --score-tol; the printed figures say how close the rest came.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_frames(path: Path) -> dict[str, dict]:
    frames = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            frames[Path(record["source"]).name] = record
    if not frames:
        sys.exit(f"{path}: no frames (did detect run?)")
    return frames


def iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(reference: list[dict], other: list[dict]) -> list[tuple[dict, dict, float]]:
    """Pairs (reference detection, other detection, IoU), each detection used once, same class only."""
    unused = sorted(other, key=lambda d: -d["score"])
    pairs = []
    for ref in sorted(reference, key=lambda d: -d["score"]):
        candidates = [(iou(ref["box"], o["box"]), i) for i, o in enumerate(unused) if o["class_id"] == ref["class_id"]]
        if candidates:
            best, index = max(candidates)
            if best > 0:
                pairs.append((ref, unused.pop(index), best))
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="detect --json of the reference machine (the host)")
    parser.add_argument("other", type=Path, help="detect --json of the machine under test")
    parser.add_argument("--iou", type=float, default=0.9, help="IoU a matched box reaches at least")
    parser.add_argument("--score-tol", type=float, default=0.02, help="largest score difference of a matched box")
    parser.add_argument("--min-matched", type=float, default=0.9, help="share of boxes that must match")
    args = parser.parse_args()
    reference, other = read_frames(args.reference), read_frames(args.other)
    problems = [f"{name}: missing on {args.other.name}" for name in reference.keys() - other.keys()]
    problems += [f"{name}: {side[name]['error']}" for side in (reference, other) for name in side
                 if "error" in side[name]]
    boxes = identical = close = 0
    worst_iou, worst_score = 1.0, 0.0
    for name in sorted(reference.keys() & other.keys()):
        ref, oth = reference[name].get("detections", []), other[name].get("detections", [])
        boxes += max(len(ref), len(oth))
        for a, b, overlap in match(ref, oth):
            identical += a["box"] == b["box"] and a["score"] == b["score"]
            score_gap = abs(a["score"] - b["score"])
            close += overlap >= args.iou and score_gap <= args.score_tol
            worst_iou, worst_score = min(worst_iou, overlap), max(worst_score, score_gap)
    share = close / boxes if boxes else 1.0
    print(f"{len(reference)} frames, {boxes} boxes: {identical} identical, {close} within IoU >= {args.iou} and "
          f"score +-{args.score_tol} ({share:.1%}); lowest matched IoU {worst_iou:.3f}, largest score gap "
          f"{worst_score:.4f}")
    for problem in problems:
        print("problem:", problem)
    return 0 if not problems and share >= args.min_matched else 1


if __name__ == "__main__":
    sys.exit(main())
