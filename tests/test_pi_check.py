"""scripts/compare_detections.py, the verdict of scripts/pi-check.sh (a Pi's detections against the host's)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_detections.py"
pytestmark = pytest.mark.runtime


def _write(path: Path, frames: dict[str, list[tuple[list[float], float, int]]]) -> Path:
    lines = [json.dumps({"source": f"/somewhere/{name}", "detections": [
        {"box": box, "score": score, "class_id": cls, "label": str(cls)} for box, score, cls in found]})
        for name, found in frames.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _compare(tmp_path: Path, host: dict, pi: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(_write(tmp_path / "host.jsonl", host)),
                           str(_write(tmp_path / "pi.jsonl", pi))], capture_output=True, text=True)


HOST = {"a.jpg": [([10, 10, 50, 50], 0.9, 0), ([60, 60, 90, 120], 0.4, 1)], "b.jpg": [([0, 0, 20, 20], 0.3, 2)]}


def test_identical_detections_pass(tmp_path):
    done = _compare(tmp_path, HOST, HOST)
    assert done.returncode == 0, done.stdout
    assert "3 boxes: 3 identical" in done.stdout


def test_small_differences_pass_and_are_reported(tmp_path):
    pi = {"a.jpg": [([10, 10, 50, 51], 0.89, 0), ([60, 60, 90, 120], 0.4, 1)], "b.jpg": [([0, 0, 20, 20], 0.3, 2)]}
    done = _compare(tmp_path, HOST, pi)
    assert done.returncode == 0, done.stdout
    assert "2 identical, 3 within" in done.stdout and "largest score gap 0.0100" in done.stdout


@pytest.mark.parametrize("pi, problem", [
    ({"a.jpg": [([10, 10, 50, 50], 0.9, 1), ([60, 60, 90, 120], 0.4, 1)], "b.jpg": []}, "1 within"),  # class changed, box lost
    ({"a.jpg": [([30, 30, 70, 70], 0.9, 0), ([60, 60, 90, 120], 0.2, 1)], "b.jpg": [([0, 0, 20, 20], 0.3, 2)]},
     "1 within"),  # moved box, score gap
    ({"a.jpg": HOST["a.jpg"]}, "b.jpg: missing"),
])
def test_differences_fail(tmp_path, pi, problem):
    done = _compare(tmp_path, HOST, pi)
    assert done.returncode == 1
    assert problem in done.stdout
