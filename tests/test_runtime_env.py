"""The runtime in environments like a user's, not the dev venv: the default install (``pip install
edge-yolov9``, no extras, so no torch) on this Python and on the oldest and newest supported ones, and
the project beside ``tflite-runtime`` 2.14 with ``numpy<2`` and no ai-edge-litert (the 32-bit Pi setup).

Each venv is created once and cached under ``~/.cache/edge-yolov9-test/venvs`` (or
``$EDGE_YOLOV9_TEST_CACHE``), keyed by pyproject.toml, the Python version and the recipe; when the
project's sources change, only the project is reinstalled into it (without its dependencies). Creating a
venv needs the package index: a failed install fails the test with pip's output, it never skips.

In every venv the same script loads the real int8 'ball' model and detects on real COCO images; its
detections are compared with the dev venv's (see :func:`assert_same_detections` for the tolerances).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from packaging.requirements import Requirement

from support.conversions import CONFIDENT_IMAGES
from support.importers.ultralytics_oracle import cache_root

ROOT = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT_S = 900
RUN_TIMEOUT_S = 300
READY, PROJECT_HASH = ".ready", ".project-sha256"
SCORE_THRESHOLD = 0.05  # low, so that many detections (also weak ones) are compared
SPORTS_BALL = "32"  # the COCO class the 'ball' model detects
# The oldest and newest Pythons the default install supports (pyproject.toml's classifiers).
OTHER_PYTHONS = ("3.9", "3.13")

# Run by each venv's Python: detections of every image of a folder, at full float precision.
PROBE = """
import importlib.util, json, platform, sys
from pathlib import Path
import numpy
import edge_yolov9
from edge_yolov9.detector import Detector
from edge_yolov9.interpreter import find_backend

model, folder, threshold = sys.argv[1], sys.argv[2], float(sys.argv[3])
detector = Detector(model, device="cpu", score_threshold=threshold)
results = {Path(r.frame.name).name: None if r.error else [[*d.box, d.score, d.class_id] for d in r.detections]
           for r in detector.detect_many(folder)}
backend = find_backend()
print(json.dumps({"python": platform.python_version(), "numpy": numpy.__version__,
                  "backend": [backend.name, backend.version], "package": edge_yolov9.__file__,
                  "torch": importlib.util.find_spec("torch") is not None, "results": results}))
"""


@dataclass(frozen=True)
class Venv:
    path: Path

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    def run(self, program: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
        """``program`` (a file in the venv's bin/) with the venv's environment, outside the repository
        (so that its sources cannot shadow the installed package)."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env["PATH"] = f"{self.path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return subprocess.run([str(self.path / "bin" / program), *args], capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S, env=env, cwd=cwd)

    def probe(self, model: Path, folder: Path, cwd: Path) -> dict:
        done = self.run("python", "-c", PROBE, str(model), str(folder), str(SCORE_THRESHOLD), cwd=cwd)
        assert done.returncode == 0, f"the probe failed in {self.path}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        return json.loads(done.stdout.splitlines()[-1])


def _check(command: list[str], what: str, timeout: float = INSTALL_TIMEOUT_S) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{what} failed (exit {done.returncode}): {' '.join(command)}\n"
                    f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}", pytrace=False)
    return done


def _pip(python: str, *args: str) -> None:
    _check([python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check", "--quiet", *args],
           "Installing into a test venv (this needs the package index)")


def stage_project(folder: Path) -> str:
    """Copy what ``pip install <repo>`` packages (pyproject.toml, README.md and the top-level packages)
    into ``folder``, so the build leaves no files in the repository; returns the copy's hash."""
    digest = hashlib.sha256()
    folder.mkdir(parents=True)
    members = [ROOT / "pyproject.toml", ROOT / "README.md",
               *sorted(p for p in ROOT.iterdir() if (p / "__init__.py").is_file())]
    for member in members:
        if member.is_dir():
            shutil.copytree(member, folder / member.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(member, folder / member.name)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def cached_venv(recipe: str, base_python: str, *requirements: str, without: tuple[str, ...] = ()) -> Venv:
    """A venv of ``base_python`` with the project installed by ordinary resolution (plus ``requirements``,
    minus the packages ``without``), created once per pyproject.toml, Python version and recipe."""
    version = _check([base_python, "-c", "import platform; print(platform.python_version())"],
                     f"Running {base_python}", timeout=60).stdout.strip()
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()
                         + json.dumps([recipe, version, requirements, without]).encode()).hexdigest()[:16]
    venv = Venv(cache_root() / "venvs" / f"{recipe}-py{version}-{key}")
    venv.path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging, FileLock(str(venv.path) + ".lock"):
        source = Path(staging) / "edge-yolov9"
        project_hash = stage_project(source)
        if not (venv.path / READY).is_file():
            shutil.rmtree(venv.path, ignore_errors=True)
            _check([base_python, "-m", "venv", str(venv.path)], f"Creating a venv with {base_python}", timeout=300)
            _pip(venv.python, str(source), *requirements)
            if without:
                _check([venv.python, "-m", "pip", "uninstall", "--yes", *without], "Uninstalling from a test venv")
            (venv.path / PROJECT_HASH).write_text(project_hash)
            (venv.path / READY).touch()
        elif (venv.path / PROJECT_HASH).read_text() != project_hash:  # sources changed: the project only
            _pip(venv.python, "--no-deps", "--force-reinstall", str(source))
            (venv.path / PROJECT_HASH).write_text(project_hash)
    return venv


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` ('3.9'): ``$EDGE_YOLOV9_TEST_PYTHON_3_9``, ``python3.9`` on PATH or a
    pyenv install; each candidate must run and report that version (a pyenv shim may not)."""
    candidates = [os.environ.get(f"EDGE_YOLOV9_TEST_PYTHON_{version.replace('.', '_')}"), shutil.which(f"python{version}"),
                  *sorted(glob.glob(str(Path.home() / ".pyenv" / "versions" / f"{version}.*" / "bin" / f"python{version}")))]
    for candidate in filter(None, candidates):
        done = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=60)
        if done.returncode == 0 and done.stdout.strip() == version:
            return candidate
    return None


def assert_same_detections(ours: dict, reference: dict, same_kernels: bool) -> None:
    """Same frames, same unreadable ones, same detections.

    With the same interpreter package and version (``same_kernels``) the int8 outputs are bit-identical,
    so only float32 post-processing can differ: boxes within 1e-3 px, scores within 1e-6, same order.
    Other interpreter builds run other int8 kernels (ai-edge-litert 2.x runs them in XNNPACK,
    tflite-runtime 2.14 in its built-in kernels; they differ by up to ~12 quantization steps on the box
    bins), so then every detection scoring >= 0.25 on one side has one on the other with the same class,
    IoU >= 0.9 and a score within 0.05.
    """
    assert ours.keys() == reference.keys()
    for name, expected in reference.items():
        got = ours[name]
        assert (got is None) == (expected is None), name
        if expected is None:
            continue
        if same_kernels:
            assert len(got) == len(expected), name
            if expected:
                np.testing.assert_allclose(np.array(got)[:, :4], np.array(expected)[:, :4], atol=1e-3, rtol=0)
                np.testing.assert_allclose(np.array(got)[:, 4], np.array(expected)[:, 4], atol=1e-6, rtol=0)
                assert [d[5] for d in got] == [d[5] for d in expected], name
            continue
        for one, other in ((got, expected), (expected, got)):
            for det in (d for d in one if d[4] >= 0.25):
                assert any(d[5] == det[5] and _iou(d[:4], det[:4]) >= 0.9 and abs(d[4] - det[4]) <= 0.05
                           for d in other), f"{name}: {det} has no counterpart in {other}"


def _iou(a: list[float], b: list[float]) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def default_venv() -> Venv:
    """``pip install <repo>``, no extras, with the Python of the dev venv."""
    return cached_venv("default", sys.executable)


@pytest.fixture(scope="session")
def tflite_runtime_venv() -> Venv:
    """The project with tflite-runtime 2.14 and NumPy 1, and no ai-edge-litert: the interpreter of
    32-bit Raspberry Pi OS, where ai-edge-litert has no wheels."""
    return cached_venv("tflite-runtime", sys.executable, "tflite-runtime==2.14.0", "numpy<2",
                       without=("ai-edge-litert",))


@pytest.fixture(scope="session")
def images(tmp_path_factory, coco128) -> Path:
    """Real COCO images: those with a sports ball (the model's class), two without, and a corrupt file."""
    folder = tmp_path_factory.mktemp("env-images")
    all_images = sorted((coco128 / "images" / "train2017").glob("*.jpg"))
    with_ball = [p for p in all_images if p.name in CONFIDENT_IMAGES or SPORTS_BALL in _label_classes(coco128, p)]
    for path in with_ball + [p for p in all_images if p not in with_ball][:2]:
        shutil.copy(path, folder / path.name)
    (folder / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff truncated")
    return folder


def _label_classes(coco128: Path, image: Path) -> set[str]:
    label = coco128 / "labels" / "train2017" / image.with_suffix(".txt").name
    return {line.split()[0] for line in label.read_text().splitlines() if line.strip()} if label.is_file() else set()


@pytest.fixture(scope="session")
def model(out320) -> Path:
    return out320 / "out" / "model_int8.tflite"


@pytest.fixture(scope="session")
def reference(model, images, tmp_path_factory) -> dict:
    """The probe in the dev venv."""
    return Venv(Path(sys.prefix)).probe(model, images, tmp_path_factory.mktemp("probe"))


def _same_kernels(a: dict, b: dict) -> bool:
    return a["backend"] == b["backend"]


# --------------------------------------------------------------------------- tests


def test_default_install_detects_like_the_dev_venv_without_torch(default_venv, model, images, reference, tmp_path):
    result = default_venv.probe(model, images, tmp_path)
    assert not result["torch"], "the default install must not pull torch"
    assert str(default_venv.path) in result["package"], "the probe ran the repository's sources, not the install"
    assert result["backend"][0] == "ai-edge-litert"
    assert result["results"]["zz_corrupt.jpg"] is None and len(result["results"]) == len(list(images.iterdir()))
    assert all(result["results"][name] for name in CONFIDENT_IMAGES)
    assert_same_detections(result["results"], reference["results"], _same_kernels(result, reference))


def test_default_install_cli_detect_and_doctor(default_venv, model, images, reference, tmp_path):
    done = default_venv.run("edge-yolov9", "detect", str(model), str(images), "--json", str(tmp_path / "d.jsonl"),
                            "--save", str(tmp_path / "annotated"), "--conf", str(SCORE_THRESHOLD), cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # the corrupt image is reported, the others are processed
    assert "zz_corrupt.jpg" in done.stderr and "fix:" in done.stderr
    records = {Path(r["source"]).name: r for r in map(json.loads, (tmp_path / "d.jsonl").read_text().splitlines())}
    assert records.keys() == reference["results"].keys()
    assert "error" in records["zz_corrupt.jpg"] and records["zz_corrupt.jpg"]["fix"]
    for name in CONFIDENT_IMAGES:
        assert records[name]["detections"][0]["label"] == "ball"
        assert len(records[name]["detections"]) == len(reference["results"][name])
    assert len(list((tmp_path / "annotated").glob("*.jpg"))) == len(records) - 1

    done = default_venv.run("edge-yolov9", "doctor", "--model", str(model), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert rows["interpreter"]["ok"] and "ai-edge-litert" in rows["interpreter"]["detail"]
    assert rows["model"]["ok"] and rows["model: metadata"]["ok"] and rows["model: loads"]["ok"]


def test_default_install_commands_of_missing_extras_name_the_extra(default_venv, model, tmp_path):
    done = default_venv.run("edge-yolov9", "--help", cwd=tmp_path)
    assert done.returncode == 0
    for command in ("models", "import", "val", "convert", "detect", "bench", "doctor", "serve"):
        assert command in done.stdout
    (tmp_path / "clip.avi").write_bytes(b"RIFF")
    (tmp_path / "x.pt").write_bytes(b"")  # an existing file: the missing extra is what stops `val`
    for args, extra in ((["models"], "train"), (["val", "--model", "x.pt", "--data", "d.yaml"], "train"),
                        (["convert", "--model", "x.pt", "--imgsz", "320", "--calib", "d", "-o", "o"], "convert"),
                        (["detect", str(model), str(tmp_path / "clip.avi")], "video"),
                        (["serve", "--model", str(model), "--source", "0", "--install-service"], "daemon")):
        done = default_venv.run("edge-yolov9", *args, cwd=tmp_path)
        assert done.returncode == 2 and f"pip install 'edge-yolov9[{extra}]'" in done.stderr, (args, done.stderr)


def test_tflite_runtime_with_numpy1_detects_like_the_dev_venv(tflite_runtime_venv, model, images, reference, tmp_path):
    result = tflite_runtime_venv.probe(model, images, tmp_path)
    assert result["backend"] == ["tflite-runtime", "2.14.0"] and result["numpy"].startswith("1.")
    assert result["results"]["zz_corrupt.jpg"] is None
    assert all(result["results"][name] for name in CONFIDENT_IMAGES)
    assert_same_detections(result["results"], reference["results"], _same_kernels(result, reference))
    done = tflite_runtime_venv.run("edge-yolov9", "doctor", "--model", str(model), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert "tflite-runtime 2.14.0" in rows["interpreter"]["detail"] and rows["model: loads"]["ok"]
    assert rows["ai-edge-litert"]["detail"] == "not installed"


@pytest.mark.parametrize("version", OTHER_PYTHONS)
def test_default_install_on_other_pythons(version, model, images, reference, tmp_path):
    python = find_python(version)
    if python is None:
        pytest.skip(f"no Python {version} here: install it (e.g. pyenv install {version}) or set "
                    f"EDGE_YOLOV9_TEST_PYTHON_{version.replace('.', '_')} to its path")
    venv = cached_venv("default", python)
    result = venv.probe(model, images, tmp_path)
    assert result["python"].startswith(version + ".") and not result["torch"]
    assert result["backend"][0] == "ai-edge-litert", f"pip resolved no ai-edge-litert on {platform.machine()}"
    assert all(result["results"][name] for name in CONFIDENT_IMAGES)
    assert_same_detections(result["results"], reference["results"], _same_kernels(result, reference))
    done = venv.run("edge-yolov9", "doctor", "--model", str(model), cwd=tmp_path)  # the CLI on this Python
    assert done.returncode == 0 and "[OK  ] model: loads" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("python,machine,interpreter", [
    ("3.9", "x86_64", "ai-edge-litert"), ("3.9", "aarch64", "ai-edge-litert"), ("3.13", "aarch64", "ai-edge-litert"),
    ("3.11", "armv7l", "tflite-runtime"), ("3.12", "armv7l", None), ("3.11", "armv6l", None),
    ("3.11", "armv8l", "tflite-runtime"),  # a 32-bit userland on a 64-bit kernel, under linux32
])
def test_default_dependencies_pick_the_interpreter_with_wheels(python, machine, interpreter):
    """pyproject's markers choose per platform: ai-edge-litert where it has wheels (x86_64, aarch64 on
    every supported Python), tflite-runtime with NumPy 1 on 32-bit ARM up to Python 3.11 (its last
    wheels), nothing where neither has wheels (``edge-yolov9 doctor`` then says what to do)."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = {"python_version": python, "python_full_version": f"{python}.0", "platform_machine": machine,
           "platform_system": "Linux", "sys_platform": "linux"}
    picked = [r for r in map(Requirement, dependencies) if r.marker is None or r.marker.evaluate(env)]
    assert {r.name for r in picked} & {"ai-edge-litert", "tflite-runtime"} == ({interpreter} if interpreter else set())
    numpy_allows_2 = all(r.specifier.contains("2.0.0") for r in picked if r.name == "numpy")
    assert numpy_allows_2 == (interpreter != "tflite-runtime")
