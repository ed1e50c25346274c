"""The layering rule: edge_yolov9 imports none of the other packages; firmware_host only edge_yolov9."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"edge_yolov9", "train", "convert", "firmware_host"}
ALLOWED = {"edge_yolov9": {"edge_yolov9"}, "firmware_host": {"edge_yolov9", "firmware_host"}}
HEAVY = {"torch", "torchvision", "litert_torch", "ai_edge_quantizer", "cv2"}


def imported_top_levels(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_respect_layering(package):
    for path in (ROOT / package).rglob("*.py"):
        bad = (imported_top_levels(path) & OURS) - ALLOWED[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_runtime_never_imports_torch():
    for path in (ROOT / "edge_yolov9").rglob("*.py"):
        heavy = imported_top_levels(path) & (HEAVY - {"cv2"})
        assert not heavy, f"{path.relative_to(ROOT)} imports {heavy}"
