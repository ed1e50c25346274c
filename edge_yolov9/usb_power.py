"""Power-cycling a wedged USB Coral's port with ``uhubctl``, what users do by hand (or by rebooting) when the
Coral stops answering after a USB fault (notes/coral-field.md §2).

A hub port is named as ``uhubctl`` names it: the Coral's sysfs name '1-1.2' is port 2 of hub '1-1', and '2-1'
port 1 of the root hub '2'. What is switched is the hub's business: a Raspberry Pi 4 switches its four ports
together (a USB disk on the Pi goes off with the Coral), and most external hubs cannot switch at all.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

from .host import CoralUsb, coral_usb_devices
from .interpreter import RuntimeSetupError

logger = logging.getLogger(__name__)

INSTALL_UHUBCTL = "install uhubctl (`sudo apt install uhubctl`)"
ALLOW_UHUBCTL = ("run as a user allowed to switch USB ports (root, or the udev rule in uhubctl's "
                 "README that gives a group write access to the hubs)")


def hub_port(device: CoralUsb) -> tuple[str, str]:
    """(hub location, port) of ``device`` as ``uhubctl -l LOCATION -p PORT`` takes them."""
    bus, _, path = device.name.partition("-")
    if not bus.isdigit() or not path or not all(part.isdigit() for part in path.split(".")):
        raise ValueError(f"not a USB device's sysfs name: {device.name!r}")
    hub, _, port = path.rpartition(".")
    return (f"{bus}-{hub}" if hub else bus), port


def power_cycle_usb_corals(root: Path, *, off_seconds: float = 2.0, back_within: float = 20.0) -> list[str]:
    """Switch off the port of every USB Coral in ``root``'s sysfs for ``off_seconds``, switch it on again and
    wait (at most ``back_within`` seconds) for a Coral to be back on the bus; the ports cycled.
    A RuntimeSetupError says why not (no uhubctl, no Coral, a port uhubctl cannot switch, none back)."""
    uhubctl = shutil.which("uhubctl")
    if uhubctl is None:
        raise RuntimeSetupError("uhubctl, which power-cycles the Coral's USB port, is not installed", INSTALL_UHUBCTL)
    corals = coral_usb_devices(root)
    if not corals:
        raise RuntimeSetupError("no USB Coral on the bus to power-cycle",
                                "check the cable and power (`edge-yolov9 doctor`), or re-plug the Coral")
    cycled = []
    for coral in corals:
        hub, port = hub_port(coral)
        command = [uhubctl, "-l", hub, "-p", port, "-a", "cycle", "-d", f"{off_seconds:g}"]
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=off_seconds + 30)
        except subprocess.TimeoutExpired as err:
            raise RuntimeSetupError(f"`{' '.join(command)}` did not finish within {err.timeout:g} s",
                                    "re-plug the Coral, or reboot") from None
        said = (run.stdout + run.stderr).strip()
        if run.returncode != 0:
            raise RuntimeSetupError(f"uhubctl could not power-cycle port {port} of hub {hub} ({coral}): "
                                    f"{said.splitlines()[-1] if said else f'exit {run.returncode}'}",
                                    f"{ALLOW_UHUBCTL}; a hub that cannot switch its ports is not in uhubctl's "
                                    "list of compatible hubs (plug the Coral into the Pi itself)")
        logger.warning("Power-cycled USB port %s of hub %s (%s)", port, hub, coral)
        cycled.append(f"{hub} port {port}")
    deadline = time.monotonic() + back_within
    while not coral_usb_devices(root):
        if time.monotonic() > deadline:
            raise RuntimeSetupError(f"no USB Coral came back within {back_within:g} s of power-cycling "
                                    f"{', '.join(cycled)}", "re-plug the Coral, or reboot")
        time.sleep(0.2)
    return cycled
