"""``edge-yolov9 serve`` as users run it: a process with a config file, a real broker, HTTP, real detections.

The daemon is killed with SIGKILL (the broker then publishes its Last Will) and stopped with SIGTERM (it
says 'offline' itself, ends its objects and its detector process, and exits 0).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from support.broker import Broker, Subscriber
from support.mjpeg_server import free_port
from support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
# coco128 images in which the 'ball' model finds its ball (scores 0.45 to 0.74).
BALL_IMAGES = ("000000000078.jpg", "000000000142.jpg", "000000000605.jpg", "000000000636.jpg")
BASE = "edge-yolov9/garage"


@pytest.fixture
def served(out320, coco128, tmp_path):
    """A running ``serve`` process on a looping folder of ball images, MQTT to a real broker, HTTP with a token."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in BALL_IMAGES:
        shutil.copy(coco128 / "images" / "train2017" / name, folder / name)
    broker = Broker(tmp_path / "broker").start()
    port = free_port()
    config = tmp_path / "daemon.yaml"
    config.write_text(f"""
name: garage
model: {{path: {out320 / 'out' / 'model_int8.tflite'}, threads: 1}}
source: {{uri: {folder}, loop: true, fps: 5}}
objects: {{end_after: 1}}
http: {{port: {port}, token: "${{TEST_TOKEN}}"}}
mqtt: {{enabled: true, port: {broker.port}, keepalive: 5, stats_interval: 1}}
""")
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "edge_yolov9.cli", "serve", "--config", str(config)],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "TEST_TOKEN": "tok-12345"})
    subscriber = Subscriber(broker.port)
    try:
        yield process, subscriber, f"http://127.0.0.1:{port}", tmp_path / "serve.log", broker
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
        subscriber.close()
        broker.stop()


def get(url: str, token: str = "tok-12345"):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serve_publishes_detections_and_its_last_will_when_killed(served):
    process, subscriber, url, log, broker = served
    subscriber.wait_for(f"{BASE}/available", "online")
    new = json.loads(subscriber.wait_for(f"{BASE}/events").payload)
    assert new["type"] == "new" and new["after"]["label"] == "ball" and new["after"]["camera"] == "garage"
    assert int(subscriber.wait_for(f"{BASE}/ball").payload) >= 1
    discovery = json.loads(subscriber.wait_for("homeassistant/sensor/edge_yolov9_garage/ball_count/config").payload)
    assert discovery["state_topic"] == f"{BASE}/ball"
    stats = json.loads(subscriber.wait_for(f"{BASE}/stats").payload)
    assert stats["service"]["name"] == "garage"
    wait_until(lambda: get(url + "/api/stats")["source"]["detected"] >= 3)
    detector_pid = get(url + "/api/stats")["detector"]["pid"]
    assert "tok-12345" not in log.read_text()

    process.send_signal(signal.SIGKILL)
    process.wait()
    # The broker saw the connection drop without a goodbye: it publishes the Last Will, retained.
    subscriber.wait_for(f"{BASE}/available", "offline")
    late = Subscriber(broker.port, f"{BASE}/available")
    try:
        late.wait_for(f"{BASE}/available", "offline")  # retained: a client connecting later sees it too
    finally:
        late.close()
    # The detector process does not outlive the daemon (it sees its pipe close).
    wait_until(lambda: not pid_alive(detector_pid))


def test_sigterm_stops_cleanly_ending_objects_and_saying_offline(served):
    process, subscriber, url, log, broker = served
    subscriber.wait_for(f"{BASE}/available", "online")
    subscriber.wait_for(f"{BASE}/events")
    detector_pid = get(url + "/api/stats")["detector"]["pid"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    subscriber.wait_for(f"{BASE}/available", "offline")
    events = [json.loads(p) for p in subscriber.payloads(f"{BASE}/events")]
    started = {e["after"]["id"] for e in events if e["type"] == "new"}
    ended = {e["after"]["id"] for e in events if e["type"] == "end"}
    assert started and started == ended  # every object seen got its 'end'
    assert subscriber.payloads(f"{BASE}/ball")[-1] == "0"
    assert not pid_alive(detector_pid)
    text = log.read_text()
    assert "Traceback" not in text and "tok-12345" not in text
