"""The real Ultralytics code as an oracle for the importer, kept out of the project's environment.

The pinned ``ultralytics`` wheel and the two light packages its import path needs (OpenCV, psutil)
are installed with ``pip install --target`` into a cache folder reused between runs, and only a
subprocess puts that folder on its ``sys.path``. Ultralytics reads torchvision's version at import
time but needs torchvision only for NMS, and PyPI's torchvision does not load beside this torch
build, so the folder gets torchvision's package metadata alone (no code). Nothing is ever installed
into the project's venv, and the project never depends on Ultralytics (AGPL-3.0).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

REQUIREMENTS = ("ultralytics==8.3.3", "opencv-python-headless==4.11.0.86", "psutil==7.0.0")
TORCHVISION_METADATA_VERSION = "0.28.0"  # the torchvision release paired with torch 2.13
FORWARD_SCRIPT = Path(__file__).with_name("ultralytics_forward.py")
MARKER = "oracle-requirements.txt"
INSTALL_TIMEOUT_S = 600
FORWARD_TIMEOUT_S = 300


def cache_root() -> Path:
    return Path(os.environ.get("EDGE_YOLOV9_TEST_CACHE", Path.home() / ".cache" / "edge-yolov9-test"))


def oracle_site() -> Path:
    """The folder holding the oracle's packages, installed on first use."""
    return isolated_site("ultralytics-8.3.3", REQUIREMENTS)


def isolated_site(name: str, requirements: Sequence[str]) -> Path:
    """``pip install --no-deps --target`` of ``requirements`` (plus torchvision's metadata) into the cache folder
    ``name``, once, atomically, so parallel test workers and interrupted runs never see a half-installed folder.
    Also used by benchmarks/convert_speed.py for the Ultralytics release it compares with."""
    site = cache_root() / name
    wanted = "\n".join(requirements) + "\n"
    marker = site / MARKER
    if marker.is_file() and marker.read_text() == wanted:
        return site
    staging = site.with_name(f"{site.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check",
               "--quiet", "--target", str(staging), *requirements]
    done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"Installing {name} failed ({' '.join(command)}):\n{done.stderr[-4000:]}")
    metadata = staging / f"torchvision-{TORCHVISION_METADATA_VERSION}.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: torchvision\nVersion: {TORCHVISION_METADATA_VERSION}\n")
    (staging / MARKER).write_text(wanted)
    if site.exists():
        shutil.rmtree(site, ignore_errors=True)
    try:
        staging.rename(site)
    except OSError:  # another worker finished first; its copy is identical
        shutil.rmtree(staging, ignore_errors=True)
    return site


def ultralytics_raw_outputs(checkpoint: Path, image: np.ndarray, workdir: Path) -> list[np.ndarray]:
    """The per-level raw head maps (N, 64 + nc, H, W) of ``checkpoint`` run by Ultralytics itself on
    ``image`` (N, 3, H, W float32), in float32."""
    site = oracle_site()
    inputs, outputs = workdir / "oracle-input.npz", workdir / "oracle-output.npz"
    np.savez(inputs, image=image)
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "YOLO_OFFLINE": "1",
           "YOLO_CONFIG_DIR": str(workdir)}
    done = subprocess.run([sys.executable, str(FORWARD_SCRIPT), str(checkpoint), str(inputs), str(outputs)],
                          capture_output=True, text=True, timeout=FORWARD_TIMEOUT_S, env=env, cwd=workdir)
    if done.returncode != 0:
        raise RuntimeError(f"The Ultralytics oracle failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    with np.load(outputs) as result:
        return [result[f"level{i}"] for i in range(len(result.files))]
