"""The Edge TPU runtime in the field, without a Coral: the interpreter/libedgetpu pairing (the table, dpkg's
versions through a fake ``dpkg-query``), and crash-safe delegate loading with fake libedgetpu libraries
compiled here (``support.fake_libedgetpu``) that segfault, abort, hang, return no delegate, or crash when the
interpreter applies them to the graph. The test process must survive every one of them."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from edge_yolov9.detector import Detector
from edge_yolov9.edgetpu_probe import CACHE_NAME, candidates, pair_advice, pairing
from edge_yolov9.interpreter import EdgeTpuLibrary, RuntimeSetupError, dpkg_libedgetpu, find_backend, find_libedgetpu
from support.conversions import fake_edgetpu_model
from support.fake_libedgetpu import build_fake_libedgetpu
from support.fake_sysfs import usb_coral
from support.terminal import as_from_a_terminal

FAILING = ("segfault", "abort", "hang", "null", "bad-prepare")
# What the error says each failure was (the probe's observation).
SAYS = {"segfault": "crashed (SIGSEGV) while creating the delegate", "abort": "crashed (SIGABRT) while creating",
        "hang": "did not answer within 2 s while creating the delegate",
        "null": "failed while creating the delegate: ValueError", "bad-prepare":
        "crashed (SIGSEGV) while applying the delegate to the model's graph"}
RED = np.zeros((32, 32, 3), np.uint8)
RED[..., 0] = 255  # the tiny model's class 'red' everywhere


@pytest.fixture(scope="module")
def fakes(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("libedgetpu")
    return {behaviour: build_fake_libedgetpu(folder, behaviour) for behaviour in (*FAILING, "works", "unplug")}


@pytest.fixture
def compiled(tiny_model, tmp_path) -> Path:
    """An 'Edge TPU' model (the tiny model declaring edgetpu-custom-op) with its CPU twin beside it."""
    shutil.copy(tiny_model, tmp_path / "tiny_int8.tflite")
    return fake_edgetpu_model(tiny_model, tmp_path / "tiny_int8_edgetpu.tflite")


@pytest.fixture(autouse=True)
def probe_environment(tmp_path, monkeypatch) -> Path:
    """A fresh probe cache, a short probe timeout (the hanging library), the options log of the fakes."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGE_YOLOV9_PROBE_TIMEOUT", "2")
    monkeypatch.setenv("FAKE_LIBEDGETPU_LOG", str(tmp_path / "options.log"))
    monkeypatch.delenv("EDGE_YOLOV9_LIBEDGETPU", raising=False)
    return tmp_path / "options.log"


# ------------------------------------------------------------------------------------------- pairing
@pytest.mark.runtime
@pytest.mark.parametrize("library_tf, interpreter, version, verdict", [
    ("2.5", "tflite-runtime", "2.5.0.post1", "works"),     # Coral's own pair
    ("2.5", "tflite-runtime", "2.13.0", "crashes"),        # edgetpu#812, libedgetpu#53, tensorflow#62371
    ("2.5", "tflite-runtime", "2.11.0", "unknown"),
    ("2.17.1", "tflite-runtime", "2.17.1", "works"),       # feranick's builds, Frigate's pair
    ("2.16.1", "tflite-runtime", "2.17.1", "unknown"),
    ("2.17.1", "ai-edge-litert", "2.3.0", "unknown"),      # nobody reports it working
    (None, "tflite-runtime", "2.14.0", "unknown"),
])
def test_pairing_table(library_tf, interpreter, version, verdict):
    assert pairing(library_tf, interpreter, version)[0] == verdict


@pytest.mark.runtime
def test_the_interpreter_that_matches_the_library_comes_first():
    litert, tflite_217, tflite_214 = ("ai-edge-litert", "2.3.0"), ("tflite-runtime", "2.17.1"), ("tflite-runtime", "2.14.0")
    community = EdgeTpuLibrary("/usr/lib/libedgetpu.so.1", "the system", "libedgetpu1-max 16.0tf2.17.1", "2.17.1")
    assert [c[0] for c in candidates(community, [litert, tflite_217])] == ["tflite-runtime", "ai-edge-litert"]
    coral = EdgeTpuLibrary("/usr/lib/libedgetpu.so.1", "the system", "libedgetpu1-std 16.0", "2.5")
    assert candidates(coral, [litert, tflite_214]) == [("ai-edge-litert", "2.3.0", "unknown"),
                                                        ("tflite-runtime", "2.14.0", "crashes")]
    unknown = EdgeTpuLibrary("/opt/libedgetpu.so.1", "$EDGE_YOLOV9_LIBEDGETPU")
    assert [c[0] for c in candidates(unknown, [litert, tflite_214])] == ["tflite-runtime", "ai-edge-litert"]
    assert candidates(unknown, [litert, tflite_214], prefer="ai-edge-litert") == [("ai-edge-litert", "2.3.0", "unknown")]
    with pytest.raises(RuntimeSetupError, match="Unknown interpreter"):
        candidates(unknown, [litert], prefer="tensorflow")
    # With no known-good pair the advice names the pair to install; with a known TF build, its interpreter.
    assert "16.0tf2.17.1" in pair_advice(unknown) and "tflite_runtime 2.17.1" in pair_advice(unknown)
    assert "tflite-runtime==2.5.0.post1" in pair_advice(coral) and "2.12" in pair_advice(coral)
    assert "install tflite_runtime 2.17.1 beside it" in pair_advice(community)


def fake_dpkg(folder: Path, output: str) -> Path:
    """A ``dpkg-query`` on PATH that prints ``output`` for the query of libedgetpu1-* (and records it)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "dpkg-query"
    script.write_text(f"#!/bin/sh\nprintf '%s|' \"$@\" > {folder / 'argv'}\nprintf '%s' '{output}'\n")
    script.chmod(0o755)
    return folder


@pytest.mark.runtime
@pytest.mark.parametrize("output, expected", [
    ("libedgetpu1-max 16.0tf2.17.1-1.bookworm\n", ("libedgetpu1-max 16.0tf2.17.1-1.bookworm", "2.17.1")),
    ("libedgetpu1-std 16.0\n", ("libedgetpu1-std 16.0", "2.5")),          # Coral's apt package
    ("libedgetpu1-max \nlibedgetpu1-std 16.0tf2.15.0-1.bookworm\n",       # -max known to dpkg, not installed
     ("libedgetpu1-std 16.0tf2.15.0-1.bookworm", "2.15.0")),
    ("libedgetpu1-std 16.0-2\n", ("libedgetpu1-std 16.0-2", None)),      # another build: no TF version said
    ("", None),
])
def test_dpkg_names_the_package_and_its_tensorflow_build(tmp_path, monkeypatch, output, expected):
    bin_folder = fake_dpkg(tmp_path / "bin", output)
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    assert dpkg_libedgetpu() == expected
    assert (bin_folder / "argv").read_text() == "-W|-f|${Package} ${Version}\n|libedgetpu1-*|"


@pytest.mark.runtime
def test_the_system_library_is_found_with_its_package(tmp_path, monkeypatch, fakes):
    folder = tmp_path / "lib"
    folder.mkdir()
    shutil.copy(fakes["works"], folder / "libedgetpu.so.1")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(folder))
    monkeypatch.setenv("PATH", str(fake_dpkg(tmp_path / "bin", "libedgetpu1-max 16.0tf2.17.1-1.bookworm\n")))
    library = find_libedgetpu()
    assert library == EdgeTpuLibrary(str(folder / "libedgetpu.so.1"), "the system",
                                     "libedgetpu1-max 16.0tf2.17.1-1.bookworm", "2.17.1")
    assert "built for TensorFlow 2.17.1" in str(library)
    monkeypatch.setenv("PATH", str(tmp_path / "no-dpkg"))
    assert find_libedgetpu().package is None, "without dpkg the library is still found"
    # A library named by the user wins; one that does not exist is an error, not the system's.
    monkeypatch.setenv("EDGE_YOLOV9_LIBEDGETPU", str(fakes["null"]))
    assert find_libedgetpu() == EdgeTpuLibrary(str(fakes["null"]), "$EDGE_YOLOV9_LIBEDGETPU")
    assert find_libedgetpu(fakes["works"]).origin == "edgetpu_library="
    monkeypatch.setenv("EDGE_YOLOV9_LIBEDGETPU", str(tmp_path / "typo.so"))
    with pytest.raises(RuntimeSetupError, match="typo.so, which is not a file"):
        find_libedgetpu()


# ------------------------------------------------------------------------------------------- crash-safe loading
@pytest.mark.parametrize("behaviour", FAILING)
def test_a_failing_library_is_a_clear_error_and_auto_runs_the_cpu_twin(compiled, fakes, behaviour, monkeypatch,
                                                                      caplog):
    library = fakes[behaviour]
    with pytest.raises(RuntimeSetupError) as info:
        Detector(compiled, device="usb", edgetpu_library=library)
    error = info.value
    assert str(library) in error.problem and f"ai-edge-litert {version('ai-edge-litert')}" in error.problem
    assert SAYS[behaviour] in error.problem
    if behaviour == "null":  # a clean failure: the device, not the pairing
        assert "Coral USB Accelerator" in error.fix
    else:
        assert "16.0tf2.17.1" in error.fix and "device='cpu'" in error.fix

    monkeypatch.setenv("EDGE_YOLOV9_LIBEDGETPU", str(library))
    detector = Detector(compiled, device="auto")
    assert detector.device_used == "cpu" and detector.model_path == compiled.with_name("tiny_int8.tflite")
    assert SAYS[behaviour] in detector.fallback_reason and "running the CPU model" in caplog.text
    assert {d.label for d in detector.detect(RED)} == {"red"}
    assert not (Path(os.environ["XDG_CACHE_HOME"]) / "edge-yolov9" / CACHE_NAME).exists(), "a failure is not cached"


def test_a_working_library_runs_on_the_requested_device_and_its_probe_is_cached(compiled, fakes, probe_environment,
                                                                              monkeypatch):
    detector = Detector(compiled, device="usb:0", edgetpu_library=fakes["works"])
    assert detector.device_used == "usb:0" and detector.model_path == compiled and detector.fallback_reason is None
    assert {d.label for d in detector.detect(RED)} == {"red"}
    # The probe child and then this process created the delegate, each with the device's option.
    assert probe_environment.read_text().splitlines() == ["device=usb:0 "] * 2
    cache = json.loads((Path(os.environ["XDG_CACHE_HOME"]) / "edge-yolov9" / CACHE_NAME).read_text())
    assert len(cache) == 1 and str(fakes["works"]) in next(iter(cache)) and "usb:0" in next(iter(cache))

    Detector(compiled, device="usb:0", edgetpu_library=fakes["works"])
    assert len(probe_environment.read_text().splitlines()) == 3, "a cached probe is not run again"
    Detector(compiled, device="pci", edgetpu_library=fakes["works"])
    assert probe_environment.read_text().splitlines()[3:] == ["device=pci "] * 2, "another device is probed"

    blocked = Path(os.environ["XDG_CACHE_HOME"]).parent / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))  # the cache cannot be written: not an error
    assert Detector(compiled, device="usb", edgetpu_library=fakes["works"]).device_used == "usb"
    assert Detector(compiled, device="usb", edgetpu_library=fakes["works"]).device_used == "usb"
    assert len(probe_environment.read_text().splitlines()) == 9, "without a cache every start probes"


def test_an_interpreter_that_fails_in_the_probe_gives_way_to_the_next(compiled, fakes, tmp_path, monkeypatch,
                                                                      caplog):
    """What the probe observes decides, not a guess from versions: a tflite-runtime 2.14 that cannot be
    imported here (as a NumPy 1 build under NumPy 2) is tried first, fails in the child, and ai-edge-litert runs."""
    site = tmp_path / "site"
    (site / "tflite_runtime").mkdir(parents=True)
    (site / "tflite_runtime" / "__init__.py").write_text("")
    (site / "tflite_runtime" / "interpreter.py").write_text('raise AttributeError("_ARRAY_API not found")\n')
    (site / "tflite_runtime-2.14.0.dist-info").mkdir()
    (site / "tflite_runtime-2.14.0.dist-info" / "METADATA").write_text("Name: tflite-runtime\nVersion: 2.14.0\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    with pytest.raises(RuntimeSetupError, match="tflite-runtime: cannot be imported"):
        find_backend("tflite-runtime")
    detector = Detector(compiled, device="usb", edgetpu_library=fakes["works"])
    assert detector.device_used == "usb" and detector._backend.name == "ai-edge-litert"
    assert "with tflite-runtime 2.14.0 failed while importing the interpreter" in caplog.text
    assert "_ARRAY_API not found" in caplog.text


def test_a_cached_probe_is_trusted_only_while_the_machine_shows_the_same_edge_tpus(compiled, fakes, probe_environment,
                                                                                   monkeypatch, tmp_path, caplog):
    """A remembered pass holds for the Coral it was made with: unplugged, moved or re-plugged (its USB device number
    changes), the probe runs again before this process opens the device (libedgetpu may abort the process that
    opens a device that is gone, edgetpu#629); the same Coral keeps the cache."""
    from edge_yolov9 import edgetpu_probe, host

    usb_coral(tmp_path, "2-1", "18d1:9302", "5000", number=5)
    monkeypatch.setattr(edgetpu_probe, "coral_usb_devices", lambda: host.coral_usb_devices(tmp_path))

    def probes() -> int:  # the probe child and then this process each create the delegate
        Detector(compiled, device="usb", edgetpu_library=fakes["works"])
        return len(probe_environment.read_text().splitlines())

    caplog.set_level("INFO", logger=edgetpu_probe.__name__)
    assert probes() == 2
    assert probes() == 3, "the same Coral: the cached pass holds"
    assert "have changed" not in caplog.text
    usb_coral(tmp_path, "2-1", "18d1:9302", "5000", number=6)  # re-plugged: a new device number
    assert probes() == 5
    assert "The Edge TPUs have changed" in caplog.text and "then: usb 2-1 18d1:9302" in caplog.text
    assert "/dev/bus/usb/002/005; now: usb 2-1 18d1:9302" in caplog.text and "/dev/bus/usb/002/006" in caplog.text
    assert probes() == 6
    shutil.rmtree(tmp_path / "sys")  # unplugged
    assert probes() == 8
    assert "now: none" in caplog.text


def test_a_crash_with_no_edge_tpu_in_sight_points_at_the_device_first(compiled, fakes, monkeypatch, tmp_path):
    """libedgetpu may abort when the device it opens is not there (edgetpu#629): with no Coral on the bus the fix
    says so first and the pairing after; with one there, the pairing is the fix."""
    from edge_yolov9 import edgetpu_probe, host

    monkeypatch.setattr(edgetpu_probe, "coral_usb_devices", lambda: host.coral_usb_devices(tmp_path))
    with pytest.raises(RuntimeSetupError) as absent:
        Detector(compiled, device="usb", edgetpu_library=fakes["abort"])
    assert absent.value.fix.startswith("no Coral USB Accelerator is on the USB bus")
    assert "if it is there and this persists: " in absent.value.fix and "16.0tf2.17.1" in absent.value.fix

    usb_coral(tmp_path, "2-1", "18d1:9302", "5000", number=5)
    with pytest.raises(RuntimeSetupError) as present:
        Detector(compiled, device="usb", edgetpu_library=fakes["abort"])
    assert "USB bus" not in present.value.fix and "16.0tf2.17.1" in present.value.fix


def _no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@pytest.mark.parametrize("behaviour", FAILING)
def test_detect_cli_exits_with_the_message_and_no_core_dump(compiled, fakes, behaviour, tmp_path):
    from PIL import Image

    image = tmp_path / "red.png"
    Image.fromarray(RED).save(image)
    run = subprocess.run([sys.executable, "-m", "edge_yolov9.cli", "detect", str(compiled), str(image),
                          "--device", "usb"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "EDGE_YOLOV9_LIBEDGETPU": str(fakes[behaviour])},
                         preexec_fn=_no_core_dumps)
    assert run.returncode == 2, (run.returncode, run.stderr)
    assert SAYS[behaviour] in run.stderr and "fix:" in run.stderr and "Traceback" not in run.stderr
    assert not list(tmp_path.glob("core*"))


# ------------------------------------------------------------------------ a Coral that drops mid-run
FRAMES = 300


@pytest.fixture(scope="module")
def long_folder(tmp_path_factory) -> Path:
    """FRAMES photo-sized noise images (hard links of 10 files), so that a run lasts seconds: time to unplug."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("frames")
    noise = np.random.default_rng(0).integers(0, 256, (10, 480, 640, 3), dtype=np.uint8)
    for index in range(FRAMES):
        if index < len(noise):
            Image.fromarray(noise[index]).save(folder / f"{index:04d}.png")
        else:
            os.link(folder / f"{index % len(noise):04d}.png", folder / f"{index:04d}.png")
    return folder


def detect_and_unplug(compiled: Path, library: Path, folder: Path, tmp_path: Path, device: str,
                      unplug: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """`detect --json` over ``folder`` on the fake Coral, which is unplugged (the trigger file written with
    ``unplug``: 'once' or 'for good') once five frames are written; the exit, stderr and the JSON records."""
    import time

    records, trigger = tmp_path / "detections.jsonl", tmp_path / "unplugged"
    run = subprocess.Popen([sys.executable, "-m", "edge_yolov9.cli", "detect", str(compiled), str(folder),
                            "--device", device, "--json", str(records)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=tmp_path, preexec_fn=_no_core_dumps,
                           env={**os.environ, "EDGE_YOLOV9_LIBEDGETPU": str(library),
                                "FAKE_LIBEDGETPU_UNPLUG": str(trigger)})
    deadline = time.monotonic() + 120
    while run.poll() is None and time.monotonic() < deadline:
        if records.exists() and records.read_text().count("\n") >= 5:
            trigger.write_text(unplug)
            break
        time.sleep(0.01)
    stdout, stderr = run.communicate(timeout=180)
    assert trigger.exists() or unplug == "once", "the run ended before the Coral could be unplugged"
    done = subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)
    return done, [json.loads(line) for line in records.read_text().splitlines()]


def test_detect_survives_a_coral_that_drops_once(compiled, fakes, long_folder, tmp_path):
    """libedgetpu aborts the process on a USB fault; the Edge TPU runs in a child process, which is started
    again, and the frame is retried: every frame has its detections, in order."""
    run, records = detect_and_unplug(compiled, fakes["unplug"], long_folder, tmp_path, "usb", "once")
    assert run.returncode == 0, run.stderr[-3000:]
    assert [r["source"] for r in records] == sorted(str(p) for p in long_folder.iterdir())
    assert all("detections" in r for r in records)
    assert "killed by SIGABRT" in run.stderr and "starting it again (1 of 2)" in run.stderr
    assert "Traceback" not in run.stderr and not list(tmp_path.glob("core*"))


def test_detect_stops_with_what_it_kept_when_the_coral_stays_away(compiled, fakes, long_folder, tmp_path):
    """Unplugged for good with --device usb: two restarts, then exit 2 with the error, the fix, and every
    frame done before it in the JSON lines (flushed line by line: the aborts lose none)."""
    run, records = detect_and_unplug(compiled, fakes["unplug"], long_folder, tmp_path, "usb", "for good")
    assert run.returncode == 2, run.stderr[-3000:]
    error = run.stderr[run.stderr.index("error: "):]
    assert "The Edge TPU failed 3 times in this run" in error and "SIGABRT" in error
    assert f"; {len(records)} frames done before it, their results are in" in error and "cable and power" in error
    assert len(records) >= 5 and [r["source"] for r in records] == sorted(str(p) for p in long_folder.iterdir())[
        :len(records)] and all("detections" in r for r in records)
    assert "Traceback" not in run.stderr and not list(tmp_path.glob("core*"))


def test_detect_on_auto_finishes_on_the_cpu_twin_when_the_coral_stays_away(compiled, fakes, long_folder, tmp_path):
    run, records = detect_and_unplug(compiled, fakes["unplug"], long_folder, tmp_path, "auto", "for good")
    assert run.returncode == 0, run.stderr[-3000:]
    assert [r["source"] for r in records] == sorted(str(p) for p in long_folder.iterdir())
    assert "Running the CPU model for the rest of the run: the Edge TPU failed 3 times" in run.stderr


def test_ctrl_c_stops_detect_and_its_detector_process(compiled, fakes, long_folder, tmp_path):
    """SIGINT to the process group (a terminal's Ctrl-C): exit 130, the lines written so far kept whole, and the
    Edge TPU's child process gone with it."""
    import signal
    import time

    records = tmp_path / "detections.jsonl"
    run = subprocess.Popen([sys.executable, "-m", "edge_yolov9.cli", "detect", str(compiled), str(long_folder),
                            "--device", "usb", "--json", str(records)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True,
                           env={**os.environ, "EDGE_YOLOV9_LIBEDGETPU": str(fakes["works"])},
                           preexec_fn=as_from_a_terminal)
    deadline = time.monotonic() + 120
    while not (records.exists() and records.read_text().count("\n") >= 5) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr[-3000:]
    lines = records.read_text().splitlines()
    assert 5 <= len(lines) < FRAMES and all("detections" in json.loads(line) for line in lines)
    left = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-g", str(run.pid)], capture_output=True, text=True).stdout
    assert not [line for line in left.splitlines() if " Z" not in line], left  # a zombie left to init is not alive
