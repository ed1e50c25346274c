"""``edge-yolov9 doctor``: each thing the runtime needs, OK or the fix; with ``--model``, also what
that model needs (a readable file, metadata, for an Edge TPU model the TPU or its CPU twin).

libedgetpu is probed the way the Detector probes it, in a child process (``edgetpu_probe``): a library that
crashes is reported as a crash of that library, with the interpreter pair to install."""

from __future__ import annotations

import ctypes
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .detector import Detector
from .model_file import cpu_twin, cpu_twin_path, metadata_origin, read_model_info
from .errors import EdgeYoloError
from .edgetpu_probe import candidates, pair_advice, pairing, probe, probe_failure, usable_edgetpu
from .interpreter import (BACKENDS, INSTALL_LIBEDGETPU, Device, RuntimeSetupError, coral_pci_devices,
                          coral_usb_devices, find_backend, find_libedgetpu, installed_backends)
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
    installed = dict(installed_backends())
    for name in BACKENDS:
        checks.append(Check(name, name in installed, f"{name} {installed[name]}" if name in installed
                            else "not installed", required=False))
    try:
        backend = find_backend()
        checks.append(Check("interpreter", True, f"using {backend.name} {backend.version}"))
    except RuntimeSetupError as err:
        checks.append(Check("interpreter", False, err.problem, err.fix or ""))
    checks += libedgetpu_checks()
    usb, pci = coral_usb_devices(), coral_pci_devices()
    devices = usb + pci
    checks.append(Check("coral devices", bool(devices), "; ".join(devices) if devices else "none found",
                        "" if devices else "plug the Coral USB Accelerator into a USB 3 port (or install the PCIe "
                        "driver gasket-dkms for M.2/PCIe); without one, models run on the CPU", required=False))
    return checks + (model_checks(model) if model is not None else [])


def libedgetpu_checks() -> list[Check]:
    """The Edge TPU runtime: which build, whether an installed interpreter is a known pair for it, and
    whether it creates its delegate in a child process (a crash there is reported, not suffered)."""
    try:
        library = find_libedgetpu()
    except RuntimeSetupError as err:
        return [Check("libedgetpu", False, err.problem, err.fix or "", required=False)]
    if library is None:
        return [Check("libedgetpu", False, "Edge TPU runtime not found", INSTALL_LIBEDGETPU, required=False)]
    checks = [Check("libedgetpu", True, f"{library}: {libedgetpu_version(library.path)}", required=False)]
    choices = candidates(library, installed_backends())
    if not choices:
        return checks
    name, version, verdict = choices[0]
    source = pairing(library.tf_version, name, version)[1]
    checks.append(Check("edge tpu pairing", verdict == "works", f"{name} {version} with this libedgetpu: "
                        f"{'a known-good pair' if verdict == 'works' else verdict} ({source})",
                        "" if verdict == "works" else pair_advice(library), required=False))
    result = probe(library, name, version, Device("tpu"))
    if result.outcome in ("crash", "hang"):
        failure = probe_failure(library, [(name, version, result)], Device("tpu"))
        checks.append(Check("edge tpu probe", False, failure.problem, failure.fix or "", required=False))
    else:  # 'error' without a Coral is the usual "no device": the device check says what to do
        checks.append(Check("edge tpu probe", result.ok, f"with {name} {version} the delegate {result.detail} "
                            "(in a child process)", required=False))
    return checks


def _edgetpu_checks(path: Path) -> list[Check]:
    """An Edge TPU model runs on a TPU (libedgetpu and a device) or, failing that, on its CPU twin:
    one of the two is required."""
    twin = cpu_twin(path)
    fallback = f"; until then its CPU twin {twin.name} runs (slower)" if twin else ""
    try:
        library, name = usable_edgetpu(path, Device("tpu"))
        detail, fix = f"{library} runs it with {name} (probed in a child process)", ""
    except RuntimeSetupError as err:
        detail, fix = err.problem, (err.fix or "") + fallback
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
