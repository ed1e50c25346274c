"""Edge TPU precheck rules, the compiler log parser, and the compiler invocation (a fake compiler on PATH)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from edge_yolov9.convert.edgetpu import (INSTALL_INSTRUCTIONS, ON_CHIP_PARAMETER_BYTES, CompilerNotFoundError,
                                         compile_for_edgetpu, find_compiler, parse_compiler_log, precheck)
from edge_yolov9.convert.tflite_model import TFLiteModel
from edge_yolov9.cli import main
from test_convert_tflite import T, build, float_add_model, int8_add_model, with_offset_buffers


def checked(content: bytes):
    return precheck(TFLiteModel.from_bytes(content, source="m.tflite"))


def reasons(report) -> str:
    return " | ".join([r.reason for r in report.ops] + [c.detail for c in report.checks if c.status != "OK"])


# ------------------------------------------------------------------------------------- precheck
def test_precheck_passes_an_int8_model():
    report = checked(int8_add_model())
    assert report.verdict == "PASS", report.render()
    assert [(r.op, r.version, r.count, r.status) for r in report.ops] == [("ADD", 2, 1, "OK")]
    assert report.summary["parameter_bytes"] == 3


def test_precheck_fails_a_float_model_with_reasons():
    report = checked(float_add_model())
    assert report.verdict == "FAIL"
    assert "float32 tensor" in reasons(report) and "not int8/uint8" in reasons(report)
    assert {c.name for c in report.checks if c.status == "FAIL"} == {"input dtype", "output dtype"}


def test_precheck_fails_logistic_without_the_fixed_output_scale():
    """P4/P5: int8 LOGISTIC/SOFTMAX outputs must be 1/256, -128."""
    def logistic(scale, zero_point):
        return build([T("x", "int8", (1, 4, 4, 8), (0.05, 0)), T("y", "int8", (1, 4, 4, 8), (scale, zero_point))],
                     [("LOGISTIC", 2, [0], [1], None)], [0], [1])

    assert checked(logistic(1 / 256, -128)).verdict == "PASS"
    report = checked(logistic(0.009053, -95))
    assert report.verdict == "FAIL" and "need 1/256, -128" in reasons(report)


def test_precheck_fails_grouped_conv_v6():
    """The Edge TPU compiler rejects CONV_2D v6 (grouped); deploy_model(for_export=True) ungroups."""
    options = schema.Conv2DOptionsT()
    options.strideW = options.strideH = 1
    content = build(
        [T("x", "int8", (1, 4, 4, 4), (0.05, 0)), T("w", "int8", (4, 1, 1, 2), (0.01, 0), np.ones((4, 1, 1, 2))),
         T("b", "int32", (4,), (0.0005, 0), np.zeros(4)), T("y", "int8", (1, 4, 4, 4), (0.05, 0))],
        [("CONV_2D", 6, [0, 1, 2], [3], options)], [0], [3])
    report = checked(content)
    assert report.verdict == "FAIL"
    assert "grouped convolution" in reasons(report) and "rejects CONV_2D from version 5" in reasons(report)


def test_precheck_fails_unsupported_ops_batches_and_offset_buffers():
    content = build([T("x", "int8", (2, 4, 4, 3), (0.05, 0)), T("y", "float32", (2, 4, 4, 3))],
                    [("DEQUANTIZE", 2, [0], [1], None)], [0], [1])
    text = reasons(checked(content))
    assert "DEQUANTIZE produces float" in text and "3 innermost dimensions" in text
    offsets = checked(with_offset_buffers(int8_add_model()))
    assert offsets.verdict == "FAIL" and "1 constant buffer(s) stored after the flatbuffer" in reasons(offsets)


def test_precheck_warns_about_layout_ops_and_the_parameter_budget():
    transpose = build([T("x", "int8", (1, 4, 4, 3), (0.05, 0)), T("p", "int32", (4,), data=np.array([0, 2, 1, 3])),
                       T("y", "int8", (1, 4, 4, 3), (0.05, 0))], [("TRANSPOSE", 2, [0, 1], [2], None)], [0], [2])
    assert checked(transpose).verdict == "PASS with warnings"
    shape = (1, 1, 5, 3 * 2**19)  # 7.5 MiB of int8 weights: within the 8 MiB of SRAM, beyond its ~7 MiB cache
    big = build([T("x", "int8", shape, (0.05, 0)), T("c", "int8", shape, (0.05, 0), np.zeros(shape)),
                 T("y", "int8", shape, (0.05, 0))], [("ADD", 2, [0, 1], [2], None)], [0], [2])
    report = checked(big)
    [budget] = [c for c in report.checks if c.name == "parameter size"]
    assert report.verdict == "PASS with warnings" and budget.status == "WARN", report.render()
    assert budget.detail.startswith("7.50 MiB of parameters, ~7 MiB on-chip cache: ~0.50 MiB would stream from "
                                    "the host at every inference")
    assert report.summary["streamed_parameter_bytes"] == 2**19


def test_precheck_of_a_converted_model_says_its_parameters_fit(out320):
    """The real 'ball' YOLOv9-T at 320: about 2 MiB of parameters, all cached on chip."""
    report = precheck(TFLiteModel.from_file(out320 / "out" / "model_int8.tflite"))
    [budget] = [c for c in report.checks if c.name == "parameter size"]
    size = report.summary["parameter_bytes"]
    assert 1.5 * 2**20 < size < ON_CHIP_PARAMETER_BYTES and report.summary["streamed_parameter_bytes"] == 0
    assert (budget.status, budget.detail) == ("OK", f"{size / 2**20:.2f} MiB of parameters, ~7 MiB on-chip cache: "
                                                    "all cached on chip")


def test_report_is_saved_as_json_and_markdown(tmp_path):
    report = checked(float_add_model())
    json_path, md_path = report.save(tmp_path / "report")
    saved = json.loads(json_path.read_text())
    assert saved["verdict"] == "FAIL" and saved["ops"][0]["op"] == "ADD" and saved["ops"][0]["status"] == "FAIL"
    markdown = md_path.read_text()
    assert "| op | version | count | status | reason |" in markdown and "**Verdict: FAIL**" in markdown
    assert report.render().splitlines()[1].split()[:5] == ["op", "version", "count", "status", "reason"]


# ------------------------------------------------------------------------------------- compiler log
ALL_MAPPED_LOG = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 2418 ms.

Input model: out/model_int8.tflite
Input size: 2.64MiB
Output model: out/model_int8_edgetpu.tflite
Output size: 2.93MiB
On-chip memory used for caching model parameters: 2.21MiB
On-chip memory remaining for caching model parameters: 5.56MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 650
Operation log: out/model_int8_edgetpu.log

Operator                       Count      Status

CONV_2D                        193        Mapped to Edge TPU
LOGISTIC                       187        Mapped to Edge TPU
MUL                            187        Mapped to Edge TPU
ADD                            42         Mapped to Edge TPU
CONCATENATION                  27         Mapped to Edge TPU
AVERAGE_POOL_2D                5          Mapped to Edge TPU
MAX_POOL_2D                    3          Mapped to Edge TPU
PAD                            2          Mapped to Edge TPU
QUANTIZE                       2          Mapped to Edge TPU
RESIZE_NEAREST_NEIGHBOR        2          Mapped to Edge TPU
Compilation child process completed within timeout period.
Compilation succeeded!
"""

CPU_OPS_LOG = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 1877 ms.

Input model: out/model_int8.tflite
Input size: 2.64MiB
Output model: out/model_int8_edgetpu.tflite
Output size: 2.80MiB
On-chip memory used for caching model parameters: 1.93MiB
On-chip memory remaining for caching model parameters: 5.84MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 650
Operation log: out/model_int8_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model will \
instead run on the CPU, which is slower. If possible, consider updating your model to use only operations \
supported by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 600
Number of operations that will run on CPU: 50

Operator                       Count      Status

CONV_2D                        175        Mapped to Edge TPU
CONV_2D                        18         More than one subgraph is not supported
LOGISTIC                       170        Mapped to Edge TPU
LOGISTIC                       17         More than one subgraph is not supported
MUL                            172        Mapped to Edge TPU
MUL                            15         More than one subgraph is not supported
ADD                            42         Mapped to Edge TPU
CONCATENATION                  27         Mapped to Edge TPU
AVERAGE_POOL_2D                5          Mapped to Edge TPU
MAX_POOL_2D                    3          Mapped to Edge TPU
PAD                            2          Mapped to Edge TPU
QUANTIZE                       2          Mapped to Edge TPU
RESIZE_NEAREST_NEIGHBOR        2          Operation is otherwise supported, but not mapped due to some unspecified limitation
"""


def test_parse_log_where_every_op_maps():
    """Compiler 16 prints no 'will run on' lines when everything maps: counts come from the table."""
    report = parse_compiler_log(ALL_MAPPED_LOG, "model_int8.tflite")
    assert report.verdict == "PASS" and report.checked_by == "edgetpu_compiler 16.0.384591198"
    assert report.summary["ops_on_edgetpu"] == 650 and report.summary["ops_on_cpu"] == 0
    assert report.summary["on_chip_memory_used"] == "2.21MiB" and report.summary["edgetpu_subgraphs"] == 1
    assert [(r.op, r.count, r.status) for r in report.ops][:2] == [("CONV_2D", 193, "OK"), ("LOGISTIC", 187, "OK")]
    assert len(report.ops) == 10 and all(r.version is None for r in report.ops)


def test_parse_log_with_ops_on_the_cpu():
    report = parse_compiler_log(CPU_OPS_LOG, "model_int8.tflite")
    assert report.verdict == "FAIL"
    assert (report.summary["ops_on_edgetpu"], report.summary["ops_on_cpu"]) == (600, 50)
    cpu_rows = [(r.op, r.count) for r in report.ops if r.status == "FAIL"]
    assert cpu_rows == [("CONV_2D", 18), ("LOGISTIC", 17), ("MUL", 15), ("RESIZE_NEAREST_NEIGHBOR", 2)]
    assert "More than one subgraph" in report.ops[1].reason
    assert report.checks[0].detail == "50 operation(s) will run on the CPU"


# ------------------------------------------------------------------------------------- fake compiler
def fake_compiler(folder: Path, log: str, *, returncode: int = 0, argv_file: Path | None = None,
                  log_above: tuple[int, str] | None = None) -> Path:
    """An ``edgetpu_compiler`` stand-in: prints ``log``, writes <stem>_edgetpu.tflite/.log into -o.
    ``log_above=(side, other)``: a model whose input is taller than ``side`` gets ``other`` instead (the real
    compiler maps less of a model past some input size)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "edgetpu_compiler"
    above, other = log_above or (None, None)
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""\
        import pathlib, shutil, sys
        args = sys.argv[1:]
        if {str(argv_file)!r} != "None":
            pathlib.Path({str(argv_file)!r}).write_text(" ".join(args))
        out, model = pathlib.Path(args[args.index("-o") + 1]), pathlib.Path(args[-1])
        log = {log!r}
        if {above!r} is not None:
            from edge_yolov9.convert.tflite_model import TFLiteModel
            if TFLiteModel.from_file(model).inputs[0].shape[1] > {above!r}:
                log = {other!r}
        print(log)
        if {returncode} == 0:
            shutil.copy(model, out / (model.stem + "_edgetpu.tflite"))
            (out / (model.stem + "_edgetpu.log")).write_text("operation log")
        sys.exit({returncode})
        """))
    script.chmod(0o755)
    return script


@pytest.fixture
def int8_model_file(tmp_path) -> Path:
    path = tmp_path / "model" / "model_int8.tflite"
    path.parent.mkdir()
    path.write_bytes(int8_add_model())
    return path


def test_compiler_invocation_and_outputs(tmp_path, int8_model_file):
    argv_file = tmp_path / "argv.txt"
    compiler = fake_compiler(tmp_path / "bin", ALL_MAPPED_LOG, argv_file=argv_file)
    out = tmp_path / "out"
    out.mkdir()
    result = compile_for_edgetpu(int8_model_file, out, compiler=compiler, min_runtime_version=13)
    assert argv_file.read_text() == f"-s -o {out} -m 13 {int8_model_file}"
    assert result.ok and result.compiled_model == out / "model_int8_edgetpu.tflite"
    assert result.report.verdict == "PASS" and result.report.summary["ops_on_cpu"] == 0
    assert result.log_path.read_text().startswith("Edge TPU Compiler version")
    assert (out / "model_int8_edgetpu.log").read_text() == "operation log", "the compiler's own log is kept"


def test_compiler_failure_is_reported(tmp_path, int8_model_file):
    error = ("Edge TPU Compiler version 16.0.384591198\nERROR: Didn't find op for builtin opcode 'CONV_2D' "
             "version '6'\nInvalid model: model_int8.tflite\nModel could not be parsed")
    compiler = fake_compiler(tmp_path / "bin", error, returncode=1)
    result = compile_for_edgetpu(int8_model_file, tmp_path, compiler=compiler)
    assert not result.ok and result.compiled_model is None
    assert result.report.verdict == "FAIL" and "Model could not be parsed" in result.report.checks[-1].detail


def test_find_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(CompilerNotFoundError) as err:
        find_compiler()
    assert "coral-edgetpu-stable main" in str(err.value) and "apt-get install edgetpu-compiler" in str(err.value)
    assert "x86-64" in INSTALL_INSTRUCTIONS and "ARM" in INSTALL_INSTRUCTIONS
    with pytest.raises(CompilerNotFoundError, match="not an executable"):
        find_compiler(tmp_path / "nope")
    compiler = fake_compiler(tmp_path / "bin", ALL_MAPPED_LOG)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{tmp_path / 'empty'}")
    assert find_compiler() == compiler and find_compiler(compiler) == compiler


# ------------------------------------------------------------------------------------- edgetpu command
@pytest.mark.parametrize("log, extra, code", [
    (ALL_MAPPED_LOG, [], 0),
    (CPU_OPS_LOG, [], 4),
    (CPU_OPS_LOG, ["--allow-cpu-ops"], 0),
])
def test_edgetpu_command_exit_codes(tmp_path, monkeypatch, capsys, int8_model_file, log, extra, code):
    fake_compiler(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert main(["edgetpu", str(int8_model_file), "--compile", *extra]) == code
    printed = capsys.readouterr().out
    assert "Edge TPU precheck" in printed and "Edge TPU edgetpu_compiler 16.0.384591198" in printed
    assert (int8_model_file.parent / "model_int8_edgetpu.tflite").is_file()


def test_edgetpu_command_without_compiler_prints_how_to_install(tmp_path, monkeypatch, capsys, int8_model_file):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["edgetpu", str(int8_model_file), "--compile"]) == 3
    assert "sudo apt-get install edgetpu-compiler" in capsys.readouterr().out


def test_edgetpu_command_precheck_only(tmp_path, capsys, int8_model_file):
    assert main(["edgetpu", str(int8_model_file)]) == 0
    float_model = tmp_path / "float.tflite"
    float_model.write_bytes(float_add_model())
    assert main(["edgetpu", str(float_model)]) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [
    (int8_add_model()[:100], "truncated or corrupt"),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "not a TFLite model"),
])
def test_edgetpu_command_rejects_broken_files_cleanly(tmp_path, capsys, content, message):
    path = tmp_path / "bad.tflite"
    path.write_bytes(content)
    assert main(["edgetpu", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and "Traceback" not in err
