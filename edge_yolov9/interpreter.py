"""Finding a TFLite interpreter and the Edge TPU delegate, with diagnoses instead of stack traces.

Two interpreter packages exist: ``ai-edge-litert`` (current; wheels for x86_64 and aarch64, none for
32-bit ARM; its last for Python 3.9 is 2.1.0) and the legacy ``tflite-runtime`` (last release 2.14,
also for armv7l, Python <= 3.11, built against NumPy 1: it imports under NumPy 2 but fails on first
use). Edge TPU devices are named as pycoral and Frigate name them: ``usb``, ``usb:0``, ``pci``,
``pci:0``, or ``:0`` for the first TPU of any kind.
"""

from __future__ import annotations

import ctypes.util
import glob
import importlib
import importlib.metadata
import platform
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .errors import EdgeYoloError

BACKENDS = {"ai-edge-litert": "ai_edge_litert.interpreter", "tflite-runtime": "tflite_runtime.interpreter"}
EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}
# USB ids of the Coral USB Accelerator: before its firmware is loaded, and once it is ready.
CORAL_USB_IDS = {("1a6e", "089a"): "Coral USB Accelerator (bootloader; firmware loads on first use)",
                 ("18d1", "9302"): "Coral USB Accelerator (ready)"}

INSTALL_LIBEDGETPU = (
    "install the Edge TPU runtime: on Debian/Raspberry Pi OS add Coral's apt repository "
    "(echo 'deb https://packages.cloud.google.com/apt coral-edgetpu-stable main' | "
    "sudo tee /etc/apt/sources.list.d/coral-edgetpu.list; curl https://packages.cloud.google.com/apt/doc/apt-key.gpg "
    "| sudo apt-key add -) then `sudo apt-get install libedgetpu1-std`; on Bookworm or Python >= 3.10 "
    "the community builds at github.com/feranick/libedgetpu/releases work")


class RuntimeSetupError(EdgeYoloError):
    """The TFLite interpreter or the Edge TPU runtime is missing or unusable."""


@dataclass(frozen=True)
class Backend:
    """An importable TFLite interpreter package."""

    name: str
    version: str
    module: ModuleType

    def interpreter(self, **kwargs: Any):
        return self.module.Interpreter(**kwargs)


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def numpy_abi_problem(backend_name: str, numpy_version: str = np.__version__) -> str | None:
    """Why ``backend_name`` cannot work with this NumPy, or None. tflite-runtime wheels (<= 2.14) are
    compiled against NumPy 1 and fail on first use under NumPy 2."""
    if backend_name == "tflite-runtime" and int(numpy_version.split(".")[0]) >= 2:
        return (f"tflite-runtime {_package_version('tflite-runtime')} was built for NumPy 1 but NumPy "
                f"{numpy_version} is installed: it imports, then fails on first use (_ARRAY_API not found)")
    return None


def find_backend(prefer: str | None = None) -> Backend:
    """The first usable interpreter package: ``prefer`` if given, else ai-edge-litert then tflite-runtime."""
    names = [prefer] if prefer else list(BACKENDS)
    problems = []
    for name in names:
        if name not in BACKENDS:
            raise RuntimeSetupError(f"Unknown interpreter {name!r}", f"choose one of {', '.join(BACKENDS)}")
        try:
            module = importlib.import_module(BACKENDS[name])
        except ImportError as err:
            problems.append(f"{name}: not installed ({err})")
            continue
        clash = numpy_abi_problem(name)
        if clash:
            problems.append(clash)
            continue
        return Backend(name, _package_version(name), module)
    raise RuntimeSetupError(
        "No usable TFLite interpreter: " + "; ".join(problems),
        "pip install ai-edge-litert; where it has no wheel (32-bit ARM: armv7l, armv6l) pip install "
        "tflite-runtime 'numpy<2' (Python <= 3.11)")


@dataclass(frozen=True)
class Device:
    """Where to run: ``kind`` is 'auto', 'cpu', 'usb', 'pci' or 'tpu' (any Edge TPU); ``index`` picks one of several."""

    kind: str
    index: int | None = None

    @property
    def wants_tpu(self) -> bool:
        return self.kind in ("usb", "pci", "tpu")

    def delegate_options(self) -> dict[str, str]:
        """The libedgetpu ``device`` option: '' lets it pick; 'usb:0', 'pci', ':1' pin one."""
        kind = "" if self.kind == "tpu" else self.kind
        if self.index is None:
            return {"device": kind} if kind else {}
        return {"device": f"{kind}:{self.index}"}

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{'' if self.kind == 'tpu' else self.kind}:{self.index}"


def parse_device(text: str) -> Device:
    """Parse 'auto', 'cpu', 'usb', 'usb:0', 'pci', 'pci:0' or ':0'."""
    value = text.strip().lower()
    if value in ("auto", "cpu", "usb", "pci"):
        return Device(value)
    kind, sep, index = value.partition(":")
    if sep and index.isdigit() and kind in ("", "usb", "pci"):
        return Device(kind or "tpu", int(index))
    raise RuntimeSetupError(f"Unknown device {text!r}", "use auto, cpu, usb, usb:N, pci, pci:N or :N")


def coral_usb_devices(sysfs: str = "/sys/bus/usb/devices") -> list[str]:
    """Descriptions of the Coral USB Accelerators on the bus (read from sysfs, no lsusb needed)."""
    found = []
    for device in sorted(Path(sysfs).glob("*")):
        try:
            ids = ((device / "idVendor").read_text().strip(), (device / "idProduct").read_text().strip())
        except OSError:
            continue
        if ids in CORAL_USB_IDS:
            found.append(f"{device.name} {ids[0]}:{ids[1]} {CORAL_USB_IDS[ids]}")
    return found


def coral_pci_devices() -> list[str]:
    return sorted(glob.glob("/dev/apex_*"))


def libedgetpu_path() -> str | None:
    """Where the Edge TPU runtime library is, or None when it is not installed."""
    name = EDGETPU_LIBRARY.get(platform.system())
    if name is None:
        return None
    try:
        ctypes.CDLL(name)
        return name
    except OSError:
        return ctypes.util.find_library("edgetpu")


def _tpu_diagnosis(device: Device) -> str:
    if libedgetpu_path() is None:
        return INSTALL_LIBEDGETPU
    usb, pci = coral_usb_devices(), coral_pci_devices()
    if device.kind == "usb" or (device.kind == "tpu" and not pci):
        if not usb:
            return ("no Coral USB Accelerator is on the USB bus (no 1a6e:089a or 18d1:9302): plug it into a USB 3 "
                    "port with the supplied cable, or a powered hub (it draws up to 900 mA), then check `lsusb`")
        return (f"the device is present ({'; '.join(usb)}) but could not be opened: add your user to the plugdev "
                "group and install Coral's udev rule (packaged with libedgetpu1-std), re-plug it, and make sure "
                "no other process (Frigate, another detector) holds it")
    if not pci:
        return ("no Coral PCIe/M.2 device (/dev/apex_0) exists: install the gasket-dkms driver; on a Pi 5 add "
                "dtoverlay=pciex1-compat-pi5,no-mip to /boot/firmware/config.txt and reboot")
    return f"{', '.join(pci)} exists but could not be opened: add your user to the apex group (udev rule of gasket-dkms)"


def load_edgetpu_delegate(backend: Backend, device: Device):
    """The Edge TPU delegate for ``device``; a RuntimeSetupError that says what to fix otherwise."""
    library = EDGETPU_LIBRARY.get(platform.system())
    if library is None:
        raise RuntimeSetupError(f"The Edge TPU runtime does not exist for {platform.system()}", "run on the CPU")
    if libedgetpu_path() is None:
        # Checked first: a failed load_delegate leaves a half-built Delegate whose __del__ raises.
        raise RuntimeSetupError(f"The Edge TPU runtime ({library}) is not installed", INSTALL_LIBEDGETPU)
    try:
        return backend.module.load_delegate(library, device.delegate_options())
    except (ValueError, OSError, RuntimeError) as err:
        raise RuntimeSetupError(f"Cannot load the Edge TPU delegate ({library}) for device {device}: {err}",
                                _tpu_diagnosis(device)) from None

