"""``edge-yolov9 doctor``: each thing the runtime needs, OK or the fix."""

from __future__ import annotations

import ctypes
import importlib.metadata
import platform
import sys
from dataclasses import dataclass

import numpy as np

from .interpreter import (BACKENDS, INSTALL_LIBEDGETPU, RuntimeSetupError, coral_pci_devices, coral_usb_devices,
                          find_backend, libedgetpu_path, numpy_abi_problem)

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


def run_checks() -> list[Check]:
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
    return checks


def render(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        status = "OK  " if check.ok else ("FAIL" if check.required else "----")
        lines.append(f"[{status}] {check.name:<16} {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"       {'':<16} fix: {check.fix}")
    return "\n".join(lines)
