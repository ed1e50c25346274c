"""The daemon's configuration: validation with key and line, ${VAR} secrets, CLI overrides, the sample, the unit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_yolov9.cli import main
from firmware_host.cli import SAMPLE_CONFIG
from firmware_host.config import ConfigError, load_config, parse_config
from firmware_host.systemd import existing_groups, unit_text, watchdog_seconds

MINIMAL = "model:\n  path: m.tflite\nsource:\n  uri: '0'\n"


def test_the_sample_config_is_valid_and_shows_every_key():
    config = parse_config(SAMPLE_CONFIG.read_text(), "sample")
    assert config.model.device == "auto" and config.http.host == "127.0.0.1" and not config.mqtt.enabled

    def keys(data: dict, prefix: str = "") -> set[str]:
        out = set()
        for key, value in data.items():
            out.add(prefix + key)
            if isinstance(value, dict) and key != "filters":
                out |= keys(value, prefix + key + ".")
        return out

    import yaml
    # Every setting of the schema appears in the sample, so the sample documents them all.
    assert keys(config.model_dump()) == keys(yaml.safe_load(SAMPLE_CONFIG.read_text()))


def test_an_unknown_key_is_named_with_its_line():
    text = MINIMAL + "mqtt:\n  enabled: true\n  hots: broker.local\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, "daemon.yaml")
    assert "mqtt.hots (line 7): unknown key" in err.value.problem
    assert "daemon.yaml" in err.value.problem


def test_wrong_values_name_the_key_line_and_what_is_allowed():
    text = "model:\n  path: m.tflite\n  device: usb1\nsource:\n  uri: '0'\nhttp:\n  port: 99999\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert "model.device (line 3): Unknown device 'usb1': use auto, cpu, usb, usb:N, pci, pci:N or :N" in err.value.problem
    assert "http.port (line 7)" in err.value.problem


def test_missing_sections_and_broken_yaml_are_reported():
    with pytest.raises(ConfigError, match=r"source: required: add it"):
        parse_config("model:\n  path: m.tflite\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line 3"):
        parse_config("model:\n  path: m.tflite\n source: [\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_config("- a\n- b\n")
    with pytest.raises(ConfigError, match="Config file not found"):
        load_config("/nonexistent/daemon.yaml")


def test_topic_levels_are_checked():
    with pytest.raises(ConfigError, match="name"):
        parse_config(MINIMAL + "name: front door\n")
    with pytest.raises(ConfigError, match="mqtt.topic_prefix"):
        parse_config(MINIMAL + "mqtt:\n  topic_prefix: home/#\n")


def test_secrets_come_from_the_environment_and_are_masked(monkeypatch, tmp_path):
    monkeypatch.setenv("MQTT_PASSWORD", "hunter2-secret")
    text = MINIMAL + "mqtt:\n  enabled: true\n  user: pi\n  password: ${MQTT_PASSWORD}\nhttp:\n  token: t0ken-${MQTT_PASSWORD}\n"
    config = parse_config(text)
    assert config.mqtt.password.get_secret_value() == "hunter2-secret"
    assert config.http.token.get_secret_value() == "t0ken-hunter2-secret"
    assert "hunter2" not in repr(config) and "hunter2" not in json.dumps(config.redacted())
    monkeypatch.delenv("MQTT_PASSWORD")
    (tmp_path / "MQTT_PASSWORD").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert parse_config(text).mqtt.password.get_secret_value() == "from-systemd"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match=r"mqtt.password: \$\{MQTT_PASSWORD\} is not set"):
        parse_config(text)


def test_cli_validates_overrides_and_masks_secrets(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SECRET_TOKEN", "s3cr3t-value")
    path = tmp_path / "daemon.yaml"
    path.write_text(MINIMAL + "http:\n  token: ${SECRET_TOKEN}\n")
    assert main(["serve", "--config", str(path), "--source", "rtsp://cam/1", "--http-port", "9000",
                 "--mqtt-host", "broker", "--validate-config"]) == 0
    out = capsys.readouterr().out
    assert "s3cr3t" not in out and "configuration OK" in out
    shown = json.loads(out[:out.rindex("}") + 1])
    assert shown["source"]["uri"] == "rtsp://cam/1" and shown["http"]["port"] == 9000
    assert shown["mqtt"] == {**shown["mqtt"], "enabled": True, "host": "broker"}
    path.write_text(MINIMAL + "colour: red\n")
    assert main(["serve", "--config", str(path), "--validate-config"]) == 2
    assert "colour (line 5): unknown key" in capsys.readouterr().err
    assert main(["serve", "--source", "0"]) == 2
    assert "at least --model and --source" in capsys.readouterr().err


def test_print_sample_config_round_trips(tmp_path):
    out = subprocess.run([sys.executable, "-m", "edge_yolov9.cli", "serve", "--print-sample-config"],
                         capture_output=True, text=True, check=True).stdout
    assert parse_config(out).model_dump() == parse_config(SAMPLE_CONFIG.read_text()).model_dump()


def test_install_service_writes_a_unit_with_watchdog_restart_and_device_groups(tmp_path, capsys):
    config_path = tmp_path / "daemon.yaml"
    config_path.write_text(MINIMAL + "name: garage\n")
    unit = tmp_path / "edge.service"
    assert main(["serve", "--config", str(config_path), "--install-service", "--unit-path", str(unit),
                 "--user", "pi"]) == 0
    text = unit.read_text()
    config = load_config(config_path)
    assert text == unit_text(config, config_path.resolve(), "pi", existing_groups())
    for line in ("Type=notify", "Restart=on-failure", "User=pi", f"WatchdogSec={watchdog_seconds(config)}",
                 "StandardOutput=journal", f"--config {config_path.resolve()}", "SyslogIdentifier=edge-yolov9-garage"):
        assert line in text
    assert "sudo systemctl enable --now edge-yolov9-garage.service" in capsys.readouterr().out
    # Only groups this system has: systemd refuses a unit that names a missing one.
    groups = next(line for line in text.splitlines() if line.startswith("SupplementaryGroups="))
    import grp
    for name in groups.partition("=")[2].split():
        grp.getgrnam(name)
    # The watchdog outlasts the longest the loop may block (a stalled inference, then a model load).
    assert watchdog_seconds(config) > config.watchdog.stall_timeout + config.watchdog.start_timeout
    assert main(["serve", "--config", str(config_path), "--install-service", "--unit-path",
                 str(Path("/proc/nonexistent/edge.service"))]) != 0


def test_a_short_http_token_is_refused():
    with pytest.raises(ConfigError, match=r"http.token \(line 6\): a token needs 8 characters at least"):
        parse_config(MINIMAL + "http:\n  token: ''\n")
