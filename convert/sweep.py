"""A size sweep: one checkpoint converted at several input sizes, and the largest the Edge TPU takes whole.

Coral users lower the input size until every op maps to the Edge TPU (some YOLO exports map fully only at 224 or
192; the compiler fails on "large activation tensors" above a size), trading accuracy for speed with no tool to
show the trade. ``edge-yolov9 convert --imgsz 256 320 384 --edgetpu`` converts each size into OUT/<WxH>/ (each a
complete conversion) and sums them up here: per size, where the compiler put the ops and the parameters (without
the compiler, the precheck's estimate), the int8 mAP, and which size to take.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_yolov9.errors import writing

from .edgetpu import ExitCode
from .pipeline import INT8_MODEL, ConvertResult

SWEEP_STEM = "sizes"


@dataclass(frozen=True)
class SizeRow:
    """One size of a sweep."""

    size: str                      # WIDTHxHEIGHT, also the folder's name
    exit_code: int                 # that conversion's (see convert's exit codes)
    int8_mib: float
    compiled: bool                 # the compiler ran and wrote a model
    compile_failed: bool           # the compiler ran and wrote none
    ops_on_cpu: int | None         # None: not compiled
    on_chip: str | None            # the compiler's figures ("5.81MiB")
    off_chip: str | None
    streamed_estimate_mib: float   # the precheck's: parameters that would not fit the on-chip cache
    map50_95: float | None         # the int8 model's, when the accuracy report ran
    drop: float | None             # the int8 model's loss of mAP50-95 against PyTorch, AP points

    @property
    def whole_on_edgetpu(self) -> bool:
        return self.compiled and self.ops_on_cpu == 0

    @property
    def area(self) -> int:
        width, _, height = self.size.partition("x")
        return int(width) * int(height)

    @classmethod
    def of(cls, result: ConvertResult) -> "SizeRow":
        compiled = result.compile is not None and result.compile.ok
        summary = result.compile.report.summary if compiled else {}
        accuracy = result.accuracy
        return cls(str(result.imgsz), int(result.exit_code),
                   round(result.files[INT8_MODEL].stat().st_size / 2**20, 2), compiled,
                   result.compile is not None and not compiled,
                   summary.get("ops_on_cpu") if compiled else None, summary.get("on_chip_memory_used"),
                   summary.get("off_chip_memory_used"),
                   round(result.precheck.summary.get("streamed_parameter_bytes", 0) / 2**20, 2),
                   None if accuracy is None else round(accuracy.int8_tflite.map50_95, 4),
                   None if accuracy is None else round(accuracy.drop, 2))


def chosen(rows: list[SizeRow]) -> SizeRow | None:
    """The largest size whose every op the compiler mapped to the Edge TPU, and that passed the accuracy bound."""
    whole = [row for row in rows if row.whole_on_edgetpu and row.exit_code == ExitCode.OK]
    return max(whole, key=lambda row: row.area, default=None)


def exit_code(rows: list[SizeRow]) -> int:
    """0 when some size came out fully usable; else the best any size reached."""
    return min(row.exit_code for row in rows)


def verdict(rows: list[SizeRow]) -> str:
    best = chosen(rows)
    if best is not None:
        return f"Largest size wholly on the Edge TPU: {best.size} ({best.size}/model_int8_edgetpu.tflite)"
    if not any(row.compiled for row in rows):
        return ("Not compiled for the Edge TPU (pass --edgetpu, with edgetpu_compiler installed): the sizes are "
                "compared by the precheck and the int8 mAP only")
    return ("No size runs wholly on the Edge TPU: try smaller sizes; the compiler's per-op reports are in each "
            "size's folder")


def render(rows: list[SizeRow]) -> str:
    """The sweep as a Markdown table, smallest size first, and the verdict."""
    lines = ["| size | exit | int8 MiB | ops on CPU | on-chip / off-chip parameters | streamed (precheck) | "
             "int8 mAP50-95 | int8 loss |", "|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda row: row.area):
        mapping = "compile failed" if row.compile_failed else "not compiled" if row.ops_on_cpu is None \
            else str(row.ops_on_cpu)
        memory = f"{row.on_chip} / {row.off_chip}" if row.compiled else "-"
        score = "-" if row.map50_95 is None else f"{row.map50_95:.4f}"
        drop = "-" if row.drop is None else f"{row.drop:.2f} AP"
        lines.append(f"| {row.size} | {row.exit_code} | {row.int8_mib:.2f} | {mapping} | {memory} | "
                     f"{row.streamed_estimate_mib:.2f} MiB | {score} | {drop} |")
    return "\n".join([*lines, "", verdict(rows)])


def save(out_dir: Path, rows: list[SizeRow]) -> tuple[Path, Path]:
    """Write OUT/sizes.md and OUT/sizes.json."""
    md_path, json_path = out_dir / f"{SWEEP_STEM}.md", out_dir / f"{SWEEP_STEM}.json"
    best = chosen(rows)
    with writing(out_dir, "the size sweep's table"):
        md_path.write_text(f"# Input size sweep\n\n{render(rows)}\n")
        json_path.write_text(json.dumps({"sizes": [asdict(row) for row in sorted(rows, key=lambda row: row.area)],
                                         "chosen": None if best is None else best.size}, indent=2) + "\n")
    return md_path, json_path
