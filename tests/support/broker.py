"""A real mosquitto broker for the daemon's tests, on a free 127.0.0.1 port, stopped and started again on
the same port (a broker restart as the daemon sees it), and a subscriber that records what arrives.

Everything it writes (config, password file, log) stays in its own folder, so pytest-xdist workers
each run their own. Persistence is off: a restart forgets retained messages, so a retained message
seen after one was published again.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion

from support.waiting import wait_until

from support.mjpeg_server import free_port

START_TIMEOUT = 10.0
TIMEOUT = 10.0            # seconds a test waits for a message


def _program(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        raise RuntimeError(f"{name} is not installed (the MQTT tests run a real broker): "
                           "run `bash scripts/system-deps.sh`")
    return path


class Broker:
    """mosquitto with its own config in ``folder``; ``passwords`` (user -> password) turns anonymous access off."""

    def __init__(self, folder: Path, passwords: dict[str, str] | None = None, port: int | None = None):
        self.folder = folder
        self.port = port or free_port()
        self.log = folder / "mosquitto.log"
        self._program = _program("mosquitto")
        self._process: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", f"log_dest file {self.log}",
                 "log_type all",
                 # As root, mosquitto would switch to the 'mosquitto' user, who cannot read this folder.
                 f"user {pwd.getpwuid(os.getuid()).pw_name}"]
        if passwords:
            password_file = folder / "passwords"
            for index, (user, password) in enumerate(passwords.items()):
                create = ["-c"] if index == 0 else []
                subprocess.run([_program("mosquitto_passwd"), "-b", *create, str(password_file), user, password],
                               check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        self.config = folder / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> Broker:
        """Start and wait until it accepts connections."""
        self._process = subprocess.Popen([self._program, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self._process.returncode}): "
                                   f"{self._process.stderr.read().decode()}\n{self._log_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {START_TIMEOUT} s\n{self._log_text()}")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process.stderr.close()
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


class Subscriber:
    """A separate MQTT client recording everything under ``topic``."""

    def __init__(self, port: int, topic: str = "#"):
        self.messages: list[MQTTMessage] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert subscribed.wait(TIMEOUT), "the test subscriber could not subscribe"

    def _on_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        with self._lock:
            self.messages.append(message)

    def on(self, topic: str) -> list[MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def payloads(self, topic: str) -> list[str]:
        return [m.payload.decode() for m in self.on(topic)]

    def wait_for(self, topic: str, payload: str | None = None, count: int = 1) -> MQTTMessage:
        """The ``count``-th message on ``topic`` (with ``payload`` if given)."""
        def matching() -> list[MQTTMessage]:
            return [m for m in self.on(topic) if payload is None or m.payload.decode() == payload]

        wait_until(lambda: len(matching()) >= count)
        return matching()[count - 1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
