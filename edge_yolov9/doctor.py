"""``edge-yolov9 doctor``: each thing the runtime needs, OK or the fix; with ``--model``, also what
that model needs (a readable file, metadata, for an Edge TPU model the TPU or its CPU twin).

libedgetpu is probed the way the Detector probes it, in a child process (``edgetpu_probe``): a library that
crashes is reported as a crash of that library, with the interpreter pair to install."""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .detector import Detector
from .model_file import cpu_twin, cpu_twin_path, metadata_origin, read_model_info
from .errors import EdgeYoloError
from .edgetpu_probe import candidates, pair_advice, pairing, probe, probe_failure, usable_edgetpu
from .host import (ROOT, CoralUsb, User, apex_nodes, coral_pci_devices, coral_usb_devices, device_tree_number, firmware_config,
                   group_entry, loaded_modules, pi_model, pi_throttled, vcgencmd)
from .interpreter import (BACKENDS, INSTALL_LIBEDGETPU, Device, RuntimeSetupError, find_backend, find_libedgetpu,
                          installed_backends)
from .tflite_file import read_tflite

MIN_PYTHON = (3, 9)
USB3_MBPS = 5000  # sysfs speed of a USB 3 link; a USB 2 link is 480
BOOKWORM_CONFIG = "/boot/firmware/config.txt"
SEE_README = 'README: "Coral on Raspberry Pi OS Bookworm"'
THIRTY_TWO_BIT_INSTALL = ("sudo apt install python3-numpy python3-pil; python3 -m venv --system-site-packages VENV; "
                          "VENV/bin/pip install 'tflite-runtime==2.14.*' tqdm; VENV/bin/pip install --no-deps "
                          "edge-yolov9 (or install 64-bit Raspberry Pi OS, where pip takes prebuilt wheels of everything)")
# `vcgencmd get_throttled` bits: 0-3 what holds now, 16-19 what happened since boot.
UNDER_VOLTAGE, CAPPED, THROTTLED, SOFT_TEMP_LIMIT = 0x10001, 0x20002, 0x40004, 0x80008
THROTTLE_FLAGS = {0: "under-voltage now", 1: "frequency capped now", 2: "throttled now", 3: "soft temperature limit now",
                  16: "under-voltage since boot", 17: "frequency capped since boot", 18: "throttled since boot",
                  19: "soft temperature limit since boot"}
USB_RULE = "install Coral's udev rule (it comes with the libedgetpu1-std or -max package), then re-plug the Coral"
APEX_RULE = ("add the udev rule: echo 'SUBSYSTEM==\"apex\", MODE=\"0660\", GROUP=\"apex\"' | "
             "sudo tee /etc/udev/rules.d/65-apex.rules, then reboot")


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
              *userland_checks(),
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
    devices = ([str(device) for device in coral_usb_devices()] + [f"PCIe Coral at {address}" for address in
               coral_pci_devices()] + [str(node) for node in apex_nodes()])
    checks.append(Check("coral devices", bool(devices), "; ".join(devices) if devices else "none found",
                        "" if devices else "plug the Coral USB Accelerator into a USB 3 port (or install the PCIe "
                        "driver gasket-dkms for M.2/PCIe); without one, models run on the CPU", required=False))
    if sys.platform.startswith("linux"):
        checks += field_checks()
    return checks + (model_checks(model) if model is not None else [])


def userland_checks(machine: str | None = None, python_bits: int | None = None) -> list[Check]:
    """A 32-bit userland on a 64-bit ARM kernel (32-bit Raspberry Pi OS on a Pi 3/4/5): the kernel reports
    aarch64 (armv8l under linux32), Python is 32-bit, and ai-edge-litert has no wheel for it. Nothing on other
    machines. ``machine`` and ``python_bits`` default to this machine's (tests pass others)."""
    machine = machine or platform.machine()
    python_bits = python_bits or struct.calcsize("P") * 8
    if machine not in ("aarch64", "arm64", "armv8l") or python_bits != 32:
        return []
    ready = "tflite-runtime" in dict(installed_backends())
    return [Check("userland", ready, f"32-bit userland on a 64-bit ARM kernel ({machine}, {python_bits}-bit "
                  "Python): the interpreter is tflite-runtime, as ai-edge-litert has no 32-bit ARM wheel",
                  THIRTY_TWO_BIT_INSTALL, required=False)]


def field_checks(root: Path = ROOT, user: User | None = None, page_size: int | None = None) -> list[Check]:
    """What Coral users meet in the field, each OK or the fix: the USB link speed, the Pi 5's USB current,
    the kernel page size and the driver of a PCIe Coral, access to the device nodes, throttling. ``root``,
    ``user`` and ``page_size`` (default: this machine's) let tests check fake machines."""
    usb, pci, nodes = coral_usb_devices(root), coral_pci_devices(root), apex_nodes(root)
    user = user or User.current()
    checks = [_usb_link(device) for device in usb]
    checks += [_access("coral usb access", device.node, "plugdev", USB_RULE, root, user) for device in usb if device.node]
    if (pi_model(root) or "").startswith("Raspberry Pi 5"):
        checks.append(_pi5_usb_current(root))
    if pci or nodes:
        checks += _pcie_checks(pci, nodes, root, page_size or os.sysconf("SC_PAGE_SIZE"))
        checks += [_access("coral pcie access", node, "apex", APEX_RULE, root, user) for node in nodes]
    throttled = pi_throttled()
    if throttled is not None:
        checks.append(_throttling(throttled))
    return checks


def _shown(path: Path, root: Path) -> str:
    """``path`` as it is named on the checked machine (without a test's fake root)."""
    return "/" + str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _usb_link(device: CoralUsb) -> Check:
    """A Coral on a USB 2 link (480 Mbit/s) runs several times slower than on USB 3."""
    ok = device.speed is not None and device.speed >= USB3_MBPS
    kind = "unknown" if device.speed is None else "USB 3" if ok else "USB 2"
    return Check("coral usb link", ok, f"{device}: {device.speed or '?'} Mbit/s ({kind})",
                 "" if ok else "plug it into a blue USB 3 port directly (no USB 2 hub or extension cable), with "
                               "its USB 3 cable: on USB 2 every inference runs several times slower", required=False)


def _access(name: str, node: Path, group: str, rule: str, root: Path, user: User) -> Check:
    """Whether ``user`` may open the Coral's device ``node``; if not, which step of the group setup is missing."""
    shown = _shown(node, root)
    if user.can_read_write(node):
        return Check(name, True, f"{shown} is readable and writable by {user.name}", required=False)
    entry = group_entry(group, root)
    if entry is None:
        fix = f"create the {group} group and join it (sudo groupadd {group}; sudo usermod -aG {group} {user.name}), {rule}"
    elif user.name not in entry[1]:
        fix = f"join the {group} group: sudo usermod -aG {group} {user.name}, then log out and in (or reboot)"
    elif entry[0] not in user.gids:
        fix = f"{user.name} is in the {group} group, but this login session is not yet: log out and in (or reboot)"
    else:
        fix = f"{shown} is not given to the {group} group: {rule}"
    return Check(name, False, f"{shown} is not readable and writable by {user.name}", fix, required=False)


def _pi5_usb_current(root: Path) -> Check:
    """A Pi 5's USB ports share 600 mA unless ``usb_max_current_enable`` is on (1.6 A, with a 5 A supply):
    less than a Coral USB Accelerator draws (up to 900 mA). The device tree says what the firmware applied."""
    applied = device_tree_number("power/usb_max_current_enable", root)
    if applied is None:
        value = vcgencmd("get_config", "usb_max_current_enable")
        applied = int(value) if value and value.isdigit() else None
    configured = firmware_config("usb_max_current_enable", root, board="pi5")
    supply = device_tree_number("power/max_current", root)
    offers = f"; the power supply offers {supply} mA" if supply else ""
    if applied == 1 or (applied is None and configured == "1"):
        return Check("pi 5 usb current", True, f"usb_max_current_enable=1: the USB ports may draw 1.6 A{offers}",
                     required=False)
    fix = (f"{BOOKWORM_CONFIG} sets usb_max_current_enable=1 but the firmware has not applied it: reboot"
           if configured == "1" else
           f"with a 5 A supply (the official 27 W USB-C one) add usb_max_current_enable=1 to {BOOKWORM_CONFIG} and "
           "reboot; with a weaker supply, power the Coral from a powered USB 3 hub")
    return Check("pi 5 usb current", False, "usb_max_current_enable is off: the USB ports share 600 mA, a Coral USB "
                 f"Accelerator draws up to 900 mA{offers}", fix, required=False)


def _pcie_checks(pci: list[str], nodes: list[Path], root: Path, page_size: int) -> list[Check]:
    """The PCIe Coral's driver (gasket + apex) works with 4K pages only, and makes /dev/apex_N once loaded."""
    where = ", ".join(pci + [_shown(node, root) for node in nodes])
    checks = [Check("kernel page size", page_size == 4096, f"{page_size // 1024}K pages (PCIe Coral: {where})",
                    "" if page_size == 4096 else "the PCIe Coral's gasket driver fails with 16K pages (the Pi 5's default "
                    f"kernel): add kernel=kernel8.img (the 4K-page kernel) to {BOOKWORM_CONFIG} and reboot",
                    required=False)]
    loaded = loaded_modules(("gasket", "apex"), root)
    if len(loaded) < 2:
        checks.append(Check("apex driver", False, f"kernel modules loaded: {', '.join(loaded) or 'neither gasket nor apex'}",
                            "install the gasket-dkms driver (Coral's apt package fails to build on recent kernels: build "
                            f"github.com/google/gasket-driver; {SEE_README}), then reboot", required=False))
    elif not nodes:
        checks.append(Check("apex driver", False, "gasket and apex are loaded but made no /dev/apex_0",
                            f"on a Pi 5 add dtoverlay=pciex1-compat-pi5,no-mip to {BOOKWORM_CONFIG} and reboot; "
                            "`dmesg | grep apex` says why", required=False))
    else:
        checks.append(Check("apex driver", True, "gasket and apex loaded", required=False))
    return checks


def _throttling(value: str) -> Check:
    """`vcgencmd get_throttled`: under-voltage resets a USB Coral ("detection stuck"); heat slows the CPU."""
    try:
        flags = int(value, 16)
    except ValueError:
        return Check("throttling", False, f"vcgencmd get_throttled said {value!r}", required=False)
    said = [text for bit, text in THROTTLE_FLAGS.items() if flags >> bit & 1]
    fixes = []
    if flags & UNDER_VOLTAGE:
        fixes.append("under-voltage: use the official supply (5 V 3 A for a Pi 4, 5 V 5 A for a Pi 5) with its own "
                     "cable, and power a USB Coral (up to 900 mA) from a powered USB 3 hub")
    if flags & SOFT_TEMP_LIMIT or (flags & (CAPPED | THROTTLED) and not flags & UNDER_VOLTAGE):
        fixes.append("heat: fit a heatsink and fan (the Pi 5 Active Cooler) and let the case breathe")
    return Check("throttling", not said, f"{value}: {', '.join(said) or 'none'}", "; ".join(fixes), required=False)


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
