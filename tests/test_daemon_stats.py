"""The daemon's stats read the Pi's throttling flags through a real `vcgencmd` program, not on every request."""

from __future__ import annotations

import stat

from edge_yolov9.daemon.stats import Stats


def test_throttling_flags_come_from_vcgencmd_read_at_most_every_refresh(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    program = tmp_path / "vcgencmd"
    # A stand-in for the Pi's tool: prints what a Pi on a weak power supply prints, and counts its runs.
    program.write_text(f"#!/bin/sh\necho run >> {calls}\necho throttled=0x50005\n")
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    stats = Stats("garage", "rtsp://user:secret@cam/stream", "0.1.0")
    readings = [stats.to_dict()["system"]["throttled"] for _ in range(5)]
    assert readings == ["0x50005"] * 5
    assert calls.read_text().splitlines() == ["run"]  # one run for five requests within the refresh time
    assert "secret" not in str(stats.to_dict()) and stats.to_dict()["source"]["uri"] == "rtsp://user:***@cam/stream"


def test_the_cpu_fallback_and_its_reason_are_a_prometheus_gauge_with_an_escaped_label():
    stats = Stats("garage", "0", "0.1.0")
    assert 'edge_yolov9_detector_cpu_fallback{camera="garage",reason=""} 0' in stats.prometheus().splitlines()
    stats.detector_fallback('libedgetpu "16.0" crashed\nin C:\\lib')
    assert stats.to_dict()["detector"]["fallback_reason"] == 'libedgetpu "16.0" crashed\nin C:\\lib'
    line = r'edge_yolov9_detector_cpu_fallback{camera="garage",reason="libedgetpu \"16.0\" crashed\nin C:\\lib"} 1'
    assert line in stats.prometheus().splitlines()
