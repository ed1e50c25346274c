"""Sub-commands of the runtime itself (``doctor``; ``detect`` and ``bench`` join it)."""

from __future__ import annotations

import argparse

from .cli import add_command, print_result


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import render, run_checks

    checks = run_checks()
    print_result([c.to_dict() for c in checks] if args.json else checks, args.json, render)
    return 0 if all(c.ok for c in checks if c.required) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    doctor = add_command(
        subparsers, "doctor", _doctor, help="check this machine for what the runtime and the Coral need",
        description="Check Python, NumPy, the TFLite interpreter packages (and the NumPy 2 clash of "
                    "tflite-runtime), the Edge TPU runtime (libedgetpu) and Coral devices on USB and PCIe. "
                    "Each line is OK or says the fix. Exit 1 when a required check fails.")
    doctor.add_argument("--json", action="store_true", help="print JSON")
