"""The daemon with an Edge TPU that fails: a fake libedgetpu that crashes (support.fake_libedgetpu) makes it run
the CPU twin and say why in /api/stats, /metrics, MQTT and the log; a detector process that keeps crashing
on the Edge TPU does the same; ``model.fallback_to_cpu: false`` keeps the error instead. With
``watchdog.power_cycle_usb`` a wedged Coral is power-cycled first (a fake uhubctl, support.fake_uhubctl)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_yolov9 import host
from edge_yolov9.daemon.config import DaemonConfig
from edge_yolov9.daemon.daemon import Daemon
from edge_yolov9.daemon.detector_process import DetectorUnavailable
from support.broker import Broker, Subscriber
from support.conversions import fake_edgetpu_model
from support.fake_libedgetpu import build_fake_libedgetpu
from support.fake_sysfs import usb_coral
from support.fake_uhubctl import fake_uhubctl
from support.mjpeg_server import free_port
from support.waiting import wait_until
from test_daemon import running

BASE = "edge-yolov9/garage"


@pytest.fixture
def setup(tiny_model, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """An 'Edge TPU' tiny model with its CPU twin, and a folder of red frames (the tiny model's 'red')."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("EDGE_YOLOV9_LIBEDGETPU", raising=False)
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_model, models / "tiny_int8.tflite")
    compiled = fake_edgetpu_model(tiny_model, models / "tiny_int8_edgetpu.tflite")
    frames = tmp_path / "frames"
    frames.mkdir()
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 255
    for index in range(3):
        Image.fromarray(red).save(frames / f"{index}.png")
    return compiled, frames


def config(compiled: Path, frames: Path, library: Path, model: dict | None = None, **sections) -> DaemonConfig:
    return DaemonConfig.model_validate({
        "name": "garage", "source": {"uri": str(frames), "loop": True, "fps": 20},
        "model": {"path": str(compiled), "device": "usb", "edgetpu_library": str(library), "threads": 1,
                  **(model or {})},
        "http": {"port": free_port()}, "watchdog": {"max_restarts": 1, "restart_window": 60}, **sections})


def get(daemon: Daemon, path: str) -> str:
    with urllib.request.urlopen(f"{daemon.http.url}{path}", timeout=10) as reply:
        return reply.read().decode()


def test_a_crashing_edgetpu_runtime_falls_back_to_the_cpu_twin_and_says_why(setup, tmp_path, caplog):
    compiled, frames = setup
    library = build_fake_libedgetpu(tmp_path / "lib", "bad-prepare")
    caplog.set_level(logging.WARNING)
    with Broker(tmp_path / "broker") as broker:
        subscriber = Subscriber(broker.port, f"{BASE}/status/#")
        try:
            with running(config(compiled, frames, library, mqtt={"enabled": True, "port": broker.port})) as daemon:
                wait_until(lambda: daemon.stats.frames_detected >= 2, 30, "detections on the CPU twin")
                detector = json.loads(get(daemon, "/api/stats"))["detector"]
                assert detector["status"] == "online" and detector["device"] == "cpu"
                reason = detector["fallback_reason"]
                assert str(library) in reason and "crashed (SIGSEGV) while applying the delegate" in reason
                metrics = get(daemon, "/metrics")
                line = next(m for m in metrics.splitlines() if m.startswith("edge_yolov9_detector_cpu_fallback{"))
                assert line.endswith("} 1") and 'camera="garage"' in line and "crashed (SIGSEGV)" in line
                fallback = subscriber.wait_for(f"{BASE}/status/fallback").payload.decode()
                assert fallback == reason
                assert {d.label for d in daemon.hub.latest().detections} == {"red"}
        finally:
            subscriber.close()
    assert "Running the CPU model instead of the Edge TPU" in caplog.text and "crashed (SIGSEGV)" in caplog.text


def test_without_fallback_the_crash_is_the_error(setup, tmp_path):
    compiled, frames = setup
    daemon = Daemon(config(compiled, frames, build_fake_libedgetpu(tmp_path / "lib", "abort"),
                           {"fallback_to_cpu": False}))
    try:
        with pytest.raises(DetectorUnavailable) as info:
            daemon.start()
        assert "crashed (SIGABRT) while creating the delegate" in info.value.problem
        assert "16.0tf2.17.1" in info.value.fix
        assert daemon.stats.detector_fallback_reason is None
    finally:
        daemon.close()


def test_a_detector_process_that_keeps_crashing_on_the_edgetpu_falls_back(setup, tmp_path):
    """The probe passes (a working fake), then the detector process dies of SIGSEGV on the Edge TPU, again after
    its restart: more than watchdog.max_restarts, so the CPU twin takes over instead of backing off."""
    compiled, frames = setup
    library = build_fake_libedgetpu(tmp_path / "lib", "works")
    with running(config(compiled, frames, library)) as daemon:
        assert daemon.stats.detector_device == "usb" and daemon.stats.detector_fallback_reason is None
        for crash in range(2):
            pid = daemon.detector.pid
            os.kill(pid, signal.SIGSEGV)
            wait_until(lambda: daemon.detector.pid not in (None, pid) and daemon.stats.detector_online, 30,
                       f"the detector ready again after crash {crash + 1}")
        wait_until(lambda: daemon.stats.detector_device == "cpu", 30, "the CPU fallback")
        reason = daemon.stats.detector_fallback_reason
        assert "failed the detector process 2 times" in reason and "SIGSEGV" in reason
        detected = daemon.stats.frames_detected
        wait_until(lambda: daemon.stats.frames_detected > detected + 2, 30, "detections on the CPU twin")
        assert json.loads(get(daemon, "/api/stats"))["detector"]["fallback_reason"] == reason


def test_the_library_in_the_config_must_be_a_file(setup, tmp_path):
    from edge_yolov9.daemon.config import ConfigError, parse_config

    compiled, frames = setup
    text = f"model: {{path: {compiled}, edgetpu_library: {tmp_path / 'typo.so'}}}\nsource: {{uri: {frames}}}\n"
    with pytest.raises(ConfigError, match=r"model.edgetpu_library \(line 1\): .*typo.so.*a libedgetpu.so.1"):
        parse_config(text)
    assert parse_config(text.replace("typo.so", "models/tiny_int8.tflite")).model.fallback_to_cpu is True



# ------------------------------------------------------------------------ watchdog.power_cycle_usb
POWER_CYCLING = {"max_restarts": 1, "restart_window": 60, "power_cycle_usb": True}


@pytest.fixture
def coral_root(tmp_path, monkeypatch) -> Path:
    """A fake machine root with a ready USB Coral on port 2 of hub 1-1, read by the daemon (host.ROOT), and
    tmp_path/bin first on PATH for the fake uhubctl."""
    root = tmp_path / "root"
    usb_coral(root, "1-1.2", "18d1:9302", "5000", bus=1, number=5)
    monkeypatch.setattr(host, "ROOT", root)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return root


@pytest.mark.parametrize("wedged", ["while running", "from the start"])
def test_the_daemon_power_cycles_a_wedged_coral_and_stays_on_the_edge_tpu(setup, coral_root, tmp_path,
                                                                           monkeypatch, caplog, wedged):
    """The fake Coral wedges (every process that opens it aborts) until its port is power-cycled: with
    watchdog.power_cycle_usb the daemon cycles it, whether the detector keeps dying while running or cannot
    load the model at the start, instead of falling back to the CPU twin, and detects on the Edge TPU again;
    /api/stats and /metrics count the power cycle."""
    compiled, frames = setup
    trigger = tmp_path / "wedged"
    monkeypatch.setenv("FAKE_LIBEDGETPU_UNPLUG", str(trigger))
    log = tmp_path / "uhubctl.log"
    fake_uhubctl(tmp_path / "bin", coral_root, log, back_after=0.3, clears=trigger)
    caplog.set_level(logging.WARNING)
    if wedged == "from the start":
        trigger.write_text("for good")
    with running(config(compiled, frames, build_fake_libedgetpu(tmp_path / "lib", "unplug"),
                        watchdog=POWER_CYCLING)) as daemon:
        if wedged == "while running":
            assert daemon.stats.detector_device == "usb"
            trigger.write_text("for good")
        wait_until(lambda: daemon.stats.usb_power_cycles == 1, 60, "the power cycle")
        detected = daemon.stats.frames_detected
        wait_until(lambda: daemon.stats.frames_detected > detected + 2, 60, "detections after the power cycle")
        detector = json.loads(get(daemon, "/api/stats"))["detector"]
        metrics = get(daemon, "/metrics")
    assert detector["device"] == "usb" and detector["fallback_reason"] is None and detector["usb_power_cycles"] == 1
    assert 'edge_yolov9_usb_power_cycles_total{camera="garage"} 1' in metrics
    assert log.read_text() == "-l 1-1 -p 2 -a cycle -d 2\n"
    assert "power-cycled the Coral (1-1 port 2)" in caplog.text and "SIGABRT" in caplog.text


def test_a_power_cycle_that_fails_leaves_the_cpu_fallback_as_it_was(setup, coral_root, tmp_path, caplog):
    """device 'auto' with a crashing runtime loads the CPU twin; with watchdog.power_cycle_usb the daemon first
    tries to power-cycle the Coral (here uhubctl cannot switch the port), then falls back, saying why once."""
    compiled, frames = setup
    log = tmp_path / "uhubctl.log"
    fake_uhubctl(tmp_path / "bin", coral_root, log, fails="No compatible devices detected!")
    caplog.set_level(logging.WARNING)
    library = build_fake_libedgetpu(tmp_path / "lib", "abort")
    with running(config(compiled, frames, library, {"device": "auto"}, watchdog=POWER_CYCLING)) as daemon:
        assert daemon.stats.detector_device == "cpu" and daemon.stats.usb_power_cycles == 0
        reason = daemon.stats.detector_fallback_reason
    assert reason.startswith("the Edge TPU could not be loaded: ") and reason.count("could not be loaded") == 1
    assert "crashed (SIGABRT) while creating the delegate" in reason
    assert log.read_text() == "-l 1-1 -p 2 -a cycle -d 2\n" and "Could not power-cycle the Coral" in caplog.text
