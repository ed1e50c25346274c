"""``edge-yolov9 doctor`` on this machine (an interpreter, no Edge TPU runtime, no Coral), and its
checks of a model: the real converted ones, a truncated copy, an Edge TPU model with and without its CPU twin."""

from __future__ import annotations

import json
import shutil

import pytest

from edge_yolov9.cli import main
from edge_yolov9.doctor import model_checks, run_checks
from support.conversions import fake_edgetpu_model


def test_checks_report_interpreter_and_missing_tpu_with_fixes():
    checks = {c.name: c for c in run_checks()}
    assert checks["interpreter"].ok and "ai-edge-litert" in checks["interpreter"].detail
    assert not checks["libedgetpu"].ok and not checks["libedgetpu"].required
    assert "libedgetpu1-std" in checks["libedgetpu"].fix
    assert not checks["coral devices"].ok and "USB 3" in checks["coral devices"].fix


@pytest.mark.runtime
def test_doctor_cli_json_passes_without_a_tpu(capsys):
    assert main(["doctor", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"python", "numpy", "interpreter", "libedgetpu"} <= {r["name"] for r in rows}


# --------------------------------------------------------------------------- doctor --model


def test_model_checks_pass_for_the_converted_models(out320):
    for name in ("model_int8.tflite", "model_float.tflite"):
        checks = {c.name: c for c in model_checks(out320 / "out" / name)}
        assert all(c.ok for c in checks.values()), checks
        assert "for the CPU" in checks["model"].detail and "sidecar" in checks["model: metadata"].detail
        assert "1 classes (ball)" in checks["model: metadata"].detail
        assert checks["model: loads"].detail.endswith("allocated on cpu")


def test_doctor_cli_with_a_model(out320, capsys):
    assert main(["doctor", "--model", str(out320 / "out" / "model_int8.tflite"), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"interpreter", "model", "model: metadata", "model: loads"} <= rows.keys()


def test_truncated_model_fails_with_the_fix(out320, tmp_path, capsys):
    data = (out320 / "out" / "model_int8.tflite").read_bytes()
    cut = tmp_path / "model_int8.tflite"
    cut.write_bytes(data[: len(data) // 2])
    failed = [c for c in model_checks(cut) if not c.ok]
    assert failed and all(c.required and c.fix for c in failed)
    assert main(["doctor", "--model", str(cut)]) == 1
    out = capsys.readouterr().out
    assert "[FAIL]" in out and "fix:" in out
    missing = model_checks(tmp_path / "nope.tflite")
    assert [(c.name, c.ok) for c in missing] == [("model", False)] and "not found" in missing[0].detail


def test_edgetpu_model_needs_a_tpu_or_its_cpu_twin(out320, tmp_path, capsys):
    shutil.copy(out320 / "out" / "model_int8.tflite", tmp_path / "model_int8.tflite")
    shutil.copy(out320 / "out" / "model_int8.json", tmp_path / "model_int8_edgetpu.json")
    compiled = fake_edgetpu_model(tmp_path / "model_int8.tflite", tmp_path / "model_int8_edgetpu.tflite")

    checks = {c.name: c for c in model_checks(compiled)}  # no libedgetpu here, but a CPU twin
    assert "compiled for the Edge TPU" in checks["model"].detail
    tpu, twin = checks["model: edge tpu"], checks["model: cpu twin"]
    assert not tpu.ok and not tpu.required and "libedgetpu1-std" in tpu.fix and "model_int8.tflite runs" in tpu.fix
    assert twin.ok and twin.detail == str(tmp_path / "model_int8.tflite")
    assert checks["model: loads"].ok and "model_int8.tflite allocated on cpu" in checks["model: loads"].detail
    assert main(["doctor", "--model", str(compiled)]) == 0

    (tmp_path / "model_int8.tflite").unlink()
    checks = {c.name: c for c in model_checks(compiled)}  # neither a TPU nor a twin: it cannot run
    assert checks["model: edge tpu"].required and not checks["model: edge tpu"].ok
    assert checks["model: cpu twin"].required and "model_int8.tflite" in checks["model: cpu twin"].fix
    assert not checks["model: loads"].ok
    capsys.readouterr()
    assert main(["doctor", "--model", str(compiled)]) == 1
    assert "[FAIL] model: cpu twin" in capsys.readouterr().out
