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


# --------------------------------------------------------------------------- libedgetpu, probed in a child


@pytest.fixture
def fake_library(tmp_path_factory, monkeypatch):
    """Point the runtime at a fake libedgetpu of the given behaviour (support.fake_libedgetpu)."""
    from support.fake_libedgetpu import build_fake_libedgetpu

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))

    def use(behaviour: str):
        library = build_fake_libedgetpu(tmp_path_factory.mktemp("lib"), behaviour)
        monkeypatch.setenv("EDGE_YOLOV9_LIBEDGETPU", str(library))
        return library
    return use


@pytest.mark.runtime
def test_doctor_reports_a_crashing_libedgetpu_as_its_crash_with_the_pair_to_install(fake_library, capsys):
    library = fake_library("segfault")
    checks = {c.name: c for c in run_checks()}
    assert checks["libedgetpu"].ok and str(library) in checks["libedgetpu"].detail
    assert not checks["edge tpu pairing"].ok and "16.0tf2.17.1" in checks["edge tpu pairing"].fix
    crash = checks["edge tpu probe"]
    assert not crash.ok and not crash.required
    assert str(library) in crash.detail and "crashed (SIGSEGV) while creating the delegate" in crash.detail
    assert "tflite_runtime 2.17.1" in crash.fix
    assert main(["doctor"]) == 0, "an optional Edge TPU does not fail the run"
    assert "[----] edge tpu probe" in capsys.readouterr().out

    fake_library("works")
    checks = {c.name: c for c in run_checks()}
    assert checks["edge tpu probe"].ok and "the delegate loaded (in a child process)" in checks["edge tpu probe"].detail


def test_doctor_model_check_probes_the_edgetpu_model_in_a_child(tiny_model, tmp_path, fake_library):
    shutil.copy(tiny_model, tmp_path / "tiny_int8.tflite")
    compiled = fake_edgetpu_model(tiny_model, tmp_path / "tiny_int8_edgetpu.tflite")
    library = fake_library("bad-prepare")  # creates its delegate, crashes on the graph: only the model shows it
    checks = {c.name: c for c in model_checks(compiled)}
    tpu = checks["model: edge tpu"]
    assert not tpu.ok and not tpu.required and str(library) in tpu.detail
    assert "crashed (SIGSEGV) while applying the delegate to the model's graph" in tpu.detail
    assert "16.0tf2.17.1" in tpu.fix and "tiny_int8.tflite runs" in tpu.fix
    assert checks["model: loads"].ok and checks["model: loads"].detail.endswith("allocated on cpu")
    fake_library("works")
    checks = {c.name: c for c in model_checks(compiled)}
    assert checks["model: edge tpu"].ok and checks["model: loads"].detail.endswith("allocated on tpu")
