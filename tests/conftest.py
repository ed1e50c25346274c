"""Shared fixtures: paths to the read-only real data in ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import torch

from edge_yolov9.cli import main
from support.conversions import convert_side_by_side, shared_artifact, trained_like, with_pinned_class
from edge_yolov9.train.checkpoint import save_checkpoint

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


# --------------------------------------------------------------------------- converted models
# Conversions are slow (1-2 min each on 2 cores): each runs once per test session, shared by the
# convert and runtime tests across pytest-xdist workers (see support.conversions.shared_artifact).


@pytest.fixture(scope="session")
def ball_checkpoint(tmp_path_factory, ultralytics_t_checkpoint) -> Path:
    """A real trained YOLOv9-T (1 class, 'ball'; depthwise class branch), imported into our format."""
    def produce(folder: Path) -> None:
        assert main(["import", str(ultralytics_t_checkpoint), "-o", str(folder / "ball.pt")]) == 0

    return shared_artifact(tmp_path_factory, "convert-ball-checkpoint", produce) / "ball.pt"


@pytest.fixture(scope="session")
def conversions(tmp_path_factory, ball_checkpoint, coco128) -> Path:
    """Four ``edge-yolov9 convert --edgetpu`` runs, side by side in subprocesses (one core each), with no
    edgetpu_compiler on PATH: ``320/`` the real model with int8 I/O; ``416/`` a shallower GELAN-T
    (csp_depth 1: the same ops, faster to convert; 80 classes) with --uint8-io, calibrated from a data.yaml;
    ``512/`` that GELAN-T at 512; ``frigate/`` the real model with a second, never-scoring class (Frigate's
    layout needs two) in the frigate layout, calibrated as ``320/``."""
    def produce(folder: Path) -> None:
        imgs = sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:8]
        save_checkpoint(folder / "shallow-t.pt", trained_like(imgs, csp_depth=1), [f"class{i}" for i in range(80)])
        with_pinned_class(ball_checkpoint, folder / "ball-2class.pt")
        (folder / "data.yaml").write_text(f"path: {coco128}\ntrain: images/train2017\nnames: [a]\n")
        coco_images = str(coco128 / "images" / "train2017")
        convert_side_by_side(folder, {
            "320": ["--model", str(ball_checkpoint), "--imgsz", "320", "--calib", coco_images, "--calib-images", "16"],
            "416": ["--model", str(folder / "shallow-t.pt"), "--imgsz", "416", "--calib", str(folder / "data.yaml"),
                    "--calib-images", "4", "--uint8-io"],
            "512": ["--model", str(folder / "shallow-t.pt"), "--imgsz", "512", "--calib", coco_images,
                    "--calib-images", "4"],
            "frigate": ["--model", str(folder / "ball-2class.pt"), "--imgsz", "320", "--calib", coco_images,
                        "--calib-images", "16", "--layout", "frigate"],
        })

    return shared_artifact(tmp_path_factory, "convert-runs", produce)


@pytest.fixture(scope="session")
def out320(conversions) -> Path:
    return conversions / "320"


@pytest.fixture(scope="session")
def out416(conversions) -> Path:
    return conversions / "416"


@pytest.fixture(scope="session")
def out512(conversions) -> Path:
    return conversions / "512"


@pytest.fixture(scope="session")
def out_frigate(conversions) -> Path:
    return conversions / "frigate"


