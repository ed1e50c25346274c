"""Shared fixtures: the read-only real data in ../shared, the session's converted models, a tiny model.

Collecting imports nothing heavy: the runtime tier (``pytest -m runtime``) runs in the default install,
without torch, the converter or ../shared. Torch settings apply where torch is installed; the conversion
fixtures import the train and convert packages when they run.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from edge_yolov9.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
COCO128 = SHARED / "data" / "coco128"
COCO_VAL158 = SHARED / "data" / "coco-val158"
ULTRALYTICS_T_1CLASS = SHARED / "checkpoints" / "ultralytics-yolov9t-1class" / "yolov9t_ball.pt"


def runtime_tier(config: pytest.Config) -> bool:
    """Whether this run is the runtime tier (``-m runtime``), where a missing extra or ../shared skips
    with the reason; everywhere else it is an error."""
    return config.getoption("markexpr").strip() == "runtime"


def pytest_configure(config: pytest.Config) -> None:
    if importlib.util.find_spec("torch") is None:
        return
    import torch

    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One torch thread per test process: pytest -n N already uses N cores, and oversubscribed
        # threads make torch on a small machine many times slower.
        torch.set_num_threads(1)
    # oneDNN compiles kernels for every new conv shape (10-40 s per model here, forward and backward);
    # the suite builds many small models and runs each a few times, where PyTorch's native
    # convolutions (just as exact) are much faster. Training runs outside the tests keep oneDNN.
    torch.backends.mkldnn.enabled = False


class _Module(pytest.Module):
    """A test module that, in the runtime tier, is skipped with the reason when it imports a package the
    default install lacks (torch, opencv, the daemon's...), instead of failing the collection."""

    def _getobj(self):
        try:
            return super()._getobj()
        except self.CollectError as err:
            missing = err.__cause__
            if not (isinstance(missing, ModuleNotFoundError) and missing.name and runtime_tier(self.config)
                    and importlib.util.find_spec(missing.name.split(".")[0]) is None):  # not a broken module of ours
                raise
            raise pytest.skip.Exception(f"needs {missing.name}, which this install lacks (not in the runtime tier)",
                                        allow_module_level=True) from None


def pytest_pycollect_makemodule(module_path: Path, parent) -> pytest.Module:
    return _Module.from_parent(parent, path=module_path)


def _require(path: Path, config: pytest.Config) -> Path:
    if not path.exists():
        if runtime_tier(config):
            pytest.skip(f"test data missing: {path} (the real data in ../shared)")
        raise FileNotFoundError(f"Test data missing: {path}. The suite reads the real data in ../shared.")
    return path


@pytest.fixture(scope="session")
def coco128(pytestconfig) -> Path:
    return _require(COCO128, pytestconfig)


@pytest.fixture(scope="session")
def coco_val158(pytestconfig) -> Path:
    return _require(COCO_VAL158, pytestconfig)


@pytest.fixture(scope="session")
def ultralytics_t_checkpoint(pytestconfig) -> Path:
    return _require(ULTRALYTICS_T_1CLASS, pytestconfig)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny int8 model of support.tiny_model, for runtime-tier tests that need a model."""
    try:
        from support.tiny_model import build_tiny_model
    except ImportError as err:  # tflite-runtime ships no TFLite schema to write a model with
        pytest.skip(f"cannot build the tiny test model here ({err}); the TFLite schema comes with ai-edge-litert")
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny_int8.tflite")


# --------------------------------------------------------------------------- converted models
# Conversions are slow (1-2 min each on 2 cores): each runs once per test session, shared by the
# convert and runtime tests across pytest-xdist workers (see support.conversions.shared_artifact).


@pytest.fixture(scope="session")
def ball_checkpoint(tmp_path_factory, ultralytics_t_checkpoint) -> Path:
    """A real trained YOLOv9-T (1 class, 'ball'; depthwise class branch), imported into our format."""
    from support.conversions import shared_artifact

    def produce(folder: Path) -> None:
        assert main(["import", str(ultralytics_t_checkpoint), "-o", str(folder / "ball.pt")]) == 0

    return shared_artifact(tmp_path_factory, "convert-ball-checkpoint", produce) / "ball.pt"


@pytest.fixture(scope="session")
def conversions(tmp_path_factory, ball_checkpoint, coco128) -> Path:
    """Four ``edge-yolov9 convert --edgetpu`` runs, side by side in subprocesses (one core each), with no
    edgetpu_compiler on PATH: ``320/`` the real model with int8 I/O; ``416/`` a shallower GELAN-T
    (csp_depth 1: the same ops, faster to convert; 80 classes) with --uint8-io, calibrated from a data.yaml;
    ``512/`` that GELAN-T at 512; ``frigate/`` the real 1-class model in the frigate layout (which gives it a
    padding class: Frigate's needs two), calibrated as ``320/``."""
    from edge_yolov9.train.checkpoint import save_checkpoint
    from support.conversions import convert_side_by_side, shared_artifact, trained_like

    def produce(folder: Path) -> None:
        imgs = sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:8]
        save_checkpoint(folder / "shallow-t.pt", trained_like(imgs, csp_depth=1), [f"class{i}" for i in range(80)])
        (folder / "data.yaml").write_text(f"path: {coco128}\ntrain: images/train2017\nnames: [a]\n")
        coco_images = str(coco128 / "images" / "train2017")
        convert_side_by_side(folder, {
            "320": ["--model", str(ball_checkpoint), "--imgsz", "320", "--calib", coco_images, "--calib-images", "16"],
            "416": ["--model", str(folder / "shallow-t.pt"), "--imgsz", "416", "--calib", str(folder / "data.yaml"),
                    "--calib-images", "4", "--uint8-io"],
            "512": ["--model", str(folder / "shallow-t.pt"), "--imgsz", "512", "--calib", coco_images,
                    "--calib-images", "4"],
            "frigate": ["--model", str(ball_checkpoint), "--imgsz", "320", "--calib", coco_images,
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


