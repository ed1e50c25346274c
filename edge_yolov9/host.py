"""What the machine under a Coral says about itself: the Coral's USB link and PCIe ids (sysfs), the Pi model
and its power settings (device tree, firmware config.txt, ``vcgencmd``), the loaded kernel modules, the
device nodes and the groups of /etc/group. The facts behind doctor's field checks; their sources are in
/work/shared/notes/coral-field.md.

Every reader takes ``root`` (the filesystem root, ``/`` on the machine) and finds ``vcgencmd`` on PATH, so
that tests run them on fake trees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/")
# USB ids of the Coral USB Accelerator: before its firmware is loaded, and once it is ready.
CORAL_USB_IDS = {("1a6e", "089a"): "Coral USB Accelerator (bootloader; firmware loads on first use)",
                 ("18d1", "9302"): "Coral USB Accelerator (ready)"}
CORAL_PCI_IDS = ("0x1ac1", "0x089a")  # the M.2/PCIe Coral (Global Unichip), with or without its driver
# Raspberry Pi OS Bookworm keeps the firmware config in /boot/firmware; older releases in /boot.
FIRMWARE_CONFIGS = ("boot/firmware/config.txt", "boot/config.txt")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


@dataclass(frozen=True)
class CoralUsb:
    """A Coral USB Accelerator on the bus: its sysfs name (e.g. '2-1'), ids, link speed and device node."""

    name: str
    ids: tuple[str, str]
    speed: int | None  # Mbit/s as sysfs says: 480 is USB 2, 5000 and more USB 3
    node: Path | None  # /dev/bus/usb/BBB/DDD (under root), which libedgetpu opens

    def __str__(self) -> str:
        return f"{self.name} {self.ids[0]}:{self.ids[1]} {CORAL_USB_IDS[self.ids]}"


def coral_usb_devices(root: Path = ROOT) -> list[CoralUsb]:
    """The Coral USB Accelerators in ``root/sys/bus/usb/devices`` (no lsusb needed)."""
    found = []
    for device in sorted((root / "sys/bus/usb/devices").glob("*")):
        ids = (_read(device / "idVendor"), _read(device / "idProduct"))
        if ids not in CORAL_USB_IDS:
            continue
        speed, bus, number = (_read(device / name) for name in ("speed", "busnum", "devnum"))
        node = (root / "dev/bus/usb" / f"{int(bus):03d}" / f"{int(number):03d}"
                if bus and bus.isdigit() and number and number.isdigit() else None)
        found.append(CoralUsb(device.name, ids, int(float(speed)) if speed and speed.replace(".", "").isdigit()
                              else None, node))
    return found


def coral_pci_devices(root: Path = ROOT) -> list[str]:
    """PCI addresses of M.2/PCIe Corals (``root/sys/bus/pci/devices``), found whether or not their driver loaded."""
    return [device.name for device in sorted((root / "sys/bus/pci/devices").glob("*"))
            if (_read(device / "vendor"), _read(device / "device")) == CORAL_PCI_IDS]


def apex_nodes(root: Path = ROOT) -> list[Path]:
    """The /dev/apex_N nodes the gasket/apex driver made, one per PCIe Edge TPU."""
    return sorted((root / "dev").glob("apex_*"))


def loaded_modules(names: tuple[str, ...], root: Path = ROOT) -> list[str]:
    """Which of the kernel modules ``names`` are loaded (``root/sys/module/NAME``; built-in ones count)."""
    return [name for name in names if (root / "sys/module" / name).is_dir()]


def pi_model(root: Path = ROOT) -> str | None:
    """The board's model from the device tree ('Raspberry Pi 5 Model B Rev 1.0'), None where there is none."""
    for path in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
        model = _read(root / path)
        if model:
            return model.rstrip("\0")
    return None


def device_tree_number(name: str, root: Path = ROOT) -> int | None:
    """A 32-bit big-endian value of the device tree's /chosen node, e.g. 'power/max_current' (the mA the Pi 5
    negotiated with its supply) or 'power/usb_max_current_enable' (what the firmware applied)."""
    for base in ("proc/device-tree/chosen", "sys/firmware/devicetree/base/chosen"):
        try:
            data = (root / base / name).read_bytes()
        except OSError:
            continue
        if len(data) >= 4:
            return int.from_bytes(data[:4], "big")
    return None


def firmware_config(key: str, root: Path = ROOT, board: str = "") -> str | None:
    """The value of ``key`` in the Pi's config.txt, the last one that applies: outside a section, under
    ``[all]``, or under the section of ``board`` (e.g. 'pi5'). Other conditional sections are skipped."""
    text = next((t for t in (_read(root / name) for name in FIRMWARE_CONFIGS) if t is not None), None)
    if text is None:
        return None
    value, applies = None, True
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            applies = line[1:-1].strip().lower() in ("all", board)
        elif applies and line.partition("=")[0].strip() == key:
            value = line.partition("=")[2].strip()
    return value


def vcgencmd(*args: str) -> str | None:
    """The value ``vcgencmd ARGS`` prints after '=' ('throttled=0x50005' -> '0x50005'), None off a Pi."""
    if shutil.which("vcgencmd") is None:
        return None
    try:
        out = subprocess.run(["vcgencmd", *args], capture_output=True, text=True, timeout=2).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().partition("=")[2].strip() or None


def pi_throttled() -> str | None:
    """``vcgencmd get_throttled`` (e.g. '0x50005': under-voltage now and since boot), None off a Pi."""
    return vcgencmd("get_throttled")


@dataclass(frozen=True)
class User:
    """Whose access is checked: a name, uid and the groups of the running session (``live``: this process,
    whose access ``os.access`` also answers, ACL grants such as logind's included)."""

    name: str
    uid: int
    gids: frozenset[int]
    live: bool = False

    @classmethod
    def current(cls) -> User:
        import pwd  # Unix only; the field checks run on Linux

        uid = os.geteuid()
        return cls(pwd.getpwuid(uid).pw_name, uid, frozenset([os.getegid(), *os.getgroups()]), live=True)

    def can_read_write(self, path: Path) -> bool:
        """Whether the user may open ``path`` for reading and writing (root may; else its mode bits)."""
        if self.live and os.access(path, os.R_OK | os.W_OK):
            return True
        try:
            stat = path.stat()
        except OSError:
            return False
        if self.uid == 0:
            return True
        shift = 6 if stat.st_uid == self.uid else 3 if stat.st_gid in self.gids else 0
        return (stat.st_mode >> shift) & 0o6 == 0o6


def group_entry(group: str, root: Path = ROOT) -> tuple[int, list[str]] | None:
    """(gid, members) of ``group`` in ``root/etc/group``, None when the group does not exist."""
    for line in (_read(root / "etc/group") or "").splitlines():
        fields = line.split(":")
        if len(fields) == 4 and fields[0] == group and fields[2].isdigit():
            return int(fields[2]), [m for m in fields[3].split(",") if m]
    return None
