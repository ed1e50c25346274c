"""The daemon's configuration: validation with key and line, ${VAR} secrets, CLI overrides, the sample, the unit;
hostile or mistaken files (an alias bomb, keys given twice, files that are not there) and masked camera passwords."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_yolov9.cli import main
from edge_yolov9.daemon.cli import SAMPLE_CONFIG
from edge_yolov9.daemon.config import ConfigError, load_config, parse_config, redact
from edge_yolov9.daemon.systemd import existing_groups, unit_text, watchdog_seconds

MINIMAL = "model:\n  path: m.tflite\nsource:\n  uri: '0'\n"


@pytest.fixture(autouse=True)
def model_files(tmp_path, monkeypatch):
    """The models MINIMAL and the sample name exist (the config checks), in the current folder."""
    monkeypatch.chdir(tmp_path)
    for name in ("m.tflite", "model_int8_edgetpu.tflite"):
        (tmp_path / name).write_bytes(b"TFL3")


def validate(config: Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``edge-yolov9 serve --config CONFIG --validate-config`` in a process of its own, as users run it."""
    return subprocess.run([sys.executable, "-m", "edge_yolov9.cli", "serve", "--config", str(config),
                           "--validate-config"], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=config.parent)


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


def install_service(folder: Path, config_text: str, user: str) -> tuple[Path, Path]:
    """`serve --install-service` of ``config_text`` written into ``folder``: the config's and the unit's paths."""
    config_path, unit = folder / "daemon.yaml", folder / "edge-yolov9-garage.service"
    config_path.write_text(config_text)
    assert main(["serve", "--config", str(config_path), "--install-service", "--unit-path", str(unit),
                 "--user", user]) == 0
    return config_path, unit


def test_install_service_writes_a_unit_with_watchdog_restart_and_device_groups(tmp_path, capsys):
    config_path, unit = install_service(tmp_path, MINIMAL + "name: garage\n", "pi")
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


def test_the_unit_opens_the_folders_the_daemon_writes_and_names_no_placeholder_page(tmp_path, capsys):
    """ProtectHome=read-only and ProtectSystem=full would make a JSON-lines file under /home (or /etc)
    silently unwritable for the service: its folder is opened with ReadWritePaths. One under /tmp would land
    in the service's private /tmp: refused at install time. systemd itself accepts the unit."""
    config_path, unit = install_service(
        tmp_path, MINIMAL + "name: garage\njsonl:\n  path: /var/log/edge-yolov9/events.jsonl\n", "root")
    text = unit.read_text()
    assert "ReadWritePaths=-/var/log/edge-yolov9\n" in text
    assert "Documentation=" not in text  # no placeholder URL
    assert "CacheDirectory=edge-yolov9" in text and "Environment=XDG_CACHE_HOME=/var/cache/edge-yolov9" in text
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    config_path.write_text(MINIMAL + "jsonl:\n  path: '-'\n")
    assert "ReadWritePaths" not in unit_text(load_config(config_path), config_path, "pi", [])
    config_path.write_text(MINIMAL + "jsonl:\n  path: logs/events.jsonl\n")  # relative: beside the config, in /tmp
    assert main(["serve", "--config", str(config_path), "--install-service", "--unit-path", str(unit)]) == 2
    assert "private folder of its own (PrivateTmp)" in capsys.readouterr().err


def test_a_short_http_token_is_refused():
    with pytest.raises(ConfigError, match=r"http.token \(line 6\): a token needs 8 characters at least"):
        parse_config(MINIMAL + "http:\n  token: ''\n")


# --------------------------------------------------------------------------- secrets in URIs
@pytest.mark.parametrize("uri, shown", [
    ("rtsp://user:secret@cam/stream", "rtsp://user:***@cam/stream"),
    ("rtsp://admin:pa/ss@w@rd@cam.local:554/stream", "rtsp://admin:***@cam.local:554/stream"),
    ("rtsp://admin:p?ss#1@cam:554/s", "rtsp://admin:***@cam:554/s"),
    ("http://a1b2c3token@cam/video.mjpg", "http://***@cam/video.mjpg"),
    ("rtsp://cam/live?channel=1&user=admin&pwd=x1&password=x2&passwd=x3&pass=x4",
     "rtsp://cam/live?channel=1&user=admin&pwd=***&password=***&passwd=***&pass=***"),
    ("http://cam/s.mjpg?token=x1&KEY=x2&api_key=x3&auth=x4&secret=x5&sig=x6&access_token=x7",
     "http://cam/s.mjpg?token=***&KEY=***&api_key=***&auth=***&secret=***&sig=***&access_token=***"),
    ("http://u:pw@cam:8080/v?user=u&password=p@ss#frag", "http://u:***@cam:8080/v?user=u&password=***"),
    ("Cannot open rtsp://a:b@cam/x (timeout), nor http://c:d@cam2/y",
     "Cannot open rtsp://a:***@cam/x (timeout), nor http://c:***@cam2/y"),
    ("rtsp://cam.local:554/live", "rtsp://cam.local:554/live"),
    ("/srv/frames@2x/", "/srv/frames@2x/"),
    ("0", "0"),
])
def test_credentials_in_uris_are_masked(uri, shown):
    assert redact(uri) == shown


def test_validate_config_masks_the_camera_password_yet_the_capture_gets_it(tmp_path, monkeypatch):
    """The sample's recommended form, with a password holding '/' and '@', in the userinfo and the query."""
    password = "pa/ss@w@rd"
    config = tmp_path / "daemon.yaml"
    config.write_text("model:\n  path: m.tflite\nsource:\n  uri: rtsp://admin:${CAMERA_PASSWORD}@cam.local:554/"
                      "stream?channel=1&user=admin&password=${CAMERA_PASSWORD}\n")
    done = validate(config, {"CAMERA_PASSWORD": password})
    assert done.returncode == 0, done.stderr
    assert "pa/ss" not in done.stdout + done.stderr and "w@rd" not in done.stdout + done.stderr
    shown = json.loads(done.stdout[:done.stdout.rindex("}") + 1])
    assert shown["source"]["uri"] == "rtsp://admin:***@cam.local:554/stream?channel=1&user=admin&password=***"
    monkeypatch.setenv("CAMERA_PASSWORD", password)
    source = load_config(config).source
    assert source.uri == f"rtsp://admin:{password}@cam.local:554/stream?channel=1&user=admin&password={password}"
    assert password not in repr(source) and password not in str(load_config(config))


# --------------------------------------------------------------------------- hostile or mistaken files
def test_an_alias_bomb_is_refused_at_once_naming_the_line(tmp_path):
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in "bcdefghi":  # 9 ** 9 values once expanded
        previous = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 9) + "]")
    config = tmp_path / "daemon.yaml"
    config.write_text("\n".join(lines) + "\n" + MINIMAL)
    assert config.stat().st_size < 700
    started = time.monotonic()
    done = validate(config, timeout=60)
    assert done.returncode == 2 and time.monotonic() - started < 30
    assert "line 2: the YAML alias *a is not allowed" in done.stderr and "fix:" in done.stderr


def test_missing_model_and_ca_files_are_named_with_key_line_and_fix(tmp_path):
    config = tmp_path / "daemon.yaml"
    config.write_text("model:\n  path: gone.tflite\nsource:\n  uri: '0'\nmqtt:\n  enabled: true\n"
                      f"  tls_ca_certs: {tmp_path / 'ca.pem'}\n")
    done = validate(config)
    assert done.returncode == 2 and "configuration OK" not in done.stdout
    assert f"model.path (line 2): gone.tflite does not exist; check the path (relative to {tmp_path})" in done.stderr
    assert "a .tflite from `edge-yolov9 convert`" in done.stderr
    assert f"mqtt.tls_ca_certs (line 7): {tmp_path / 'ca.pem'} does not exist" in done.stderr
    (tmp_path / "ca.pem").mkdir()
    (tmp_path / "gone.tflite").write_bytes(b"TFL3")
    done = validate(config)
    assert done.returncode == 2 and "model.path" not in done.stderr
    assert f"mqtt.tls_ca_certs (line 7): {tmp_path / 'ca.pem'} is a folder; pass a file" in done.stderr
    (tmp_path / "ca.pem").rmdir()
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    assert validate(config).returncode == 0


def test_an_unquoted_camera_index_is_camera_0(tmp_path):
    config = tmp_path / "daemon.yaml"
    config.write_text("model:\n  path: m.tflite\nsource:\n  uri: 0\n")
    done = validate(config)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout[:done.stdout.rindex("}") + 1])["source"]["uri"] == "0"
    assert load_config(config).source.uri == "0"
    with pytest.raises(ConfigError, match=r"source.uri \(line 4\)"):
        parse_config("model:\n  path: m.tflite\nsource:\n  uri: true\n")


def test_keys_given_twice_are_refused_with_both_lines(tmp_path):
    config = tmp_path / "daemon.yaml"
    config.write_text(MINIMAL + "http:\n  port: 8091\n  host: 0.0.0.0\n  port: 8092\nmodel:\n  path: other.tflite\n")
    done = validate(config)
    assert done.returncode == 2 and "configuration OK" not in done.stdout
    assert "gives a key twice: http.port at lines 6 and 8; model at lines 1 and 9" in done.stderr
    assert "fix: keep one of each" in done.stderr


def test_port_flags_are_checked_when_parsed(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--model", "m.tflite", "--source", "0", "--http-port", "70000", "--validate-config"])
    assert exit_.value.code == 2
    assert "--http-port: 70000 is out of range; use an integer from 0 to 65535" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--model", "m.tflite", "--source", "0", "--mqtt-port", "0", "--validate-config"])
    assert "--mqtt-port: 0 is out of range" in capsys.readouterr().err
