"""The daemon's configuration: one YAML file, validated, unknown keys rejected.

Every error names the key (``mqtt.port``), the line in the file and the fix. ``${VAR}`` in a string
value is replaced by the environment variable ``VAR`` (or the file ``$CREDENTIALS_DIRECTORY/VAR`` that
systemd's ``LoadCredential=`` provides), so passwords need not be written in the file. Secrets are
``SecretStr``: they print as ``**********`` in logs, ``/api/stats`` and ``--validate-config``; the
credentials in ``source.uri`` (its password, ``?password=``-like query values) print masked by
:func:`redact`, which is what logs, stats, MQTT and HTTP show of any URI. YAML aliases and keys given
twice are refused, and the files the config names must exist.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_serializer, field_validator

from edge_yolov9.cli import existing_file
from edge_yolov9.errors import EdgeYoloError
from edge_yolov9.interpreter import parse_device

ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
TOPIC_UNSAFE = re.compile(r"[#+\s]")
MIN_TOKEN_LENGTH = 8
# The user info of a URI: everything between '://' and the last '@' before the host, so a password may hold
# '/' or '@' (``rtsp://admin:pa/ss@w@rd@cam:554/s``). A URI with no user info but an '@' in its path loses
# that part of its path to the mask: better too much masked than a password shown.
USERINFO = re.compile(r"(?<=://)(?P<user>[^:\s]*)(?P<password>:\S*)?@(?=[^@/?#\s]*(?:[/?#\s]|$))")
# Query values that are credentials: ?password=, &pwd=, &token=, &api_key=, &auth=, &secret=, &sig=, ...
SECRET_QUERY_VALUE = re.compile(r"(?i)(?P<key>[?&;][^=&#\s]*(?:pass|pwd|token|key|auth|secret|sig|cred|session)"
                                r"[^=&#\s]*=)[^&\s]*")


def redact(text: str) -> str:
    """``text`` with the credentials of every URI in it masked: ``rtsp://user:secret@cam/s?token=t`` ->
    ``rtsp://user:***@cam/s?token=***``. The one redaction of URIs for logs, stats, MQTT, HTTP and the
    config's printout."""
    text = SECRET_QUERY_VALUE.sub(r"\g<key>***", text)
    return USERINFO.sub(lambda m: f"{m['user']}:***@" if m["password"] else "***@", text)


class ConfigError(EdgeYoloError):
    """The configuration file is missing, not YAML, or not valid."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _existing_file(path: Path, what: str) -> Path:
    """``path`` if it is a file; else the error says so, and what belongs there. Checked when the config is
    read, so ``--validate-config`` finds a wrong path, not the daemon's start (or a reconnect) later."""
    try:
        return existing_file(str(path))
    except argparse.ArgumentTypeError as err:
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise ValueError(f"{err}{where}; this key takes {what}") from None


class ModelConfig(Section):
    path: Path = Field(description="a .tflite from `edge-yolov9 convert` (or its _edgetpu compilation)")
    device: str = Field("auto", description="auto, cpu, usb, usb:N, pci, pci:N")
    threads: Optional[int] = Field(None, ge=1, description="CPU threads of the interpreter (default: all cores)")
    score_threshold: float = Field(0.4, gt=0, le=1)
    iou_threshold: float = Field(0.45, gt=0, le=1)
    max_detections: int = Field(100, ge=1)
    edgetpu_library: Optional[Path] = Field(None, description="the libedgetpu to load (default: "
                                                             "$EDGE_YOLOV9_LIBEDGETPU, else the system's)")
    fallback_to_cpu: bool = Field(True, description="run the CPU twin when the Edge TPU fails to load or keeps "
                                                    "crashing the detector process")

    @field_validator("path")
    @classmethod
    def _path(cls, value: Path) -> Path:
        return _existing_file(value, "a .tflite from `edge-yolov9 convert`")

    @field_validator("edgetpu_library")
    @classmethod
    def _library(cls, value: Optional[Path]) -> Optional[Path]:
        return None if value is None else _existing_file(value, "a libedgetpu.so.1")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        try:
            parse_device(value)
        except EdgeYoloError as err:
            raise ValueError(f"{err.problem}: {err.fix}") from None
        return value


class SourceConfig(Section):
    uri: str = Field(description="camera index (0), /dev/videoN, rtsp:// or http(s):// stream, video file, "
                                 "folder of images, or 'picamera2'")
    fps: Optional[float] = Field(None, gt=0, description="at most this many frames per second are detected")
    loop: bool = Field(False, description="start a video file or folder again at its end (demos, soak runs)")
    stall_timeout: float = Field(20.0, gt=0, description="seconds without a frame before the source is reopened")
    reconnect_initial: float = Field(1.0, gt=0, description="first wait before reopening a source (seconds)")
    reconnect_max: float = Field(30.0, gt=0, description="longest wait between reopening attempts (seconds)")

    @field_validator("uri", mode="before")
    @classmethod
    def _camera_index(cls, value: Any) -> Any:
        """``uri: 0`` (unquoted, so YAML makes it a number) is camera 0."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_serializer("uri")
    def _masked(self, uri: str) -> str:
        return redact(uri)

    def __repr_args__(self):
        """A logged or printed config shows the uri masked too."""
        return [(name, redact(value) if name == "uri" else value) for name, value in super().__repr_args__()]


class LabelFilter(Section):
    min_score: Optional[float] = Field(None, gt=0, le=1)
    min_area: int = Field(0, ge=0, description="smallest box area in pixels")
    max_area: Optional[int] = Field(None, gt=0)


class ObjectsConfig(Section):
    track: list[str] = Field(default_factory=list, description="labels to report (empty: every label)")
    filters: dict[str, LabelFilter] = Field(default_factory=dict)
    end_after: float = Field(2.0, gt=0, description="seconds unseen before an object's 'end' event")
    min_iou: float = Field(0.3, gt=0, lt=1, description="overlap that makes a box the same object as before")


class WatchdogConfig(Section):
    stall_timeout: float = Field(10.0, gt=0, description="seconds one inference may take before the detector "
                                                         "process is restarted")
    start_timeout: float = Field(60.0, gt=0, description="seconds the detector process may take to load the model")
    max_restarts: int = Field(5, ge=1, description="restarts within restart_window before backing off")
    restart_window: float = Field(60.0, gt=0)
    backoff_max: float = Field(60.0, gt=0, description="longest wait between detector restarts (seconds)")
    power_cycle_usb: bool = Field(False, description="when the detector keeps failing on a USB Coral, power-cycle "
                                                     "the Coral's port with uhubctl (once per restart_window) before "
                                                     "falling back or backing off; a Pi 4 switches all its USB ports "
                                                     "together")


class HttpConfig(Section):
    enabled: bool = True
    host: str = Field("127.0.0.1", description="0.0.0.0 to serve other machines (set a token then)")
    port: int = Field(8090, ge=0, le=65535, description="0 picks a free port")
    token: Optional[SecretStr] = Field(None, description="bearer token required by every endpoint but /api/health")
    jpeg_quality: int = Field(80, ge=10, le=100)
    stream_fps: float = Field(10.0, gt=0, description="highest frame rate of the MJPEG stream")
    max_connections: int = Field(64, ge=4, le=1024, description="open connections at most, MJPEG streams "
                                                                "included; more get 503")


    @field_validator("token")
    @classmethod
    def _token(cls, value: Optional[SecretStr]) -> Optional[SecretStr]:
        if value is not None and len(value.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(f"a token needs {MIN_TOKEN_LENGTH} characters at least (e.g. `openssl rand -hex 16`), "
                             "or leave it out")
        return value


class MqttConfig(Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    user: Optional[str] = None
    password: Optional[SecretStr] = None
    client_id: Optional[str] = Field(None, description="default: edge-yolov9-<name>")
    topic_prefix: str = "edge-yolov9"
    qos: Literal[0, 1, 2] = 0
    stats_interval: float = Field(60.0, gt=0)
    keepalive: int = Field(30, ge=5)
    discovery: bool = Field(True, description="Home Assistant MQTT discovery")
    discovery_prefix: str = "homeassistant"
    tls_ca_certs: Optional[Path] = None

    @field_validator("tls_ca_certs")
    @classmethod
    def _ca_file(cls, value: Optional[Path]) -> Optional[Path]:
        return None if value is None else _existing_file(value, "the broker's CA certificate (PEM)")

    @field_validator("topic_prefix", "discovery_prefix")
    @classmethod
    def _topic(cls, value: str) -> str:
        if not value or TOPIC_UNSAFE.search(value) or value.startswith("/") or value.endswith("/"):
            raise ValueError(f"{value!r} is not a usable MQTT topic prefix: no '#', '+', spaces or outer '/'")
        return value


class JsonLinesConfig(Section):
    path: Optional[str] = Field(None, description="'-' for stdout, a file path, or nothing (off)")
    per: Literal["event", "frame"] = Field("event", description="one line per object event, or per detected frame")


class DaemonConfig(Section):
    name: str = Field("camera", description="this camera's name in topics, metrics and Home Assistant")
    model: ModelConfig
    source: SourceConfig
    objects: ObjectsConfig = Field(default_factory=ObjectsConfig)
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    jsonl: JsonLinesConfig = Field(default_factory=JsonLinesConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise ValueError(f"{value!r}: use letters, digits, '_' and '-' only (it becomes an MQTT topic level)")
        return value

    def redacted(self) -> dict[str, Any]:
        """The configuration as JSON-ready data, secrets masked."""
        return self.model_dump(mode="json")


class _Loader(yaml.SafeLoader):
    """YAML without aliases: nine lines of nested ``*a`` expand to a billion values (a "billion laughs"),
    which would hang the checks; this config has no use for them."""

    def __init__(self, text: str, origin: str):
        super().__init__(text)
        self.origin = origin

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"{self.origin} line {event.start_mark.line + 1}: the YAML alias *{event.anchor} is "
                              "not allowed in the daemon's config",
                              "write the value out in full there (anchors and aliases are refused)")
        return super().compose_node(parent, index)


def _read_yaml(text: str, origin: str) -> tuple[Any, dict[tuple, int]]:
    """The document in ``text`` and the 1-based line of each key path (for error messages); a key given
    twice in one mapping is an error (YAML would keep the last silently)."""
    loader = _Loader(text, origin)
    try:
        root = loader.get_single_node()
        lines: dict[tuple, int] = {}
        twice: list[str] = []

        def walk(node: Any, path: tuple) -> None:
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if not isinstance(key, yaml.ScalarNode):
                        continue  # a list as a key: construct_document refuses it
                    where, line = path + (key.value,), key.start_mark.line + 1
                    if where in lines:
                        twice.append(f"{'.'.join(map(str, where))} at lines {lines[where]} and {line}")
                        continue
                    lines[where] = line
                    walk(value, where)
            elif isinstance(node, yaml.SequenceNode):
                for index, item in enumerate(node.value):
                    lines[path + (index,)] = item.start_mark.line + 1
                    walk(item, path + (index,))

        walk(root, ())
        if twice:
            raise ConfigError(f"{origin} gives a key twice: {'; '.join(twice)}",
                              "keep one of each (merge the settings of two sections into one)")
        return (None if root is None else loader.construct_document(root)), lines
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{origin} is not valid YAML{at}: {getattr(err, 'problem', err)}",
                          "fix the indentation or quoting there") from None
    finally:
        loader.dispose()


def _substitute(value: Any, where: str) -> Any:
    """``${VAR}`` in strings, from the environment or systemd credentials."""
    if isinstance(value, dict):
        return {k: _substitute(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{where}.{i}") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def lookup(match: re.Match) -> str:
        name = match.group(1)
        if name in os.environ:
            return os.environ[name]
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials and (Path(credentials) / name).is_file():
            return (Path(credentials) / name).read_text().strip()
        raise ConfigError(f"{where}: ${{{name}}} is not set",
                          f"export {name}=... before starting (or give it to systemd with LoadCredential={name}:FILE)")

    return ENV_REFERENCE.sub(lookup, value)


def _describe(err: ValidationError, lines: dict[tuple, int]) -> str:
    messages = []
    for problem in err.errors():
        path = tuple(problem["loc"])
        line = next((lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in lines), None)
        key = ".".join(str(p) for p in path) or "(top level)"
        where = f"{key} (line {line})" if line else key
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key: remove it or check its spelling (see `edge-yolov9 serve --print-sample-config`)"
        elif problem["type"] == "missing":
            message = "required: add it"
        messages.append(f"  {where}: {message}")
    return "\n".join(messages)


def parse_config(text: str, origin: str = "<config>", overrides: dict[str, Any] | None = None) -> DaemonConfig:
    """A validated configuration from YAML ``text``; ``overrides`` (dotted keys, e.g. from CLI flags) win."""
    data, lines = _read_yaml(text, origin)
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must be a mapping of sections (model:, source:, ...)",
                          "see `edge-yolov9 serve --print-sample-config`")
    data = _substitute(data, "")
    for dotted, value in (overrides or {}).items():
        section = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            section = section.setdefault(key, {})
        section[leaf] = value
    try:
        return DaemonConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{origin} is not a valid daemon configuration:\n{_describe(err, lines)}",
                          "correct the keys listed (`edge-yolov9 serve --print-sample-config` shows every key)") \
            from None


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> DaemonConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"Config file not found: {path}",
                          "write one: edge-yolov9 serve --print-sample-config > daemon.yaml") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"Cannot read config file {path}: {err}", "check the path and its permissions") from None
    return parse_config(text, str(path), overrides)
