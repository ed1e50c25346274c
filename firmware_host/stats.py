"""The daemon's counters and health, as JSON (``/api/stats``, MQTT ``stats``) and Prometheus text (``/metrics``).

Rates (camera, detection and skipped fps) are measured over the last ``RATE_WINDOW`` seconds;
inference time is an exponential average (weight 0.1 for the newest), as Frigate reports it.
Nothing secret goes in: the source URI, and any URI in a source error, is shown with its credentials masked.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any

from edge_yolov9.host import pi_throttled

from .config import redact

RATE_WINDOW = 10.0
EWMA_WEIGHT = 0.1
# The Pi's throttling flags change on the scale of seconds; reading them spawns `vcgencmd`, and the live page
# and Prometheus ask for the stats often.
THROTTLED_REFRESH = 10.0


class _Rate:
    """Events per second over the last RATE_WINDOW seconds."""

    def __init__(self) -> None:
        self._times: collections.deque[float] = collections.deque()

    def add(self, now: float) -> None:
        self._times.append(now)
        self._trim(now)

    def per_second(self, now: float) -> float:
        self._trim(now)
        return len(self._times) / RATE_WINDOW

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - RATE_WINDOW:
            self._times.popleft()


def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.readline().strip()
    except OSError:
        return None


def cpu_temperature() -> float | None:
    """The SoC temperature in °C (Raspberry Pi and most Linux boards), None where not exposed."""
    value = _read_first_line("/sys/class/thermal/thermal_zone0/temp")
    return round(int(value) / 1000, 1) if value and value.lstrip("-").isdigit() else None


def rss_bytes(pid: int | None = None) -> int | None:
    """Resident memory of a process (this one by default) from /proc."""
    status = f"/proc/{pid or os.getpid()}/status"
    try:
        with open(status) as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Stats:
    """Thread-safe counters of the daemon; every component reports into one instance."""

    def __init__(self, name: str, source_uri: str, version: str):
        self.name = name
        self.version = version
        self.source_uri = redact(source_uri)
        self.started = time.time()
        self._lock = threading.Lock()
        self._grabbed, self._detected, self._dropped = _Rate(), _Rate(), _Rate()
        self.frames_grabbed = self.frames_detected = self.frames_dropped = self.frame_errors = 0
        self.source_online = False
        self.source_reconnects = 0
        self.source_error: str | None = None
        self.detector_online = False
        self.detector_restarts = 0
        self.detector_error: str | None = None
        self.detector_device: str | None = None
        self.detector_pid: int | None = None
        self.detector_fallback_reason: str | None = None  # why the CPU twin runs instead of the Edge TPU
        self.usb_power_cycles = 0
        self.inference_ms: float | None = None
        self.events = 0
        self._throttled: tuple[float, str | None] | None = None  # (when read, value)

    # --------------------------------------------------------------- reports from the components
    def frame_grabbed(self) -> None:
        with self._lock:
            self.frames_grabbed += 1
            self._grabbed.add(time.monotonic())

    def frame_dropped(self) -> None:
        with self._lock:
            self.frames_dropped += 1
            self._dropped.add(time.monotonic())

    def frame_error(self, problem: str) -> None:
        with self._lock:
            self.frame_errors += 1
            self.source_error = redact(problem)

    def frame_detected(self, inference_ms: float) -> None:
        with self._lock:
            self.frames_detected += 1
            self._detected.add(time.monotonic())
            self.inference_ms = inference_ms if self.inference_ms is None else (
                (1 - EWMA_WEIGHT) * self.inference_ms + EWMA_WEIGHT * inference_ms)

    def source_status(self, online: bool, error: str | None = None, reconnect: bool = False) -> None:
        with self._lock:
            self.source_online = online
            if error is not None:
                self.source_error = redact(error)
            self.source_reconnects += int(reconnect)

    def detector_status(self, online: bool, *, device: str | None = None, pid: int | None = None,
                        error: str | None = None, restarted: bool = False) -> None:
        with self._lock:
            self.detector_online = online
            self.detector_device = device or self.detector_device
            self.detector_pid = pid
            if error is not None:
                self.detector_error = error
            self.detector_restarts += int(restarted)

    def detector_fallback(self, reason: str) -> None:
        with self._lock:
            self.detector_fallback_reason = reason

    def usb_power_cycled(self) -> None:
        with self._lock:
            self.usb_power_cycles += 1

    def events_sent(self, count: int) -> None:
        with self._lock:
            self.events += count

    # --------------------------------------------------------------- views
    def _throttled_flags(self, now: float) -> str | None:
        if self._throttled is None or now - self._throttled[0] >= THROTTLED_REFRESH:
            self._throttled = (now, pi_throttled())
        return self._throttled[1]

    def to_dict(self) -> dict[str, Any]:
        now = time.monotonic()
        # Read outside the lock: the detection loop reports into it and must not wait on `vcgencmd` or /proc.
        detector_pid = self.detector_pid
        system = {"cpu_temperature": cpu_temperature(), "throttled": self._throttled_flags(now),
                  "rss_bytes": rss_bytes(), "detector_rss_bytes": rss_bytes(detector_pid) if detector_pid else None}
        with self._lock:
            return {
                "service": {"name": self.name, "version": self.version, "uptime": round(time.time() - self.started, 1),
                            "pid": os.getpid()},
                "source": {"uri": self.source_uri, "status": "online" if self.source_online else "offline",
                           "camera_fps": round(self._grabbed.per_second(now), 2),
                           "detection_fps": round(self._detected.per_second(now), 2),
                           "skipped_fps": round(self._dropped.per_second(now), 2),
                           "frames": self.frames_grabbed, "detected": self.frames_detected,
                           "dropped": self.frames_dropped, "errors": self.frame_errors,
                           "reconnects": self.source_reconnects, "last_error": self.source_error},
                "detector": {"status": "online" if self.detector_online else "offline",
                             "device": self.detector_device, "pid": self.detector_pid,
                             "inference_ms": None if self.inference_ms is None else round(self.inference_ms, 2),
                             "restarts": self.detector_restarts, "last_error": self.detector_error,
                             "fallback_reason": self.detector_fallback_reason,
                             "usb_power_cycles": self.usb_power_cycles},
                "events": self.events,
                "system": system,
            }

    def prometheus(self) -> str:
        """The Prometheus text exposition of :meth:`to_dict`."""
        stats = self.to_dict()
        source, detector, system = stats["source"], stats["detector"], stats["system"]
        label = f'{{camera="{self.name}"}}'
        metrics = [
            ("uptime_seconds", "gauge", "Seconds since the daemon started", stats["service"]["uptime"]),
            ("source_up", "gauge", "1 while the source delivers frames", int(source["status"] == "online")),
            ("frames_total", "counter", "Frames read from the source", source["frames"]),
            ("frames_detected_total", "counter", "Frames the detector ran on", source["detected"]),
            ("frames_dropped_total", "counter", "Frames skipped because a newer one came", source["dropped"]),
            ("frame_errors_total", "counter", "Frames that could not be read", source["errors"]),
            ("source_reconnects_total", "counter", "Times the source was reopened", source["reconnects"]),
            ("camera_fps", "gauge", "Frames read per second", source["camera_fps"]),
            ("detection_fps", "gauge", "Frames detected per second", source["detection_fps"]),
            ("detector_up", "gauge", "1 while the detector process is ready", int(detector["status"] == "online")),
            ("inference_milliseconds", "gauge", "Inference time, exponential average", detector["inference_ms"]),
            ("detector_restarts_total", "counter", "Detector process restarts", detector["restarts"]),
            ("usb_power_cycles_total", "counter", "Times the Coral's USB port was power-cycled",
             detector["usb_power_cycles"]),
            ("events_total", "counter", "Object events sent", stats["events"]),
            ("cpu_temperature_celsius", "gauge", "SoC temperature", system["cpu_temperature"]),
            ("resident_memory_bytes", "gauge", "Resident memory of the daemon", system["rss_bytes"]),
        ]
        lines = []
        for name, kind, help_text, value in metrics:
            if value is None:
                continue
            lines += [f"# HELP edge_yolov9_{name} {help_text}", f"# TYPE edge_yolov9_{name} {kind}",
                      f"edge_yolov9_{name}{label} {value}"]
        reason = detector["fallback_reason"]
        lines += ["# HELP edge_yolov9_detector_cpu_fallback 1 while the CPU model runs because the Edge TPU failed "
                  "(the reason is a label)", "# TYPE edge_yolov9_detector_cpu_fallback gauge",
                  f'edge_yolov9_detector_cpu_fallback{{camera="{self.name}",reason="{_label_value(reason or "")}"}} '
                  f"{int(reason is not None)}"]
        return "\n".join(lines) + "\n"


def _label_value(text: str) -> str:
    """``text`` as a Prometheus label value (backslash, quote and newline escaped)."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
