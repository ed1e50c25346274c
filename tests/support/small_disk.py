"""A real full disk for the tests: a tiny tmpfs, mounted as root (CI and these machines) or, for a user,
inside a user namespace (``unshare -rm``), where the command under test then runs."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def full_disk(folder: Path, size_kib: int = 64) -> Iterator[Path]:
    """``folder`` (created) as a tmpfs of ``size_kib`` KiB, filled to the last byte; unmounted after."""
    if os.geteuid() != 0:
        raise RuntimeError("mounting a tmpfs needs root here; run the tests as root (CI does) or in "
                           "`unshare -rm` (a user namespace where you are root)")
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)], check=True)
    try:
        with open(folder / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 4096)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
