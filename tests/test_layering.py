"""The layering rule and the import root: the runtime core (edge_yolov9 without its train, convert and daemon
sub-packages) imports none of those three; the daemon imports only the core; nothing imports the repository
folders as top-level packages (they install as edge_yolov9.train, edge_yolov9.convert, edge_yolov9.daemon)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.runtime

ROOT = Path(__file__).resolve().parents[1]
# Repository folder of each layer, and the package it installs as.
FOLDERS = {"core": "edge_yolov9", "train": "train", "convert": "convert", "daemon": "firmware_host"}
PACKAGES = {"edge_yolov9.train": "train", "edge_yolov9.convert": "convert", "edge_yolov9.daemon": "daemon"}
ALLOWED = {"core": {"core"}, "daemon": {"core", "daemon"}}
FOLDER_NAMES = {"train", "convert", "firmware_host"}
HEAVY = {"torch", "torchvision", "litert_torch", "ai_edge_quantizer", "cv2"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def layer(module: str) -> str | None:
    """The layer a module belongs to; None for a module that is not ours."""
    for package, name in PACKAGES.items():
        if module == package or module.startswith(package + "."):
            return name
    return "core" if module.split(".")[0] == "edge_yolov9" else None


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_respect_layering(package):
    for path in (ROOT / FOLDERS[package]).rglob("*.py"):
        bad = {m for m in imported_modules(path) if layer(m) not in (None, *ALLOWED[package])}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_no_code_imports_the_folders_as_top_level_packages():
    for folder in ("edge_yolov9", "train", "convert", "firmware_host", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            bad = {m for m in imported_modules(path) if m.split(".")[0] in FOLDER_NAMES}
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}: use edge_yolov9.train/convert/daemon"


def test_installed_packages_have_one_root(tmp_path):
    """Outside the checkout, `train` and `convert` are not importable; the sub-packages are."""
    script = ("import importlib.util as u, sys; "
              "print(u.find_spec('train') is None, u.find_spec('convert') is None, u.find_spec('firmware_host') is None, "
              "all(u.find_spec(n) is not None for n in ('edge_yolov9.train', 'edge_yolov9.convert', 'edge_yolov9.daemon')))")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "True", "True", "True"]


def test_runtime_never_imports_torch():
    for path in (ROOT / "edge_yolov9").rglob("*.py"):
        heavy = {m.split(".")[0] for m in imported_modules(path)} & (HEAVY - {"cv2"})
        assert not heavy, f"{path.relative_to(ROOT)} imports {heavy}"
