"""``edge-yolov9 serve``: the detector daemon, its config check and its systemd unit."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
from pathlib import Path
from typing import Any

from edge_yolov9.cli import add_command, int_arg
from edge_yolov9.errors import EdgeYoloError, require

SAMPLE_CONFIG = Path(__file__).with_name("daemon.sample.yaml")

# CLI flag -> config key: flags win over the file.
OVERRIDES = {"model": "model.path", "device": "model.device", "source": "source.uri", "name": "name",
             "http_host": "http.host", "http_port": "http.port", "mqtt_host": "mqtt.host", "mqtt_port": "mqtt.port",
             "jsonl": "jsonl.path"}


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {key: getattr(args, flag) for flag, key in OVERRIDES.items() if getattr(args, flag) is not None}
    if args.mqtt_host is not None:
        values["mqtt.enabled"] = True
    return {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}


def config_from_args(args: argparse.Namespace):
    from .config import ConfigError, load_config, parse_config

    overrides = _overrides(args)
    if args.config is not None:
        return load_config(args.config, overrides)
    if "model.path" not in overrides or "source.uri" not in overrides:
        raise ConfigError("serve needs a config file, or at least --model and --source",
                          "edge-yolov9 serve --config daemon.yaml (write one with --print-sample-config), or "
                          "edge-yolov9 serve --model MODEL.tflite --source 0")
    return parse_config("{}", "the command line", overrides)


def _serve(args: argparse.Namespace) -> int:
    if args.print_sample_config:
        print(SAMPLE_CONFIG.read_text(), end="")
        return 0
    for module, package in (("pydantic", None), ("yaml", "pyyaml")):
        require(module, "daemon", "The detector daemon", package)
    config = config_from_args(args)
    if args.validate_config:
        print(json.dumps(config.redacted(), indent=2))
        print("configuration OK", flush=True)
        return 0
    if args.install_service:
        return _install_service(args, config)
    from .daemon import Daemon

    daemon = Daemon(config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: daemon.stop())
    daemon.run()
    return 0


def _install_service(args: argparse.Namespace, config) -> int:
    from .systemd import existing_groups, install_instructions, unit_name, unit_text

    if args.config is None:
        raise EdgeYoloError("--install-service needs --config (the unit starts the daemon with that file)",
                            "write one: edge-yolov9 serve --print-sample-config > daemon.yaml")
    user = args.user or os.environ.get("SUDO_USER") or getpass.getuser()
    groups = existing_groups()
    unit_path = args.unit_path or Path("/etc/systemd/system") / unit_name(config)
    text = unit_text(config, args.config.resolve(), user, groups)
    try:
        unit_path.write_text(text)
    except PermissionError:
        raise EdgeYoloError(f"No permission to write {unit_path}",
                            "run it with sudo (keeping the venv's python: sudo $(which edge-yolov9) serve ...), "
                            "or pass --unit-path FILE and copy that into /etc/systemd/system/") from None
    except OSError as err:
        raise EdgeYoloError(f"Cannot write {unit_path}: {err.strerror}",
                            "pass --unit-path with a writable location") from None
    print(install_instructions(config, unit_path, user, groups))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = add_command(
        subparsers, "serve", _serve, help="run the detector daemon (camera or stream in, HTTP/MQTT out)",
        description="Detect continuously on a camera, stream, video file or folder and publish the results: HTTP "
                    "(/api/stats, /metrics, /api/detections/latest, /api/latest.jpg, an MJPEG stream and a live "
                    "page), MQTT with Home Assistant discovery, JSON lines. The detector runs in its own process "
                    "under a watchdog; sources reconnect by themselves. Settings come from --config (see "
                    "--print-sample-config); the flags below override it.")
    serve.add_argument("--config", type=Path, help="the daemon's YAML configuration")
    serve.add_argument("--print-sample-config", action="store_true", help="print a commented config and exit")
    serve.add_argument("--validate-config", action="store_true",
                       help="check the config (and that the files it names exist), print it (secrets masked) "
                            "and exit")
    serve.add_argument("--install-service", action="store_true", help="write a systemd unit for this config")
    serve.add_argument("--unit-path", type=Path, help="where --install-service writes the unit "
                                                      "(default: /etc/systemd/system/edge-yolov9-NAME.service)")
    serve.add_argument("--user", help="the user the service runs as (default: the one invoking sudo)")
    overrides = serve.add_argument_group("overrides of the config file")
    overrides.add_argument("--model", type=Path, help="model.path")
    overrides.add_argument("--device", help="model.device: auto, cpu, usb, usb:N, pci, pci:N")
    overrides.add_argument("--source", help="source.uri: camera index, /dev/videoN, stream URL, video, folder, "
                                            "picamera2")
    overrides.add_argument("--name", help="name (of the camera)")
    overrides.add_argument("--http-host", help="http.host")
    overrides.add_argument("--http-port", type=int_arg(0, 65535, hint=" (0 picks a free port)"), help="http.port")
    overrides.add_argument("--mqtt-host", help="mqtt.host (and mqtt.enabled)")
    overrides.add_argument("--mqtt-port", type=int_arg(1, 65535), help="mqtt.port")
    overrides.add_argument("--jsonl", help="jsonl.path: '-' for stdout, or a file")
