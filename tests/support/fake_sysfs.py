"""Files of a fake machine root (sysfs, /dev, /etc) built in a test folder, for the readers of edge_yolov9.host."""

from __future__ import annotations

import os
from pathlib import Path


def write(root: Path, path: str, data: str | bytes) -> Path:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data if isinstance(data, bytes) else data.encode())
    return target


def usb_coral(root: Path, name: str, ids: str, speed: str, bus: int = 2, number: int = 3) -> Path:
    """A Coral USB Accelerator in sysfs and its device node, owned by root:plugdev (gid 46), mode 0660."""
    vendor, product = ids.split(":")
    for field, value in (("idVendor", vendor), ("idProduct", product), ("speed", speed), ("busnum", str(bus)),
                         ("devnum", str(number))):
        write(root, f"sys/bus/usb/devices/{name}/{field}", value + "\n")
    node = write(root, f"dev/bus/usb/{bus:03d}/{number:03d}", b"")
    os.chown(node, 0, 46)
    node.chmod(0o660)
    return node
