"""Shared fixtures: paths to the read-only real data in ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One torch thread per test process: pytest -n N already uses N cores, and oversubscribed
    # threads make torch on a small machine many times slower.
    torch.set_num_threads(1)
# oneDNN compiles kernels for every new conv shape (10-40 s per model here, forward and backward);
# the suite builds many small models and runs each a few times, where PyTorch's native
# convolutions (just as exact) are much faster. Training runs outside the tests keep oneDNN.
torch.backends.mkldnn.enabled = False

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
COCO128 = SHARED / "data" / "coco128"
COCO_VAL158 = SHARED / "data" / "coco-val158"
ULTRALYTICS_T_1CLASS = SHARED / "checkpoints" / "ultralytics-yolov9t-1class" / "yolov9t_ball.pt"


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"Test data missing: {path}. The suite reads the real data in ../shared.")
    return path


@pytest.fixture(scope="session")
def coco128() -> Path:
    return _require(COCO128)


@pytest.fixture(scope="session")
def coco_val158() -> Path:
    return _require(COCO_VAL158)


@pytest.fixture(scope="session")
def ultralytics_t_checkpoint() -> Path:
    return _require(ULTRALYTICS_T_1CLASS)
