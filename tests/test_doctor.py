"""``edge-yolov9 doctor`` on this machine: an interpreter, no Edge TPU runtime, no Coral."""

from __future__ import annotations

import json

from edge_yolov9.cli import main
from edge_yolov9.doctor import run_checks


def test_checks_report_interpreter_and_missing_tpu_with_fixes():
    checks = {c.name: c for c in run_checks()}
    assert checks["interpreter"].ok and "ai-edge-litert" in checks["interpreter"].detail
    assert not checks["libedgetpu"].ok and not checks["libedgetpu"].required
    assert "libedgetpu1-std" in checks["libedgetpu"].fix
    assert not checks["coral devices"].ok and "USB 3" in checks["coral devices"].fix


def test_doctor_cli_json_passes_without_a_tpu(capsys):
    assert main(["doctor", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"python", "numpy", "interpreter", "libedgetpu"} <= {r["name"] for r in rows}
