"""The runtime tier (``pytest -m runtime``) passes where only the default install is: a cached venv (see
test_runtime_env) with the project, no extras (so no torch, opencv, broker client or browser driver), and
pytest, runs the tier of a copy of this checkout that has no ../shared beside it."""

from __future__ import annotations

import shutil
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from test_runtime_env import cached_venv

ROOT = Path(__file__).resolve().parents[1]


def test_runtime_tier_passes_in_the_default_install(tmp_path):
    venv = cached_venv("runtime-tier", sys.executable, f"pytest=={pytest.__version__}")
    checkout = tmp_path / "edge-yolov9"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info",
                                                                 ".pytest_cache", "build", "dist", "runs"))
    done = venv.run("python", "-c", "import importlib.util as u; print(u.find_spec('torch') is None)", cwd=tmp_path)
    assert done.stdout.split() == ["True"], "the default install must not pull torch"

    report = tmp_path / "tier.xml"
    done = venv.run("python", "-m", "pytest", "-m", "runtime", "-p", "no:cacheprovider", "-q", "-rs",
                    f"--junitxml={report}", str(checkout / "tests"), cwd=tmp_path)
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
    cases = ElementTree.parse(report).getroot().iter("testcase")
    outcome = {f"{c.get('classname')}.{c.get('name')}": "skipped" if c.find("skipped") is not None else "ran"
               for c in cases}
    ran = [name for name, how in outcome.items() if how == "ran"]
    assert len(ran) >= 50, done.stdout[-3000:]
    assert sum(name.startswith("tests.test_tiny_model.") for name in ran) == 3  # the tier ran a model
    skipped = done.stdout.split("short test summary info")[-1]
    assert "needs torch" in skipped and "test data missing" in skipped  # the modules and data it had to leave out
