#!/usr/bin/env bash
# Create .venv with everything to train, convert, run and test edge-yolov9 on a CPU machine.
# TORCH_SPEC picks the torch build (default: the 2.13.0 CPU wheel litert-torch 0.10 is tested with).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[dev]"
echo "edge-yolov9 is installed in .venv (activate with: source .venv/bin/activate)"
