"""doctor's field checks on fake machines: sysfs, procfs and device-tree trees built in tmp_path, a fake
/etc/group, and a `vcgencmd` program on PATH that answers what a Pi would."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edge_yolov9.doctor import field_checks
from edge_yolov9.host import User, firmware_config
from support.fake_sysfs import usb_coral, write

pytestmark = pytest.mark.runtime

PI = User("pi", 1000, frozenset({1000}))


@pytest.fixture
def vcgencmd(tmp_path, monkeypatch):
    """A `vcgencmd` on PATH that prints $FAKE_THROTTLED and the config values of $FAKE_CONFIG ('key=value')."""
    folder = tmp_path / "bin"
    folder.mkdir()
    program = folder / "vcgencmd"
    program.write_text('#!/bin/sh\ncase "$1" in\n  get_throttled) echo "throttled=$FAKE_THROTTLED" ;;\n'
                       '  get_config) echo "$FAKE_CONFIG" | grep "^$2=" || echo "$2=0" ;;\nesac\n')
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_THROTTLED", "0x0")
    monkeypatch.setenv("FAKE_CONFIG", "")
    return monkeypatch.setenv


def checks_by_name(root: Path, **kwargs) -> dict:
    found = field_checks(root / "machine", **kwargs)
    assert all(not c.required for c in found), "a field check never fails the run"
    return {c.name: c for c in found}


def test_nothing_to_check_on_a_machine_without_coral_pi_or_vcgencmd(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    (tmp_path / "machine").mkdir()
    assert field_checks(tmp_path / "machine", user=PI) == []


def test_a_coral_on_a_usb2_link_is_a_warning_with_the_usb3_port_to_use(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    root = tmp_path / "machine"
    usb_coral(root, "1-1", "18d1:9302", "480")
    write(root, "etc/group", "plugdev:x:46:pi\n")
    link = checks_by_name(tmp_path, user=PI)["coral usb link"]
    assert not link.ok and "480 Mbit/s (USB 2)" in link.detail and "18d1:9302" in link.detail
    assert "blue USB 3 port" in link.fix and "several times slower" in link.fix

    usb_coral(root, "1-1", "1a6e:089a", "5000")  # before its firmware loads, on a USB 3 port
    link = checks_by_name(tmp_path, user=PI)["coral usb link"]
    assert link.ok and "5000 Mbit/s (USB 3)" in link.detail and "bootloader" in link.detail


def test_usb_access_names_the_missing_step_of_the_plugdev_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    root = tmp_path / "machine"
    usb_coral(root, "2-1", "18d1:9302", "5000", bus=2, number=7)
    write(root, "etc/group", "plugdev:x:46:\n")
    access = checks_by_name(tmp_path, user=PI)["coral usb access"]
    assert not access.ok and access.detail == "/dev/bus/usb/002/007 is not readable and writable by pi"
    assert "sudo usermod -aG plugdev pi" in access.fix

    write(root, "etc/group", "plugdev:x:46:alice,pi\n")  # joined, but this login predates it
    access = checks_by_name(tmp_path, user=PI)["coral usb access"]
    assert not access.ok and "log out and in" in access.fix and "usermod" not in access.fix

    in_session = User("pi", 1000, frozenset({1000, 46}))
    assert checks_by_name(tmp_path, user=in_session)["coral usb access"].ok
    os.chown(root / "dev/bus/usb/002/007", 0, 0)  # no udev rule: the node stays root's
    access = checks_by_name(tmp_path, user=in_session)["coral usb access"]
    assert not access.ok and "udev rule" in access.fix
    assert checks_by_name(tmp_path, user=User("root", 0, frozenset({0})))["coral usb access"].ok


def test_pi5_usb_current_from_the_device_tree_config_txt_or_vcgencmd(tmp_path, vcgencmd):
    root = tmp_path / "machine"
    write(root, "proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.0\0")
    config = write(root, "boot/firmware/config.txt", "# comment\n[pi4]\nusb_max_current_enable=1\n[all]\n")
    current = checks_by_name(tmp_path, user=PI)["pi 5 usb current"]  # set for a Pi 4 only; vcgencmd says 0
    assert not current.ok and "600 mA" in current.detail and "900 mA" in current.detail
    assert "add usb_max_current_enable=1 to /boot/firmware/config.txt" in current.fix and "5 A" in current.fix

    config.write_text("[pi5]\nusb_max_current_enable=1  # 27 W supply\n")
    current = checks_by_name(tmp_path, user=PI)["pi 5 usb current"]  # configured, but vcgencmd says 0: not applied
    assert not current.ok and "reboot" in current.fix and "add" not in current.fix

    vcgencmd("FAKE_CONFIG", "usb_max_current_enable=1")
    assert checks_by_name(tmp_path, user=PI)["pi 5 usb current"].ok

    # The device tree holds what the firmware applied, and the supply's current, over vcgencmd.
    write(root, "proc/device-tree/chosen/power/usb_max_current_enable", (0).to_bytes(4, "big"))
    write(root, "proc/device-tree/chosen/power/max_current", (3000).to_bytes(4, "big"))
    current = checks_by_name(tmp_path, user=PI)["pi 5 usb current"]
    assert not current.ok and "offers 3000 mA" in current.detail

    write(root, "proc/device-tree/model", "Raspberry Pi 4 Model B Rev 1.5\0")
    assert "pi 5 usb current" not in checks_by_name(tmp_path, user=PI)


def test_firmware_config_reads_the_bookworm_file_first_and_the_last_value_that_applies(tmp_path):
    write(tmp_path, "boot/config.txt", "kernel=old.img\n")
    assert firmware_config("kernel", tmp_path) == "old.img"
    write(tmp_path, "boot/firmware/config.txt", "kernel=a.img\n[cm4]\nkernel=b.img\n[all]\nkernel=kernel8.img\n")
    assert firmware_config("kernel", tmp_path, board="pi5") == "kernel8.img"
    assert firmware_config("arm_64bit", tmp_path) is None


def test_pcie_coral_needs_4k_pages_the_apex_driver_and_the_apex_group(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    root = tmp_path / "machine"
    write(root, "sys/bus/pci/devices/0001:01:00.0/vendor", "0x1ac1\n")
    write(root, "sys/bus/pci/devices/0001:01:00.0/device", "0x089a\n")
    checks = checks_by_name(tmp_path, user=PI, page_size=16384)
    pages, driver = checks["kernel page size"], checks["apex driver"]
    assert not pages.ok and "16K pages" in pages.detail and "0001:01:00.0" in pages.detail
    assert "kernel=kernel8.img" in pages.fix
    assert not driver.ok and "neither gasket nor apex" in driver.detail and "gasket-driver" in driver.fix

    (root / "sys/module/gasket").mkdir(parents=True)
    (root / "sys/module/apex").mkdir()
    checks = checks_by_name(tmp_path, user=PI, page_size=4096)
    assert checks["kernel page size"].ok and "4K pages" in checks["kernel page size"].detail
    assert not checks["apex driver"].ok and "pciex1-compat-pi5,no-mip" in checks["apex driver"].fix

    node = write(root, "dev/apex_0", b"")
    os.chown(node, 0, 0)
    node.chmod(0o600)  # what gasket makes without the udev rule
    checks = checks_by_name(tmp_path, user=PI, page_size=4096)
    access = checks["coral pcie access"]
    assert checks["apex driver"].ok and not access.ok and access.detail.startswith("/dev/apex_0 is not")
    assert "sudo groupadd apex" in access.fix and "65-apex.rules" in access.fix
    write(root, "etc/group", "apex:x:990:pi\n")
    os.chown(node, 0, 990)
    node.chmod(0o660)
    assert checks_by_name(tmp_path, user=User("pi", 1000, frozenset({1000, 990})),
                          page_size=4096)["coral pcie access"].ok


@pytest.mark.parametrize("flags,ok,said,fix", [
    ("0x0", True, "none", ""),
    ("0x50005", False, "under-voltage now, throttled now, under-voltage since boot, throttled since boot",
     "official supply"),
    ("0x80000", False, "soft temperature limit since boot", "heatsink and fan"),
])
def test_throttling_is_read_from_vcgencmd_with_its_cause(tmp_path, vcgencmd, flags, ok, said, fix):
    vcgencmd("FAKE_THROTTLED", flags)
    (tmp_path / "machine").mkdir()
    check = checks_by_name(tmp_path, user=PI)["throttling"]
    assert check.ok is ok and check.detail == f"{flags}: {said}"
    assert (fix in check.fix) if fix else check.fix == ""
    if flags == "0x50005":
        assert "heatsink" not in check.fix, "throttling caused by under-voltage is not heat"


@pytest.mark.runtime
@pytest.mark.parametrize("machine, bits, reported", [("aarch64", 32, True), ("armv8l", 32, True),
                                                     ("aarch64", 64, False), ("armv7l", 32, False),
                                                     ("x86_64", 64, False)])
def test_a_32_bit_userland_on_a_64_bit_kernel_is_recognised(machine, bits, reported):
    from edge_yolov9.doctor import THIRTY_TWO_BIT_INSTALL, userland_checks

    checks = userland_checks(machine, bits)
    assert bool(checks) == reported
    if reported:
        [check] = checks
        assert "32-bit userland on a 64-bit ARM kernel" in check.detail and not check.required
        assert check.fix == THIRTY_TWO_BIT_INSTALL and "--no-deps edge-yolov9" in check.fix
        assert not check.ok  # no tflite-runtime in this venv: the fix is shown
