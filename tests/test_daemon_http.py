"""The daemon's HTTP server, for real: a real converted model's detections on COCO images, served on a free
port and read back over sockets and by headless Chromium."""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import socket
import struct
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import cv2
import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from edge_yolov9.detector import Detector
from edge_yolov9.errors import EdgeYoloError
from edge_yolov9.types import Detection
from edge_yolov9.daemon.config import HttpConfig
from edge_yolov9.daemon.http_server import HttpServer
from edge_yolov9.daemon.hub import Hub, Snapshot
from edge_yolov9.daemon.stats import Stats
from support.browser import headless_chromium
from support.conversions import CONFIDENT_IMAGES
from support.waiting import wait_until

CAMERA = "garage"
SOURCE_PASSWORD = "pw-Hunter2"
SOURCE_URI = f"rtsp://user:{SOURCE_PASSWORD}@cam/stream"
TOKEN = "tok-5f3a9c81e2"
SPORTS_BALL = "32"  # COCO's class id in the YOLO label files
PROTECTED = ["/", "/api/stats", "/metrics", "/api/labels", "/api/detections/latest", "/api/latest.jpg",
             "/api/stream.mjpeg"]
TRAVERSALS = ["/../../etc/passwd", "/api/..%2f..%2fetc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd"]


class Frame(NamedTuple):
    image: np.ndarray
    detections: tuple[Detection, ...]


class Reply(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        assert self.headers["Content-Type"] == "application/json"
        return json.loads(self.body)


def request(server: HttpServer, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> Reply:
    """One request with ``path`` sent as it is (no client-side normalization of ``..``)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


class MjpegClient:
    """A raw-socket reader of the multipart stream, part by part."""

    def __init__(self, server: HttpServer, path: str = "/api/stream.mjpeg", headers: dict[str, str] | None = None):
        self.socket = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.socket.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.reader = self.socket.makefile("rb")
        self.status = int(self.reader.readline().split()[1])
        self.headers = {}
        for line in iter(self.reader.readline, b"\r\n"):
            name, _, value = line.decode().partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.buffer = b""
        if self.status == 200:
            boundary = self.headers["content-type"].partition("boundary=")[2]
            self.part_start = f"--{boundary}\r\nContent-Type: image/jpeg\r\n\r\n".encode()
            assert self.reader.read(len(self.part_start)) == self.part_start

    def next_part(self) -> bytes | None:
        """The next JPEG, or None at the end of the stream. Parts carry no length: the server sends the next
        part's headers right behind each frame (for Chromium), so a part ends where they begin."""
        delimiter = b"\r\n" + self.part_start
        while delimiter not in self.buffer:
            chunk = self.reader.read1(65536)
            if not chunk:
                return None
            self.buffer += chunk
        jpeg, _, self.buffer = self.buffer.partition(delimiter)
        return jpeg

    def close(self) -> None:
        self.reader.close()
        self.socket.close()


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def frames(out320: Path, coco128: Path) -> list[Frame]:
    """Three COCO images on which the real 'ball' model detects something, with those detections."""
    labels = coco128 / "labels" / "train2017"
    with_balls = {path.stem for path in labels.glob("*.txt")
                  if any(line.split()[:1] == [SPORTS_BALL] for line in path.read_text().splitlines())}
    names = sorted(with_balls | {Path(name).stem for name in CONFIDENT_IMAGES})
    detector = Detector(out320 / "out" / "model_int8.tflite", score_threshold=0.1)
    found = []
    for name in names:
        image = np.asarray(Image.open(coco128 / "images" / "train2017" / f"{name}.jpg").convert("RGB"))
        detections = tuple(detector.detect(image))
        if detections:
            found.append(Frame(image, detections))
        if len(found) == 3:
            return found
    pytest.fail(f"the ball model detected something in only {len(found)} of {names}")


@pytest.fixture
def stats() -> Stats:
    stats = Stats(CAMERA, SOURCE_URI, "0.1.0")
    stats.source_status(True)
    stats.detector_status(True, device="cpu", pid=os.getpid())
    stats.frame_detected(42.0)
    return stats


@pytest.fixture
def serve(stats: Stats) -> Iterator[Callable[..., tuple[HttpServer, Hub]]]:
    """``serve(frames=[...], **http_config)``: a started server on a free port whose hub has those frames
    published (the last is the latest); closed after the test."""
    servers = []

    def start(frames: list[Frame] = (), **config) -> tuple[HttpServer, Hub]:
        hub = Hub()
        for number, frame in enumerate(frames, 1):
            hub.publish(Snapshot(number, time.time(), frame.image, frame.detections))
        server = HttpServer(HttpConfig(port=0, **config), hub, stats, CAMERA, ["ball"])
        server.start()
        servers.append(server)
        return server, hub

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="edge_yolov9.daemon")
    return caplog


def request_threads() -> set[threading.Thread]:
    """The server's threads that handle a request (named after ``process_request_thread``)."""
    return {thread for thread in threading.enumerate() if "process_request" in thread.name}


# --------------------------------------------------------------------------- endpoints
def test_health_is_open_and_reports_each_component(serve, stats):
    server, _ = serve(token=TOKEN)
    reply = request(server, "/api/health")
    assert (reply.status, reply.json()) == (200, {"status": "ok", "source": "online", "detector": "online"})
    assert reply.headers["Cache-Control"] == "no-store"

    stats.detector_status(False, error="the detector process died")
    reply = request(server, "/api/health")
    assert (reply.status, reply.json()) == (503, {"status": "degraded", "source": "online", "detector": "offline"})
    stats.source_status(False)
    assert request(server, "/api/health").json()["source"] == "offline"


def test_stats_and_metrics(serve, frames):
    server, _ = serve(frames)
    reply = request(server, "/api/stats")
    assert reply.status == 200 and reply.headers["Cache-Control"] == "no-store"
    body = reply.json()
    assert body["service"]["name"] == CAMERA
    assert body["source"]["status"] == body["detector"]["status"] == "online"
    assert body["detector"]["inference_ms"] == 42.0
    assert body["source"]["uri"] == "rtsp://user:***@cam/stream"

    reply = request(server, "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = [line for line in reply.body.decode().splitlines() if not line.startswith("#")]
    assert samples and all(line.startswith("edge_yolov9_") for line in samples)
    assert f'edge_yolov9_detector_up{{camera="{CAMERA}"}} 1' in samples


def test_latest_detections_and_labels(serve, frames):
    server, hub = serve(frames)
    reply = request(server, "/api/detections/latest")
    assert reply.status == 200 and reply.headers["Cache-Control"] == "no-store"
    expected = json.loads(json.dumps({"camera": CAMERA, **hub.latest().to_dict()}))
    assert reply.json() == expected
    assert [d["label"] for d in expected["detections"]] == [d.label for d in frames[-1].detections]
    assert (expected["width"], expected["height"]) == (frames[-1].image.shape[1], frames[-1].image.shape[0])
    assert request(server, "/api/labels").json() == ["ball"]


def test_latest_jpeg_is_the_annotated_frame(serve, frames):
    server, hub = serve(frames)
    reply = request(server, "/api/latest.jpg")
    assert reply.status == 200 and reply.headers["Content-Type"] == "image/jpeg"
    assert reply.body == hub.annotated_jpeg(hub.latest())
    image = Image.open(io.BytesIO(reply.body))
    assert image.format == "JPEG"
    assert image.size == (frames[-1].image.shape[1], frames[-1].image.shape[0])


def test_before_the_first_frame(serve):
    server, _ = serve()
    for path in ("/api/detections/latest", "/api/latest.jpg"):
        reply = request(server, path)
        assert (reply.status, reply.json()) == (503, {"error": "no frame detected yet"})


def test_head_sends_headers_only(serve, frames):
    server, _ = serve(frames)
    reply = request(server, "/api/latest.jpg", method="HEAD")
    assert reply.status == 200 and reply.headers["Content-Type"] == "image/jpeg"
    assert int(reply.headers["Content-Length"]) > 0 and reply.body == b""


def test_live_page_is_self_contained(serve):
    server, _ = serve()
    reply = request(server, "/")
    assert reply.status == 200 and reply.headers["Content-Type"] == "text/html; charset=utf-8"
    page = reply.body.decode()
    assert f"<h1>{CAMERA}</h1>" in page and 'id="stream"' in page and 'id="detections"' in page
    assert "http://" not in page and "https://" not in page, "the Pi may be offline: nothing from elsewhere"


# --------------------------------------------------------------------------- MJPEG stream
def test_stream_delivers_new_frames_and_ends_on_close(serve, frames, logs, capfd):
    server, hub = serve(frames[:1], stream_fps=20)
    idle_threads = request_threads()
    client = MjpegClient(server)
    assert client.status == 200
    assert client.headers["content-type"].startswith("multipart/x-mixed-replace; boundary=")
    assert client.headers["cache-control"] == "no-store"

    parts = [client.next_part()]
    assert parts[0] == hub.annotated_jpeg(hub.latest())
    for number, frame in enumerate(frames[1:], 2):
        hub.publish(Snapshot(number, time.time(), frame.image, frame.detections))
        parts.append(client.next_part())
        assert parts[-1] == hub.annotated_jpeg(hub.latest())
    assert len(set(parts)) == len(frames) >= 2
    sizes = [Image.open(io.BytesIO(part)).size for part in parts]
    assert sizes == [(f.image.shape[1], f.image.shape[0]) for f in frames]

    started = time.monotonic()
    server.close()
    assert client.next_part() is None
    assert time.monotonic() - started < 1.5
    wait_until(lambda: request_threads() <= idle_threads, 2.0, "the stream's thread to end")
    client.close()
    assert not [r for r in logs.records if r.levelno >= logging.WARNING]
    assert "Traceback" not in capfd.readouterr().err


@contextmanager
def publishing(hub: Hub, frames: list[Frame], interval: float) -> Iterator[None]:
    """New snapshots (the frames in turn) every ``interval`` seconds in a thread, as a running daemon makes."""
    stop = threading.Event()

    def publish() -> None:
        number = hub.latest().frame_id
        while not stop.wait(interval):
            number += 1
            frame = frames[number % len(frames)]
            hub.publish(Snapshot(number, time.time(), frame.image, frame.detections))

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        yield
    finally:
        stop.set()
        publisher.join()


def test_stream_is_no_faster_than_stream_fps(serve, frames):
    server, hub = serve(frames[:1], stream_fps=4)
    client = MjpegClient(server)
    client.next_part()
    with publishing(hub, frames, 0.02):
        started, received = time.monotonic(), 0
        while time.monotonic() - started < 2.0:
            assert client.next_part() is not None
            received += 1
    client.close()
    assert 3 <= received <= 10  # 4 fps for 2 s, from ~50 frames a second


def test_stream_client_that_disconnects_leaves_no_trace(serve, frames, logs, capfd):
    server, hub = serve(frames[:1], stream_fps=20)
    idle_threads = request_threads()
    client = MjpegClient(server)
    assert client.next_part() is not None
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    client.close()
    for number in range(2, 12):  # the stream writes these into the reset connection and must notice
        frame = frames[number % len(frames)]
        hub.publish(Snapshot(number, time.time(), frame.image, frame.detections))
        time.sleep(0.06)
    wait_until(lambda: request_threads() <= idle_threads, 3.0, "the stream's thread to end")
    assert request(server, "/api/health").status == 200
    assert not [r for r in logs.records if r.levelno >= logging.WARNING]
    assert "Traceback" not in capfd.readouterr().err


def test_opencv_reads_the_stream_like_a_network_camera(serve, frames):
    """Parts carry no Content-Length (see HttpServer._stream): FFmpeg's MJPEG demuxer, what OpenCV, Frigate
    and Home Assistant read network cameras with, must still split them."""
    server, hub = serve(frames[:1], stream_fps=20, token=TOKEN)
    with publishing(hub, frames[:1], 0.05):  # FFmpeg reads a few frames before it opens a stream
        capture = cv2.VideoCapture(f"{server.url}/api/stream.mjpeg?token={TOKEN}", cv2.CAP_FFMPEG)
        try:
            assert capture.isOpened()
            for _ in range(3):
                ok, image = capture.read()
                assert ok and image.shape == frames[0].image.shape
        finally:
            capture.release()


# --------------------------------------------------------------------------- token
@pytest.mark.parametrize("path", PROTECTED)
def test_token_is_required_on_every_endpoint_but_health(serve, frames, path):
    server, _ = serve(frames, token=TOKEN)
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Basic " + TOKEN}):
        reply = request(server, path, headers=headers)
        assert reply.status == 401 and reply.headers["WWW-Authenticate"].startswith("Bearer")
        assert "error" in reply.json()
    assert request(server, f"{path}?token=wrong").status == 401

    if path == "/api/stream.mjpeg":
        for client in (MjpegClient(server, headers={"Authorization": f"Bearer {TOKEN}"}),
                       MjpegClient(server, f"{path}?token={TOKEN}")):
            assert client.status == 200 and client.next_part() is not None
            client.close()
    else:
        assert request(server, path, headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
        assert request(server, f"{path}?token={TOKEN}").status == 200
    assert request(server, "/api/health").status == 200


def test_secrets_stay_out_of_logs_and_stats(serve, frames, logs, capfd):
    server, _ = serve(frames, token=TOKEN)
    for path in ("/", "/api/stats", "/api/detections/latest", "/metrics"):
        assert request(server, f"{path}?token={TOKEN}").status == 200
        assert request(server, path, headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
    assert request(server, f"/api/stats?t=1&token={TOKEN}").status == 200
    assert request(server, "/nowhere?token=" + TOKEN).status == 404
    stats_body = request(server, "/api/stats", headers={"Authorization": f"Bearer {TOKEN}"}).body.decode()
    metrics_body = request(server, "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).body.decode()

    assert any("/api/stats" in r.getMessage() for r in logs.records), "requests are logged (at debug level)"
    captured = capfd.readouterr()
    for text in (logs.text, captured.out, captured.err, stats_body, metrics_body):
        assert TOKEN not in text
        assert SOURCE_PASSWORD not in text


# --------------------------------------------------------------------------- hostile or wrong requests
@pytest.mark.parametrize("path", TRAVERSALS)
def test_paths_never_reach_the_file_system(serve, frames, path):
    server, _ = serve(frames)
    reply = request(server, path)
    assert (reply.status, reply.json()) == (404, {"error": "not found"})
    assert b"root:" not in reply.body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_not_allowed(serve, method):
    server, _ = serve()
    for path in ("/api/stats", "/api/health"):
        reply = request(server, path, method=method)
        assert reply.status == 405 and reply.headers["Allow"] == "GET, HEAD"
        assert "error" in reply.json()


def test_port_in_use_is_an_error_that_names_it(serve, stats):
    first, _ = serve()
    second = HttpServer(HttpConfig(port=first.port), Hub(), stats, CAMERA, ["ball"])
    with pytest.raises(EdgeYoloError, match=f"127.0.0.1:{first.port}.*already in use") as error:
        second.start()
    assert "http.port" in error.value.fix
    assert request(first, "/api/health").status == 200


# --------------------------------------------------------------------------- the live page in a browser
def labels_shown(driver) -> list[str]:
    return [item.text.split()[0] for item in driver.find_elements(By.CSS_SELECTOR, "#detections li")
            if item.text]


@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "token"])
def test_live_page_in_headless_chromium(serve, frames, tmp_path, token):
    server, hub = serve(frames, token=token)
    expected = [d.label for d in frames[-1].detections]
    assert frames[0].image.shape[1] != frames[-1].image.shape[1], "the stream's frames must be told apart by width"
    with headless_chromium(tmp_path / "chromium-profile") as driver:
        driver.get(f"{server.url}/?token={token}" if token else f"{server.url}/")
        wait = WebDriverWait(driver, 30)
        assert driver.find_element(By.TAG_NAME, "h1").text == CAMERA
        wait.until(lambda d: d.execute_script("return document.getElementById('stream').naturalWidth") > 0)
        assert driver.execute_script("return document.getElementById('stream').naturalWidth") == \
            frames[-1].image.shape[1]
        wait.until(lambda d: labels_shown(d) == expected)
        wait.until(lambda d: d.find_element(By.ID, "detector-status").text == "online")
        assert driver.find_element(By.ID, "source-status").text == "online"
        assert driver.find_element(By.ID, "problem").text == ""

        hub.publish(Snapshot(len(frames) + 1, time.time(), frames[0].image, frames[0].detections))
        wait.until(lambda d: d.execute_script("return document.getElementById('stream').naturalWidth")
                   == frames[0].image.shape[1])
        wait.until(lambda d: labels_shown(d) == [det.label for det in frames[0].detections])
