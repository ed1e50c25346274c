"""``edge-yolov9 doctor``: each thing the runtime needs, OK or the fix; with ``--model``, also what
that model needs (a readable file, metadata, for an Edge TPU model the TPU or its CPU twin)."""

from __future__ import annotations

import ctypes
import importlib.metadata
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .detector import Detector
from .model_file import cpu_twin, cpu_twin_path, metadata_origin, read_model_info
from .errors import EdgeYoloError
from .interpreter import (BACKENDS, INSTALL_LIBEDGETPU, RuntimeSetupError, coral_pci_devices, coral_usb_devices,
                          find_backend, libedgetpu_path, numpy_abi_problem)
from .tflite_file import read_tflite

MIN_PYTHON = (3, 9)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True  # a failed optional check (the Edge TPU) does not fail the run

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix, "required": self.required}


def _installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def libedgetpu_version(library: str) -> str:
    """The runtime's own version string (``edgetpu_version()`` of its C API)."""
    try:
        lib = ctypes.CDLL(library)
        lib.edgetpu_version.restype = ctypes.c_char_p
        return lib.edgetpu_version().decode()
    except (OSError, AttributeError):
        return "version unknown"


def run_checks(model: Path | None = None) -> list[Check]:
    """The environment's checks, then those of ``model`` when given."""
    checks = [Check("python", sys.version_info[:2] >= MIN_PYTHON,
                    f"Python {platform.python_version()} on {platform.system()} {platform.machine()}",
                    f"use Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]}"),
              Check("numpy", True, f"NumPy {np.__version__}")]
    for name in BACKENDS:
        version = _installed(name)
        if version is None:
            checks.append(Check(name, False, "not installed", required=False))
        else:
            clash = numpy_abi_problem(name)
            checks.append(Check(name, clash is None, clash or f"{name} {version}",
                                "pip install 'numpy<2' in this environment, or use ai-edge-litert" if clash else "",
                                required=False))
    try:
        backend = find_backend()
        checks.append(Check("interpreter", True, f"using {backend.name} {backend.version}"))
    except RuntimeSetupError as err:
        checks.append(Check("interpreter", False, err.problem, err.fix or ""))

    library = libedgetpu_path()
    checks.append(Check("libedgetpu", library is not None,
                        f"{library} ({libedgetpu_version(library)})" if library else "Edge TPU runtime not found",
                        "" if library else INSTALL_LIBEDGETPU, required=False))
    usb, pci = coral_usb_devices(), coral_pci_devices()
    devices = usb + pci
    checks.append(Check("coral devices", bool(devices), "; ".join(devices) if devices else "none found",
                        "" if devices else "plug the Coral USB Accelerator into a USB 3 port (or install the PCIe "
                        "driver gasket-dkms for M.2/PCIe); without one, models run on the CPU", required=False))
    return checks + (model_checks(model) if model is not None else [])


def _edgetpu_checks(path: Path) -> list[Check]:
    """An Edge TPU model runs on a TPU (libedgetpu and a device) or, failing that, on its CPU twin:
    one of the two is required."""
    library, devices, twin = libedgetpu_path(), coral_usb_devices() + coral_pci_devices(), cpu_twin(path)
    fallback = f"; until then its CPU twin {twin.name} runs (slower)" if twin else ""
    if library is None:
        detail, fix = "the model needs libedgetpu, which is not installed", INSTALL_LIBEDGETPU + fallback
    elif not devices:
        detail, fix = "libedgetpu is installed but no Coral device is present", (
            "plug the Coral USB Accelerator into a USB 3 port (or install gasket-dkms for M.2/PCIe)" + fallback)
    else:
        detail, fix = f"{library} and {devices[0]}", ""
    ready = not fix
    return [Check("model: edge tpu", ready, detail, fix, required=twin is None),
            Check("model: cpu twin", twin is not None,
                  str(twin) if twin else "none beside it: without an Edge TPU the model cannot run",
                  "" if twin else f"keep the CPU model it was compiled from ({(cpu_twin_path(path) or Path('model.tflite')).name}, "
                                  "written by `edge-yolov9 convert`) in the same folder",
                  required=not ready)]


def model_checks(path: Path) -> list[Check]:
    """Whether ``path`` is a readable TFLite model with metadata, what it needs to run, and whether the
    interpreter loads it here (with the device that ``Detector(device='auto')`` would pick)."""
    if not path.is_file():
        return [Check("model", False, f"{path} not found", "check the path; convert one with `edge-yolov9 convert`")]
    try:
        tflite = read_tflite(path.read_bytes(), str(path))
    except EdgeYoloError as err:
        return [Check("model", False, err.problem, err.fix or "")]
    target = "compiled for the Edge TPU" if tflite.compiled_for_edgetpu else "for the CPU"
    checks = [Check("model", True, f"{path} (TFLite, {path.stat().st_size / 2**20:.2f} MiB, {target})")]
    try:
        info = read_model_info(path, tflite)
    except EdgeYoloError as err:
        checks.append(Check("model: metadata", False, err.problem, err.fix or ""))
    else:
        origin = metadata_origin(path, tflite)
        where = f"sidecar {origin.name}" if isinstance(origin, Path) else "embedded"
        detail = (f"{where}: {len(info.labels)} classes ({', '.join(info.labels[:5])}"
                  f"{', ...' if len(info.labels) > 5 else ''}), input {info.input.dtype} {info.size[0]}x{info.size[1]}"
                  if info else "neither a sidecar .json nor embedded metadata")
        checks.append(Check("model: metadata", info is not None, detail,
                            "" if info else "pass the class names with --labels FILE, or re-convert with "
                                            "`edge-yolov9 convert` (it embeds them)", required=False))
    if tflite.compiled_for_edgetpu:
        checks += _edgetpu_checks(path)
    try:
        detector = Detector(path, device="auto", threads=1)
    except EdgeYoloError as err:
        checks.append(Check("model: loads", False, err.problem, err.fix or ""))
    else:
        checks.append(Check("model: loads", True, f"{detector.model_path.name} allocated on {detector.device_used}"))
    return checks


def render(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        status = "OK  " if check.ok else ("FAIL" if check.required else "----")
        lines.append(f"[{status}] {check.name:<16} {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"       {'':<16} fix: {check.fix}")
    return "\n".join(lines)
