"""Headless Chromium for the tests of the daemon's live page: Debian's chromium and chromedriver through selenium.

Both binaries come from the system (``scripts/system-deps.sh`` installs them); their absence is an error,
not a skip, so a machine without them cannot pass the suite by silently leaving the page untested.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

# Quiet and offline: no sandbox (containers run as root), no background traffic that could hit the network.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync")


def _system_binary(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).exists():
        raise RuntimeError(f"{name} is not installed: the live-page tests need Debian's chromium and chromium-driver. "
                           "Run `bash scripts/system-deps.sh`.")
    return path


@contextmanager
def headless_chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a fresh profile in ``profile`` (a tmp_path), quit on exit."""
    options = Options()
    options.binary_location = _system_binary("chromium")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(_system_binary("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()
