"""Power-cycling a wedged USB Coral (``edge_yolov9.usb_power``) with a fake ``uhubctl`` on PATH over a fake sysfs
tree (support.fake_uhubctl, support.fake_sysfs). The daemon doing it: test_daemon_fallback.py."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from edge_yolov9 import host
from edge_yolov9.host import CoralUsb, coral_usb_devices
from edge_yolov9.interpreter import RuntimeSetupError
from edge_yolov9.usb_power import hub_port, power_cycle_usb_corals
from support.fake_sysfs import usb_coral
from support.fake_uhubctl import fake_uhubctl

READY = "18d1:9302"


@pytest.mark.parametrize("name, expected", [("2-1", ("2", "1")), ("1-1.2", ("1-1", "2")),
                                            ("3-1.4.2", ("3-1.4", "2"))])
def test_a_coral_is_named_by_its_hub_and_port_as_uhubctl_takes_them(name, expected):
    assert hub_port(CoralUsb(name, ("18d1", "9302"), 5000, None)) == expected


@pytest.mark.parametrize("name", ["usb1", "1-", "1-1:1.0", "a-1"])
def test_what_is_not_a_device_name_is_refused(name):
    with pytest.raises(ValueError, match="not a USB device's sysfs name"):
        hub_port(CoralUsb(name, ("18d1", "9302"), 5000, None))


@pytest.fixture
def machine(tmp_path, monkeypatch) -> Path:
    """A fake root with a ready Coral on port 2 of hub 1-1 (device 5 of bus 1)."""
    root = tmp_path / "root"
    usb_coral(root, "1-1.2", READY, "5000", bus=1, number=5)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return root


def test_the_corals_port_is_cycled_and_the_coral_waited_for(machine, tmp_path):
    log = tmp_path / "uhubctl.log"
    fake_uhubctl(tmp_path / "bin", machine, log, back_after=0.5)
    assert power_cycle_usb_corals(machine, off_seconds=2) == ["1-1 port 2"]
    assert log.read_text() == "-l 1-1 -p 2 -a cycle -d 2\n"
    back = coral_usb_devices(machine)  # gone when uhubctl returned; back, re-enumerated, when the call returns
    assert [coral.name for coral in back] == ["1-1.2"] and back[0].node.name == "006"


def test_without_uhubctl_the_error_says_how_to_install_it(machine, monkeypatch):
    monkeypatch.setenv("PATH", str(machine / "no-bin"))
    with pytest.raises(RuntimeSetupError) as info:
        power_cycle_usb_corals(machine)
    assert "uhubctl" in info.value.problem and "sudo apt install uhubctl" in info.value.fix


def test_a_port_uhubctl_cannot_switch_is_a_clear_error(machine, tmp_path):
    fake_uhubctl(tmp_path / "bin", machine, tmp_path / "uhubctl.log", fails="No compatible devices detected!")
    with pytest.raises(RuntimeSetupError) as info:
        power_cycle_usb_corals(machine)
    assert "could not power-cycle port 2 of hub 1-1" in info.value.problem
    assert "No compatible devices detected!" in info.value.problem and "udev rule" in info.value.fix
    assert [coral.name for coral in coral_usb_devices(machine)] == ["1-1.2"]  # nothing was switched


def test_a_coral_that_does_not_come_back_is_a_clear_error(machine, tmp_path):
    fake_uhubctl(tmp_path / "bin", machine, tmp_path / "uhubctl.log", back_after=None)
    with pytest.raises(RuntimeSetupError, match="no USB Coral came back within 1 s of power-cycling 1-1 port 2"):
        power_cycle_usb_corals(machine, back_within=1)


def test_no_coral_no_power_cycle(tmp_path, monkeypatch):
    fake_uhubctl(tmp_path / "bin", tmp_path, tmp_path / "uhubctl.log")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(RuntimeSetupError, match="no USB Coral on the bus"):
        power_cycle_usb_corals(tmp_path)
    assert not (tmp_path / "uhubctl.log").exists()


def test_doctor_power_cycles_first_when_asked(machine, tmp_path, monkeypatch, capsys, caplog):
    from edge_yolov9.cli import main

    log = tmp_path / "uhubctl.log"
    fake_uhubctl(tmp_path / "bin", machine, log, back_after=0.2)
    monkeypatch.setattr(host, "ROOT", machine)
    caplog.set_level(logging.INFO)
    main(["doctor", "--power-cycle-usb", "--json"])
    assert log.read_text() == "-l 1-1 -p 2 -a cycle -d 2\n" and "Power-cycled 1-1 port 2; checking again" in caplog.text
    assert json.loads(capsys.readouterr().out)  # then the checks, as without the option
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert main(["doctor", "--power-cycle-usb"]) == 2
    assert "sudo apt install uhubctl" in capsys.readouterr().err
