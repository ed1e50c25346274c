"""Finding a TFLite interpreter and the Edge TPU delegate, with diagnoses instead of stack traces.

Two interpreter packages exist: ``ai-edge-litert`` (current; wheels for x86_64 and aarch64, none for
32-bit ARM; its last for Python 3.9 is 2.1.0) and the legacy ``tflite-runtime`` (2.14 on PyPI, also for
armv7l; newer builds, paired with libedgetpu, come from github.com/feranick/TFlite-builds). Which of them
works with the installed libedgetpu is settled by ``edgetpu_probe``. Edge TPU devices are named as pycoral
and Frigate name them: ``usb``, ``usb:0``, ``pci``, ``pci:0``, or ``:0`` for the first TPU of any kind.
"""

from __future__ import annotations

import ctypes.util
import glob
import importlib
import importlib.metadata
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import EdgeYoloError
from .host import apex_nodes, coral_usb_devices

BACKENDS = {"ai-edge-litert": "ai_edge_litert.interpreter", "tflite-runtime": "tflite_runtime.interpreter"}
EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}
LIBRARY_VARIABLE = "EDGE_YOLOV9_LIBEDGETPU"  # a libedgetpu of the user's choice (a path)
# Where the packages put libedgetpu (Debian/Raspberry Pi OS: /usr/lib/<triplet>; macOS: Homebrew, /usr/local).
LIBRARY_FOLDERS = ("/usr/lib/*-linux-gnu", "/lib/*-linux-gnu", "/usr/lib", "/usr/local/lib", "/opt/homebrew/lib")
# A dpkg version of libedgetpu1-std/-max: Coral's own "16.0" (built against TF 2.5), or a community build
# "16.0tf2.17.1-1.bookworm" (github.com/feranick/libedgetpu: built against TF 2.17.1).
DPKG_VERSION = re.compile(r"^(?:\d+:)?(?P<release>\d+\.\d+)(?:tf(?P<tf>\d+\.\d+(?:\.\d+)?))?")
CORAL_TF_VERSION = "2.5"  # what Coral's apt packages (version exactly 16.0) are built against

# Coral's apt repository, its key in a keyring of its own and named by `signed-by=` (apt-key is deprecated
# on Debian 12 Bookworm and gone in 13).
CORAL_APT_KEYRING = "/etc/apt/keyrings/coral-edgetpu.gpg"
CORAL_APT_SETUP = (
    "sudo mkdir -p /etc/apt/keyrings",
    f"curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo gpg --dearmor -o {CORAL_APT_KEYRING}",
    f"echo 'deb [signed-by={CORAL_APT_KEYRING}] https://packages.cloud.google.com/apt coral-edgetpu-stable main' "
    "| sudo tee /etc/apt/sources.list.d/coral-edgetpu.list",
    "sudo apt-get update")
INSTALL_LIBEDGETPU = (
    f"install the Edge TPU runtime: on Debian/Raspberry Pi OS add Coral's apt repository ({'; '.join(CORAL_APT_SETUP)}) "
    "then `sudo apt-get install libedgetpu1-std`; on Bookworm or Python >= 3.10 the community builds at "
    "github.com/feranick/libedgetpu/releases work (README: \"Coral on Raspberry Pi OS Bookworm\")")


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


def installed_backends() -> list[tuple[str, str]]:
    """(name, version) of each interpreter package installed, without importing it."""
    return [(name, version) for name in BACKENDS for version in [_package_version(name)] if version != "unknown"]


def find_backend(prefer: str | None = None) -> Backend:
    """The first usable interpreter package: ``prefer`` if given, else ai-edge-litert then tflite-runtime."""
    names = [prefer] if prefer else list(BACKENDS)
    problems = []
    for name in names:
        if name not in BACKENDS:
            raise RuntimeSetupError(f"Unknown interpreter {name!r}", f"choose one of {', '.join(BACKENDS)}")
        try:
            module = importlib.import_module(BACKENDS[name])
        except (ImportError, AttributeError) as err:  # AttributeError: a NumPy 1 build under NumPy 2
            installed = _package_version(name) != "unknown"
            problems.append(f"{name}: {'cannot be imported' if installed else 'not installed'} ({err})")
            continue
        return Backend(name, _package_version(name), module)
    raise RuntimeSetupError(
        "No usable TFLite interpreter: " + "; ".join(problems),
        "pip install ai-edge-litert; where it has no wheel (32-bit ARM: armv7l, armv6l) pip install "
        "tflite-runtime (with 'numpy<2' if it says it was built for NumPy 1)")


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


@dataclass(frozen=True)
class EdgeTpuLibrary:
    """An Edge TPU runtime library: where it is, who chose it, and (from dpkg) its package and the
    TensorFlow version it was built against, when known."""

    path: str
    origin: str                     # "the system", "$EDGE_YOLOV9_LIBEDGETPU", "edgetpu_library="
    package: str | None = None      # e.g. "libedgetpu1-max 16.0tf2.17.1-1.bookworm"
    tf_version: str | None = None   # e.g. "2.17.1"; "2.5" for Coral's own 16.0

    def __str__(self) -> str:
        built = f", built for TensorFlow {self.tf_version}" if self.tf_version else ""
        package = f"{self.package}{built}" if self.package else f"from {self.origin}{built}"
        return f"{self.path} ({package})"


def dpkg_libedgetpu() -> tuple[str, str | None] | None:
    """The installed libedgetpu1-* package ("name version") and the TensorFlow version it was built
    against (None when its version does not say), or None without dpkg or such a package."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", "libedgetpu1-*"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        name, _, version = line.strip().partition(" ")
        match = DPKG_VERSION.match(version.strip())
        if name and match:  # a package dpkg knows of but has not installed has no version
            tf = match["tf"] or (CORAL_TF_VERSION if version.strip() == "16.0" else None)
            return f"{name} {version.strip()}", tf
    return None


def find_libedgetpu(path: str | os.PathLike | None = None) -> EdgeTpuLibrary | None:
    """The Edge TPU runtime to use: ``path`` (the Detector's ``edgetpu_library``), else
    ``$EDGE_YOLOV9_LIBEDGETPU``, else the system's; None when none is installed. A path given that is no
    file is an error (a typo must not silently run another library)."""
    for given, origin in ((path, "edgetpu_library="), (os.environ.get(LIBRARY_VARIABLE), f"${LIBRARY_VARIABLE}")):
        if given:
            if not Path(given).is_file():
                raise RuntimeSetupError(f"{origin} names {os.fspath(given)}, which is not a file",
                                        "point it at libedgetpu.so.1, or leave it unset to use the system's")
            return EdgeTpuLibrary(os.fspath(given), origin)
    name = EDGETPU_LIBRARY.get(platform.system())
    if name is None:
        return None
    folders = [f for f in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if f]
    found = next((str(p) for pattern in [*folders, *LIBRARY_FOLDERS] for folder in sorted(glob.glob(pattern))
                  for p in [Path(folder) / name] if p.is_file()), None) or ctypes.util.find_library("edgetpu")
    if found is None:
        return None
    package = dpkg_libedgetpu()
    return EdgeTpuLibrary(found, "the system", *(package or (None, None)))


def tpu_diagnosis(device: Device) -> str:
    """Why an installed libedgetpu found no usable ``device``, and the fix."""
    usb, pci = coral_usb_devices(), [str(node) for node in apex_nodes()]
    if device.kind == "usb" or (device.kind == "tpu" and not pci):
        if not usb:
            return ("no Coral USB Accelerator is on the USB bus (no 1a6e:089a or 18d1:9302): plug it into a USB 3 "
                    "port with the supplied cable, or a powered hub (it draws up to 900 mA), then check `lsusb`")
        return (f"the device is present ({'; '.join(map(str, usb))}) but could not be opened: add your user to "
                "the plugdev group and install Coral's udev rule (packaged with libedgetpu1-std), re-plug it, and make sure "
                "no other process (Frigate, another detector) holds it")
    if not pci:
        return ("no Coral PCIe/M.2 device (/dev/apex_0) exists: install the gasket-dkms driver; on a Pi 5 add "
                "kernel=kernel8.img (4K pages) and dtoverlay=pciex1-compat-pi5,no-mip to /boot/firmware/config.txt "
                "and reboot (README: \"Coral on Raspberry Pi OS Bookworm\")")
    return f"{', '.join(pci)} exists but could not be opened: add your user to the apex group (udev rule of gasket-dkms)"


def require_libedgetpu(path: str | os.PathLike | None = None) -> EdgeTpuLibrary:
    """:func:`find_libedgetpu`, or the RuntimeSetupError that says how to install it."""
    library = find_libedgetpu(path)
    if library is None:
        name = EDGETPU_LIBRARY.get(platform.system())
        if name is None:
            raise RuntimeSetupError(f"The Edge TPU runtime does not exist for {platform.system()}", "run on the CPU")
        raise RuntimeSetupError(f"The Edge TPU runtime ({name}) is not installed", INSTALL_LIBEDGETPU)
    return library


def load_edgetpu_delegate(backend: Backend, device: Device, library: EdgeTpuLibrary | None = None):
    """The Edge TPU delegate for ``device`` from ``library`` (default: the system's), in this process:
    call it once ``edgetpu_probe`` has seen it work. A RuntimeSetupError that says what to fix otherwise."""
    # Checked first: a failed load_delegate leaves a half-built Delegate whose __del__ raises.
    library = library or require_libedgetpu()
    try:
        return backend.module.load_delegate(library.path, device.delegate_options())
    except (ValueError, OSError, RuntimeError) as err:
        raise RuntimeSetupError(f"Cannot load the Edge TPU delegate ({library.path}) for device {device}: {err}",
                                tpu_diagnosis(device)) from None

