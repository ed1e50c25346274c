"""The Edge TPU: a static precheck of an int8 .tflite against the documented compiler requirements,
and the real ``edgetpu_compiler`` (run, log parsed), both reported as the same per-op table.

The precheck is no substitute for the compiler: it knows the documented op table and model
requirements, the op versions compiler 16 is known to reject, and the quantization the int8
kernels need. Only the compiler says what is mapped. It runs on x86-64 Debian/Ubuntu only.
"""

from __future__ import annotations

import enum
import json
import os
import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from edge_yolov9.errors import EdgeYoloError
from edge_yolov9.interpreter import CORAL_APT_SETUP
from edge_yolov9.model_file import edgetpu_path

from .tflite_model import INT8_OP_VERSIONS, INTEGER_IO_DTYPES, OperatorInfo, TensorInfo, TFLiteModel

COMPILER = "edgetpu_compiler"
# The Edge TPU's on-chip parameter cache holds about 7 MiB (its 8 MiB of SRAM also hold other data): compiler-16
# logs give "used" + "remaining" of 5.81 + 1.28 MiB (ultralytics#4754), 5.90 + 1.16 (yolov7 PR#1672) and
# 6.89 + 0.001 (google-coral/edgetpu#512). Parameters beyond it stream from the host at every inference.
ON_CHIP_PARAMETER_BYTES = 7 * 2**20
STATUS_ORDER = {"OK": 0, "WARN": 1, "FAIL": 2}

# Coral's op table as documented for compiler 16, plus ops that compiler-16 logs show "Mapped to Edge TPU".
SUPPORTED_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED",
    "L2_NORMALIZATION", "LOGISTIC", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PAD", "QUANTIZE", "RELU",
    "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "SLICE", "SOFTMAX",
    "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE", "STRIDED_SLICE", "SUB", "TANH", "TRANSPOSE",
})
# Listed only in the newer op table (with a minimum runtime version); not confirmed by compiler-16 logs.
NEWER_TABLE_OPS = frozenset({
    "EXPAND_DIMS", "LSTM", "PACK", "PRELU", "REDUCE_MAX", "REDUCE_MIN", "RSQRT", "SQUARED_DIFFERENCE", "SUM",
    "TRANSPOSE_CONV", "UNIDIRECTIONAL_SEQUENCE_LSTM",
})
# Versions from which compiler 16 reports "Didn't find op for builtin opcode ... version ..." (public issues).
REJECTED_FROM_VERSION = {"CONV_2D": 5, "TRANSPOSE_CONV": 3, "QUANTIZE": 3, "EXP": 2, "RESIZE_BILINEAR": 3}
# Highest versions the int8 converters of compiler 16's era wrote; newer ones are unverified.
KNOWN_GOOD_VERSION = {**INT8_OP_VERSIONS, "QUANTIZE": 2, "RESHAPE": 1, "TRANSPOSE": 2}
NO_FUSED_ACTIVATION_OPS = frozenset({"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"})
FIXED_OUTPUT_OPS = frozenset({"LOGISTIC", "SOFTMAX"})


@dataclass
class OpRow:
    """One line of the per-op table: an op (and version when known), how many, and the verdict."""

    op: str
    version: int | None
    count: int
    status: str
    reason: str = ""


@dataclass
class Check:
    """A model-level requirement (one subgraph, integer I/O, parameter budget...)."""

    name: str
    status: str
    detail: str


@dataclass
class EdgeTpuReport:
    """Per-op table + model checks, from the static precheck or from the compiler's log."""

    model: str
    checked_by: str
    ops: list[OpRow] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        statuses = [row.status for row in self.ops] + [check.status for check in self.checks]
        worst = max(statuses, key=STATUS_ORDER.__getitem__, default="OK")
        return {"OK": "PASS", "WARN": "PASS with warnings", "FAIL": "FAIL"}[worst]

    @property
    def failed(self) -> bool:
        return self.verdict == "FAIL"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "checked_by": self.checked_by, "verdict": self.verdict,
                "summary": self.summary, "checks": [asdict(c) for c in self.checks],
                "ops": [asdict(r) for r in self.ops]}

    def _table(self, markdown: bool) -> list[str]:
        rows = [(r.op, "" if r.version is None else str(r.version), str(r.count), r.status, r.reason)
                for r in self.ops]
        rows += [(f"({c.name})", "", "", c.status, c.detail) for c in self.checks]
        header = ("op", "version", "count", "status", "reason")
        if markdown:
            return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}"] + [
                "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
        return ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4]
                for row in [header, *rows]]

    def _summary_lines(self) -> list[str]:
        return [f"{key.replace('_', ' ')}: {value}" for key, value in self.summary.items()]

    def render(self) -> str:
        """Plain text for the terminal."""
        return "\n".join([f"Edge TPU {self.checked_by}: {self.model}: {self.verdict}", *self._table(False),
                          *self._summary_lines()])

    def to_markdown(self) -> str:
        return "\n".join([f"# Edge TPU {self.checked_by}: `{Path(self.model).name}`", "",
                          f"**Verdict: {self.verdict}**", "", *self._table(True), "",
                          *(f"- {line}" for line in self._summary_lines()), ""])

    def save(self, stem: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.md``."""
        stem = Path(stem)
        json_path, md_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        md_path.write_text(self.to_markdown())
        return json_path, md_path


# ------------------------------------------------------------------------------------------ precheck
class _Findings:
    """Collects (status, reason) per op instance and folds them into per-(op, version) rows."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = defaultdict(int)
        self.reasons: dict[tuple[str, int], dict[tuple[str, str], list[str]]] = defaultdict(dict)

    def add_op(self, op: OperatorInfo) -> None:
        self.counts[(op.name, op.version)] += 1

    def flag(self, op: OperatorInfo, status: str, reason: str, example: str = "") -> None:
        examples = self.reasons[(op.name, op.version)].setdefault((status, reason), [])
        if example and example not in examples:
            examples.append(example)

    def rows(self) -> list[OpRow]:
        rows = []
        for key, count in sorted(self.counts.items(), key=lambda item: (-item[1], item[0])):
            found = self.reasons.get(key, {})
            status = max((s for s, _ in found), key=STATUS_ORDER.__getitem__, default="OK")
            reasons = []
            for (s, reason), examples in sorted(found.items(), key=lambda item: -STATUS_ORDER[item[0][0]]):
                shown = f" (e.g. {examples[0]}{f' and {len(examples) - 1} more' if len(examples) > 1 else ''})" \
                    if examples else ""
                reasons.append(f"{s}: {reason}{shown}")
            rows.append(OpRow(key[0], key[1], count, status, "; ".join(reasons)))
        return rows


def _short(tensor: TensorInfo) -> str:
    """Converter tensor names are long module paths; the last part and the index identify them."""
    return f"#{tensor.index} {tensor.name.rsplit('/', 1)[-1][-48:]}"


def _check_tensor(findings: _Findings, op: OperatorInfo, tensor: TensorInfo) -> None:
    name = _short(tensor)
    if tensor.dtype.startswith("float"):
        findings.flag(op, "FAIL", f"{tensor.dtype} tensor: the Edge TPU runs 8-bit tensors only, so this op "
                                  "and everything after it would run on the CPU", name)
    elif not tensor.is_constant and tensor.dtype not in INTEGER_IO_DTYPES:
        findings.flag(op, "FAIL", f"{tensor.dtype} activation: only int8/uint8 activations map", name)
    elif not tensor.is_constant and not tensor.scales:
        findings.flag(op, "FAIL", "activation without quantization parameters", name)
    shape = tensor.shape
    if tensor.is_constant:  # weights are 4-D by nature; the shape rules are about activations
        return
    if len(shape) > 4:
        findings.flag(op, "FAIL", f"rank-{len(shape)} tensor: at most 4-D is supported", name)
    elif len(shape) > 3 and any(d != 1 for d in shape[:-3]):
        findings.flag(op, "FAIL", "only the 3 innermost dimensions may be > 1 (batch must be 1)", name)
    if tensor.is_dynamic:
        findings.flag(op, "FAIL", "dynamic shape: tensor sizes must be constant at compile time", name)


def _check_op(findings: _Findings, model: TFLiteModel, op: OperatorInfo) -> None:
    name, version = op.name, op.version
    if name == "DEQUANTIZE":
        findings.flag(op, "FAIL", "DEQUANTIZE produces float: not supported, runs on the CPU")
    elif name in NEWER_TABLE_OPS:
        findings.flag(op, "WARN", "only in Coral's newer op table (needs a recent runtime); unverified")
    elif name not in SUPPORTED_OPS:
        findings.flag(op, "FAIL", "not in the Edge TPU op table: it and every op after it run on the CPU")
    if name in REJECTED_FROM_VERSION and version >= REJECTED_FROM_VERSION[name]:
        findings.flag(op, "FAIL", f"version {version}: compiler 16 rejects {name} from version "
                                  f"{REJECTED_FROM_VERSION[name]} ('Didn't find op for builtin opcode')")
    elif name in KNOWN_GOOD_VERSION and version > KNOWN_GOOD_VERSION[name]:
        findings.flag(op, "WARN", f"version {version} is newer than compiler-16-era converters wrote "
                                  f"(v{KNOWN_GOOD_VERSION[name]}); unverified")
    if name == "CONV_2D" and len(op.inputs) > 1:
        data, weights = model.tensor(op.inputs[0]), model.tensor(op.inputs[1])
        if len(data.shape) == 4 and len(weights.shape) == 4 and weights.shape[3] != data.shape[3]:
            findings.flag(op, "FAIL", "grouped convolution (CONV_2D v6) is not supported; ungroup it "
                                      "(deploy_model(for_export=True) does)")
    options = op.options
    if name in NO_FUSED_ACTIVATION_OPS and getattr(options, "fusedActivationFunction", 0):
        findings.flag(op, "FAIL", "fused activation is not supported on this op")
    if name in FIXED_OUTPUT_OPS:
        out = model.tensor(op.outputs[0])
        expected_zero_point = -128 if out.dtype == "int8" else 0
        if out.quantization and (abs(out.quantization[0] - 1 / 256) > 1e-6 or out.quantization[1] != expected_zero_point):
            findings.flag(op, "FAIL", f"output scale {out.quantization[0]:.6g}, zero point {out.quantization[1]}: "
                                      f"int8 kernels need 1/256, {expected_zero_point}", _short(out))
    if name == "SOFTMAX" and sum(d > 1 for d in model.tensor(op.inputs[0]).shape) > 1:
        findings.flag(op, "WARN", "documented for 1-D input only (up to 16,000 elements)")
    if name in ("RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR") and getattr(options, "halfPixelCenters", False):
        findings.flag(op, "WARN", "half_pixel_centers=True: older compilers reject it "
                                  "(TFLiteModel.normalize_for_edgetpu removes it for exact 2x upsamples)")
    if name in ("TRANSPOSE", "RESHAPE"):
        findings.flag(op, "WARN", "layout op: often not mapped for large 4-D activations")
    for index in op.inputs + op.outputs:
        if index >= 0:
            _check_tensor(findings, op, model.tensor(index))


def streamed_parameter_bytes(parameter_bytes: int) -> int:
    """About how many parameter bytes would not fit the on-chip cache and stream from the host at every
    inference (the compiler's "off-chip memory used" says exactly)."""
    return max(0, parameter_bytes - ON_CHIP_PARAMETER_BYTES)


def parameter_check(parameter_bytes: int) -> Check:
    """OK when the parameters fit the on-chip cache; else WARN with the MiB that would stream."""
    budget = f"{parameter_bytes / 2**20:.2f} MiB of parameters, ~{ON_CHIP_PARAMETER_BYTES / 2**20:.0f} MiB on-chip cache"
    streamed = streamed_parameter_bytes(parameter_bytes)
    if not streamed:
        return Check("parameter size", "OK", f"{budget}: all cached on chip")
    return Check("parameter size", "WARN",
                 f"{budget}: ~{streamed / 2**20:.2f} MiB would stream from the host at every inference "
                 "(slower, most over USB); a smaller model (e.g. GELAN-T) fits")


def precheck(model: TFLiteModel) -> EdgeTpuReport:
    """Check a .tflite statically against the Edge TPU requirements; never raises on a parsed model."""
    findings = _Findings()
    for op in model.operators:
        findings.add_op(op)
        _check_op(findings, model, op)
    checks = [
        Check("subgraphs", "OK" if model.subgraph_count == 1 else "FAIL",
              f"{model.subgraph_count} subgraph(s); the compiler maps exactly one"),
        Check("offset buffers", "OK" if model.offset_buffers == 0 else "FAIL",
              f"{model.offset_buffers} constant buffer(s) stored after the flatbuffer"
              + ("" if model.offset_buffers == 0 else "; compiler 16 cannot read them: re-save the model "
                                                      "with convert.tflite_model.TFLiteModel (inlines them)")),
    ]
    for kind, tensors in (("input", model.inputs), ("output", model.outputs)):
        bad = [f"{t.name} ({t.dtype})" for t in tensors if t.dtype not in INTEGER_IO_DTYPES]
        checks.append(Check(f"{kind} dtype", "FAIL" if bad else "OK",
                            f"not int8/uint8: {', '.join(bad)}" if bad else
                            ", ".join(sorted({t.dtype for t in tensors}))))
    parameter_bytes = model.parameter_bytes
    checks.append(parameter_check(parameter_bytes))
    summary = {"operators": len(model.operators), "parameter_bytes": parameter_bytes,
               "streamed_parameter_bytes": streamed_parameter_bytes(parameter_bytes),
               "note": "static check against the documented requirements; only edgetpu_compiler decides the mapping"}
    return EdgeTpuReport(model.source, "precheck", findings.rows(), checks, summary)


# ------------------------------------------------------------------------------------------ compiler
class ExitCode(enum.IntEnum):
    """Exit status of ``convert``/``edgetpu``; 2 (an error, nothing written) comes from the CLI."""

    OK = 0
    PRECHECK_FAILED = 1  # ``edgetpu`` without --compile: the static precheck fails
    COMPILER_MISSING = 3  # no edgetpu_compiler: the CPU models are written and valid
    EDGETPU_INCOMPLETE = 4  # compilation failed, or ops would run on the CPU (without --allow-cpu-ops)
    ACCURACY_DROP = 5  # ``convert``: the int8 model loses more mAP50-95 than --max-drop; everything is written


APT_SETUP = "\n  ".join(CORAL_APT_SETUP)
INSTALL_INSTRUCTIONS = f"""\
{COMPILER} was not found. It runs only on x86-64 Debian/Ubuntu (there is no ARM build, so not on
the Raspberry Pi). Install it from Coral's apt repository:

  {APT_SETUP}
  sudo apt-get install edgetpu-compiler

then run again with --edgetpu (or --compiler /path/to/{COMPILER}), or compile the int8 model
written here: {COMPILER} -s -o OUT OUT/model_int8.tflite"""


class CompilerNotFoundError(EdgeYoloError):
    """edgetpu_compiler is not installed (or not where --compiler says)."""


def find_compiler(explicit: str | os.PathLike | None = None) -> Path:
    """The compiler given by ``--compiler`` or found on PATH."""
    if explicit is not None:
        path = Path(explicit)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise CompilerNotFoundError(f"--compiler {explicit} is not an executable file",
                                    f"pass the path of {COMPILER}, or leave --compiler out to search PATH")
    found = shutil.which(COMPILER)
    if found is None:
        raise CompilerNotFoundError(INSTALL_INSTRUCTIONS)
    return Path(found)


_TABLE_HEADER = re.compile(r"^\s*Operator\s+Count\s+Status\s*$")
_TABLE_ROW = re.compile(r"^\s*([A-Za-z][\w\-]*)\s+(\d+)\s+(\S.*?)\s*$")
_SUMMARY_PATTERNS = {
    "compiler_version": r"Edge TPU Compiler version\s+(\S+)",
    "ops_on_edgetpu": r"Number of operations that will run on Edge TPU:\s*(\d+)",
    "ops_on_cpu": r"Number of operations that will run on CPU:\s*(\d+)",
    "total_operations": r"Total number of operations:\s*(\d+)",
    "edgetpu_subgraphs": r"Number of Edge TPU subgraphs:\s*(\d+)",
    "on_chip_memory_used": r"On-chip memory used for caching model parameters:\s*(\S+)",
    "on_chip_memory_remaining": r"On-chip memory remaining for caching model parameters:\s*(\S+)",
    "off_chip_memory_used": r"Off-chip memory used for streaming uncached model parameters:\s*(\S+)",
    "output_model": r"Output model:\s*(\S+)",
}
MAPPED = "Mapped to Edge TPU"


def _operator_rows(lines: Iterable[str]) -> list[OpRow]:
    rows, in_table = [], False
    for line in lines:
        if _TABLE_HEADER.match(line):
            in_table, rows = True, []  # a later table (e.g. of the .log) replaces an earlier one
            continue
        match = _TABLE_ROW.match(line) if in_table else None
        if match:
            op, count, status = match.group(1), int(match.group(2)), match.group(3)
            rows.append(OpRow(op, None, count, "OK" if status == MAPPED else "FAIL",
                              status if status == MAPPED else f"runs on the CPU: {status}"))
        elif in_table and line.strip() and rows:
            in_table = False
    return rows


def parse_compiler_log(text: str, model: str = "") -> EdgeTpuReport:
    """The compiler's output (``-s``: summary and "Operator / Count / Status" table) as a report.

    When every op maps, compiler 16 prints no "will run on" lines; the counts then come from the table.
    """
    summary: dict[str, Any] = {}
    for key, pattern in _SUMMARY_PATTERNS.items():
        match = re.search(pattern, text)
        if match:
            value = match.group(1)
            summary[key] = int(value) if value.isdigit() else value
    rows = _operator_rows(text.splitlines())
    on_tpu = sum(r.count for r in rows if r.status == "OK")
    on_cpu = sum(r.count for r in rows if r.status != "OK")
    summary.setdefault("ops_on_edgetpu", on_tpu)
    summary.setdefault("ops_on_cpu", on_cpu if rows else summary.get("total_operations", on_tpu) - on_tpu)
    checks = []
    if summary["ops_on_cpu"]:
        checks.append(Check("cpu ops", "FAIL", f"{summary['ops_on_cpu']} operation(s) will run on the CPU"))
    return EdgeTpuReport(model, f"edgetpu_compiler {summary.get('compiler_version', '?')}", rows, checks, summary)


@dataclass
class CompileResult:
    """What the compiler did: the compiled model (None on failure), its log, the parsed report."""

    compiled_model: Path | None
    log_path: Path
    report: EdgeTpuReport
    returncode: int

    @property
    def ok(self) -> bool:
        return self.compiled_model is not None and self.returncode == 0

    def exit_code(self, *, allow_cpu_ops: bool) -> ExitCode:
        cpu_ops = self.report.summary.get("ops_on_cpu", 0)
        if not self.ok or (cpu_ops and not allow_cpu_ops):
            return ExitCode.EDGETPU_INCOMPLETE
        return ExitCode.OK


def _has_table(text: str) -> bool:
    return any(_TABLE_HEADER.match(line) for line in text.splitlines())


def compile_for_edgetpu(model_path: str | os.PathLike, out_dir: str | os.PathLike, *, compiler: Path,
                        min_runtime_version: int | None = None, timeout_s: float = 600) -> CompileResult:
    """Run ``edgetpu_compiler -s -o OUT_DIR MODEL``. The compiler writes ``<stem>_edgetpu.tflite`` and its
    operation log ``<stem>_edgetpu.log``; its console output is kept as ``<stem>_edgetpu_compile.log``."""
    model_path, out_dir = Path(model_path), Path(out_dir)
    command = [str(compiler), "-s", "-o", str(out_dir)]
    if min_runtime_version is not None:
        command += ["-m", str(min_runtime_version)]
    command.append(str(model_path))
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        output, returncode = completed.stdout + completed.stderr, completed.returncode
    except subprocess.TimeoutExpired as err:
        output, returncode = f"{err.stdout or ''}\n{COMPILER} timed out after {timeout_s:.0f} s", -1
    except OSError as err:
        raise CompilerNotFoundError(f"Cannot run {compiler}: {err}", f"check that {COMPILER} is an x86-64 "
                                    "executable on an x86-64 Linux machine") from None
    compiled = edgetpu_path(model_path, out_dir)
    console_log = compiled.with_name(f"{compiled.stem}_compile.log")
    console_log.write_text(output)
    operation_log = compiled.with_suffix(".log")
    if not _has_table(output) and operation_log.is_file():
        output += "\n" + operation_log.read_text(errors="replace")
    report = parse_compiler_log(output, str(model_path))
    if returncode != 0 or not compiled.is_file():
        tail = " / ".join(line.strip() for line in output.strip().splitlines()[-4:]) or "no output"
        report.checks.append(Check("compilation", "FAIL", f"{COMPILER} exited with code {returncode}: {tail}"))
        return CompileResult(None, console_log, report, returncode)
    return CompileResult(compiled, console_log, report, returncode)
