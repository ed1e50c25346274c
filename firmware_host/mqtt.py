"""MQTT output of the daemon, with Home Assistant MQTT discovery.

The topics are a contract (Home Assistant, Node-RED and scripts read them); ``base`` is
``<mqtt.topic_prefix>/<name>``, e.g. ``edge-yolov9/camera``:

==========================  ===========================================================  ========  ========
topic                       payload                                                      retained  qos
==========================  ===========================================================  ========  ========
``base/available``          ``online`` on every connect; ``offline`` on close and as     yes       1
                            the Last Will (the daemon died or lost the network)
``base/events``             JSON ``{"type": "new"/"update"/"end", "before", "after"}``    no        mqtt.qos
                            (``ObjectEvent.to_dict``), one message per event
``base/<label>``            objects of that label tracked now (``2``), sent when it      yes       mqtt.qos
                            changes, back to ``0`` included
``base/all``                objects of every label tracked now                           yes       mqtt.qos
``base/status/source``      ``online`` / ``offline``                                     yes       mqtt.qos
``base/status/detector``    ``online`` / ``offline``                                     yes       mqtt.qos
``base/status/fallback``    why the CPU model runs instead of the Edge TPU (sent with    yes       mqtt.qos
                            the detector's status; empty (cleared) when it does not)
``base/stats``              JSON of ``/api/stats``, on connect and every                 no        mqtt.qos
                            ``mqtt.stats_interval`` seconds
==========================  ===========================================================  ========  ========

``<label>`` is the model's label with anything but letters, digits, ``_`` and ``-`` made ``_``
(``traffic light`` -> ``traffic_light``). With ``mqtt.discovery`` the Home Assistant configs are
retained at ``<discovery_prefix>/<component>/edge_yolov9_<name>/<object_id>/config``: per label a
count ``sensor`` and a "<label> detected" ``binary_sensor``, plus inference time and detection fps
sensors and a connectivity ``binary_sensor`` for the source, all on one device. Labels are announced
at connect for ``objects.track``, otherwise when first seen; everything is announced again when Home
Assistant's birth message (``online`` on ``<discovery_prefix>/status``) arrives.

Nothing here blocks or raises into the detection loop: while the broker is away messages are dropped
(events are news only when fresh), the retained state is sent again on reconnect, and paho
reconnects by itself.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import sys
import threading
from typing import Any, Sequence

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage, MQTTMessageInfo
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_yolov9.errors import EdgeYoloError

from .config import MqttConfig
from .hub import Snapshot
from .stats import Stats
from .tracker import ObjectEvent

logger = logging.getLogger(__name__)

RECONNECT_MAX = 30        # longest wait between reconnection attempts (seconds)
QUEUE_LIMIT = 1000        # unacknowledged qos 1/2 messages kept at most
CLOSE_TIMEOUT = 2.0       # seconds close() waits for the broker to take 'offline'
RESERVED = {"all", "available", "events", "stats", "status"}
TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def topic_level(label: str) -> str:
    """A label as one topic level and discovery object id: ``traffic light`` -> ``traffic_light``."""
    return TOPIC_UNSAFE.sub("_", label)


class MqttOutput:
    """Publishes one camera's events, counts, status and stats (see the module docstring)."""

    def __init__(self, config: MqttConfig, camera: str, labels: Sequence[str], stats: Stats, version: str,
                 track: Sequence[str] = ()):
        self.config = config
        self.camera = camera
        self.stats = stats
        self.version = version
        self.base = f"{config.topic_prefix}/{camera}"
        self.address = f"{config.host}:{config.port}"
        for label in labels:
            if topic_level(label) in RESERVED:
                logger.warning("The count of label %r would go to %s/%s, one of the daemon's own topics: "
                               "rename the label to keep them apart", label, self.base, topic_level(label))
        self._lock = threading.Lock()
        self._labels: list[str] = list(track)     # announced to Home Assistant
        self._counts: dict[str, int] = {label: 0 for label in track}
        self._total = 0
        self._live: dict[str, str] = {}           # tracked object id -> label
        self._status: dict[str, str] = {}
        self._up = False                          # connected, as last logged
        self._problem: str | None = None          # last connection problem logged
        self._closing = threading.Event()
        self._stats_thread: threading.Thread | None = None
        self._client = self._make_client()

    def _make_client(self) -> Client:
        config = self.config
        client = Client(CallbackAPIVersion.VERSION2, client_id=config.client_id or f"edge-yolov9-{self.camera}",
                        protocol=MQTTProtocolVersion.MQTTv311)
        client.will_set(self._topic("available"), "offline", qos=1, retain=True)
        if config.user is not None:
            client.username_pw_set(config.user, config.password.get_secret_value() if config.password else None)
        if config.tls_ca_certs is not None:
            try:
                client.tls_set(ca_certs=str(config.tls_ca_certs))
            except OSError as err:   # ssl.SSLError included
                raise EdgeYoloError(f"Cannot load mqtt.tls_ca_certs {config.tls_ca_certs}: {err}",
                                    "point mqtt.tls_ca_certs at the broker's CA certificate (PEM)") from None
        client.reconnect_delay_set(1, RECONNECT_MAX)
        client.max_queued_messages_set(QUEUE_LIMIT)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    # ------------------------------------------------------------------ the daemon's side
    def start(self) -> None:
        """Connect in the background: a broker that is down (or comes later) does not hold up the daemon."""
        self._client.connect_async(self.config.host, self.config.port, self.config.keepalive)
        self._client.loop_start()
        self._stats_thread = threading.Thread(target=self._stats_loop, name="mqtt-stats", daemon=True)
        self._stats_thread.start()

    def on_frame(self, snapshot: Snapshot, counts: dict[str, int]) -> None:
        """Nothing per frame: counts follow the object events, which also carry the ends that come
        without a frame (source offline, shutdown)."""

    def on_events(self, events: Sequence[ObjectEvent]) -> None:
        with self._lock:
            for event in events:
                obj = event.after
                if event.type == "new":
                    self._live[obj.id] = obj.label
                elif event.type == "end":
                    self._live.pop(obj.id, None)
                self._discover(obj.label)
                self._publish(self._topic("events"), json.dumps(event.to_dict(self.camera)))
            self._update_counts()

    def on_status(self, component: str, online: bool) -> None:
        with self._lock:
            self._status[component] = "online" if online else "offline"
            self._publish(self._topic(f"status/{component}"), self._status[component], retain=True)
            if component == "detector":
                self._publish_fallback()

    def _publish_fallback(self) -> None:
        self._publish(self._topic("status/fallback"), self.stats.detector_fallback_reason or "", retain=True)

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    def close(self) -> None:
        """Say 'offline' (a clean disconnect sends no Last Will), disconnect and stop the threads."""
        self._closing.set()
        if self._stats_thread is not None:
            self._stats_thread.join()
        with self._lock:
            info = self._publish(self._topic("available"), "offline", retain=True, qos=1)
        if info is not None and info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            info.wait_for_publish(CLOSE_TIMEOUT)
        self._client.disconnect()
        self._client.loop_stop()

    # ------------------------------------------------------------------ publishing
    def _topic(self, leaf: str) -> str:
        return f"{self.base}/{leaf}"

    def _publish(self, topic: str, payload: str, retain: bool = False, qos: int | None = None
                 ) -> MQTTMessageInfo | None:
        """Send while connected, drop otherwise: nothing queues up while the broker is away."""
        if not self._client.is_connected():
            return None
        return self._client.publish(topic, payload, self.config.qos if qos is None else qos, retain)

    def _update_counts(self) -> None:
        """Publish the counts that changed since last sent (retained: a new subscriber gets them at once)."""
        counts = collections.Counter(self._live.values())
        for label in sorted(self._counts.keys() | counts.keys()):
            if self._counts.get(label) != counts[label]:
                self._counts[label] = counts[label]
                self._publish(self._topic(topic_level(label)), str(counts[label]), retain=True)
        if self._total != sum(counts.values()):
            self._total = sum(counts.values())
            self._publish(self._topic("all"), str(self._total), retain=True)

    def _publish_state(self) -> None:
        """Everything retained, again: the broker may have restarted (and lost it) or the values changed
        while it was away."""
        self._publish(self._topic("available"), "online", retain=True, qos=1)
        for component, value in self._status.items():
            self._publish(self._topic(f"status/{component}"), value, retain=True)
        if "detector" in self._status:
            self._publish_fallback()
        for label, count in self._counts.items():
            self._publish(self._topic(topic_level(label)), str(count), retain=True)
        self._publish(self._topic("all"), str(self._total), retain=True)

    def _publish_stats(self) -> None:
        """Outside the lock: reading the stats may take a while (``vcgencmd`` on a Pi)."""
        self._publish(self._topic("stats"), json.dumps(self.stats.to_dict()))

    def _stats_loop(self) -> None:
        while not self._closing.wait(self.config.stats_interval):
            self._publish_stats()

    # ------------------------------------------------------------------ Home Assistant discovery
    def _discover(self, label: str) -> None:
        """Announce a label the first time it is seen (Home Assistant adds its entities then)."""
        if label not in self._labels:
            self._labels.append(label)
            self._announce([label])

    def _announce(self, labels: Sequence[str], device_entities: bool = False) -> None:
        if not self.config.discovery:
            return
        configs = [config for label in labels for config in self._label_configs(label)]
        if device_entities:
            configs += self._device_configs()
        for component, object_id, config in configs:
            topic = f"{self.config.discovery_prefix}/{component}/edge_yolov9_{self.camera}/{object_id}/config"
            self._publish(topic, json.dumps(config), retain=True)

    def _entity(self, object_id: str, name: str, state_topic: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "unique_id": f"edge_yolov9_{self.camera}_{object_id}", "state_topic": state_topic,
                "availability_topic": self._topic("available"),
                "device": {"identifiers": [f"edge_yolov9_{self.camera}"], "name": f"edge-yolov9 {self.camera}",
                           "model": "edge-yolov9", "manufacturer": "edge-yolov9", "sw_version": self.version},
                **extra}

    def _label_configs(self, label: str) -> list[tuple[str, str, dict[str, Any]]]:
        level = topic_level(label)
        state = self._topic(level)
        return [
            ("sensor", f"{level}_count", self._entity(f"{level}_count", f"{label} count", state,
                                                      state_class="measurement", icon="mdi:counter")),
            ("binary_sensor", f"{level}_detected", self._entity(
                f"{level}_detected", f"{label} detected", state,
                value_template="{{ 'ON' if value | int(0) > 0 else 'OFF' }}", device_class="occupancy")),
        ]

    def _device_configs(self) -> list[tuple[str, str, dict[str, Any]]]:
        stats = self._topic("stats")
        return [
            ("sensor", "inference_ms", self._entity(
                "inference_ms", "Inference time", stats, value_template="{{ value_json.detector.inference_ms }}",
                unit_of_measurement="ms", state_class="measurement", entity_category="diagnostic")),
            ("sensor", "detection_fps", self._entity(
                "detection_fps", "Detection fps", stats, value_template="{{ value_json.source.detection_fps }}",
                unit_of_measurement="fps", state_class="measurement", entity_category="diagnostic")),
            ("binary_sensor", "source", self._entity(
                "source", "Camera", self._topic("status/source"), device_class="connectivity",
                payload_on="online", payload_off="offline", entity_category="diagnostic")),
        ]

    # ------------------------------------------------------------------ paho callbacks (network thread)
    def _on_connect(self, client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode,
                    properties: Properties) -> None:
        if reason.is_failure:
            hint = {"Bad user name or password": "check mqtt.user and mqtt.password",
                    "Not authorized": "check mqtt.user, mqtt.password and the broker's ACL"}.get(str(reason), "")
            self._report(f"The MQTT broker at {self.address} refused the connection: {reason}"
                         + (f" ({hint})" if hint else ""))
            return
        with self._lock:
            # Unacknowledged messages of the last connection would be resent after the state sent here,
            # and a stale retained count or status would win.
            client.drop_out_messages()
            self._up = True
            self._problem = None
            logger.info("Connected to the MQTT broker at %s (topics under %s/)", self.address, self.base)
            if self.config.discovery:
                client.subscribe(f"{self.config.discovery_prefix}/status", qos=1)
            self._publish_state()
            self._announce(self._labels, device_entities=True)
        self._publish_stats()

    def _on_connect_fail(self, client: Client, userdata: Any) -> None:
        """paho calls this while handling the OSError of the attempt, which names the reason."""
        err = sys.exc_info()[1]
        reason = (err.strerror or str(err)) if isinstance(err, OSError) else "unreachable"
        self._report(f"Cannot connect to the MQTT broker at {self.address}: {reason}; retrying")

    def _on_disconnect(self, client: Client, userdata: Any, flags: DisconnectFlags, reason: ReasonCode,
                       properties: Properties) -> None:
        if not self._up:
            return
        self._up = False
        if self._closing.is_set():
            logger.info("Disconnected from the MQTT broker at %s", self.address)
        else:
            self._report(f"Lost the connection to the MQTT broker at {self.address}; reconnecting")

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        """Home Assistant (re)started: announce again (a retained config may have been lost with a broker
        restart) and send the stats, so its sensors have values now rather than at the next interval."""
        if message.payload == b"online":
            with self._lock:
                self._announce(self._labels, device_entities=True)
            self._publish_stats()

    def _report(self, problem: str) -> None:
        """Log a connection problem once, not on every retry."""
        if problem != self._problem:
            self._problem = problem
            logger.warning("%s", problem)
