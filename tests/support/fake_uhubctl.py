"""A ``uhubctl`` stand-in on PATH that power-cycles a port of a fake sysfs tree (support.fake_sysfs): the USB
device on that port leaves the bus and comes back ``back_after`` seconds after uhubctl returns (a real one
re-enumerates after the power comes back), with a new device number. It logs its arguments; ``fails`` makes it
print that line and exit 1 (what uhubctl does on a hub it cannot switch, or without permission); ``clears``
is a file it removes when it cycles (the fake libedgetpu's unplug trigger: the power cut un-wedges the Coral)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCRIPT = r'''
import json, os, pathlib, subprocess, sys, time
config = json.loads(pathlib.Path(__file__).with_suffix(".json").read_text())
args = sys.argv[1:]
with open(config["log"], "a") as log:
    log.write(" ".join(args) + "\n")
if config["fails"] is not None:
    print(config["fails"], file=sys.stderr)
    sys.exit(1)
hub, port = args[args.index("-l") + 1], args[args.index("-p") + 1]
name = hub + ("." if "-" in hub else "-") + port
devices = pathlib.Path(config["root"]) / "sys/bus/usb/devices"
away = devices.parent / ("unplugged-" + name)
(devices / name).rename(away)
if config["clears"]:
    pathlib.Path(config["clears"]).unlink(missing_ok=True)
print("Sent power off request\nSent power on request")
if config["back_after"] is not None:  # re-enumerated later, by a process of its own
    number = int((away / "devnum").read_text()) + 1
    back = (f"import os, time; time.sleep({config['back_after']}); "
            f"open({str(away / 'devnum')!r}, 'w').write('{number}\\n'); os.rename({str(away)!r}, "
            f"{str(devices / name)!r})")
    subprocess.Popen([sys.executable, "-c", back], start_new_session=True)
'''


def fake_uhubctl(folder: Path, root: Path, log: Path, *, back_after: float | None = 0.5, fails: str | None = None,
                 clears: Path | None = None) -> Path:
    """Write the fake into ``folder`` (put it first on PATH) for the sysfs under ``root``; ``back_after=None``:
    the device never comes back."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "uhubctl"
    script.write_text(f"#!{sys.executable}\n{SCRIPT}")
    script.chmod(0o755)
    script.with_suffix(".json").write_text(json.dumps({
        "root": str(root), "log": str(log), "back_after": back_after, "fails": fails,
        "clears": str(clears) if clears else None}))
    return script
