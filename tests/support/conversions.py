"""Helpers of the session-wide converted-model fixtures (tests/conftest.py). Torch and the train package are
imported by the helpers that need them: runtime-tier tests import this module in the default install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

OUTPUT_NAMES = ["box_stride8", "cls_stride8", "box_stride16", "cls_stride16", "box_stride32", "cls_stride32"]
# Images of coco128 on which the imported 'ball' model has confident detections (sports balls).
CONFIDENT_IMAGES = ("000000000078.jpg", "000000000142.jpg")


def shared_artifact(tmp_path_factory, name: str, produce: Callable[[Path], None]) -> Path:
    """``produce(folder)`` once per session, even with several xdist workers (file lock + done marker)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    folder = root / name
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            produce(folder)
            (folder / ".done").touch()
    return folder


def convert_side_by_side(folder: Path, runs: dict[str, list[str]]) -> None:
    """``edge-yolov9 convert ARGS --edgetpu -o folder/NAME/out`` for every run, in parallel subprocesses
    (one core each) with no edgetpu_compiler on PATH; each leaves ``stdout.txt`` and ``exit_code``."""
    env = {**os.environ, "PATH": str(folder / "no-compiler-here"), "OMP_NUM_THREADS": "1"}
    processes = {}
    for name, args in runs.items():
        (folder / name).mkdir()
        log = open(folder / name / "stdout.txt", "w")
        processes[name] = (log, subprocess.Popen(
            [sys.executable, "-m", "edge_yolov9.cli", "convert", *args, "--edgetpu", "-o", str(folder / name / "out")],
            stdout=log, stderr=subprocess.STDOUT, env=env))
    for name, (log, process) in processes.items():
        (folder / name / "exit_code").write_text(str(process.wait(timeout=900)))
        log.close()


def trained_like(imgs: list[Path], name: str = "gelan-t", **overrides) -> torch.nn.Module:
    """A random detector (GELAN-T unless ``name`` says otherwise, 80 classes) with BatchNorm statistics
    estimated on real images: realistic activation ranges."""
    import torch

    from edge_yolov9.train.models import create_model
    from edge_yolov9.train.models.batchnorm import estimate_batchnorm_statistics

    torch.manual_seed(0)
    return estimate_batchnorm_statistics(create_model(name, num_classes=80, **overrides), imgs)


def fake_edgetpu_model(source: Path, target: Path) -> Path:
    """A copy of ``source`` that declares the Edge TPU custom op, as an edgetpu_compiler output does."""
    from ai_edge_litert import schema_py_generated as schema

    from edge_yolov9.convert.tflite_model import TFLiteModel

    model = TFLiteModel.from_file(source)
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = "edgetpu-custom-op"
    code.version = 1
    model._model.operatorCodes.append(code)
    return model.save(target)
