"""The daemon end to end on a real int8 model and real images: results, faults and recovery.

Faults are real: a corrupt JPEG and a PNG of more pixels than Pillow allows in the source folder, the
detector process killed with SIGKILL or frozen with SIGSTOP, an MJPEG camera on HTTP that goes away and
comes back, a camera whose password must not show in any log, a full disk (/dev/full) for JSON lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Iterator

import pytest

from edge_yolov9.detector import Detector
from edge_yolov9.daemon.config import DaemonConfig
from edge_yolov9.daemon.daemon import Daemon
from edge_yolov9.daemon.detector_process import DetectorUnavailable
from support.conversions import CONFIDENT_IMAGES
from support.mjpeg_server import MjpegCamera, free_port
from support.waiting import wait_until

SCORE = 0.2
HUGE_SIDE = 14_000  # 196 Mpx: over twice Pillow's MAX_IMAGE_PIXELS (89.5 Mpx), a DecompressionBombError


def coco_images(coco128: Path, count: int) -> list[Path]:
    return sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:count]


def make_config(model: Path, uri: str, **sections) -> DaemonConfig:
    data = {"name": "test-cam", "model": {"path": str(model), "score_threshold": SCORE, "threads": 1},
            "source": {"uri": uri, "reconnect_initial": 0.2, "reconnect_max": 0.5},
            "http": {"enabled": False}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return DaemonConfig.model_validate(data)


@contextlib.contextmanager
def running(config: DaemonConfig) -> Iterator[Daemon]:
    daemon = Daemon(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            daemon.run()
        except BaseException as err:  # surfaced in the test below
            failure.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: daemon.stats.frames_detected > 0 or failure, 60, "the first detected frame")
        if failure:
            raise failure[0]
        yield daemon
    finally:
        daemon.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the daemon did not stop"


@pytest.fixture
def model(out320) -> Path:
    return out320 / "out" / "model_int8.tflite"


@pytest.fixture(scope="session")
def huge_png(tmp_path_factory) -> Path:
    """A real PNG of HUGE_SIDE x HUGE_SIDE black 1-bit pixels, written chunk by chunk: a few KB on disk and
    in memory, never a 196 Mpx image."""
    row = b"\0" * (1 + (HUGE_SIDE + 7) // 8)  # the filter byte, then the packed bits
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(HUGE_SIDE)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path = tmp_path_factory.mktemp("huge") / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", HUGE_SIDE, HUGE_SIDE, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def serve(model: Path, source: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``edge-yolov9 serve --model --source`` as users run it, to its end."""
    return subprocess.run([sys.executable, "-m", "edge_yolov9.cli", "serve", "--model", str(model), "--source", source,
                           "--http-port", "0"], capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_folder_source_gives_the_detectors_results_and_survives_a_corrupt_frame(model, coco128, tmp_path, caplog):
    folder = tmp_path / "frames"
    folder.mkdir()
    # Four images, and two in which the model finds its ball for sure (in the first six it scores below SCORE).
    images = sorted(coco_images(coco128, 4) + [coco128 / "images" / "train2017" / name for name in CONFIDENT_IMAGES])
    for path in images:
        shutil.copy(path, folder / path.name)
    (folder / "000000000099_corrupt.jpg").write_bytes(images[0].read_bytes()[:2000])
    out = tmp_path / "frames.jsonl"
    config = make_config(model, str(folder), jsonl={"path": str(out), "per": "frame"})
    daemon = Daemon(config)
    with caplog.at_level(logging.WARNING):
        daemon.run()  # a finite source: returns at its end
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(images)  # every readable frame, none skipped (a file is read at the detector's pace)
    reference = Detector(model, score_threshold=SCORE, threads=1)
    compared = 0
    for line, path in zip(lines, images):
        expected = reference.detect(path)
        assert [d["label"] for d in line["detections"]] == [d.label for d in expected]
        for got, want in zip(line["detections"], expected):
            assert got["box"] == pytest.approx(list(want.box), abs=0.02)
            assert got["score"] == pytest.approx(want.score, abs=1e-4)
            compared += 1
    assert compared > 0, "the model found nothing in these images: the comparison would be empty"
    stats = daemon.stats.to_dict()
    assert stats["source"]["errors"] == 1 and stats["source"]["detected"] == len(images)
    assert "000000000099_corrupt.jpg" in caplog.text and stats["source"]["dropped"] == 0


def test_a_killed_detector_process_is_restarted_and_detection_goes_on(model, coco128, tmp_path, caplog):
    config = make_config(model, str(tmp_path), source={"loop": True})
    for path in coco_images(coco128, 3):
        shutil.copy(path, tmp_path / path.name)
    with caplog.at_level(logging.INFO), running(config) as daemon:
        pid = daemon.detector.pid
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: daemon.stats.detector_restarts == 1, what="a restart")
        before = daemon.stats.frames_detected
        wait_until(lambda: daemon.stats.frames_detected > before + 2, what="detection after the restart")
        assert daemon.detector.pid not in (None, pid)
        stats = daemon.stats.to_dict()["detector"]
        assert stats["status"] == "online" and stats["restarts"] == 1
        assert "killed by SIGKILL" in stats["last_error"]
    assert "the detector process died: it was killed by SIGKILL" in caplog.text


def test_a_stalled_detector_process_is_killed_and_restarted(model, coco128, tmp_path, caplog):
    config = make_config(model, str(tmp_path), source={"loop": True}, watchdog={"stall_timeout": 1.5})
    for path in coco_images(coco128, 3):
        shutil.copy(path, tmp_path / path.name)
    with caplog.at_level(logging.INFO), running(config) as daemon:
        frozen = daemon.detector.pid
        os.kill(frozen, signal.SIGSTOP)  # a hung inference: the process lives but never answers
        wait_until(lambda: daemon.stats.detector_restarts == 1, what="the watchdog's restart")
        before = daemon.stats.frames_detected
        wait_until(lambda: daemon.stats.frames_detected > before + 2, what="detection after the restart")
        with pytest.raises(ProcessLookupError):
            os.kill(frozen, 0)  # the frozen process was killed, not left behind
    assert "an inference took longer than 1.5 s" in caplog.text


def test_a_camera_that_drops_is_reconnected_and_reported(model, coco128, caplog):
    camera = MjpegCamera(coco_images(coco128, 4), fps=15).start()
    config = make_config(model, camera.url)
    try:
        with caplog.at_level(logging.INFO), running(config) as daemon:
            assert daemon.stats.source_online
            camera.stop()
            wait_until(lambda: not daemon.stats.source_online, what="the source going offline")
            wait_until(lambda: daemon.stats.source_reconnects >= 2, what="reconnect attempts while it is away")
            camera.start()
            before = daemon.stats.frames_detected
            wait_until(lambda: daemon.stats.source_online and daemon.stats.frames_detected > before + 2,
                     what="frames after the camera came back")
            source = daemon.stats.to_dict()["source"]
            assert source["status"] == "online" and source["reconnects"] >= 2
    finally:
        camera.stop()
    assert "reopening in" in caplog.text and "Source online" in caplog.text and "Source offline" in caplog.text


def test_a_live_source_drops_stale_frames_instead_of_queuing(model, coco128):
    camera = MjpegCamera(coco_images(coco128, 4), fps=120).start()  # faster than one core detects
    try:
        with running(make_config(model, camera.url)) as daemon:
            wait_until(lambda: daemon.stats.frames_dropped > 20, what="dropped frames")
            newest = daemon.hub.latest()
            source = daemon.stats.to_dict()["source"]
    finally:
        camera.stop()
    # Every frame read was either detected, dropped for a newer one, or is the one waiting in the slot.
    assert source["frames"] - source["detected"] - source["dropped"] in (0, 1, 2)
    assert source["skipped_fps"] > 0 and time.time() - newest.timestamp < 2.0


def test_systemd_hears_ready_watchdog_and_stopping(model, coco128, tmp_path, monkeypatch):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    folder = tmp_path / "frames"
    folder.mkdir()
    for path in coco_images(coco128, 2):
        shutil.copy(path, folder / path.name)
    Daemon(make_config(model, str(folder))).run()
    heard = []
    listener.settimeout(0.5)
    with contextlib.suppress(socket.timeout):
        while True:
            heard.append(listener.recv(64).decode())
    assert heard[:2] == ["READY=1", "WATCHDOG=1"] and heard[-1] == "STOPPING=1"


def test_a_model_that_cannot_load_stops_the_start_with_the_fix(tmp_path, coco128, capsys):
    from edge_yolov9.cli import main

    gone = tmp_path / "gone.tflite"
    gone.write_bytes(b"TFL3")
    config = make_config(gone, str(coco128))  # the config checks that it is there...
    gone.unlink()                             # ...but it may go before the daemon starts
    with pytest.raises(DetectorUnavailable, match="Model not found"):
        Daemon(config).run()
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(b"TFL3" + b"\0" * 60)
    assert main(["serve", "--model", str(truncated), "--source", str(coco128), "--http-port", "0"]) == 2
    assert "fix:" in capsys.readouterr().err


def test_a_missing_pi_camera_stack_is_reported_with_the_install_step(model):
    daemon = Daemon(make_config(model, "picamera2"))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: daemon.stats.source_error is not None, what="the source error")
        assert "needs picamera2" in daemon.stats.source_error and not daemon.stats.source_online
        assert daemon.stats.to_dict()["detector"]["status"] == "online"  # the rest of the daemon stays up
    finally:
        daemon.stop()
        thread.join(timeout=30)


def test_a_looping_folder_goes_on_past_an_image_over_the_pixel_limit(model, coco128, huge_png, tmp_path, caplog):
    from PIL import Image

    with pytest.raises(Image.DecompressionBombError, match=f"{HUGE_SIDE ** 2} pixels"):
        Image.open(huge_png)  # the test image is what it claims: a PNG Pillow refuses to open
    for path in coco_images(coco128, 2):
        shutil.copy(path, tmp_path / path.name)
    shutil.copy(huge_png, tmp_path / "zz_huge.png")
    with caplog.at_level(logging.WARNING), running(make_config(model, str(tmp_path), source={"loop": True})) as daemon:
        wait_until(lambda: daemon.stats.frame_errors >= 2 and daemon.stats.frames_detected >= 4, 120,
                   "two passes through the folder")
        assert not daemon.reader.finished.is_set()
        stats = daemon.stats.to_dict()["source"]
    assert stats["errors"] >= 2 and "zz_huge.png" in stats["last_error"]
    assert "Skipped frame" in caplog.text and "zz_huge.png" in caplog.text


def test_serve_exits_non_zero_when_its_source_ends_in_an_error(model, coco128, huge_png, tmp_path):
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    shutil.copy(huge_png, unreadable / "huge.png")
    done = serve(model, str(unreadable), tmp_path)
    assert done.returncode == 2, done.stderr
    assert "None of the 1 images in folder" in done.stderr and "huge.png" in done.stderr and "fix:" in done.stderr
    (tmp_path / "broken.mp4").write_bytes(b"\0" * 4096)
    done = serve(model, str(tmp_path / "broken.mp4"), tmp_path)
    assert done.returncode == 2 and "Cannot open" in done.stderr and "broken.mp4" in done.stderr
    readable = tmp_path / "readable"
    readable.mkdir()
    shutil.copy(coco_images(coco128, 1)[0], readable)
    shutil.copy(huge_png, readable / "huge.png")
    done = serve(model, str(readable), tmp_path)  # a folder read to its end, one image skipped: a normal end
    assert done.returncode == 0, done.stderr


def test_camera_passwords_stay_out_of_logs_and_stats(model, caplog, capfd):
    """Passwords with '/' and '@' in the user info, and one in the query: a camera that refuses to connect
    has its URI in error messages, logs and stats, each masked."""
    port = free_port()  # nothing listens there
    uri = f"rtsp://admin:pa/ss@w@rd@127.0.0.1:{port}/stream?channel=1&user=admin&password=Qu3ry-Secret"
    caplog.set_level(logging.DEBUG)
    daemon = Daemon(make_config(model, uri))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: daemon.stats.source_reconnects >= 2, 120, "two attempts to reopen the camera")
        stats = json.dumps(daemon.stats.to_dict())
    finally:
        daemon.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
    shown = f"rtsp://admin:***@127.0.0.1:{port}/stream?channel=1&user=admin&password=***"
    assert json.loads(stats)["source"]["uri"] == shown and shown in caplog.text
    captured = capfd.readouterr()
    for text in (stats, caplog.text, captured.out, captured.err, repr(daemon.config)):
        for secret in ("pa/ss", "w@rd", "Qu3ry-Secret"):
            assert secret not in text


def test_a_full_disk_for_json_lines_is_one_clear_error_and_detection_goes_on(model, coco128, tmp_path, caplog):
    for path in coco_images(coco128, 3):
        shutil.copy(path, tmp_path / path.name)
    daemon = Daemon(make_config(model, str(tmp_path), jsonl={"path": "/dev/full", "per": "frame"}))
    with caplog.at_level(logging.INFO):
        daemon.run()  # a finite source: returns at its end
    assert daemon.stats.frames_detected == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "Cannot write JSON lines to /dev/full: the disk is full" in errors[0]
    assert "fix: free some space" in errors[0] and "Traceback" not in caplog.text
