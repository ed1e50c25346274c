"""The daemon's MQTT output against a real mosquitto broker, read back by a separate paho client."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import jinja2
import numpy as np
import pytest
from pydantic import SecretStr

from edge_yolov9.errors import EdgeYoloError
from edge_yolov9.types import Box, Detection
from edge_yolov9.daemon.config import MqttConfig
from edge_yolov9.daemon.hub import Snapshot
from edge_yolov9.daemon.mqtt import MqttOutput
from edge_yolov9.daemon.stats import Stats
from edge_yolov9.daemon.tracker import ObjectEvent, Tracker
from support.broker import TIMEOUT, Broker, Subscriber
from support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
QUIET = 0.3               # seconds without a message that show nothing more is coming
BASE = "edge-yolov9/camera"
LABELS = ["person", "car", "dog", "traffic light"]
VERSION = "9.9.9-test"
IMAGE = np.zeros((240, 320, 3), np.uint8)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def make_output() -> Iterator[Callable[..., MqttOutput]]:
    made: list[MqttOutput] = []

    def make(port: int, track: tuple[str, ...] = (), stats: Stats | None = None, **config) -> MqttOutput:
        config = {"enabled": True, "port": port, "keepalive": 5, **config}
        output = MqttOutput(MqttConfig(**config), "camera", LABELS, stats or Stats("camera", "0", VERSION),
                            VERSION, track=track)
        made.append(output)
        return output

    yield make
    for output in made:
        output.close()


@pytest.fixture
def subscribe() -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(port: int, topic: str = "#") -> Subscriber:
        made.append(Subscriber(port, topic))
        return made[-1]

    yield make
    for subscriber in made:
        subscriber.close()


def started(output: MqttOutput) -> MqttOutput:
    output.start()
    wait_until(lambda: output.connected)
    return output


def feed(output: MqttOutput, tracker: Tracker, frames: list[tuple[float, list[Detection]]]) -> list[ObjectEvent]:
    """Frames through the tracker into the output, as the daemon's loop does; the events they made."""
    made = []
    for number, (timestamp, detections) in enumerate(frames):
        events = tracker.update(detections, timestamp)
        output.on_frame(Snapshot(number, timestamp, IMAGE, tuple(detections)), tracker.counts())
        if events:
            output.on_events(events)
        made += events
    return made


def person(box: Box, score: float = 0.7) -> Detection:
    return Detection(box, score, 0, "person")


# --------------------------------------------------------------------------- availability, events, counts, status
def test_online_retained_on_start_and_offline_on_close(broker, make_output, subscribe):
    output = started(make_output(broker.port))
    # 'connected' comes before the broker has the message: the first subscriber may get it live, the next retained
    subscribe(broker.port).wait_for(f"{BASE}/available")
    online = subscribe(broker.port).wait_for(f"{BASE}/available")
    assert (online.payload, online.retain, online.qos) == (b"online", True, 1)

    output.close()
    assert not output.connected
    offline = subscribe(broker.port).wait_for(f"{BASE}/available")
    assert (offline.payload, offline.retain) == (b"offline", True)


def test_events_of_a_tracked_object_arrive_as_json(broker, make_output, subscribe):
    output = started(make_output(broker.port))
    watcher = subscribe(broker.port, f"{BASE}/events")
    frames = [(100.0, [person(Box(10, 10, 110, 210), 0.6)]),
              (100.5, [person(Box(12, 10, 112, 210), 0.62)]),   # too soon for an update
              (101.5, [person(Box(60, 10, 160, 210), 0.8)]),    # moved half its width, scored higher
              (104.0, [])]                                      # unseen for end_after
    events = feed(output, Tracker(end_after=2.0), frames)
    assert [e.type for e in events] == ["new", "update", "end"]

    watcher.wait_for(f"{BASE}/events", count=3)
    time.sleep(QUIET)
    received = watcher.on(f"{BASE}/events")
    assert [json.loads(m.payload) for m in received] == [json.loads(json.dumps(e.to_dict("camera"))) for e in events]
    assert not any(m.retain for m in received)
    new, update, end = (json.loads(m.payload) for m in received)
    assert new["before"] is None and new["after"]["camera"] == "camera" and new["after"]["label"] == "person"
    assert update["before"]["box"] == [10.0, 10.0, 110.0, 210.0]
    assert update["after"]["box"] == [60.0, 10.0, 160.0, 210.0] and update["after"]["top_score"] == 0.8
    assert end["after"]["end_time"] == 104.0 and end["after"]["id"] == new["after"]["id"]


def test_counts_are_retained_and_sent_only_when_they_change(broker, make_output, subscribe):
    output = make_output(broker.port)
    watcher = subscribe(broker.port, f"{BASE}/#")
    started(output)
    watcher.wait_for(f"{BASE}/all", "0")
    car = Detection(Box(200, 100, 300, 180), 0.9, 2, "car")
    light = Detection(Box(5, 5, 20, 40), 0.5, 9, "traffic light")
    two_people = [person(Box(10, 10, 60, 110)), person(Box(100, 10, 150, 110)), car, light]
    feed(output, Tracker(end_after=2.0), [(0.0, two_people), (0.2, two_people), (0.4, two_people[:2] + [car]),
                                          (3.0, [])])

    watcher.wait_for(f"{BASE}/all", count=3)
    time.sleep(QUIET)
    assert watcher.payloads(f"{BASE}/person") == ["2", "0"]
    assert watcher.payloads(f"{BASE}/car") == ["1", "0"]
    assert watcher.payloads(f"{BASE}/traffic_light") == ["1", "0"]
    assert watcher.payloads(f"{BASE}/all") == ["0", "4", "0"]

    late = subscribe(broker.port, f"{BASE}/+")
    for topic in ("person", "car", "traffic_light", "all"):
        message = late.wait_for(f"{BASE}/{topic}")
        assert (message.payload, message.retain) == (b"0", True)


def test_status_topics_are_retained(broker, make_output, subscribe):
    output = started(make_output(broker.port))
    output.on_status("source", True)
    output.on_status("detector", True)
    output.on_status("detector", False)
    subscribe(broker.port).wait_for(f"{BASE}/status/detector", "offline")   # arrived at the broker
    late = subscribe(broker.port, f"{BASE}/status/+")
    source, detector = late.wait_for(f"{BASE}/status/source"), late.wait_for(f"{BASE}/status/detector")
    assert (source.payload, source.retain) == (b"online", True)
    assert (detector.payload, detector.retain) == (b"offline", True)


def test_stats_on_connect_and_every_interval(broker, make_output, subscribe):
    stats = Stats("camera", "rtsp://user:secret@cam/stream", VERSION)
    stats.frame_detected(12.5)
    output = make_output(broker.port, stats=stats, stats_interval=0.5)
    watcher = subscribe(broker.port, f"{BASE}/stats")
    started(output)
    first = json.loads(watcher.wait_for(f"{BASE}/stats").payload)
    assert first["detector"]["inference_ms"] == 12.5
    assert first["service"]["version"] == VERSION and first["source"]["uri"] == "rtsp://user:***@cam/stream"
    began = time.monotonic()
    watcher.wait_for(f"{BASE}/stats", count=4)
    assert 1.2 < time.monotonic() - began < 3.0   # three more at 0.5 s apart


# --------------------------------------------------------------------------- Home Assistant discovery
def render(template: str, **variables) -> str:
    """A value_template as Home Assistant renders it (Jinja2)."""
    return jinja2.Environment().from_string(template).render(**variables)


def test_discovery_for_tracked_labels_new_labels_and_after_home_assistant_restarts(broker, make_output, subscribe):
    output = make_output(broker.port, track=("person", "dog"))
    watcher = subscribe(broker.port, "homeassistant/#")
    states = subscribe(broker.port, f"{BASE}/#")
    started(output)
    node = "homeassistant/{}/edge_yolov9_camera/{}/config"
    up_front = [node.format("sensor", "person_count"), node.format("binary_sensor", "person_detected"),
                node.format("sensor", "dog_count"), node.format("binary_sensor", "dog_detected"),
                node.format("sensor", "inference_ms"), node.format("sensor", "detection_fps"),
                node.format("binary_sensor", "source")]
    for topic in up_front:
        assert watcher.wait_for(topic).retain is False   # live: the subscriber was there first
    configs = {topic: json.loads(watcher.on(topic)[0].payload) for topic in up_front}

    unique_ids = set()
    for topic, config in configs.items():
        assert {"name", "unique_id", "state_topic", "availability_topic", "device"} <= config.keys(), topic
        assert "camera" in config["unique_id"]
        unique_ids.add(config["unique_id"])
        assert config["availability_topic"] == f"{BASE}/available"
        assert config["device"] == {"identifiers": ["edge_yolov9_camera"], "name": "edge-yolov9 camera",
                                    "model": "edge-yolov9", "manufacturer": "edge-yolov9", "sw_version": VERSION}
    assert len(unique_ids) == len(configs)

    count, detected = configs[up_front[0]], configs[up_front[1]]
    assert count["state_topic"] == detected["state_topic"] == f"{BASE}/person"
    assert count["state_class"] == "measurement"
    assert detected["name"] == "person detected"
    assert [render(detected["value_template"], value=v) for v in ("0", "1", "3")] == ["OFF", "ON", "ON"]
    stats = json.loads(states.wait_for(f"{BASE}/stats").payload)
    inference, fps = configs[up_front[4]], configs[up_front[5]]
    assert inference["state_topic"] == fps["state_topic"] == f"{BASE}/stats"
    assert render(inference["value_template"], value_json=stats) == "None"   # Home Assistant: unknown
    assert render(fps["value_template"], value_json=stats) == "0.0"
    source = configs[up_front[6]]
    assert (source["device_class"], source["state_topic"], source["payload_on"], source["payload_off"]) == \
        ("connectivity", f"{BASE}/status/source", "online", "offline")

    # a label not in `track` (its first sight) gets its entities then
    feed(output, Tracker(), [(0.0, [Detection(Box(0, 0, 50, 50), 0.9, 2, "car")])])
    car = json.loads(watcher.wait_for(node.format("sensor", "car_count")).payload)
    assert car["state_topic"] == f"{BASE}/car" and car["unique_id"] == "edge_yolov9_camera_car_count"
    watcher.wait_for(node.format("binary_sensor", "car_detected"))

    # Home Assistant's birth message: everything again
    watcher.client.publish("homeassistant/status", "online")
    for topic in up_front + [node.format("sensor", "car_count"), node.format("binary_sensor", "car_detected")]:
        assert json.loads(watcher.wait_for(topic, count=2).payload) == json.loads(watcher.on(topic)[0].payload)
    time.sleep(QUIET)
    assert len(watcher.on(node.format("sensor", "person_count"))) == 2


def test_no_discovery_when_disabled(broker, make_output, subscribe):
    watcher = subscribe(broker.port)
    output = started(make_output(broker.port, track=("person",), discovery=False))
    watcher.wait_for(f"{BASE}/person", "0")
    feed(output, Tracker(), [(0.0, [person(Box(0, 0, 9, 9))])])
    watcher.wait_for(f"{BASE}/person", "1")
    time.sleep(QUIET)
    assert not [m for m in watcher.messages if m.topic.startswith("homeassistant/")]


# --------------------------------------------------------------------------- failures
CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from edge_yolov9.daemon.config import MqttConfig
from edge_yolov9.daemon.mqtt import MqttOutput
from edge_yolov9.daemon.stats import Stats
output = MqttOutput(MqttConfig(enabled=True, port={port}, keepalive=5), "camera", ["person"],
                    Stats("camera", "0", "test"), "test")
output.start()
while not output.connected:
    time.sleep(0.02)
print("ready", flush=True)
time.sleep(60)
"""


def test_killed_daemon_leaves_the_last_will_offline(broker, subscribe):
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT), port=broker.port)],
                             stdout=subprocess.PIPE, text=True)
    try:
        readable, _, _ = select.select([child.stdout], [], [], TIMEOUT)
        assert readable and child.stdout.readline().strip() == "ready"
        watcher = subscribe(broker.port, f"{BASE}/available")
        watcher.wait_for(f"{BASE}/available", "online")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(TIMEOUT)
        began = time.monotonic()
        watcher.wait_for(f"{BASE}/available", "offline")
        assert time.monotonic() - began < 5   # keepalive
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    late = subscribe(broker.port, f"{BASE}/available").wait_for(f"{BASE}/available")
    assert (late.payload, late.retain) == (b"offline", True)


def test_reconnects_after_the_broker_restarts_and_publishes_its_state_again(broker, make_output, subscribe):
    output = started(make_output(broker.port, track=("person",)))
    output.on_status("source", True)
    broker.stop()
    wait_until(lambda: not output.connected)
    output.on_status("detector", True)    # while the broker is away: sent on reconnect
    broker.start()                        # same port, retained messages forgotten (no persistence)
    wait_until(lambda: output.connected)
    late = subscribe(broker.port)
    assert late.wait_for(f"{BASE}/available").payload == b"online"
    assert late.wait_for(f"{BASE}/status/source").payload == b"online"
    assert late.wait_for(f"{BASE}/status/detector").payload == b"online"
    assert late.wait_for(f"{BASE}/person").payload == b"0"
    late.wait_for("homeassistant/sensor/edge_yolov9_camera/person_count/config")


def test_broker_down_at_start_connects_later_without_queueing(tmp_path, make_output, subscribe, caplog):
    caplog.set_level(logging.INFO, logger="edge_yolov9.daemon.mqtt")
    broker = Broker(tmp_path / "broker")
    output = make_output(broker.port, qos=1)
    began = time.monotonic()
    output.start()
    assert time.monotonic() - began < 0.5 and not output.connected
    output.on_status("source", True)
    feed(output, Tracker(), [(0.0, [person(Box(0, 0, 50, 90))])])
    time.sleep(1.6)       # two attempts, one second apart
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage().lower()]
    assert refused == [f"Cannot connect to the MQTT broker at 127.0.0.1:{broker.port}: Connection refused; retrying"]
    with broker:
        watcher = subscribe(broker.port)
        watcher.wait_for(f"{BASE}/available", "online")
        assert watcher.wait_for(f"{BASE}/status/source").payload == b"online"
        assert watcher.wait_for(f"{BASE}/person").payload == b"1"
        time.sleep(QUIET)
        assert watcher.on(f"{BASE}/events") == []     # dropped while away, not delivered late
        assert any("Connected to the MQTT broker" in r.getMessage() for r in caplog.records)
        output.close()
        watcher.close()   # before the broker stops, or it would wait to reconnect


def test_wrong_password_is_reported_without_the_password(tmp_path, make_output, caplog):
    caplog.set_level(logging.DEBUG)
    with Broker(tmp_path / "broker", passwords={"edge": "right-horse-battery"}) as broker:
        wrong = make_output(broker.port, user="edge", password=SecretStr("wrong-staple-42"), client_id="wrong")
        wrong.start()
        wait_until(lambda: any("user name or password" in r.getMessage().lower()
                               or "not authori" in r.getMessage().lower() for r in caplog.records))
        time.sleep(1.5)   # a second attempt: still one line
        refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 1 and f"127.0.0.1:{broker.port}" in refusals[0] and "mqtt.password" in refusals[0]
        assert not wrong.connected

        right = started(make_output(broker.port, user="edge", password=SecretStr("right-horse-battery")))
        assert right.connected
        wrong.close()
        right.close()
    logged = "\n".join(caplog.text.splitlines() + [r.getMessage() for r in caplog.records])
    assert "wrong-staple-42" not in logged and "right-horse-battery" not in logged


def test_unreadable_ca_certificate_is_a_configuration_error(tmp_path):
    (tmp_path / "ca.pem").write_text("not a certificate\n")  # a missing one is refused by the config already
    with pytest.raises(EdgeYoloError, match="mqtt.tls_ca_certs"):
        MqttOutput(MqttConfig(enabled=True, tls_ca_certs=tmp_path / "ca.pem"), "camera", LABELS,
                   Stats("camera", "0", VERSION), VERSION)
