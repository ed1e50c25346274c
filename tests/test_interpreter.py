"""Interpreter discovery, device strings and Edge TPU diagnoses (no TPU on the test machine)."""

from __future__ import annotations

import pytest

from edge_yolov9.host import coral_usb_devices
from edge_yolov9.interpreter import RuntimeSetupError, find_backend, find_libedgetpu, load_edgetpu_delegate, parse_device


@pytest.mark.runtime
@pytest.mark.parametrize("text,options", [
    ("usb", {"device": "usb"}), ("usb:0", {"device": "usb:0"}), ("pci", {"device": "pci"}),
    ("pci:1", {"device": "pci:1"}), (":0", {"device": ":0"}), ("USB:2", {"device": "usb:2"}),
])
def test_device_strings_follow_pycoral(text, options):
    device = parse_device(text)
    assert device.wants_tpu and device.delegate_options() == options


@pytest.mark.runtime
def test_cpu_and_auto_devices_and_bad_ones():
    assert not parse_device("cpu").wants_tpu and parse_device("auto").kind == "auto"
    for bad in ("gpu", "usb:x", "usb0", "pci:-1"):
        with pytest.raises(RuntimeSetupError, match="use auto, cpu"):
            parse_device(bad)


def test_default_backend_is_ai_edge_litert():
    backend = find_backend()
    assert backend.name == "ai-edge-litert" and backend.version != "unknown"
    with pytest.raises(RuntimeSetupError, match="Unknown interpreter"):
        find_backend("tensorflow")


def test_missing_edge_tpu_runtime_says_how_to_install():
    assert find_libedgetpu() is None, "this test expects a machine without libedgetpu"
    with pytest.raises(RuntimeSetupError) as info:
        load_edgetpu_delegate(find_backend(), parse_device("usb"))
    assert "libedgetpu" in str(info.value) and "apt-get install libedgetpu1-std" in info.value.fix


@pytest.mark.runtime
def test_coral_usb_ids_are_read_from_sysfs(tmp_path):
    devices = tmp_path / "sys/bus/usb/devices"
    for name, vendor, product in (("1-1", "1a6e", "089a"), ("1-2", "18d1", "9302"), ("1-3", "046d", "c52b")):
        (devices / name).mkdir(parents=True)
        (devices / name / "idVendor").write_text(vendor + "\n")
        (devices / name / "idProduct").write_text(product + "\n")
    found = [str(device) for device in coral_usb_devices(tmp_path)]
    assert len(found) == 2 and "bootloader" in found[0] and "ready" in found[1]
