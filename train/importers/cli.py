"""``edge-yolov9 import CKPT -o model.pt``: convert a foreign YOLOv9-T/S checkpoint to the project's format."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_yolov9.cli import add_command, existing_file, print_result
from edge_yolov9.model_file import weights_notice
from edge_yolov9.errors import ModelError

from ..cli import require_torch

FORMAT_CHOICES = ("auto", "ultralytics", "yolov9", "mit")  # core.FORMATS, named here without importing torch
NAME_FILE_SUFFIXES = (".txt", ".names", ".yaml", ".yml")


def parse_names(spec: str) -> list[str]:
    """``--names``: a comma-separated list, a text file with one name per line, or a data.yaml."""
    path = Path(spec)
    if path.suffix.lower() in NAME_FILE_SUFFIXES or path.is_file():
        if not path.is_file():
            raise ModelError(f"Class-name file not found: {path}", "check the path given to --names")
        if path.suffix.lower() in (".yaml", ".yml"):
            from ..data import load_data_config

            return list(load_data_config(path).names)
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    else:
        names = [name.strip() for name in spec.split(",")]
    if not names or not all(names):
        raise ModelError(f"--names {spec!r} gives no names or an empty one",
                         "write names as a,b,c, or one per line in a text file")
    return names


def _import(args: argparse.Namespace) -> int:
    require_torch("Importing a checkpoint")
    from ..checkpoint import check_output_path
    from .core import import_checkpoint, save_imported

    if Path(args.output).resolve() == Path(args.checkpoint).resolve():
        raise ModelError(f"-o {args.output} is the checkpoint being imported", "write the import to another file")
    check_output_path(args.output, "the imported checkpoint")  # before the import's work, not after
    names = parse_names(args.names) if args.names else None
    result = import_checkpoint(args.checkpoint, checkpoint_format=args.format, names=names, partial=args.partial)
    output = save_imported(result, args.output)
    report = {**result.report(), "output": str(output)}

    def render(report: dict) -> str:
        counts = report["counts"]
        names = ", ".join(report["names"][:10]) + (", ..." if len(report["names"]) > 10 else "")
        lines = [f"imported {report['source']} -> {report['output']}",
                 f"  format    {report['format']}",
                 f"  variant   {report['variant']} (auxiliary branch: {report['aux']})",
                 f"  classes   {report['num_classes']} from {report['names_from']}: {names}",
                 f"  tensors   {counts['used']} used, {counts['missing']} missing, {counts['unexpected']} unexpected, "
                 f"{counts['shape_mismatch']} shape mismatches"]
        for title in ("missing", "unexpected", "shape_mismatch"):
            lines += [f"  {title}: {key}" for key in report[title]]
        lines += [f"  note: {note}" for note in report["notes"]]
        lines.append(f"  license   {weights_notice(report['weights_license'])}")
        return "\n".join(lines)

    print_result(report, args.json, render)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "import", _import, help="convert an Ultralytics / YOLOv9 / MIT YOLO checkpoint to this project's",
        description="Read a YOLOv9-T/S checkpoint of Ultralytics, the YOLOv9 repository (WongKinYiu/yolov9) or "
                    "MIT YOLO (MultimediaTechLab/YOLO) without running its pickled code and without those "
                    "packages installed, infer the architecture from its tensor shapes, and write an edge-yolov9 "
                    "checkpoint (loadable with weights_only=True).")
    parser.add_argument("checkpoint", type=existing_file, help="the foreign checkpoint (.pt, .pth, .ckpt)")
    parser.add_argument("-o", "--output", required=True, help="where to write the edge-yolov9 checkpoint")
    parser.add_argument("--format", choices=FORMAT_CHOICES, default="auto", help="the checkpoint's project")
    parser.add_argument("--names", help="class names: a,b,c or a names.txt (one per line) or a data.yaml; "
                                        "default: those stored in the checkpoint, else class0, class1, ...")
    parser.add_argument("--partial", action="store_true",
                        help="write the model even if the checkpoint does not fill it exactly")
    parser.add_argument("--json", action="store_true", help="print the import report as JSON")
