"""Running under systemd: readiness and watchdog notifications, and the unit file ``serve --install-service`` writes.

``notify`` speaks the sd_notify datagram protocol directly (a few lines; no libsystemd binding to
install on the Pi); outside systemd (no ``$NOTIFY_SOCKET``) it does nothing.
"""

from __future__ import annotations

import grp
import math
import os
import shlex
import socket
import sys
from pathlib import Path

from edge_yolov9.errors import EdgeYoloError

from .config import DaemonConfig

# Groups that own what the daemon opens on a Pi: cameras (/dev/video*, /dev/vchiq, /dev/dma_heap),
# the Coral USB (plugdev, by libedgetpu's udev rule) and the Coral PCIe (/dev/apex_*).
DEVICE_GROUPS = ("video", "render", "plugdev", "apex")
PRIVATE_FOLDERS = (Path("/tmp"), Path("/var/tmp"))  # PrivateTmp=yes gives the service its own


def notify(state: str) -> bool:
    """Send ``state`` (e.g. 'READY=1', 'WATCHDOG=1') to systemd; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True


def unit_name(config: DaemonConfig) -> str:
    return f"edge-yolov9-{config.name}.service"


def watchdog_seconds(config: DaemonConfig) -> int:
    """Longer than the longest the detection loop may legitimately block: a detector restart waits up
    to ``start_timeout`` after an inference stalled for ``stall_timeout``."""
    return math.ceil(config.watchdog.start_timeout + config.watchdog.stall_timeout + 30)


def writable_paths(config: DaemonConfig, config_path: Path) -> list[Path]:
    """The folders the daemon writes into, as the unit must open them: everything else of /home is read-only
    there (ProtectHome) and so are /usr, /boot and /etc (ProtectSystem). Relative paths start at the config's
    folder, the unit's working directory. A file under /tmp would land in the service's private /tmp
    (PrivateTmp) and vanish with it: refused."""
    paths = []
    if config.jsonl.path not in (None, "-"):
        folder = (config_path.parent / config.jsonl.path).resolve().parent
        if any(folder == root or root in folder.parents for root in PRIVATE_FOLDERS):
            raise EdgeYoloError(f"jsonl.path {config.jsonl.path} lies in {folder}, which the service sees as a "
                                "private folder of its own (PrivateTmp): the file would vanish when it stops",
                                "set jsonl.path outside /tmp and /var/tmp, e.g. /var/log/edge-yolov9/events.jsonl")
        paths.append(folder)
    return paths


def unit_text(config: DaemonConfig, config_path: Path, user: str, groups: list[str]) -> str:
    command = shlex.join([sys.executable, "-m", "edge_yolov9.cli", "serve", "--config", str(config_path)])
    writable = "".join(f"ReadWritePaths=-{path}\n" for path in writable_paths(config, config_path))
    return f"""[Unit]
Description=edge-yolov9 object detector ({config.name})
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
ExecStart={command}
WorkingDirectory={config_path.parent}
User={user}
SupplementaryGroups={" ".join(groups)}
Restart=on-failure
RestartSec=10
WatchdogSec={watchdog_seconds(config)}
TimeoutStopSec=30
Environment=PYTHONUNBUFFERED=1
# The Edge TPU probe cache (edge_yolov9.edgetpu_probe): a folder systemd creates for the service's user.
CacheDirectory=edge-yolov9
Environment=XDG_CACHE_HOME=/var/cache/edge-yolov9
StandardOutput=journal
StandardError=journal
SyslogIdentifier=edge-yolov9-{config.name}
NoNewPrivileges=yes
ProtectSystem=full
ProtectHome=read-only
{writable}PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"""


def existing_groups(names: tuple[str, ...] = DEVICE_GROUPS) -> list[str]:
    """The groups among ``names`` this system has (systemd refuses to start a unit naming a missing one)."""
    found = []
    for name in names:
        try:
            grp.getgrnam(name)
        except KeyError:
            continue
        found.append(name)
    return found


def install_instructions(config: DaemonConfig, unit_path: Path, user: str, groups: list[str]) -> str:
    name = unit_name(config)
    reload = "sudo systemctl daemon-reload" if unit_path.parent == Path("/etc/systemd/system") else \
        f"sudo cp {unit_path} /etc/systemd/system/{name} && sudo systemctl daemon-reload"
    return f"""Wrote {unit_path}. Enable and start it with:

    {reload}
    sudo systemctl enable --now {name}
    journalctl -u {name} -f          # its logs

The service runs as {user!r} with the groups {', '.join(groups) or '(none found)'}; add the user to them once:
    sudo usermod -aG {','.join(groups) or 'video,plugdev'} {user}
A Coral USB needs libedgetpu's udev rule (installed with libedgetpu1-std: /lib/udev/rules.d/*edgetpu*)
so that 'plugdev' may open it; replug the Coral after installing it. A Coral on PCIe needs the gasket/apex
driver and the 'apex' group. Power the Coral from a USB 3 port (or a powered hub).
"""
